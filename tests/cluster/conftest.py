from tests.cluster.etcd import etcd1, etcd3  # noqa: F401  (fixtures)
