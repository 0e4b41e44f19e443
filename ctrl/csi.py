"""`srrs csi`: the Kubernetes CSI plugin (docs/architecture.md, Kubernetes CSI plugin).

One gRPC server on a Unix socket (or tcp://HOST:PORT) serves the CSI services of `--mode`:
Identity always, Controller (ctrl/csi_controller.py: volumes in the cluster
catalog in etcd) for `controller` and `all`, Node (ctrl/csi_node.py: the
kernel's NVMe/TCP initiator, mounts) for `node` and `all`. The services are
wired from the descriptors of ctrl/csi.proto (csi_pb2, generated at build
time): a method a service does not define answers UNIMPLEMENTED, a `Fail`
raised by one answers its gRPC code, etcd down answers UNAVAILABLE.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures

import grpc
from google.protobuf import wrappers_pb2

from .. import __version__
from . import csi_pb2 as pb
from . import etcd

log = logging.getLogger("srrs.csi")

DRIVER = "csi.srrs.io"
TOPOLOGY_ZONE = "topology.csi.srrs.io/zone"   # the segment key of a node's and a volume's zone
Code = grpc.StatusCode


class Fail(Exception):
    """A refused call: its gRPC status code and message (the CSI spec's codes)."""

    def __init__(self, code: grpc.StatusCode, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg


def need(value, what: str):
    """A REQUIRED field: INVALID_ARGUMENT when it is empty."""
    if not value:
        raise Fail(Code.INVALID_ARGUMENT, f"{what} is required")
    return value


class Busy:
    """One call at a time per volume: the CO may repeat a call while the first
    still runs (after its own timeout); the repeat gets ABORTED and retries."""

    def __init__(self):
        self._lock, self._held = threading.Lock(), set()

    def __call__(self, key: str) -> "Busy":
        with self._lock:
            if key in self._held:
                raise Fail(Code.ABORTED, f"an operation on {key} is in progress")
            self._held.add(key)
        return _Held(self, key)

    def release(self, key: str) -> None:
        with self._lock:
            self._held.discard(key)


class _Held:
    def __init__(self, busy: Busy, key: str):
        self.busy, self.key = busy, key

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.busy.release(self.key)


# ---- Identity ----------------------------------------------------------------------

class Identity:
    def __init__(self, controller=None, node=None):
        self.controller, self.node = controller, node

    def GetPluginInfo(self, req):
        return pb.GetPluginInfoResponse(name=DRIVER, vendor_version=__version__)

    def GetPluginCapabilities(self, req):
        S, E = pb.PluginCapability.Service, pb.PluginCapability.VolumeExpansion
        caps = [pb.PluginCapability(service=S(type=S.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
                pb.PluginCapability(volume_expansion=E(type=E.ONLINE))]
        if self.controller is not None:
            caps.insert(0, pb.PluginCapability(service=S(type=S.CONTROLLER_SERVICE)))
        return pb.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(self, req):
        """ready: false while a service cannot work (etcd or the local controller
        unreachable); the liveness probe and the sidecars wait on it."""
        ready = all(s.ready() for s in (self.controller, self.node) if s is not None)
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=ready))


# ---- the server ------------------------------------------------------------------

def _handler(service: str, impl) -> grpc.GenericRpcHandler:
    """Every method of the service in csi.proto, served by impl's method of that name."""
    handlers = {}
    for m in pb.DESCRIPTOR.services_by_name[service].methods:
        req, resp = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
        handlers[m.name] = grpc.unary_unary_rpc_method_handler(
            _wrap(f"{service}.{m.name}", getattr(impl, m.name, None)),
            request_deserializer=req.FromString, response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler(f"csi.v1.{service}", handlers)


def _wrap(name: str, fn):
    def call(req, ctx):
        if fn is None:
            ctx.abort(Code.UNIMPLEMENTED, f"{name} is not implemented by SRRS")
        try:
            return fn(req)
        except Fail as e:
            log.info("%s: %s: %s", name, e.code.name, e.msg)
            ctx.abort(e.code, e.msg)
        except etcd.EtcdError as e:
            log.warning("%s: etcd: %s", name, e)
            ctx.abort(Code.UNAVAILABLE, f"etcd: {e}")
        except Exception as e:      # a bug of ours: say what, keep serving
            log.exception("%s failed", name)
            ctx.abort(Code.INTERNAL, f"{type(e).__name__}: {e}")
    return call


def socket_path(endpoint: str) -> str:
    """unix:///path, unix:/path or a plain path -> the socket's path."""
    for pre in ("unix://", "unix:"):
        if endpoint.startswith(pre):
            endpoint = endpoint[len(pre):]
            break
    if not endpoint.startswith("/"):
        raise ValueError(f"{endpoint!r}: the endpoint must be unix:///ABSOLUTE/PATH")
    return endpoint


def grpc_target(endpoint: str) -> str:
    """The gRPC address of an endpoint: tcp://HOST:PORT (the CSI spec allows
    it; it has no authentication: tests/csi/guest_node.py reaches a node
    plugin inside a VM through a forwarded port) or a Unix socket (socket_path)."""
    if endpoint.startswith("tcp://"):
        return endpoint[len("tcp://"):]
    return "unix:" + socket_path(endpoint)


class Server:
    """The gRPC server of the given services on a Unix socket (a stale socket
    file of a killed plugin is replaced) or a TCP address."""

    def __init__(self, endpoint: str, controller=None, node=None, workers: int = 8):
        self.target = grpc_target(endpoint)
        self.path = self.target[len("unix:"):] if self.target.startswith("unix:") else ""
        self.identity = Identity(controller, node)
        self.controller, self.node = controller, node
        if self.path:
            os.makedirs(os.path.dirname(self.path) or "/", exist_ok=True)
            if os.path.exists(self.path):
                os.unlink(self.path)
        # no SO_REUSEPORT: a second plugin on the same TCP port fails instead of sharing it
        self.grpc = grpc.server(futures.ThreadPoolExecutor(workers, thread_name_prefix="srrs-csi"),
                                options=[("grpc.so_reuseport", 0)])
        self.grpc.add_generic_rpc_handlers([_handler("Identity", self.identity)] + [
            _handler(n, s) for n, s in (("Controller", controller), ("Node", node))
            if s is not None])
        if not self.grpc.add_insecure_port(self.target):
            raise OSError(f"cannot listen on {self.target}")

    def start(self) -> "Server":
        self.grpc.start()
        log.info("csi: serving %s on %s", ", ".join(
            n for n, s in (("identity", 1), ("controller", self.controller), ("node", self.node))
            if s), self.target)
        return self

    def stop(self, grace: float = 2.0) -> None:
        self.grpc.stop(grace).wait(grace + 1)
        for s in (self.controller, self.node):
            if s is not None and hasattr(s, "close"):
                s.close()


class Client:
    """A CSI client over the plugin's socket (tests, `srrs csi-call`-like
    scripts): call("Controller", "CreateVolume", name=..., ...) -> the response
    message; a refusal raises grpc.RpcError (.code(), .details())."""

    def __init__(self, endpoint: str, timeout: float = 30.0):
        target = grpc_target(endpoint)
        # a CSI endpoint is the node's own or a test's forwarded port: never via a proxy
        self.channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
        self.timeout = timeout
        self._stubs: dict = {}

    def call(self, service: str, method: str, request=None, **fields):
        key = (service, method)
        if key not in self._stubs:
            m = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
            self._stubs[key] = (getattr(pb, m.input_type.name), self.channel.unary_unary(
                f"/csi.v1.{service}/{method}",
                request_serializer=getattr(pb, m.input_type.name).SerializeToString,
                response_deserializer=getattr(pb, m.output_type.name).FromString))
        cls, stub = self._stubs[key]
        return stub(request if request is not None else cls(**fields), timeout=self.timeout)

    def close(self) -> None:
        self.channel.close()


# ---- `srrs csi` ----------------------------------------------------------------------

def _catalog(args):
    from .cluster_catalog import DEFAULT_PREFIX, Catalog

    if args.config:
        from . import config as cfg

        cc = cfg.load(args.config).cluster
        if cc is None:
            raise ValueError(f"{args.config}: no [cluster] section")
        client = etcd.Client(list(cc.etcd), timeout=cc.timeout_s, ca_cert=cc.ca_cert or None,
                             cert=cc.cert or None, key=cc.key or None, user=cc.user or None,
                             password=cc.password())
        return Catalog(client, args.prefix or cc.prefix)
    if not args.etcd:
        raise ValueError("controller mode needs --etcd URL or --config with a [cluster] section")
    return Catalog(etcd.Client(args.etcd), args.prefix or DEFAULT_PREFIX)


def build(args) -> Server:
    from .csi_controller import ControllerService
    from .csi_node import NodeService

    ctl = node = None
    if args.mode in ("controller", "all"):
        ctl = ControllerService(_catalog(args), default_tenant=args.tenant,
                                controller_socket=args.controller_socket)
    if args.mode in ("node", "all"):
        node = NodeService(node_id=args.node_id, zone=args.zone,
                           connect_s=getattr(args, "connect_timeout", None))
    return Server(args.endpoint, ctl, node)


def main(args) -> int:
    from . import logs

    logs.setup(args.log_level, args.log_format, tag="srrs-csi")
    try:
        server = build(args).start()
    except (ValueError, OSError) as e:
        log.error("csi: %s", e)
        return 2
    done = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: done.set())
    done.wait()
    server.stop()
    return 0
