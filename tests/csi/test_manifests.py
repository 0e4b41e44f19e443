"""deploy/kubernetes checked without a cluster (docs/architecture.md,
Kubernetes CSI plugin):

* every document validates against the Kubernetes OpenAPI schemas of the
  newest release kubernetes-validate ships, strictly (an unknown or misspelt
  field fails), offline;
* the driver name, the StorageClasses' provisioner, topology key and
  parameters are the plugin's (ctrl/csi.py, ctrl/csi_controller.py);
* every `srrs csi` and `srrs start` command line parses with our own CLI;
  every sidecar talks to the socket the plugin listens on, in a volume both
  mount; the node plugin is privileged, on the host network, with /dev, /sys
  and the kubelet directory (Bidirectional);
* ServiceAccounts, ClusterRoles and Roles that pods and bindings name exist.

Not covered: that a real cluster accepts and runs them (images, admission)."""

import glob
import os
import shlex

import kubernetes_validate
import pytest
import yaml

from srrs.ctrl.cli import build_parser
from srrs.ctrl.csi import DRIVER, TOPOLOGY_ZONE, socket_path
from srrs.ctrl.csi_controller import K8S_PARAM, PARAMS

HERE = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "kubernetes")
FILES = sorted(glob.glob(os.path.join(HERE, "*.yaml")) + glob.glob(os.path.join(HERE, "*", "*.yaml")))


def _docs():
    out = []
    for f in FILES:
        with open(f) as fh:
            out += [(os.path.relpath(f, HERE), d) for d in yaml.safe_load_all(fh) if d]
    return out


DOCS = _docs()


def _kind(kind):
    return [d for _, d in DOCS if d["kind"] == kind]


def _pods():
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for _, d in DOCS
            if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


@pytest.mark.parametrize("where,doc", DOCS, ids=[f"{w}:{d['kind']}/{d['metadata']['name']}"
                                                  for w, d in DOCS])
def test_schema(where, doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_driver_and_storageclasses_are_the_plugins():
    assert [d["metadata"]["name"] for d in _kind("CSIDriver")] == [DRIVER]
    assert _kind("CSIDriver")[0]["spec"]["attachRequired"] is True
    scs = _kind("StorageClass")
    assert scs and all(sc["provisioner"] == DRIVER for sc in scs)
    for sc in scs:
        for k in sc.get("parameters", {}):
            assert k in PARAMS or k.startswith(K8S_PARAM), k
        for t in sc.get("allowedTopologies", ()):
            assert {e["key"] for e in t["matchLabelExpressions"]} == {TOPOLOGY_ZONE}


def _argv(c):
    if c.get("args"):
        return list(c["args"])
    cmd = c["command"]
    if cmd[:2] == ["sh", "-c"]:     # exec srrs ...: the shell's words, $(...) left as text
        words = shlex.split(cmd[2].replace("$(", "(").replace('\\"', '"'))
        return words[words.index("srrs") + 1:]
    return cmd[1:]


def test_command_lines_parse_and_sockets_meet():
    ap = build_parser()
    plugins = 0
    for name, spec in _pods():
        mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c.get("volumeMounts", ())}
                  for c in spec["containers"]}
        sock = None
        for c in spec["containers"]:
            if c["image"].startswith("srrs:"):
                args = ap.parse_args(_argv(c))
                if args.cmd == "csi":
                    plugins += 1
                    sock = socket_path(args.endpoint)
        if sock is None:
            continue
        for c in spec["containers"]:
            for a in c.get("args", ()):
                if a.startswith("--csi-address="):
                    path = a.split("=", 1)[1]
                    assert path == sock, (name, c["name"])
                    shared = [v for v, p in mounts[c["name"]].items()
                              if p == os.path.dirname(sock)]
                    assert shared and mounts["srrs-csi"].get(shared[0]) == os.path.dirname(sock)
    assert plugins == 2


def test_node_plugin_has_the_host():
    spec = dict(_pods())["srrs-csi-node"]
    assert spec["hostNetwork"] is True
    c = next(c for c in spec["containers"] if c["name"] == "srrs-csi")
    assert c["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/dev", "/sys", "/etc/nvme", "/var/lib/kubelet"} <= set(mounts)
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    reg = next(c for c in spec["containers"] if c["name"] == "node-driver-registrar")
    assert f"--kubelet-registration-path=/var/lib/kubelet/plugins/{DRIVER}/csi.sock" in reg["args"]
    ctl = dict(_pods())["srrs-csi-controller"]
    images = " ".join(c["image"] for c in ctl["containers"])
    for sidecar in ("csi-provisioner", "csi-attacher", "csi-resizer", "livenessprobe"):
        assert sidecar in images
    prov = next(c for c in ctl["containers"] if c["name"] == "csi-provisioner")
    assert "--enable-capacity" in prov["args"] and "--feature-gates=Topology=true" in prov["args"]


def test_rbac_names_exist():
    sas = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in _kind("ServiceAccount")}
    for _, d in DOCS:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            sa = d["spec"]["template"]["spec"].get("serviceAccountName")
            assert sa is None or (d["metadata"]["namespace"], sa) in sas
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            kind = d["roleRef"]["kind"]
            assert any(r["metadata"]["name"] == d["roleRef"]["name"] for r in _kind(kind))
            for s in d["subjects"]:
                assert (s["namespace"], s["name"]) in sas
