"""An HTTP connection opened by connect() outside any request is recorded.

http.client's connect wrapper claims the call, so the socket layer below it stays silent: inside a
request that is right (the request is the event). Before this change a connect() made outside any
request recorded nothing when it succeeded, so a program could open a connection through
http.client and write on `conn.sock` unrecorded:

    conn = http.client.HTTPConnection(host, port); conn.connect(); conn.sock.sendall(data)

Now such a connection is an event ("CONNECT") and its socket is counted as a raw one's until the
connection's next request, which covers it: one that moved no bytes by then is no event of its own
(urllib3 connects every HTTPS connection so, ahead of its request: still one event per request),
one that did, or that closes first, is, with its bytes.

Real local HTTP and HTTPS servers, real sockets, the interceptor installed in this process.
"""
from __future__ import annotations

import http.client
import socket
import ssl
import warnings

import pytest

from interceptor import GUARD, socket_bytes
from interceptor_fixtures import captured, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, https, self_signed

_https_port: list[int] = []


@pytest.fixture
def https_port(servers, tmp_path_factory):
    """An HTTPS twin of the HTTP server, with a throwaway self-signed certificate."""
    if not _https_port:
        made = self_signed(tmp_path_factory.mktemp("tls"))
        if made is None:
            pytest.skip("needs the openssl command to make a test certificate")
        _https_port.append(https(*made))
    return _https_port[0]


def _unverified():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a throwaway certificate: these tests count, not trust
    return context


def _rows(captured):
    return sorted((e.channel, e.protocol, e.method, e.dst_port, e.url_path, e.req_bytes, e.resp_bytes)
                  for e in captured.events())


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
    for path in ("/a", "/b"):
        conn.request("GET", path)
        conn.getresponse().read()
        assert type(conn.sock) is socket.socket
    conn.close()
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/a", 0, 5),
                               ("http", "http", "GET", servers.http, "/b", 0, 5)]


def test_raw_bytes_then_a_request_are_two_events(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    received = _raw_exchange(conn.sock)
    conn.request("GET", "/after")
    conn.getresponse().read()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", len(_RAW), received),
                                      ("http", "http", "GET", servers.http, "/after", 0, 9)])


def test_a_request_made_step_by_step_connecting_in_between_is_one_event(captured, servers):
    """putrequest, connect, endheaders: the connect is the request's (no CONNECT event)."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.putrequest("GET", "/steps")
    conn.connect()
    conn.endheaders()
    conn.getresponse().read()
    conn.close()
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/steps", 0, 9)]


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
    assert _rows(captured) == [("http", "https", "GET", https_port, "/one", 0, 7),
                               ("http", "https", "GET", https_port, "/two", 0, 7)]


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


def test_a_socket_that_cannot_be_counted_is_recorded_at_connect(captured, servers):
    conn = _OwnSocketConnection(HOST, servers.http)
    conn.connect()
    assert _rows(captured) == [("http", "http", "CONNECT", servers.http, "", 0, 0)]
    _raw_exchange(conn.sock)
    conn.close()
    assert len(captured.events()) == 1


def test_a_second_explicit_connect_leaves_the_first_connection_its_event(captured, servers):
    """The first connection is not the one the request rides on: it is counted until it closes."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.connect()
    first = conn.sock
    conn.connect()
    conn.request("GET", "/second")
    conn.getresponse().read()
    assert _rows(captured) == [("http", "http", "GET", servers.http, "/second", 0, 10)]
    first.close()
    conn.close()
    assert _rows(captured) == sorted([("http", "http", "CONNECT", servers.http, "", 0, 0),
                                      ("http", "http", "GET", servers.http, "/second", 0, 10)])


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
