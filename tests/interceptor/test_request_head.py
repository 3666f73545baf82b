"""An HTTP request's bytes out: its head (request line and header lines) once it went out, and its
body. Data a program puts in a header or a query value is data sent, and counts as such; a request
whose connection could not be made sent nothing.

Real local servers (the HTTP server counts each request head it reads: head_size), a real CONNECT
proxy, a refused port.
"""
from __future__ import annotations

import http.client

import pytest

from interceptor_fixtures import captured, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, free_port, head_size, tunnel_proxy


def test_a_secret_in_a_header_or_the_query_counts_in_bytes_out(captured, servers):
    """The same GET without and with 4 KiB of data in a header value and 2 KiB in a query value:
    the event's bytes out grow by what the server read, header and query value included."""
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("GET", "/plain")
    conn.getresponse().read()
    conn.request("GET", "/loaded?q=" + "v" * 2048, headers={"X-Data": "d" * 4096})
    conn.getresponse().read()
    conn.close()
    plain, loaded = captured.events("http")
    assert plain.req_bytes == head_size(servers.http, "/plain")
    assert loaded.req_bytes == head_size(servers.http, "/loaded?q=" + "v" * 2048)
    assert loaded.req_bytes - plain.req_bytes > 4096 + 2048
    assert loaded.header_names == ("X-Data",) and loaded.query_keys == ("q",)  # names only, as ever


@pytest.mark.parametrize("body", [None, b"x" * 300], ids=["get", "post"])
def test_a_request_whose_connection_is_refused_sent_nothing(captured, body):
    port = free_port()
    conn = http.client.HTTPConnection(HOST, port)
    with pytest.raises(ConnectionRefusedError):
        conn.request("POST" if body else "GET", "/never", body=body)
    conn.close()
    (e,) = captured.events("http")
    assert (e.error, e.dst_port, e.req_bytes, e.resp_bytes) == ("ConnectionRefusedError", port, 0, 0)
    assert bool(e.fingerprint) == bool(body)  # what the program tried to send, fingerprinted all the same


def test_a_tunnels_connect_is_not_counted_as_the_requests_head(captured, servers):
    """Through a CONNECT proxy the connection's first send is the tunnel's CONNECT, made inside the
    request's own first send (http.client connects there): the request's bytes out are its own head
    and body, as the server at the far end read them."""
    conn = http.client.HTTPConnection(HOST, tunnel_proxy())
    conn.set_tunnel(HOST, servers.http, headers={"X-Tunnel": "t" * 500})
    conn.request("POST", "/through", body=b"b" * 10)
    conn.getresponse().read()
    conn.close()
    (e,) = captured.events("http")
    assert e.req_bytes == head_size(servers.http, "/through") + 10


class _BodyWithHead(http.client.HTTPConnection):
    """botocore's AWSConnection does so: a bytes body goes out in the head's own send."""

    def _send_output(self, message_body=None, *args, **kwargs):
        if isinstance(message_body, bytes):
            self._buffer.extend((b"", b""))
            msg = b"\r\n".join(self._buffer) + message_body
            del self._buffer[:]
            self.send(msg)
            return None
        return super()._send_output(message_body, *args, **kwargs)


class _Paced(http.client.HTTPConnection):
    """A send that passes its data on in pieces of 50 bytes."""

    def send(self, data):
        for i in range(0, len(data), 50):
            super().send(data[i:i + 50])


@pytest.mark.parametrize("cls", [_BodyWithHead, _Paced], ids=["body-with-head", "paced"])
def test_a_subclass_that_sends_its_head_otherwise_counts_head_and_body_once(captured, servers, cls):
    """The head's size is taken from http.client's buffer, not from the send that carries it
    (review 44, 2: the body sent with the head was counted twice, a paced head only in part)."""
    conn = cls(HOST, servers.http)
    conn.request("POST", f"/{cls.__name__}", body=b"b" * 1000)
    conn.getresponse().read()
    conn.close()
    (e,) = captured.events("http")
    assert e.req_bytes == head_size(servers.http, f"/{cls.__name__}") + 1000
