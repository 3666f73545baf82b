"""Hostile calls through the interceptor: odd URLs, header shapes and payloads, unix sockets, UDP,
threads that end right after their call, a daemon thread calling while the interpreter exits, and
a call from an atexit handler. Each call must behave exactly as without the auditor (the program
runs twice, bare and audited, and the outcomes are compared), the process must exit cleanly, and
every audited HTTP call must be a row in the ledger or counted in a gap row.
"""
from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading

import pytest

from ledger import Ledger
from verifier.verify import verify_ledger

from .servers import HTTPServerProcess

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# cases where the audited call does not behave as the bare one; each has an xfail test below
KNOWN_BUGS: set[str] = set()  # body_int fixed in interceptor/http_wrappers.py _prepare_body


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"pong:" + self.request.recv(10))


@pytest.fixture
def unix_server(tmp_path):
    path = str(tmp_path / "echo.sock")
    srv = socketserver.ThreadingUnixStreamServer(path, _Echo)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield path
    srv.shutdown()
    srv.server_close()


def _run(args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(HERE, "hostile_program.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_odd_calls_behave_as_without_the_auditor(tmp_path, unix_server):
    server = HTTPServerProcess()
    try:
        bare = _run([str(server.port), unix_server])
        ledger, key_dir = str(tmp_path / "l.sqlite"), str(tmp_path / "keys")
        audited = _run([str(server.port), unix_server, ledger, key_dir])
    finally:
        server.close()
    for p in (bare, audited):
        assert p.returncode == 0, p.stderr[-2000:]
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
    b_lines, a_lines = bare.stdout.splitlines(), audited.stdout.splitlines()
    b, a = json.loads(b_lines[0]), json.loads(a_lines[0])
    assert set(a) == set(b)
    diff = {k: (b[k], a[k]) for k in b if a[k] != b[k] and k not in KNOWN_BUGS}
    assert not diff, diff
    assert json.loads(b_lines[-1]) == json.loads(a_lines[-1]) == {"at_exit": "200 b'ok:/c/atexit'"}

    with Ledger.open(ledger, key_dir=key_dir) as led:
        rows = list(led.rows())
    v = verify_ledger(ledger)
    assert v.valid, v.message
    http_rows = [r for r in rows if r["channel"] == "http"]
    gaps = sum(int(dict(x.split("=", 1) for x in r["url_path"].split(";"))["dropped"])
               for r in rows if r["channel"] == "audit" and r["method"] == "gap")
    paths = [r["url_path"] for r in http_rows]
    # every case that reached the wire is a row (or a gap): count the ones we can name
    named = {"/c/hugeq", "/c/bytesh", "/c/duph", "/c/hugeh", "/c/inth", "/c/latinh", "/c/none", "/c/str",
             "/c/bytes", "/c/bytearray", "/c/mv", "/c/gen", "/c/file", "/c/bytesio", "/c/list", "/c/atexit"}
    missing = {p for p in named if p not in paths}
    assert len(missing) <= gaps, f"not recorded and not counted: {sorted(missing)}"
    assert sum(p.startswith("/c/thread/") for p in paths) + gaps >= 20
    for r in http_rows:  # names only: no header value, no query value, no body reached a row
        assert "v" * 100 not in r["header_names"] and "x" * 100 not in r["url_path"]
        assert "caf" not in r["header_names"] and "v1" not in r["header_names"].split()
        assert r["query_keys"] == "" or "=" not in r["query_keys"]
    sockets = [r for r in rows if r["channel"] == "socket"]
    assert any(r["protocol"] == "udp" and r["dst_port"] == 9 for r in sockets), "the UDP sendto was not recorded"
    assert not any(unix_server in (r["host"] + r["dst_ip"] + r["url_path"]) for r in rows), \
        "a unix socket path is not network egress"


def test_regression_non_iterable_body_raises_what_http_client_raises():
    import http.client

    import interceptor
    from interceptor import NullWriter, Sink

    interceptor.install(sink=Sink(NullWriter()))
    server = HTTPServerProcess()
    try:
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        with pytest.raises(TypeError) as info:
            c.request("POST", "/c/int", body=42)
        c.close()
    finally:
        server.close()
    assert str(info.value).startswith("message_body should be a bytes-like object or an iterable")
