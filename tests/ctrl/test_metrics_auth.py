"""Who may scrape `[metrics]` (docs/architecture.md, Metrics; Security): a
bearer token (401 without it, compared in constant time), HTTPS with a client
certificate its CA signed (no TLS session without one), a bounded number of
connections; a listen address beyond loopback needs one of the two or
`insecure = true`. Real HTTP(S) clients (urllib, ssl) against the server; a
real controller for the wiring."""

import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from srrs.ctrl import metrics_http
from srrs.ctrl.config import loads as load_config
from srrs.ctrl.metrics_config import MetricsConfig
from srrs.ctrl.metrics_config import parse as parse_metrics
from srrs.schema import SchemaError

from .helpers import Controller

TOKEN = b"s3cret-token-0123456789abcdef"


class _One:
    def collect(self):
        g = GaugeMetricFamily("srrs_test_up", "one gauge")
        g.add_metric([], 1)
        yield g


def _registry():
    r = CollectorRegistry(auto_describe=False)
    r.register(_One())
    return r


def _private_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return str(path)


def _get(url, token=None, ctx=None):
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _serve(conf):
    s = metrics_http.MetricsHTTP(conf, _registry())
    host, port = s.server_address[:2]
    return s, f"{s.scheme}://{host}:{port}/metrics"


def test_config_refuses_an_open_endpoint_beyond_loopback(tmp_path):
    tok = _private_file(tmp_path / "tok", TOKEN + b"\n")
    parse_metrics({"listen": "127.0.0.1:0"})                        # loopback: as before
    parse_metrics({"listen": "[::1]:0"})
    with pytest.raises(SchemaError, match="scrapers must prove themselves"):
        parse_metrics({"listen": "0.0.0.0:9464"})
    parse_metrics({"listen": "0.0.0.0:9464", "insecure": True})
    parse_metrics({"listen": "0.0.0.0:9464", "token_file": tok})
    with pytest.raises(SchemaError, match="remove one or the other"):
        parse_metrics({"listen": "0.0.0.0:9464", "token_file": tok, "insecure": True})
    os.chmod(tok, 0o644)
    with pytest.raises(SchemaError, match="readable by others"):
        parse_metrics({"token_file": tok})
    short = _private_file(tmp_path / "short", b"abc")
    with pytest.raises(SchemaError, match="not a token"):
        parse_metrics({"token_file": short})
    with pytest.raises(SchemaError, match="go together"):
        parse_metrics({"tls_cert": tok})
    with pytest.raises(SchemaError, match="needs HTTPS"):
        parse_metrics({"client_ca": tok})
    # the whole config names the section and the key
    with pytest.raises(ValueError, match=r"metrics.*listen"):
        load_config('[controller]\nname = "c"\n[metrics]\nlisten = "0.0.0.0:1"\n')


def test_bearer_token(tmp_path):
    conf = MetricsConfig(token_file=_private_file(tmp_path / "tok", TOKEN))
    s, url = _serve(conf)
    try:
        assert _get(url)[0] == 401
        assert _get(url, "wrong-token-0123456789")[0] == 401
        assert _get(url, TOKEN.decode() + "x")[0] == 401
        st, body = _get(url, TOKEN.decode())
        assert st == 200 and "srrs_test_up 1.0" in body
        assert s.refused == 3 and s.auth == "token"
    finally:
        s.close()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(d):
    """A CA, a server certificate for 127.0.0.1, a client certificate of the
    CA and one of another CA (self-signed)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=scrapers",
             "-days", "2", cwd=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "srv.key", "-out", "srv.crt", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2", cwd=d)
    for name, ca in (("cli", "ca"), ("other", None)):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        if ca:
            _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", cwd=d)
        else:
            _openssl("x509", "-req", "-in", f"{name}.csr", "-signkey", f"{name}.key",
                     "-out", f"{name}.crt", "-days", "2", cwd=d)
    for k in ("ca.key", "srv.key", "cli.key", "other.key"):
        os.chmod(d / k, 0o600)


def _client_ctx(d, cert=None):
    ctx = ssl.create_default_context(cafile=str(d / "srv.crt"))
    if cert:
        ctx.load_cert_chain(str(d / f"{cert}.crt"), str(d / f"{cert}.key"))
    return ctx


def test_https_with_client_certificates(tmp_path):
    _pki(tmp_path)
    conf = parse_metrics({"listen": "127.0.0.1:0", "tls_cert": str(tmp_path / "srv.crt"),
                          "tls_key": str(tmp_path / "srv.key"),
                          "client_ca": str(tmp_path / "ca.crt")})
    s, url = _serve(conf)
    try:
        assert url.startswith("https://") and s.auth == "client-cert"
        st, body = _get(url, ctx=_client_ctx(tmp_path, "cli"))
        assert st == 200 and "srrs_test_up" in body
        for who in (None, "other"):
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                _get(url, ctx=_client_ctx(tmp_path, who))
        # plain HTTP to the HTTPS port: no answer with figures
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _get(url.replace("https://", "http://"))
        st, _ = _get(url, ctx=_client_ctx(tmp_path, "cli"))      # still serving
        assert st == 200
    finally:
        s.close()


def test_connections_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_http, "IO_TIMEOUT_S", 1.0)
    s, url = _serve(MetricsConfig(token_file=_private_file(tmp_path / "tok", TOKEN)))
    host, port = s.server_address[:2]
    idle = []
    try:
        for _ in range(metrics_http.MAX_CONNS):
            idle.append(socket.create_connection((host, port), timeout=5))
        time.sleep(0.2)
        extra = socket.create_connection((host, port), timeout=5)
        assert extra.recv(1) == b""            # closed at accept: no slot
        extra.close()
        time.sleep(1.5)                          # the idle ones time out
        st, _ = _get(url, TOKEN.decode())
        assert st == 200
    finally:
        for c in idle:
            c.close()
        s.close()


def test_a_controller_asks_for_the_token(tmp_path):
    tok = _private_file(tmp_path / "tok", TOKEN)
    conf = tmp_path / "c.toml"
    sock = str(tmp_path / "c.sock")
    conf.write_text(f"""
[controller]
name = "m"
rpc_socket = "{sock}"

[metrics]
listen = "127.0.0.1:0"
token_file = "{tok}"
""")
    c = Controller(str(conf), sock)
    try:
        st = c.rpc("status")["metrics"]
        assert st["auth"] == "token" and st["scheme"] == "http", st
        url = f"http://{st['listen']}/metrics"
        assert _get(url)[0] == 401
        code, body = _get(url, TOKEN.decode())
        assert code == 200 and "srrs_up" in body
        assert c.rpc("status")["metrics"]["refused"] == 1
    finally:
        c.kill()
