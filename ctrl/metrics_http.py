"""The `[metrics]` endpoint's HTTP(S) server (docs/architecture.md, Metrics):
the client library's WSGI exposition behind a scraper check. A scrape must
carry the bearer token of `token_file` (compared in constant time) and, with
`client_ca`, come over TLS with a client certificate that CA signed;
otherwise it gets 401 (or no TLS session) and nothing else. What a stranger
can hold is bounded: MAX_CONNS connections at once (more are closed at
accept), each with IO_TIMEOUT_S for its TLS handshake and request."""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client.exposition import make_wsgi_app

from .metrics_config import MetricsConfig, split_host_port

log = logging.getLogger("srrs")

MAX_CONNS = 16
IO_TIMEOUT_S = 10.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: Optional[ssl.SSLContext] = None

    def __init__(self, addr: Tuple[str, int], handler: type):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.slots = threading.BoundedSemaphore(MAX_CONNS)
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)      # full: closed at once
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # in the connection's own thread: a slow or silent client holds only it
        request.settimeout(IO_TIMEOUT_S)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.debug("metrics: TLS refused %s: %s", client_address, e)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: connection from %s ended with an error", client_address)


def _tls(conf: MetricsConfig) -> Optional[ssl.SSLContext]:
    if not conf.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(conf.tls_cert, conf.tls_key)
    if conf.client_ca:
        ctx.load_verify_locations(conf.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _guard(app: Callable, token: Optional[bytes], refused: Callable[[], None]) -> Callable:
    """app behind the bearer token check (None: no token asked for)."""
    if token is None:
        return app

    def guarded(environ: dict, start_response: Callable) -> Any:
        got = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, cred = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(cred.strip().encode(), token):
            refused()
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="srrs"')])
            return [b"a bearer token is required ([metrics] token_file)\n"]
        return app(environ, start_response)

    return guarded


class MetricsHTTP:
    """The server thread; `refused` counts scrapes turned away (bad token)."""

    def __init__(self, conf: MetricsConfig, registry: Any):
        self.refused = 0
        host, port = split_host_port(conf.listen)
        try:
            self.httpd = _Server((host, port), _Quiet)
        except OSError as e:
            raise OSError(e.errno, f"[metrics] listen {conf.listen}: {e.strerror or e}") from None
        try:
            self.httpd.tls = _tls(conf)
        except (ssl.SSLError, OSError) as e:
            self.httpd.server_close()
            raise OSError(getattr(e, "errno", 0) or 0, f"[metrics] TLS: {e}") from None
        self.httpd.set_app(_guard(make_wsgi_app(registry), conf.token(), self._refuse))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)
        self.thread.start()
        self.auth = "+".join(k for k, on in (("token", conf.token_file),
                                             ("client-cert", conf.client_ca)) if on) or "none"
        self.scheme = "https" if conf.tls_cert else "http"

    def _refuse(self) -> None:
        self.refused += 1

    @property
    def server_address(self) -> tuple:
        return self.httpd.server_address

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
