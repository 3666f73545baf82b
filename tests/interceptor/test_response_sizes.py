"""resp_bytes of responses without Content-Length: chunked and close-delimited bodies are counted
as the caller reads them (decoded size, framing not counted), and their event is never lost:
it is held until the body ends, is closed, the connection sends again, or the process exits.

A real HTTP server on 127.0.0.1 sends the bodies: `/chunked/N` in chunks of uneven sizes (one
with a chunk extension, then a trailer), `/close/N` with neither Content-Length nor chunking,
closing the connection to end the body.
"""
from __future__ import annotations

import gc
import http.client
import os
import http.server
import threading
import urllib.request

import pytest

from interceptor import http_wrappers
from interceptor_fixtures import captured, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST

SIZES = (1, 7, 100, 4096, 3, 16384)  # chunk sizes, repeated until the body is complete


def _body(n: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(n))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        kind, _, n = self.path.partition("?")[0].strip("/").partition("/")
        body = _body(int(n or 0))
        if kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            i = k = 0
            while i < len(body):
                piece = body[i:i + SIZES[k % len(SIZES)]]
                ext = b";name=value" if k == 2 else b""
                self.wfile.write(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
                i += len(piece)
                k += 1
            self.wfile.write(b"0\r\nX-Checksum: 1\r\n\r\n")
        elif kind == "close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the tests that leave a body unread hang up on purpose


@pytest.fixture(scope="module")
def body_server():
    server = _Server((HOST, 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _requests():
    return pytest.importorskip("requests")


def _only(captured, path):
    events = [e for e in captured.events("http") if e.url_path == path]
    assert len(events) == 1, events
    return events[0]


@pytest.mark.parametrize("n", [0, 1, 5000, 70000])
def test_http_client_chunked_counts_the_decoded_body(captured, servers, body_server, n):
    conn = http.client.HTTPConnection(HOST, body_server)
    conn.request("GET", f"/chunked/{n}")
    resp = conn.getresponse()
    assert resp.chunked and resp.length is None
    data = resp.read()
    assert data == _body(n)
    conn.request("GET", "/length/10")  # the same kept-alive connection goes on as before
    assert conn.getresponse().read() == _body(10)
    conn.close()
    e = _only(captured, f"/chunked/{n}")
    assert (e.resp_bytes, e.status, e.error) == (n, "200", "")
    assert e.duration_ms > 0 and e.dst_port == body_server
    assert _only(captured, "/length/10").resp_bytes == 10


def test_http_client_chunked_read_in_pieces(captured, servers, body_server):
    """read(amt), readinto, read1 and readline split the chunks anywhere: the count stays exact."""
    n = 30000
    conn = http.client.HTTPConnection(HOST, body_server)
    got = bytearray()
    for path, reader in ((f"/chunked/{n}", "read"), (f"/chunked/{n}?r=into", "readinto"),
                         (f"/chunked/{n}?r=1", "read1"), (f"/chunked/{n}?r=line", "readline")):
        conn.request("GET", path)
        resp = conn.getresponse()
        got.clear()
        while True:
            if reader == "read":
                piece = resp.read(333)
            elif reader == "readinto":
                buf = bytearray(1000)
                piece = bytes(buf[:resp.readinto(buf)])
            elif reader == "read1":
                piece = resp.read1(777)
            else:
                piece = resp.readline()
            if not piece:
                break
            got += piece
        assert bytes(got) == _body(n)
    conn.close()
    events = [e for e in captured.events("http") if e.url_path.startswith("/chunked/")]
    assert [e.resp_bytes for e in events] == [n] * 4


def test_http_client_close_delimited(captured, servers, body_server):
    conn = http.client.HTTPConnection(HOST, body_server)
    conn.request("GET", "/close/12345")
    resp = conn.getresponse()
    assert resp.length is None and not resp.chunked
    assert resp.read() == _body(12345)
    conn.close()
    assert _only(captured, "/close/12345").resp_bytes == 12345


def test_urllib_chunked_and_close_delimited(captured, servers, body_server):
    for path in ("/chunked/4321", "/close/999"):
        with urllib.request.urlopen(f"http://{HOST}:{body_server}{path}") as r:
            assert r.read() == _body(int(path.rsplit("/", 1)[1]))
    assert _only(captured, "/chunked/4321").resp_bytes == 4321
    assert _only(captured, "/close/999").resp_bytes == 999


def test_requests_chunked_and_close_delimited(captured, servers, body_server):
    """urllib3 parses the chunks itself, from the response's fp: counted all the same."""
    requests = _requests()
    base = f"http://{HOST}:{body_server}"
    with requests.Session() as s:
        assert s.get(f"{base}/chunked/70001").content == _body(70001)
        assert s.get(f"{base}/length/5").content == _body(5)        # same pooled connection
        r = s.get(f"{base}/chunked/9000", stream=True)
        assert b"".join(r.iter_content(chunk_size=100)) == _body(9000)
        r = s.get(f"{base}/chunked/9001", stream=True)
        assert b"".join(r.raw.stream(1000, decode_content=False)) == _body(9001)
        assert s.get(f"{base}/close/7777").content == _body(7777)
    assert _only(captured, "/chunked/70001").resp_bytes == 70001
    assert _only(captured, "/length/5").resp_bytes == 5
    assert _only(captured, "/chunked/9000").resp_bytes == 9000
    assert _only(captured, "/chunked/9001").resp_bytes == 9001
    assert _only(captured, "/close/7777").resp_bytes == 7777


def test_unread_body_is_recorded_when_closed_or_collected(captured, servers, body_server):
    """The event of a body nobody reads to its end is held, never lost: closing the response (or
    the connection), collecting it, or sending the next request on the connection ends it."""
    conn = http.client.HTTPConnection(HOST, body_server)
    conn.request("GET", "/chunked/20000")
    resp = conn.getresponse()
    assert len(resp.read(150)) == 150
    assert not [e for e in captured.events("http") if e.url_path == "/chunked/20000"]  # held
    resp.close()
    assert _only(captured, "/chunked/20000").resp_bytes == 150
    conn.close()

    conn = http.client.HTTPConnection(HOST, body_server)
    conn.request("GET", "/close/5000")
    resp = conn.getresponse()
    resp.read(10)
    del resp
    gc.collect()
    assert _only(captured, "/close/5000").resp_bytes == 10
    conn.close()

    requests = _requests()
    r = requests.get(f"http://{HOST}:{body_server}/chunked/8000", stream=True)
    assert len(r.raw.read(8)) == 8
    r.close()
    assert _only(captured, "/chunked/8000").resp_bytes == 8


def test_held_event_is_flushed_at_exit(captured, servers, body_server):
    """A response still open at interpreter exit: its event goes out with the bytes read so far
    (_flush_held is the atexit handler, registered after the sink's flush so it runs first)."""
    conn = http.client.HTTPConnection(HOST, body_server)
    conn.request("GET", "/chunked/6000")
    resp = conn.getresponse()
    assert len(resp.read(4200)) == 4200
    http_wrappers._flush_held()
    assert _only(captured, "/chunked/6000").resp_bytes == 4200
    assert resp.read() == _body(6000)[4200:]  # the caller's reads are untouched
    resp.close()
    conn.close()
    assert _only(captured, "/chunked/6000").resp_bytes == 4200  # once, not twice


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64, 1000, 100000])
def test_counter_parses_chunk_framing_split_anywhere(captured, servers, step):
    """The counter's framing parser on its own: the chunked bytes of the server above, consumed in
    reads that ignore chunk boundaries, count exactly the decoded body."""
    import io

    from interceptor.capture import Record

    body = _body(25000)
    wire = bytearray()
    i = k = 0
    while i < len(body):
        piece = body[i:i + SIZES[k % len(SIZES)]]
        wire += b"%x%s\r\n%s\r\n" % (len(piece), b";x=1" if k == 2 else b"", piece)
        i, k = i + len(piece), k + 1
    wire += b"0\r\nX-Checksum: 1\r\n\r\n" + b"NEXT RESPONSE"  # bytes past the body are not counted
    rec = Record("http", "http", "GET", HOST, 80)
    counter = http_wrappers._BodyCounter(io.BytesIO(bytes(wire)), rec, chunked=True)
    while counter.read(step):
        pass
    assert rec.resp_bytes == len(body)
    counter.close()
    (e,) = captured.events("http")
    assert e.resp_bytes == len(body)


def _child_leaves_a_body_open(port):
    conn = http.client.HTTPConnection(HOST, port)
    conn.request("GET", "/chunked/3000")
    resp = conn.getresponse()
    resp.read(1234)
    _child_leaves_a_body_open.kept = (conn, resp)  # still open when multiprocessing calls os._exit


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs the fork start method")
def test_multiprocessing_child_flushes_held_events_before_os_exit(tmp_path, servers, body_server):
    import multiprocessing

    import interceptor
    from interceptor import Sink
    from ledger.sink import LedgerWriter

    writer = LedgerWriter(str(tmp_path / "ledger.sqlite"), str(tmp_path / "keys"))
    sink = Sink(writer, linger_s=0)
    previous = interceptor.use_sink(sink)
    try:
        p = multiprocessing.get_context("fork").Process(target=_child_leaves_a_body_open, args=(body_server,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert sink.flush(5)
        rows = [r for r in writer.ledger.rows() if r["url_path"] == "/chunked/3000"]
        assert len(rows) == 1 and rows[0]["pid"] == p.pid and rows[0]["resp_bytes"] == 1234
    finally:
        interceptor.use_sink(previous)
        sink.close(2)
