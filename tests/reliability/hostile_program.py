"""Odd calls, run twice by test_hostile_calls.py: bare, and under the interceptor with a ledger sink.

    python hostile_program.py PORT UNIX_SOCKET [LEDGER KEY_DIR]

Prints one JSON object {case: outcome}; an outcome is the call's result or its exception, as the
caller sees it. The last call is made from an atexit handler, during interpreter shutdown, and a
daemon thread is still calling when the interpreter exits.
"""
import atexit
import http.client
import io
import json
import os
import socket
import sys
import tempfile
import threading

port, unix_path = int(sys.argv[1]), sys.argv[2]
if len(sys.argv) > 3:
    import interceptor
    from ledger.sink import LedgerWriter

    interceptor.install(sink=interceptor.Sink(LedgerWriter(sys.argv[3], sys.argv[4])))


def get(path, method="GET", body=None, headers=None, host="127.0.0.1", p=None, **kw):
    c = http.client.HTTPConnection(host, p or port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {}, **kw)
        r = c.getresponse()
        return f"{r.status} {r.read()[:60]!r}"
    finally:
        c.close()


def put_headers(path, pairs):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest("GET", path)
        for k, v in pairs:
            c.putheader(k, *v) if isinstance(v, tuple) else c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return f"{r.status} {r.read()[:60]!r}"
    finally:
        c.close()


def tunnel(host):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.set_tunnel(host, 443)
    try:
        c.request("GET", "/c/idna")
        return str(c.getresponse().status)
    finally:
        c.close()


def gen():
    yield b"a" * 10
    yield b"b" * 10


def unix_call():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(unix_path)
    s.sendall(b"ping")
    data = s.recv(10)
    s.close()
    return repr(data)


def udp_call():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = u.sendto(b"x" * 100, ("127.0.0.1", 9))
    u.close()
    return n


def torn_down_threads():
    out = []

    def worker(i):
        out.append(get(f"/c/thread/{i}"))  # the thread ends right after its call

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(out)


fd, tmpfile = tempfile.mkstemp()
os.write(fd, b"file body " * 100)
os.close(fd)

CASES = {
    "ipv6_literal": lambda: get("/c/ipv6", host="::1"),
    "idna_host": lambda: tunnel("b\u00fccher.example"),
    "idna_host_punycode": lambda: tunnel("xn--bcher-kva.example"),
    "huge_query": lambda: get("/c/hugeq?" + "&".join(f"k{i}=v{i}" for i in range(3000))),
    "huge_url_414": lambda: get("/c/huge414?q=" + "x" * 70000),
    "non_ascii_path": lambda: get("/c/caf\u00e9"),
    "surrogate_path": lambda: get("/c/\udcff"),
    "control_chars_path": lambda: get("/c/a\r\nb"),
    "bytes_headers": lambda: put_headers("/c/bytesh", [(b"X-Bytes", b"v1"), ("X-Multi", ("a", "b"))]),
    "duplicate_headers": lambda: put_headers("/c/duph", [("X-Dup", "1"), ("X-Dup", "2"), ("x-dup", "3")]),
    "huge_header_value": lambda: put_headers("/c/hugeh", [("X-Huge", "v" * 60000)]),
    "int_header_value": lambda: put_headers("/c/inth", [("X-Int", 5)]),
    "latin1_header_value": lambda: put_headers("/c/latinh", [("X-L", "caf\u00e9")]),
    "bad_header_name": lambda: put_headers("/c/badh", [("X Bad:", "v")]),
    "body_none": lambda: get("/c/none", "POST", None),
    "body_str": lambda: get("/c/str", "POST", "caf\u00e9 latin-1"),
    "body_str_not_latin1": lambda: get("/c/strx", "POST", "\u20ac"),
    "body_bytes": lambda: get("/c/bytes", "POST", b"\x00\xff" * 100),
    "body_bytearray": lambda: get("/c/bytearray", "POST", bytearray(b"z" * 50)),
    "body_memoryview": lambda: get("/c/mv", "POST", memoryview(b"m" * 64)),
    "body_memoryview_2d": lambda: get("/c/mv2d", "POST", memoryview(bytearray(64)).cast("B", (8, 8))),
    "body_generator_chunked": lambda: get("/c/gen", "POST", gen(), encode_chunked=True),
    "body_file": lambda: get("/c/file", "POST", open(tmpfile, "rb")),
    "body_bytesio": lambda: get("/c/bytesio", "POST", io.BytesIO(b"q" * 300)),
    "body_list_of_bytes": lambda: get("/c/list", "POST", [b"a", b"b"], headers={"Content-Length": "2"}),
    "body_int": lambda: get("/c/int", "POST", 42),
    "unix_socket": unix_call,
    "udp": udp_call,
    "torn_down_threads": torn_down_threads,
}

results = {}
for name, fn in CASES.items():
    try:
        results[name] = ["ok", fn()]
    except Exception as exc:  # the caller's view: the exception as raised
        results[name] = ["raised", type(exc).__name__, str(exc)[:200]]
os.remove(tmpfile)


def busy():
    while True:
        try:
            get("/c/daemon")
        except Exception:
            pass


threading.Thread(target=busy, daemon=True).start()


@atexit.register
def at_shutdown():
    print(json.dumps({"at_exit": get("/c/atexit")}), flush=True)


print(json.dumps(results), flush=True)
