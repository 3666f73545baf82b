"""The program's own code that a wrapped call runs (a request body's generator, iterable or file, an
FTP callback or upload file) is not part of that call: the calls it makes are recorded. Until
this change it ran under the wrapper's claim, which keeps the layers below a call silent, and so a
module could hide any traffic (a raw connection, a datagram, another HTTP request) by making it
from a body generator: with the outer request recorded alone.

Real local servers (HTTP, FTP), real sockets, the interceptor installed in this process.
"""
from __future__ import annotations

import ftplib
import http.client
import imaplib
import io
import socket
import urllib.request

from interceptor_fixtures import captured, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, datagram as _datagram, free_port, head_size


def _by_kind(events):
    return sorted((e.channel, e.protocol, e.dst_port, e.url_path, e.req_bytes) for e in events
                  if e.channel in ("http", "socket", "ftp"))


def _sent(servers, path: str, body_size: int) -> int:
    """An HTTP request's bytes out: its head, as the HTTP server read it, and its body."""
    return head_size(servers.http, path) + body_size


def test_a_body_generators_own_calls_are_recorded(captured, servers):
    """urllib's POST sends the generator through the claimed endheaders: a raw connection with 5
    bytes, a datagram and a nested HTTP request made from it are three events of their own, beside
    the POST's (before: the POST alone)."""
    udp = free_port()

    def body():
        with socket.create_connection((HOST, servers.http)) as s:
            s.sendall(b"exfil")
        _datagram(udp)
        c = http.client.HTTPConnection(HOST, servers.http)
        c.request("GET", "/inner")
        c.getresponse().read()
        c.close()
        yield b"chunk"

    req = urllib.request.Request(servers.url("/outer"), data=body(), method="POST",
                                 headers={"Content-Length": "5"})
    urllib.request.urlopen(req).read()
    assert _by_kind(captured.events()) == sorted([
        ("socket", "tcp", servers.http, "", 5), ("socket", "udp", udp, "", 1),
        ("http", "http", servers.http, "/inner", _sent(servers, "/inner", 0)),
        ("http", "http", servers.http, "/outer", _sent(servers, "/outer", 5))])
    (outer,) = [e for e in captured.events("http") if e.url_path == "/outer"]
    assert outer.module == inner_module(captured)  # the same program, attributed as such


def inner_module(captured):
    (inner,) = [e for e in captured.events("http") if e.url_path == "/inner"]
    return inner.module


class _TalkingFile:
    """A binary file whose read (or readline) makes a datagram the first time."""

    def __init__(self, payload: bytes, port: int):
        self._data, self._port, self._told = io.BytesIO(payload), port, False

    def _tell_once(self):
        if not self._told:
            self._told = True
            _datagram(self._port)

    def read(self, n=-1):
        self._tell_once()
        return self._data.read(n)

    def readline(self, n=-1):
        self._tell_once()
        return self._data.readline(n)


def test_a_file_bodys_read_is_recorded_at_endheaders_and_at_send(captured, servers):
    """http.client reads a file body inside endheaders, and a file given to send() inside send."""
    first, second = free_port(), free_port()
    c = http.client.HTTPConnection(HOST, servers.http)
    c.request("POST", "/file", body=_TalkingFile(b"abc", first), headers={"Content-Length": "3"})
    c.getresponse().read()
    c.putrequest("POST", "/sent")
    c.putheader("Content-Length", "4")
    c.endheaders()
    c.send(_TalkingFile(b"wxyz", second))
    c.getresponse().read()
    c.close()
    assert _by_kind(captured.events()) == sorted([
        ("socket", "udp", first, "", 1), ("socket", "udp", second, "", 1),
        ("http", "http", servers.http, "/file", _sent(servers, "/file", 3)),
        ("http", "http", servers.http, "/sent", _sent(servers, "/sent", 4))])
    sent = [e for e in captured.events("http") if e.url_path in ("/file", "/sent")]
    assert all(len(e.fingerprint) == 32 for e in sent) and sent[0].fingerprint != sent[1].fingerprint


def test_ftp_callbacks_and_upload_files_are_the_programs(captured, servers):
    """retrbinary's and retrlines' callbacks, storbinary's file and callback, storlines' file: each
    runs the program's code, whose datagram is recorded (the FTP commands stay one event each)."""
    ports = [free_port() for _ in range(5)]
    ftp = ftplib.FTP()
    ftp.connect(HOST, servers.ftp)
    ftp.login("u", "p")
    ftp.retrbinary("RETR a", lambda data: _datagram(ports[0]))
    ftp.retrlines("RETR b", lambda line: _datagram(ports[1]))
    ftp.storbinary("STOR c", _TalkingFile(b"up", ports[2]),
                   callback=lambda buf: _datagram(ports[3]))
    ftp.storlines("STOR d", _TalkingFile(b"line\r\n", ports[4]))
    ftp.quit()
    datagrams = sorted(e.dst_port for e in captured.events("socket") if e.protocol == "udp")
    assert datagrams == sorted(ports)
    assert [e.method for e in captured.events("ftp")] == ["CONNECT", "LOGIN", "RETR", "RETR", "STOR", "STOR", "QUIT"]


def test_an_imap_authobject_is_the_programs(captured, servers):
    """imaplib calls AUTHENTICATE's authobject inside the wrapped command: a token it fetches over
    the network (here, a datagram) is a call of the program's own."""
    port = free_port()

    def authobject(challenge):
        _datagram(port)
        return b"token"

    imap = imaplib.IMAP4(HOST, servers.imap)
    imap.authenticate("XOAUTH2", authobject)
    imap.logout()
    assert [e.dst_port for e in captured.events("socket") if e.protocol == "udp"] == [port]
    assert "AUTHENTICATE" in [e.method for e in captured.events("imap")]


class _Once:
    """An iterable that can be iterated once only (a second iter() raises), as some streams are."""

    def __init__(self, chunks):
        self._chunks, self._used = chunks, False

    def __iter__(self):
        if self._used:
            raise RuntimeError("iterated twice")
        self._used = True
        return iter(self._chunks)


def test_buffers_and_once_only_iterables_are_sent_as_without_us(captured, servers):
    """Review 29, finding 1: an array.array body (a buffer, not bytes) was iterated as ints and
    send() raised TypeError; an iterable was iter()-ed twice, and a once-only one raised. Both go
    as http.client sends them, with their sizes in bytes (an 'I' array's items are 4 bytes)."""
    from array import array

    c = http.client.HTTPConnection(HOST, servers.http)
    c.request("POST", "/array", body=array("I", [1, 2, 3]), headers={"Content-Length": "12"})
    c.getresponse().read()
    c.request("POST", "/once", body=_Once([b"ab", b"cd"]), headers={"Content-Length": "4"})
    c.getresponse().read()
    c.putrequest("POST", "/send-array")
    c.putheader("Content-Length", "5")
    c.endheaders()
    c.send(array("B", b"hello"))
    c.getresponse().read()
    c.putrequest("POST", "/send-once")
    c.putheader("Content-Length", "3")
    c.endheaders()
    c.send(_Once([b"x", b"yz"]))
    c.getresponse().read()
    c.close()
    sizes = {e.url_path: (e.req_bytes, e.error) for e in captured.events("http")}
    assert sizes == {"/array": (_sent(servers, "/array", 12), ""), "/once": (_sent(servers, "/once", 4), ""),
                     "/send-array": (_sent(servers, "/send-array", 5), ""),
                     "/send-once": (_sent(servers, "/send-once", 3), "")}


def test_a_generator_reusing_its_buffer_can_resize_it(captured, servers):
    """Review 30, 3: the hash's view of the previous chunk was still held while the generator ran
    again, so an array it reused could not be resized (BufferError)."""
    from array import array

    def chunks():
        buf = array("B")
        for part in (b"abc", b"defg"):
            del buf[:]
            buf.frombytes(part)
            yield buf

    c = http.client.HTTPConnection(HOST, servers.http)
    c.request("POST", "/reused", body=chunks(), headers={"Content-Length": "7"})
    c.getresponse().read()
    c.close()
    (e,) = captured.events("http")
    assert (e.url_path, e.req_bytes, e.error) == ("/reused", _sent(servers, "/reused", 7), "")


class _StrReader:
    """Not a text file (no io.TextIOBase) whose read returns str: http.client does not encode it."""

    def __init__(self):
        self._done = False

    def read(self, n=-1):
        if self._done:
            return ""
        self._done = True
        return "text"


class _BytesText(io.TextIOBase):
    """A text file whose read returns bytes: http.client encodes every block of a text file, and
    bytes fail there."""

    done = False

    def read(self, n=-1):
        if self.done:
            return ""
        self.done = True
        return b"text"


def _send_after_headers(servers, path: str, body):
    """POST `path`, headers first, then send(body): None, or the exception send raised."""
    c = http.client.HTTPConnection(HOST, servers.http)
    try:
        c.putrequest("POST", path)
        c.putheader("Content-Length", "4")
        c.endheaders()
        c.send(body)
        c.getresponse().read()
    except (TypeError, AttributeError) as exc:
        return exc
    finally:
        c.close()
    return None


def test_text_is_encoded_only_where_http_client_encodes_it(captured, servers):
    """Review 31, L1: any str a file returned was encoded, so send() succeeded where the program
    alone gets TypeError; a real text file (io.StringIO) is encoded and counted, as http.client does.
    Review 32, 2: a text file's bytes were sent as they are; http.client fails on them."""
    assert _send_after_headers(servers, "/text", io.StringIO("text")) is None
    assert isinstance(_send_after_headers(servers, "/not-text", _StrReader()), TypeError)
    assert isinstance(_send_after_headers(servers, "/bytes-text", _BytesText()), AttributeError)
    sizes = {e.url_path: e.req_bytes for e in captured.events("http")}
    assert sizes["/text"] == _sent(servers, "/text", 4)
