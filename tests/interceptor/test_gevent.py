"""A process gevent has monkey-patched, as Odoo's evented server (the /websocket one) is.

Before: the interceptor did not install there at all (socket_bytes extended gevent's socket
class, which has no __del__), and a writer "thread" started through patched threading was a
greenlet of the starting thread's hub, which never ran when that thread runs none (gevent's
resolver threads): its events were lost. Real gevent, a real writer process, real local servers.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interceptor_servers import free_port

from ledger import Ledger
from verifier import verify_ledger

ROOT = Path(__file__).resolve().parents[2]

# A local HTTP server in a greenlet of the program (`port`): it answers every request with a 200.
SERVE = r"""
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept()
        c.recv(1000)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.close()
gevent.spawn(serve)
"""

PROGRAM = r"""
from gevent import monkey; monkey.patch_all()
import _socket, json, socket, sys, urllib.request
sys.path.insert(0, %(root)r)
import gevent, interceptor
from ledger.process_writer import ProcessWriter

writer = ProcessWriter(sys.argv[1], sys.argv[2])
interceptor.install(sink=interceptor.Sink(writer))
""" + SERVE + r"""
# The process's first event comes from a real OS thread that runs no gevent hub, as gevent's
# resolver threads do: the sink's writer is started from there.
done = monkey.get_original("_thread", "allocate_lock")()
done.acquire()
def raw():
    s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(("127.0.0.1", %(refused)d))
    except OSError:
        pass
    s.close()
    done.release()
monkey.get_original("_thread", "start_new_thread")(raw, ())
done.acquire()

def lookup():
    socket.getaddrinfo("localhost", port)  # gevent's resolver: on a thread of its pool
    socket.getaddrinfo("localhost", port=port)  # gevent's takes keywords
    try:
        socket.getaddrinfo()  # refused before any lookup: no event, as for the C function
    except TypeError:
        pass
    socket.getfqdn("localhost")  # gevent's own getfqdn, through its resolver's gethostbyaddr
lookup()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # gevent's class: a datagram is still an event
udp.sendto(b"abc", ("127.0.0.1", %(refused)d))
udp.close()
urllib.request.urlopen(f"http://127.0.0.1:{port}/p?k=v").read()  # its lookup is part of the call
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
s.recv(100)
s.close()
print(json.dumps({"mode": writer.mode, "port": port}))
"""  # no flush: the exit's


@pytest.mark.parametrize("resolver", ["thread", "block"])
def test_a_gevent_patched_process_is_audited_end_to_end(tmp_path, resolver):
    """gevent's default resolver (a thread pool) and its blocking one, whose methods are the C
    functions as staticmethods (review 20, H1: wrapped as methods, every lookup raised TypeError)."""
    program = tmp_path / "evented.py"
    refused = free_port()
    program.write_text(PROGRAM % {"root": str(ROOT), "refused": refused})
    ledger, keys = tmp_path / "l.sqlite", tmp_path / "keys"
    r = subprocess.run([sys.executable, str(program), str(ledger), str(keys)], capture_output=True, text=True,
                       env={**os.environ, "GEVENT_RESOLVER": resolver}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["mode"] == "process"  # the writer process started from the sink's OS thread
    port = out["port"]
    assert verify_ledger(str(ledger)).valid
    with Ledger.open(str(ledger), readonly=True) as led:
        every = list(led.rows())
    assert [r["method"] for r in every if r["channel"] == "audit"] == ["ledger_opened", "interceptor_installed"]  # no gap
    rows = [(r["channel"], r["method"], r["host"], r["dst_port"], r["url_path"], r["status"], r["module"],
             r["call_site"].rsplit(":", 1)[-1]) for r in every if r["channel"] != "audit"]
    assert rows == [
        ("socket", "connect", "127.0.0.1", refused, "", "", "evented", "raw"),
        ("dns", "getaddrinfo", "localhost", port, "", "", "evented", "lookup"),  # the caller's, once
        ("dns", "getaddrinfo", "localhost", port, "", "", "evented", "lookup"),
        ("dns", "gethostbyaddr", "localhost", 0, "", "", "evented", "lookup"),
        ("socket", "sendto", "127.0.0.1", refused, "", "", "evented", "<module>"),
        ("http", "GET", "127.0.0.1", port, "/p", "200", "evented", "<module>"),  # no lookup row of its own
        ("socket", "connect", "127.0.0.1", port, "", "", "evented", "<module>"),
    ]


LATE_PROGRAM = r"""
from gevent import monkey; monkey.patch_all()  # after `netaudit run`'s bootstrap installed the interceptor
import gevent, socket, urllib.request
""" + SERVE + r"""
def lookup(i):
    socket.getaddrinfo("localhost", 1000 + i)
def datagram():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"abc", ("127.0.0.1", 2002))
    u.close()
gevent.joinall([gevent.spawn(lookup, i) for i in range(5)] + [gevent.spawn(datagram)])  # all at once
urllib.request.urlopen(f"http://localhost:{port}/p").read()
print(port)
"""


def _under_netaudit_run(tmp_path, name: str, source: str) -> tuple[str, list]:
    """Run the program `source`, saved as NAME.py (its module's name in the rows), under `netaudit
    run`: (its stdout, every row of the run's ledger)."""
    program = tmp_path / f"{name}.py"
    program.write_text(source)
    ledger = tmp_path / "l.sqlite"
    r = subprocess.run([sys.executable, "-m", "ledger.cli", "run", "--ledger", str(ledger), "--key-dir",
                        str(tmp_path / "keys"), "--", sys.executable, str(program)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    with Ledger.open(str(ledger), readonly=True) as led:
        return r.stdout, list(led.rows())


def test_gevent_patched_after_install_under_netaudit_run_loses_nothing(tmp_path):
    """`netaudit run` installs the interceptor before the program patches. gevent's resolver is not
    wrapped then, and its lookups are recorded where its pool runs them, without their caller.
    Review 21: wrapping it at its first lookup lost the lookups already under way (H1), and the
    wrapper's claim, a thread's and not a greenlet's there, hid other greenlets' calls while a
    lookup waited (H2): 5 concurrent lookups and a datagram gave one row."""
    stdout, every = _under_netaudit_run(tmp_path, "late", LATE_PROGRAM)
    port = int(stdout.split()[-1])
    assert [r["method"] for r in every if r["channel"] == "audit"] == ["ledger_opened", "interceptor_installed"]
    lookups = sorted(r["dst_port"] for r in every if r["channel"] == "dns")
    assert set(lookups) >= {1000, 1001, 1002, 1003, 1004}, lookups
    # gevent's socket class came after our wrappers: the audit hook's event, without a size
    assert [(r["method"], r["dst_port"]) for r in every if r["channel"] == "socket"] == [("sendto", 2002)]
    assert [(r["url_path"], r["status"], r["module"]) for r in every if r["channel"] == "http"] \
        == [("/p", "200", "late")]


WAITING_PROGRAM = r"""
from gevent import monkey; monkey.patch_all()  # after `netaudit run`'s bootstrap installed the interceptor
import gevent, socket, urllib.request
""" + SERVE + r"""
def fetch():  # its connect waits on gevent's resolver for "localhost", inside the claimed endheaders
    urllib.request.urlopen(f"http://localhost:{port}/p").read()
def datagrams():  # meanwhile, on the same thread, another greenlet sends
    for i in range(20):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"abc", ("127.0.0.1", 3000 + i))
        u.close()
        gevent.sleep(0)
gevent.joinall([gevent.spawn(fetch), gevent.spawn(datagrams)])
print(port)
"""


def test_a_claimed_call_waiting_in_gevent_hides_no_other_greenlets_call(tmp_path):
    """A wrapper claims the call it audits, so the layers below stay silent. Under gevent patched
    after install, that claim was a threading.local made before the patch: a thread's, not a
    greenlet's. While one greenlet's request waited inside its claim (its DNS lookup, its connect),
    every other greenlet's call on that thread was skipped: 0 of these 20 datagrams were recorded.
    The claim is a context variable now, and each greenlet has its own context."""
    _, every = _under_netaudit_run(tmp_path, "waiting", WAITING_PROGRAM)
    every = [r for r in every if r["channel"] != "audit"]
    assert sorted(r["dst_port"] for r in every if r["method"] == "sendto") == list(range(3000, 3020))
    # the request is still one event: its own lookup and connect stay under its claim
    assert [(r["channel"], r["method"]) for r in every if r["method"] != "sendto"] \
        == [("dns", "getaddrinfo"), ("http", "GET")]


BYTES_PROGRAM = r"""
from gevent import monkey; monkey.patch_all()
import gc, json, socket, sys
sys.path.insert(0, %(root)r)
import gevent, interceptor
from ledger.process_writer import ProcessWriter

interceptor.install(sink=interceptor.Sink(ProcessWriter(sys.argv[1], sys.argv[2])))
BIG = 3 * 1024 * 1024 + 7   # more than one send: gevent's sendall sends in chunks, through its send
REPLY = b"r" * 70000
srv = socket.create_server(("127.0.0.1", 0))
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept()
        head = b""
        while len(head) < 16:
            head += c.recv(16 - len(head))
        want, got = int(head), 0
        while got < want:
            got += len(c.recv(65536))
        c.sendall(REPLY)
        c.close()
gevent.spawn(serve)

s = socket.create_connection(("127.0.0.1", port))      # gevent's socket class
assert s.send(b"%%16d" %% (BIG + 5)) == 16                # what follows, in 16 bytes
s.sendall(memoryview(b"x" * BIG))
s.sendall(b"tail!")
d = s.dup()                                              # the same connection: one event
f = d.makefile("rb", buffering=0)
first = f.read(1000)                                     # makefile: recv_into, at most 1000
buf = bytearray(5000)
n = s.recv_into(buf)
rest = s.recv(100000)
while len(first) + n + len(rest) < len(REPLY):
    rest += s.recv(100000)
f.close(); d.close()
s.close()
g = socket.create_connection(("127.0.0.1", port))      # dropped without close: ended when collected
g.sendall(b"%%16d" %% 3 + b"abc")
del g
gc.collect()
h = socket.create_connection(("127.0.0.1", port))      # still open at exit: ended by the exit flush
h.send(b"%%16d" %% 1)
print(json.dumps({"port": port, "sent": 16 + BIG + 5, "received": len(REPLY)}))
"""


def test_a_raw_connection_of_gevents_socket_class_counts_its_bytes(tmp_path):
    """gevent's socket class wraps a real socket instead of being one: its connections were recorded
    at connect, without sizes. Now a counting subclass of it counts what it sends and receives, once
    (its sendall sends through its own send), dup() and makefile() included, until it closes, is
    collected unclosed, or the process exits with it open."""
    program = tmp_path / "bytes.py"
    program.write_text(BYTES_PROGRAM % {"root": str(ROOT)})
    ledger, keys = tmp_path / "l.sqlite", tmp_path / "keys"
    r = subprocess.run([sys.executable, str(program), str(ledger), str(keys)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert verify_ledger(str(ledger)).valid
    with Ledger.open(str(ledger), readonly=True) as led:
        rows = [r for r in led.rows() if r["channel"] == "socket"]
    assert [(r["method"], r["dst_port"], r["req_bytes"], r["resp_bytes"], r["error"]) for r in rows] \
        == [("connect", out["port"], out["sent"], out["received"], ""), ("connect", out["port"], 19, 0, ""),
            ("connect", out["port"], 16, 0, "")]
    assert all(r["src_port"] > 0 for r in rows) and rows[0]["duration_ms"] > 0


# gevent patched first, then the interceptor installed with a sink that keeps the events in `w`
MEMORY_PRELUDE = r"""
from gevent import monkey; monkey.patch_all()
import io, json, multiprocessing.reduction, socket, ssl, sys
sys.path.insert(0, %(root)r)
import gevent, interceptor
from interceptor import MemoryWriter, Sink
w = MemoryWriter()
sink = Sink(w, linger_s=0)
interceptor.install(sink=sink)
"""


def _memory_run(tmp_path, name: str, body: str, **values):
    """Run MEMORY_PRELUDE + body (formatted with `values`) as NAME.py: the JSON of its last line."""
    program = tmp_path / f"{name}.py"
    program.write_text((MEMORY_PRELUDE + body) % {"root": str(ROOT), **values})
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


# a peer that answers whatever it is sent with a line that is no TLS
NOT_TLS_SERVER = r"""
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    c, _ = srv.accept()
    c.recv(1000)
    c.sendall(b"no TLS here\r\n")
    c.close()
gevent.spawn(serve)
"""

TLS_PROGRAM = NOT_TLS_SERVER + r"""
s = socket.create_connection(srv.getsockname())
s.sendall(b"hello")
try:
    ssl.create_default_context().wrap_socket(s, server_hostname="localhost")
except ssl.SSLError:
    pass
sink.flush(5)
print(json.dumps([[e.protocol, e.req_bytes, e.error] for e in w.events if e.channel == "socket"]))
"""


def test_a_failed_handshake_on_a_counted_gevent_connection_ends_its_event_as_tls(tmp_path):
    """TLS started on a counted gevent connection, to a peer that speaks none: one event, "tls",
    with the bytes sent before it and the handshake's error; the call's exception is its own."""
    assert _memory_run(tmp_path, "tls", TLS_PROGRAM) == [["tls", 5, "SSLError"]]


SETTLE_PROGRAM = r"""
srv = socket.create_server(("127.0.0.1", 0))
s = socket.create_connection(srv.getsockname())
multiprocessing.reduction.ForkingPickler(io.BytesIO()).dump(s)  # as multiprocessing hands a socket over
s.close()
r = socket.socket()
r.setblocking(False)
first = r.connect_ex(("127.0.0.1", %(refused)d))
gevent.sleep(0.2)
so_error = r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)   # how a selector loop learns the outcome
r.close()
sink.flush(5)
print(json.dumps({"codes": [first, so_error], "events": [[e.method, e.status, e.error] for e in w.events
                                                         if e.channel == "socket"]}))
"""


def test_a_counted_gevent_socket_pickles_and_settles_as_a_stdlib_one_does(tmp_path):
    """Review 24: multiprocessing's reducer for gevent's socket class was not registered for the
    counting subclass (M1: ForkingPickler raised "Cannot serialize socket object", where it
    pickled before), and the program's read of SO_ERROR did not settle a refused non-blocking
    connect (L1: closed as ENOTCONN, still "in_progress")."""
    out = _memory_run(tmp_path, "settle", SETTLE_PROGRAM, refused=free_port())
    assert out["codes"] == [errno.EINPROGRESS, errno.ECONNREFUSED]
    assert out["events"] == [["connect", "", ""], ["connect", "", "ECONNREFUSED"]]


TLS_BYTES_PROGRAM = r"""
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(%(cert)r, %(key)r)
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    c, _ = srv.accept()
    t = server_ctx.wrap_socket(c, server_side=True)
    got = 0
    while got < 200000:
        got += len(t.recv(65536))
    t.sendall(b"r" * 90000)
    t.close()
gevent.spawn(serve)
client_ctx = ssl.create_default_context()
client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE   # a throwaway certificate
raw = socket.create_connection(srv.getsockname())
raw.sendall(b"")                                        # nothing yet: TLS from the first byte
s = client_ctx.wrap_socket(raw, server_hostname="localhost")
s.sendall(b"x" * 150000)                                # sendall: through its send
s.write(b"y" * 50000)                                   # write
f = s.makefile("rb", buffering=0)
first = f.read(1000)                                    # recv_into, through read
rest = b""
while len(first) + len(rest) < 90000:
    rest += s.recv(65536)                               # recv, through read
f.close()
s.close()
sink.flush(5)
print(json.dumps([[e.protocol, e.req_bytes, e.resp_bytes, e.error] for e in w.events if e.channel == "socket"]))
"""


def test_tls_on_a_gevent_connection_counts_the_application_bytes(tmp_path):
    """gevent's SSLSocket gets a counting subclass too: a connection that starts TLS stays one
    event, "tls", counting the plaintext (not the TLS records), whichever method moved it."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    events = _memory_run(tmp_path, "tls_bytes", TLS_BYTES_PROGRAM, cert=str(tmp_path / "cert.pem"),
                         key=str(tmp_path / "key.pem"))
    assert events == [["tls", 200000, 90000, ""]]


HANDSHAKE_PROGRAM = NOT_TLS_SERVER + r"""
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
s = ctx.wrap_socket(socket.socket(), server_hostname="localhost")   # gevent's SSLSocket, connecting itself
try:
    s.connect(srv.getsockname())
except ssl.SSLError as exc:
    raised = type(exc).__name__
s.close()
sink.flush(5)
print(json.dumps([raised] + [[e.protocol, e.error] for e in w.events if e.channel == "socket"]))
"""


def test_a_gevent_sslsocket_whose_own_handshake_fails_records_the_error(tmp_path):
    """As for the standard library's (test_socket_bytes.py): the handshake after the TCP connect
    of an SSLSocket that connects itself failed, and the event said a good "tls" connection."""
    assert _memory_run(tmp_path, "handshake", HANDSHAKE_PROGRAM) == ["SSLError", ["tls", "SSLError"]]


UNDER_CLAIM_PROGRAM = r"""
from interceptor.capture import claim
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    c, _ = srv.accept()
    while c.recv(65536):
        pass
gevent.spawn(serve)
s = socket.create_connection(srv.getsockname())
s.send(b"x" * 10)
held = [None]
try:
    claim(held)                      # an outer call's claim (conn.sock = a counted raw socket, say)
    s.sendall(b"y" * 20)
    s.send(b"z" * 5)
finally:
    held[0] = None
s.close()
sink.flush(5)
print(json.dumps([e.req_bytes for e in w.events if e.channel == "socket"]))
"""


def test_bytes_a_counted_gevent_socket_sends_under_a_claim_count(tmp_path):
    """Review 26, L1: gevent's sendall counted its data under a claim of its own, and send counted
    nothing while any claim was held, so bytes sent inside an outer call's claim were lost (10 of
    35); the standard library's CountingSocket counts them. Now send counts, whatever the claim."""
    assert _memory_run(tmp_path, "under_claim", UNDER_CLAIM_PROGRAM) == [35]
