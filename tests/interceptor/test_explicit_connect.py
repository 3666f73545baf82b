"""An HTTP connection opened by connect() outside any request is recorded.

http.client's connect wrapper claims the call, so the socket layer below it stays silent: inside a
request that is right (the request is the event). Before this change a connect() made outside any
request recorded nothing when it succeeded, so a program could open a connection through
http.client and write on `conn.sock` unrecorded:

    conn = http.client.HTTPConnection(host, port); conn.connect(); conn.sock.sendall(data)

Now such a connection is an event ("CONNECT") and its socket is counted as a raw one's until the
connection's next request sends on it, which covers it: one that moved no bytes by then is no event
of its own (urllib3 connects every HTTPS connection so, ahead of its request: still one event per
request); one that did, that closes first, or that the request does not ride on, is, with its bytes.

Review 35 found the first version's gaps, each tested below: a socket taken off the connection, a
request put before or after the connect and never sent (a request in flight was an event only if
the connection made another request: also a request sent and never answered, on a connection
closed, collected or open at exit), a program's own TLS wrap, a non-blocking connect.

Real local HTTP and HTTPS servers, real sockets, the interceptor installed in this process.
"""
from __future__ import annotations

import copy
import gc
import http.client
import json
import pickle
import socket
import ssl
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest

from interceptor import GUARD, socket_bytes
from interceptor_fixtures import captured, servers, tls_files  # noqa: F401  (fixtures)
from interceptor_servers import HOST, PRINTING, free_port, head_size, https, tunnel_proxy

ROOT = Path(__file__).resolve().parents[2]

_https_port: list[int] = []


@pytest.fixture
def https_port(servers, tls_files):
    """An HTTPS twin of the HTTP server, with a throwaway self-signed certificate."""
    if not _https_port:
        _https_port.append(https(*tls_files))
    return _https_port[0]


def _unverified():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway certificate: these tests count, not trust
    return context


def _rows(captured):
    return sorted((e.channel, e.protocol, e.method, e.dst_port, e.url_path, e.req_bytes, e.resp_bytes)
                  for e in captured.events())


def _sent(port: int, path: str, body_size: int = 0) -> int:
    """A request's bytes out: its head, as the server on `port` read it, and its body. (A CONNECT's
    are the raw bytes the program wrote on the connection's socket, known to the test.)"""
    return head_size(port, path) + body_size


_RAW = b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n"


def _raw_exchange(sock) -> int:
    """A request written straight on the socket, its reply read to its end; the bytes received."""
    sock.sendall(_RAW)
    got = b""
    while not got.endswith(b"ok:/raw"):
        data = sock.recv(4096)
        assert data, "the server closed early"
        got += data
    return len(got)


def _gets_then_close(conn, paths, sock_class=None) -> None:
    """A GET of each path on the connection, its response read; after each, the socket is of
    `sock_class` where given (counted no more: the kept-alive path pays nothing); then close."""
    for path in paths:
        conn.request("GET", path)
        conn.getresponse().read()
        if sock_class is not None:
            assert type(conn.sock) is sock_class
    conn.close()


def test_an_explicit_connect_then_raw_bytes_is_an_event_with_them(captured, servers):
    """The hole: before, no event at all (test fails on dd6d600)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.close()
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", len(_RAW), received)]
    (e,) = captured.events()
    assert e.call_site.startswith("test_explicit_connect:") and e.module == "test_explicit_connect"
    assert e.src_port and e.dst_ip == HOST and not e.error


def test_a_connection_closed_without_a_request_is_an_event(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    assert captured.events() == [], "counted until it closes or sends a request"
    conn.close()
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", 0, 0)]


def test_an_explicit_connect_then_requests_is_the_requests_only(captured, servers):
    """One call, one event: the request covers the connection it rides on. The socket is no longer
    counted after the first request (a kept-alive request pays nothing for this)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    assert type(conn.sock) is not socket.socket  # counted, while no request covers it
    _gets_then_close(conn, ("/a", "/b"), socket.socket)
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/a", _sent(servers.http, "/a"), 5),
                               ("http", "http", "GET", servers.http, "/b", _sent(servers.http, "/b"), 5)]


def test_raw_bytes_then_a_request_are_two_events(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.request("GET", "/after")
    conn.getresponse().read()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/after",
                                       _sent(servers.http, "/after"), 9)])


def test_a_request_made_step_by_step_connecting_in_between_is_one_event(captured, servers):
    """putrequest, connect, endheaders: the connect is the request's (no CONNECT event)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.putrequest("GET", "/steps")
    conn.connect()
    conn.endheaders()
    conn.getresponse().read()
    conn.close()
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/steps", _sent(servers.http, "/steps"), 9)]


def test_urllib3_https_connects_ahead_of_its_request_and_stays_one_event_per_request(https_port, captured):
    """urllib3 calls connect() on an HTTPS connection before its first request (_validate_conn)."""
    urllib3 = pytest.importorskip("urllib3")
    pool = urllib3.HTTPSConnectionPool(HOST, https_port, cert_reqs="CERT_NONE", maxsize=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InsecureRequestWarning: a throwaway certificate
        for path in ("/one", "/two"):
            assert pool.request("GET", path).data == b"ok:" + path.encode()
    conn = pool._get_conn()
    try:
        assert type(conn.sock) is ssl.SSLSocket  # not counted on the kept-alive path
    finally:
        pool._put_conn(conn)
    pool.close()
    assert _rows(captured) == [("http", "https", "GET", https_port, "/one", _sent(https_port, "/one"), 7),
                               ("http", "https", "GET", https_port, "/two", _sent(https_port, "/two"), 7)]


def test_an_https_connect_then_raw_tls_bytes_counts_the_application_bytes(https_port, captured):
    conn = http.client.HTTPSConnection(HOST, https_port, context=_unverified())
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.close()
    assert _rows(captured) == [("http", "https", "CONNECT", https_port, "", len(_RAW), received)]


class _OwnSocket(socket.socket):
    """A socket class the interceptor does not count."""


class _OwnSocketConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = _OwnSocket()
        self.sock.connect((self.host, self.port))  # the connection's own destination: covered


def test_a_socket_that_cannot_be_counted_is_an_event_at_close(captured, servers):
    conn = _OwnSocketConnection(HOST, servers.http)
    conn.connect()
    _raw_exchange(conn.sock)
    assert captured.events() == [], "held until a request covers it, or the connection ends"
    conn.close()
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", 0, 0)]  # no sizes


def test_a_socket_that_cannot_be_counted_is_covered_by_its_request(captured, servers):
    """urllib3's TLS in TLS (an HTTPS proxy) gives such a socket, connected ahead of the request."""
    conn = _OwnSocketConnection(HOST, servers.http)
    conn.connect()
    conn.request("GET", "/own")
    conn.getresponse().read()
    conn.close()
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/own", _sent(servers.http, "/own"), 7)]


def test_a_second_explicit_connect_leaves_the_first_connection_its_event(captured, servers):
    """The first connection is not the one the request rides on: it is counted until it closes."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    first = conn.sock
    conn.connect()
    conn.request("GET", "/second")
    conn.getresponse().read()
    second = ("http", "http", "GET", servers.http, "/second", _sent(servers.http, "/second"), 10)
    assert _rows(captured) == [second]
    first.close()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", 0, 0), second])


def test_a_fault_while_counting_records_the_connection_at_once(captured, servers, monkeypatch):
    """Fail-open: the connect and the raw exchange work as without us; the connection is an event
    (without sizes), and the fault is counted."""
    def broken(sock, rec):
        raise RuntimeError("injected")

    monkeypatch.setattr(socket_bytes, "track", broken)
    before = GUARD.faults
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    _raw_exchange(conn.sock)
    conn.close()
    assert GUARD.faults == before + 1
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", 0, 0)]


def test_a_socket_taken_off_the_connection_keeps_its_event(captured, servers):
    """Review 35, 1: the request rides another socket; the one connect() made is counted until it
    closes (before: its record dropped at the request, its bytes unrecorded)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    taken = conn.sock
    conn.sock = None
    conn.request("GET", "/cover")  # opens a connection of its own
    conn.getresponse().read()
    received = _raw_exchange(taken)
    assert type(taken) is not socket.socket, "still counted"
    taken.close()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/cover",
                                       _sent(servers.http, "/cover"), 9)])


def test_a_request_naming_another_destination_leaves_the_connection_its_event(captured, servers):
    """The port changed after the connect: the request names another destination than the one
    connected to, so it does not cover the connection (recorded twice, not hidden; the request's
    event takes its port from the socket it rode)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    conn.port = servers.smtp
    conn.request("GET", "/moved")  # rides the connection to the HTTP server, named as the other port
    conn.getresponse().read()
    conn.close()
    got = [(e.method, e.dst_port) for e in sorted(captured.events(), key=lambda e: e.method)]
    assert got == [("CONNECT", servers.http), ("GET", servers.http)]


def test_a_request_put_before_the_connect_and_never_sent(captured, servers):
    """Review 35, 2: putrequest, connect, raw bytes, close: before, nothing at all."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.putrequest("GET", "/decoy")
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/decoy", 0, 0)])


def test_a_request_put_after_the_connect_and_never_sent(captured, servers):
    """The connection is handed over when a request sends (endheaders), not when it is put."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    conn.putrequest("GET", "/decoy")
    received = _raw_exchange(conn.sock)
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/decoy", 0, 0)])


def test_a_request_sent_and_never_answered_is_an_event_when_the_connection_closes(captured, servers):
    """Review 35, 2 (older than the explicit connect): a POST sent, no getresponse, the connection
    closed: before, no event (a request in flight ended only at the connection's next request)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("POST", "/unanswered", body=b"x" * 5000)
    conn.close()
    assert _rows(captured) == [("http", "http", "POST", servers.http, "/unanswered",
                                _sent(servers.http, "/unanswered", 5000), 0)]


def test_a_request_sent_and_never_answered_is_an_event_when_the_connection_is_collected(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("POST", "/dropped", body=b"y" * 300)
    del conn
    gc.collect()
    assert _rows(captured) == [("http", "http", "POST", servers.http, "/dropped",
                                _sent(servers.http, "/dropped", 300), 0)]


_EXIT_PROGRAM = PRINTING + """
import http.client
SENT = http.client.HTTPConnection("127.0.0.1", %(port)d)
SENT.request("POST", "/at-exit", body=b"z" * 70)          # sent, never answered
PUT = http.client.HTTPConnection("127.0.0.1", %(port)d)
PUT.putrequest("GET", "/put")
PUT.connect()
PUT.sock.sendall(b"GET /raw HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")  # raw, on a request put, never sent
print("done", flush=True)
"""


def test_what_connections_left_in_flight_is_recorded_at_exit(servers, tmp_path):
    program = tmp_path / "in_flight_at_exit.py"
    program.write_text(_EXIT_PROGRAM % {"root": str(ROOT), "port": servers.http,
                                        "fields": ("method", "url_path", "req_bytes", "dst_port")})
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "done"
    assert sorted(json.loads(x) for x in lines[1:]) == sorted([
        ["POST", "/at-exit", _sent(servers.http, "/at-exit", 70), servers.http], ["GET", "/put", 0, servers.http],
        ["CONNECT", "", len(_RAW), servers.http]])


class _OwnTLS(http.client.HTTPConnection):
    """A program's own HTTPS connection: a plain connect, then TLS by hand."""

    context = None

    def connect(self):
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


def test_a_programs_own_tls_wrap_is_handed_over(https_port, captured):
    """Review 35, 3: the record moved to the SSLSocket with the wrap; the hand-over follows it
    (before: counted for good, and an extra CONNECT with the requests' own bytes at close)."""
    conn = _OwnTLS(HOST, https_port)
    conn.context = _unverified()
    conn.connect()
    _gets_then_close(conn, ("/t0", "/t1"), ssl.SSLSocket)
    assert _rows(captured) == [("http", "http", "GET", https_port, "/t0", _sent(https_port, "/t0"), 6),
                               ("http", "http", "GET", https_port, "/t1", _sent(https_port, "/t1"), 6)]


class _NonBlocking(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex((self.host, self.port))


def test_a_refused_non_blocking_connect_carries_its_error(captured):
    """Review 35, 5: settled as a raw socket's (before: a CONNECT that looked connected)."""
    port = free_port()
    conn = _NonBlocking(HOST, port)
    conn.connect()
    conn.close()
    (e,) = captured.events()
    assert (e.method, e.dst_port, e.error) == ("CONNECT", port, "ECONNREFUSED")


def test_a_connection_closed_after_connect_still_copies(captured, servers):
    """Review 35, 6: nothing of ours stays on a closed connection (copy and pickle work as without
    us), after a connect() or after a request."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    conn.close()
    pickle.dumps(conn)
    copy.deepcopy(conn)
    conn.request("GET", "/then")
    conn.getresponse().read()
    conn.close()
    pickle.dumps(conn)


def test_a_tunnel_through_a_proxy_is_one_event_per_request(captured, servers):
    """Review 36, 1: through a CONNECT proxy the socket's peer is the proxy; the request covers the
    connection by the destination both name (before: an extra CONNECT, counting every request's
    bytes again, the socket counted for its life)."""
    proxy = tunnel_proxy()
    conn = http.client.HTTPConnection(HOST, proxy)
    conn.set_tunnel(HOST, servers.http)
    conn.connect()
    _gets_then_close(conn, ("/via0", "/via1"), socket.socket)
    assert [(e.method, e.host, e.url_path, e.dst_port, e.resp_bytes) for e in captured.events()] == [
        ("GET", HOST, "/via0", proxy, 8), ("GET", HOST, "/via1", proxy, 8)]


def test_urllib3_through_an_https_proxy_tunnel_is_one_event_per_request(https_port, captured):
    """urllib3 connects ahead of the request and tunnels (review 36, 1: an extra CONNECT with
    every request's bytes on ab64f76)."""
    urllib3 = pytest.importorskip("urllib3")
    proxy = urllib3.ProxyManager(f"http://{HOST}:{tunnel_proxy()}", cert_reqs="CERT_NONE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InsecureRequestWarning: a throwaway certificate
        for path in ("/p0", "/p1"):
            assert proxy.request("GET", f"https://{HOST}:{https_port}{path}").data == b"ok:" + path.encode()
    proxy.clear()
    assert [(e.protocol, e.method, e.url_path) for e in captured.events()] == [
        ("https", "GET", "/p0"), ("https", "GET", "/p1")]


def test_a_connection_made_after_the_request_sent_is_recorded(captured, servers):
    """Review 36, 2: the request was sent (never answered); the program points the connection
    elsewhere and connects: its own connection (before: hidden)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("POST", "/sent", body=b"s" * 10)
    conn.port = servers.xmlrpc
    conn.connect()
    conn.sock.sendall(_RAW)
    received = len(conn.sock.recv(4096))
    conn.close()
    assert received and _rows(captured) == sorted([
        ("http", "http", "CONNECT", servers.xmlrpc, "", len(_RAW), received),
        ("http", "http", "POST", servers.http, "/sent", _sent(servers.http, "/sent", 10), 0)])


def test_a_close_while_the_request_sends_leaves_it_its_error(captured, servers):
    """Review 36, 3: the connection is closed while endheaders runs (here from the body's own
    generator; a watchdog thread would do the same): endheaders ends the request, with its error
    (before: ended at the close, the error lost)."""
    conn = http.client.HTTPConnection(HOST, servers.http)

    def body():
        yield b"first"
        conn.close()
        raise ValueError("the body failed")

    conn.putrequest("POST", "/closing")
    conn.putheader("Transfer-Encoding", "chunked")
    with pytest.raises(ValueError):
        conn.endheaders(body(), encode_chunked=True)
    (e,) = captured.events()
    assert (e.method, e.url_path, e.error) == ("POST", "/closing", "ValueError")


class _Unhashable(http.client.HTTPConnection):
    """A connection class with its own __eq__ (so no hash): nothing of ours may call either."""

    def __eq__(self, other):
        raise AssertionError("the program's __eq__ ran")


def test_a_connection_with_its_own_eq_is_counted_as_any(captured, servers):
    """Review 36, 4: the registry of open connections is by identity (before: a fault, and the
    connection's bytes lost)."""
    before = GUARD.faults
    conn = _Unhashable(HOST, servers.http)
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.close()
    assert GUARD.faults == before
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", len(_RAW), received)]


_FORK_PROGRAM = PRINTING + """
import http.client
print(json.dumps(["parent", os.getpid()]), flush=True)
conn = http.client.HTTPConnection("127.0.0.1", %(port)d)
conn.request("POST", "/in-flight", body=b"f")
if os.fork() == 0:
    conn.close()      # the child's copy: the parent's request, not the child's to record
    sys.exit(0)
os.wait()
conn.close()
"""


def test_a_forked_child_leaves_the_parents_request_to_the_parent(servers, tmp_path):
    program = tmp_path / "fork.py"
    program.write_text(_FORK_PROGRAM % {"root": str(ROOT), "port": servers.http,
                                        "fields": ("pid", "method", "url_path")})
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    (_, parent), *rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert rows == [[parent, "POST", "/in-flight"]]


def test_the_registry_of_open_connections_stays_bounded(monkeypatch):
    """Connections gone are pruned as the registry grows; a live one stays registered. Each
    connection gets a key of its own here (review 37, 7: dropped at once, a connection's address,
    and so its key, was reused, and the registry stayed small with no pruning at all)."""
    from interceptor import http_wrappers

    keys = iter(range(10**9, 10**10))
    monkeypatch.setattr(http_wrappers, "_identity", lambda conn: next(keys))
    monkeypatch.setattr(http_wrappers, "_LIVE", {})
    kept = http.client.HTTPConnection(HOST, 1)
    http_wrappers._register(kept)
    for _ in range(10_000):
        http_wrappers._register(http.client.HTTPConnection(HOST, 1))  # dropped at once
    assert len(http_wrappers._LIVE) <= 1025
    assert [ref() for ref in http_wrappers._LIVE.values() if ref() is not None] == [kept]


def test_a_socket_the_program_lets_go_is_not_kept_by_us(captured, servers):
    """Review 37, 1: the peer cache holds the socket weakly: the program's `conn.sock = None` frees
    it (its event comes then), and the connection pickles."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    ref = weakref.ref(conn.sock)
    conn.sock = None
    gc.collect()
    assert ref() is None
    pickle.dumps(conn)
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", 0, 0)]


def test_a_copy_of_a_connection_carries_none_of_our_state(captured, servers):
    """Review 37, 2: a copy shared the request in flight (the copy's end ended it, without its
    response) and an explicit connect's hand-over."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("GET", "/orig")
    twin = copy.copy(conn)
    del twin
    gc.collect()
    conn.getresponse().read()
    conn.close()
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    twin = copy.copy(conn)
    del twin
    gc.collect()
    conn.request("GET", "/after-copy")
    conn.getresponse().read()
    conn.close()
    assert [(e.method, e.url_path, e.status, e.resp_bytes) for e in captured.events()] == [
        ("GET", "/orig", "200", 8), ("GET", "/after-copy", "200", 14)]


class _TwoConnects(http.client.HTTPConnection):
    """Its connect makes a second connection to the same destination and keeps it for itself."""

    extra = None

    def connect(self):
        super().connect()
        first = self.sock
        super().connect()
        self.extra, self.sock = self.sock, first


def test_a_second_connection_to_the_requests_destination_is_recorded(captured, servers):
    """Review 37, 3: inside the request's own endheaders one connection is the request's; a
    second one there is the program's (before: its bytes unrecorded)."""
    conn = _TwoConnects(HOST, servers.http)
    conn.request("GET", "/two")
    conn.getresponse().read()
    received = _raw_exchange(conn.extra)
    conn.extra.close()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/two", _sent(servers.http, "/two"), 7)])


def test_a_port_given_as_text_is_one_event_per_request(captured, servers):
    """Review 37, 5: http.client keeps a text port as text; the hand-over compares it as such
    (before: an extra CONNECT counting every request's bytes)."""
    conn = http.client.HTTPConnection(HOST, str(servers.http))
    conn.connect()
    _gets_then_close(conn, ("/t0", "/t1"), socket.socket)
    assert [(e.method, e.url_path) for e in captured.events()] == [("GET", "/t0"), ("GET", "/t1")]


class _Interrupted(BaseException):
    """Stands for a signal handler's exception (a time limit) landing in our part of close()."""


def test_close_closes_whatever_lands_in_our_part(captured, servers, monkeypatch):
    """Review 37, 6: the program gets its exception, and the connection is closed all the same."""
    from interceptor import http_wrappers

    def interrupted(conn, closing=False):
        raise _Interrupted()

    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    sock = conn.sock
    monkeypatch.setattr(http_wrappers, "_connection_ends", interrupted)
    with pytest.raises(_Interrupted):
        conn.close()
    assert conn.sock is None and sock.fileno() == -1


class _OwnFinalizer(http.client.HTTPConnection):
    finalized = 0

    def __del__(self):  # does not call its base's
        type(self).finalized += 1


class _Reconnecting(http.client.HTTPConnection):
    """Its connect probes, drops the probe and connects again: the request rides the second."""

    def connect(self):
        super().connect()
        self.sock.close()
        super().connect()


def test_a_connect_that_reconnects_leaves_the_request_its_own_connection(captured, servers):
    """Review 38, 1: the request's own connection is the one it rides, settled when endheaders
    returns (on 81cebd5, the first one was taken for it, and the one it rode got a CONNECT with
    the requests' bytes). The probe is a connection of its own, and an event."""
    conn = _Reconnecting(HOST, servers.http)
    _gets_then_close(conn, ("/r0", "/r1"), socket.socket)
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", 0, 0),
                                      ("http", "http", "GET", servers.http, "/r0", _sent(servers.http, "/r0"), 6),
                                      ("http", "http", "GET", servers.http, "/r1", _sent(servers.http, "/r1"), 6)])


class _Slotted(http.client.HTTPConnection):
    __slots__ = ("label",)


def test_a_copy_of_a_connection_class_with_slots_carries_none_of_our_state(captured, servers):
    """Review 38, 2: its state pickles as (dict, slots); ours is left out of the dict too."""
    conn = _Slotted(HOST, servers.http)
    conn.label = "slotted"
    conn.request("GET", "/slots")
    twin = copy.copy(conn)
    assert twin.label == "slotted"
    del twin
    gc.collect()
    conn.getresponse().read()
    conn.close()
    assert [(e.url_path, e.status, e.resp_bytes) for e in captured.events()] == [("/slots", "200", 9)]


class _NoWeakSocket:
    """A socket-like object that takes no weak reference (a program's wrapper with __slots__)."""

    __slots__ = ("_sock",)

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _WrappedSocketConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = _NoWeakSocket(socket.create_connection((self.host, self.port)))


def test_a_socket_like_object_without_weak_references_is_cached_as_before(captured, servers):
    """Review 38, 3: no fault (on 81cebd5, one a request), and the connection is registered."""
    before = GUARD.faults
    conn = _WrappedSocketConnection(HOST, servers.http)
    _gets_then_close(conn, ("/w0", "/w1"))
    assert GUARD.faults == before
    assert [(e.url_path, e.src_port > 0) for e in captured.events()] == [("/w0", True), ("/w1", True)]


class _DelMixin:
    finalized = 0

    def __del__(self):  # a mixin's finalizer, ahead of HTTPConnection in the MRO
        _DelMixin.finalized += 1


class _Mixed(_DelMixin, http.client.HTTPConnection):
    pass


@pytest.mark.parametrize("cls", [_OwnFinalizer, _Mixed], ids=["own", "a-mixins"])
def test_a_connection_with_a_finalizer_of_its_own_still_ends_its_request(captured, servers, cls):
    """Its own __del__ (review 37, 7), or a mixin's it resolves to (review 38, 4), is wrapped
    (before: the request in flight lost at collection)."""
    before = cls.finalized
    conn = cls(HOST, servers.http)
    conn.request("POST", "/finalized", body=b"d")
    del conn
    gc.collect()
    assert cls.finalized == before + 1
    assert _rows(captured) == [("http", "http", "POST", servers.http, "/finalized",
                                _sent(servers.http, "/finalized", 1), 0)]
