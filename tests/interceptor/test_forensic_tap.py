"""Forensic body tap (interceptor/forensic.py): bodies go to the tap, never to the sink or ledger.

A real 127.0.0.1 http.server answers every request with a response marker and the request body
echoed back; every body carries a unique canary. Tap off: nothing is handed out and no canary is
in the ledger. Tap on: the callback gets the request body and what the caller read of the
response, and still no canary reaches the ledger file or its -wal. A raising tap changes nothing
for the audited call.
"""
from __future__ import annotations

import http.client
import http.server
import io
import socketserver
import threading
import urllib.request
import uuid

import pytest

import interceptor
from interceptor import forensic

from interceptor_fixtures import ledger_sink, servers  # noqa: F401  (fixtures)

HOST = "127.0.0.1"


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    marker = b""

    def _reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        body = b"RESP:" + type(self).marker + b":" + data
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    server_bind = socketserver.TCPServer.server_bind  # no getfqdn()


@pytest.fixture
def echo():
    tag = uuid.uuid4().hex[:12]
    handler = type("Echo", (_Echo,), {"marker": f"CANARYRESP{tag}".encode()})
    server = _Server((HOST, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], tag
    server.shutdown()
    server.server_close()


@pytest.fixture
def tap():
    got = []
    forensic.set_body_tap(lambda meta, req, resp: got.append((meta, req, resp)),
                          context=lambda: "ctx-db")
    yield got
    forensic.set_body_tap(None)


def _calls(port, tag):
    """Bytes body (urllib), streamed body (http.client file), a partial read, a HEAD."""
    body = f"CANARYREQ{tag}".encode()
    out = urllib.request.urlopen(f"http://{HOST}:{port}/post?x=1", data=body).read()
    conn = http.client.HTTPConnection(HOST, port)
    conn.request("PUT", "/stream", body=io.BytesIO(body * 3),
                 headers={"Content-Length": str(len(body) * 3)})
    resp = conn.getresponse()
    partial = resp.read(5)            # the caller reads only 5 bytes, then closes
    resp.close()
    conn.request("HEAD", "/head")
    conn.getresponse().read()
    conn.close()
    return out, partial


def _evidence(path):
    data = b""
    for p in (path, path + "-wal"):
        try:
            data += open(p, "rb").read()
        except FileNotFoundError:
            pass
    return data


def _assert_no_canary(sink, writer, path, tag):
    assert sink.flush(10)
    rows = [r for r in writer.ledger.rows() if r["channel"] == "http"]
    assert {r["method"] for r in rows} >= {"POST", "PUT", "HEAD"}  # the calls were recorded
    sink.close(5)
    data = _evidence(path)
    assert len(data) > 4096
    for marker in (f"CANARYREQ{tag}", f"CANARYRESP{tag}"):
        assert marker.encode() not in data and marker.encode("utf-16-le") not in data


def test_tap_off_hands_out_nothing(ledger_sink, echo):
    port, tag = echo
    assert forensic.body_tap() is None
    sink, writer, path, _ = ledger_sink()
    out, partial = _calls(port, tag)
    assert out == f"RESP:CANARYRESP{tag}:CANARYREQ{tag}".encode() and partial == b"RESP:"
    _assert_no_canary(sink, writer, path, tag)


def test_tap_on_gets_bodies_ledger_still_clean(ledger_sink, echo, tap):
    port, tag = echo
    sink, writer, path, _ = ledger_sink()
    out, partial = _calls(port, tag)
    # the caller got exactly what it would have without the tap
    assert out == f"RESP:CANARYRESP{tag}:CANARYREQ{tag}".encode() and partial == b"RESP:"
    by_method = {meta["method"]: (meta, req, resp) for meta, req, resp in tap}
    assert set(by_method) == {"POST", "PUT", "HEAD"}
    meta, req, resp = by_method["POST"]
    assert req == f"CANARYREQ{tag}".encode() and resp == out
    assert (meta["host"], meta["port"], meta["url_path"], meta["context"]) == (HOST, port, "/post", "ctx-db")
    assert meta["module"] and meta["ts"] > 0 and meta["request_bytes"] == len(req)
    assert not meta["request_truncated"] and not meta["response_truncated"]
    meta, req, resp = by_method["PUT"]
    assert req == f"CANARYREQ{tag}".encode() * 3   # streamed body, copied as it went by
    assert resp == b"RESP:"                          # only what the caller read
    meta, req, resp = by_method["HEAD"]
    assert (req, resp) == (b"", b"")
    _assert_no_canary(sink, writer, path, tag)


def test_bodies_are_bounded(servers, echo):
    port, tag = echo
    got = []
    forensic.set_body_tap(lambda *a: got.append(a), max_bytes=10)
    try:
        out = urllib.request.urlopen(f"http://{HOST}:{port}/big", data=b"x" * 1000).read()
    finally:
        forensic.set_body_tap(None)
    assert len(out) == len(f"RESP:CANARYRESP{tag}:".encode()) + 1000
    meta, req, resp = got[0]
    assert (req, resp) == (b"x" * 10, out[:10])
    assert meta["request_truncated"] and meta["response_truncated"]
    assert (meta["request_bytes"], meta["response_bytes"]) == (1000, len(out))


def test_failed_call_hands_over_the_request_body(servers):
    from interceptor_servers import free_port

    got = []
    forensic.set_body_tap(lambda *a: got.append(a))
    try:
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{HOST}:{free_port()}/x", data=b"abc", timeout=5)
    finally:
        forensic.set_body_tap(None)
    # a refused connect fails before any body is sent: whatever was captured has no response
    assert all(resp is None for _, _, resp in got)


def test_raising_tap_leaves_the_call_alone(ledger_sink, echo):
    port, tag = echo
    sink, writer, path, _ = ledger_sink()

    def bad(meta, req, resp):
        raise RuntimeError("tap broke")

    def bad_context():
        raise ValueError("context broke")

    before = forensic.faults
    guard_before = interceptor.GUARD.faults
    forensic.set_body_tap(bad, context=bad_context)
    try:
        out, partial = _calls(port, tag)
    finally:
        forensic.set_body_tap(None)
    assert out == f"RESP:CANARYRESP{tag}:CANARYREQ{tag}".encode() and partial == b"RESP:"
    assert forensic.faults >= before + 6      # 3 contexts + 3 taps, all swallowed
    assert forensic.last_fault in ("RuntimeError", "ValueError")
    assert interceptor.GUARD.faults == guard_before   # no event was missed: no gap row
    _assert_no_canary(sink, writer, path, tag)


def test_set_body_tap_returns_previous():
    def a(*_):
        pass

    assert forensic.set_body_tap(a) is None
    assert forensic.body_tap() is a
    assert forensic.set_body_tap(None) is a
    assert forensic.TAP is None
