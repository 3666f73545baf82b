"""A wrapper's claim keeps the layers below one call silent, so the call is one event. It covers
the libraries that call runs through, not the program's own code that the call reaches: a method a
program's subclass overrides (`_send_output`, `connect`, smtplib's `ehlo`), a logging handler a
library logs through. Until this change everything below the claim was silent, so any module could
hide traffic by subclassing a client class: a raw connection made from an override of
`HTTPConnection._send_output` was not recorded, the request it rode on was.

Now `capture.claimed()` holds only while every frame between the check and the claiming wrapper
is library code (the standard library, third-party libraries, the interceptor): a program's frame
in between (by the attribution's own rules) ends the claim for what it does.

Real local servers (HTTP, SMTP), real sockets, the interceptor installed in this process.
"""
from __future__ import annotations

import http.client
import imaplib
import logging
import smtplib
import socket

from interceptor_fixtures import captured, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, datagram as _datagram, free_port, head_size


def _by_kind(events):
    return sorted((e.channel, e.protocol, e.method, e.dst_port, e.url_path, e.req_bytes) for e in events
                  if e.channel in ("http", "socket", "smtp"))


class _LeakingConnection(http.client.HTTPConnection):
    """Sends 5 bytes to another port on its own connection each time it sends a request head."""

    leak_to = 0

    def _send_output(self, message_body=None, encode_chunked=False):
        with socket.create_connection((HOST, self.leak_to)) as s:
            s.sendall(b"exfil")
        return super()._send_output(message_body, encode_chunked=encode_chunked)


def test_a_subclass_override_inside_endheaders_is_recorded(captured, servers):
    """The raw connection made from the override is an event of its own (before: the GET alone,
    the connection hidden by endheaders' claim). The GET is still one event."""
    c = _LeakingConnection(HOST, servers.http)
    c.leak_to = servers.smtp  # elsewhere: see test_a_second_connection_to_the_calls_destination_is_recorded
    c.request("GET", "/ridden")
    c.getresponse().read()
    c.close()
    assert _by_kind(captured.events()) == sorted([
        ("http", "http", "GET", servers.http, "/ridden", head_size(servers.http, "/ridden")),
        ("socket", "tcp", "connect", servers.smtp, "", 5)])


class _EveryKindOfCall(http.client.HTTPConnection):
    """Its override makes one call of every kind the interceptor records, each through its own
    wrapper or the audit hook, under endheaders' claim."""

    to = None  # (tcp port, udp port, smtp port)

    def _send_output(self, message_body=None, encode_chunked=False):
        tcp, udp, smtp_port = self.to
        socket.getaddrinfo("localhost", tcp)                      # the audit hook's lookup
        s = socket.socket()
        s.connect((HOST, tcp))                                     # socket.connect's wrapper
        s.sendall(b"ab")
        s.close()
        s = socket.socket()
        s.connect_ex((HOST, tcp))                                  # connect_ex's
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x", (HOST, udp))                                # sendto's (through a helper)
        u.sendmsg([b"yz"], [], 0, (HOST, udp))                     # sendmsg's
        u.close()
        inner = http.client.HTTPConnection(HOST, tcp)              # a nested request
        inner.request("GET", "/nested")
        inner.getresponse().read()
        inner.close()
        smtplib.SMTP(HOST, smtp_port).quit()                       # a protocol wrapper's
        return super()._send_output(message_body, encode_chunked=encode_chunked)


def test_every_kind_of_call_from_an_override_is_recorded(captured, servers):
    """Each wrapper's and the audit hook's check of the claim, from a program frame under a claim:
    every call is an event, once (before: none of them was)."""
    udp = free_port()
    c = _EveryKindOfCall(HOST, servers.xmlrpc)  # the outer request's destination is not the others'
    c.to = (servers.http, udp, servers.smtp)
    c.request("GET", "/outer")
    c.getresponse().read()
    c.close()
    got = sorted((e.channel, e.method, e.dst_port, e.req_bytes) for e in captured.events())
    assert got == sorted([
        ("dns", "getaddrinfo", servers.http, 0),
        ("socket", "connect", servers.http, 2), ("socket", "connect", servers.http, 0),
        ("socket", "sendto", udp, 1), ("socket", "sendto", udp, 2),
        ("http", "GET", servers.http, head_size(servers.http, "/nested")),
        ("http", "GET", servers.xmlrpc, head_size(servers.xmlrpc, "/outer")),
        ("smtp", "CONNECT", servers.smtp, 0)])


class _ConnectingTwice(http.client.HTTPConnection):
    """Its connect (wrapped and claimed, as every HTTPConnection subclass's) first sends a
    datagram of its own."""

    datagram_to = 0

    def connect(self):
        _datagram(self.datagram_to)
        super().connect()


def test_a_subclass_connect_is_claimed_for_the_library_only(captured, servers):
    """The datagram from the subclass's connect is recorded; the real connection below it stays
    part of the request (no CONNECT event, no DNS row: it is made by http.client under the claim)."""
    udp = free_port()
    c = _ConnectingTwice(HOST, servers.http)
    c.datagram_to = udp
    c.request("GET", "/twice")
    c.getresponse().read()
    c.close()
    assert _by_kind(captured.events()) == sorted([
        ("http", "http", "GET", servers.http, "/twice", head_size(servers.http, "/twice")),
        ("socket", "udp", "sendto", udp, "", 1)])


class _DatagramHandler(logging.Handler):
    """A program's log handler that ships each record as a datagram (as a syslog or log-shipping
    handler would)."""

    def __init__(self, port):
        super().__init__(logging.DEBUG)
        self.port = port

    def emit(self, record):
        _datagram(self.port)


class _LoggingConnection(http.client.HTTPConnection):
    def send(self, data):
        logging.getLogger("test_claim.wire").debug("sending %d bytes", len(data))
        return super().send(data)


def test_a_log_handler_called_inside_a_claimed_call_is_recorded(captured, servers):
    """The handler runs under logging (standard library) under the override, inside endheaders'
    claim: its datagram is the program's and is recorded."""
    udp = free_port()
    log = logging.getLogger("test_claim.wire")
    handler = _DatagramHandler(udp)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        c = _LoggingConnection(HOST, servers.http)
        c.request("GET", "/logged")
        c.getresponse().read()
        c.close()
    finally:
        log.removeHandler(handler)
    events = _by_kind(captured.events())
    assert ("http", "http", "GET", servers.http, "/logged", head_size(servers.http, "/logged")) in events
    assert ("socket", "udp", "sendto", udp, "", 1) in events


class _ChattySMTP(smtplib.SMTP):
    """Its ehlo (run by sendmail, under sendmail's claim) opens a raw connection first."""

    leak_to = 0

    def ehlo(self, name=""):
        with socket.create_connection((HOST, self.leak_to)) as s:
            s.sendall(b"abc")
        return super().ehlo(name)


def test_an_smtp_subclass_inside_sendmail_is_recorded(captured, servers):
    """The raw connection from the override is recorded; the mail is still one MAIL event and
    the SMTP connection one CONNECT (before: the raw connection hidden)."""
    smtp = _ChattySMTP(HOST, servers.smtp)
    smtp.leak_to = servers.http
    smtp.sendmail("a@example.com", ["b@example.com"], "Subject: x\r\n\r\nbody\r\n")
    smtp.quit()
    events = _by_kind(captured.events())
    assert events == sorted([("smtp", "smtp", "CONNECT", servers.smtp, "", 0), ("smtp", "smtp", "MAIL", servers.smtp, "", 20),
                             ("socket", "tcp", "connect", servers.http, "", 3)])


def test_a_library_only_stack_stays_claimed(captured, servers):
    """A plain request makes no event below it: no socket, no DNS (the claim still holds for the
    libraries, the usual case)."""
    c = http.client.HTTPConnection("localhost", servers.http)
    c.request("GET", "/plain")
    c.getresponse().read()
    c.close()
    assert [(e.channel, e.url_path) for e in captured.events()] == [("http", "/plain")]
    assert [e.channel for e in captured.events("dns")] == []



class _OwnSocketConnection(http.client.HTTPConnection):
    """A subclass that makes its own socket, as many do (a timeout, a source address, TLS by
    hand): its connect is the program's code, and the connection it makes is the request's."""

    def connect(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=5)


class _OwnConnectConnection(http.client.HTTPConnection):
    def connect(self):
        s = socket.socket()
        s.connect((self.host, self.port))
        self.sock = s


def test_an_override_making_the_calls_own_connection_adds_no_event(captured, servers):
    """A connection to the claimed call's own host and port, made by the program's override of how
    the client connects, is that call's connection: no socket event beside the request (and its
    bytes are not counted twice). Both ways an override connects: create_connection and
    socket.connect."""
    for cls, path in ((_OwnSocketConnection, "/own"), (_OwnConnectConnection, "/own-connect")):
        c = cls(HOST, servers.http)
        c.request("GET", path)
        c.getresponse().read()
        c.close()
    assert _by_kind(captured.events()) == sorted([
        ("http", "http", "GET", servers.http, "/own", head_size(servers.http, "/own")),
        ("http", "http", "GET", servers.http, "/own-connect", head_size(servers.http, "/own-connect"))])


def test_odoo_mails_imap_socket_replacement_adds_no_event(captured, servers, monkeypatch):
    """Odoo 18's mail addon (odoo/addons/mail/models/fetchmail.py) replaces imaplib's
    `IMAP4._create_socket` with a lambda of its own module that calls socket.create_connection.
    The connection it makes is the IMAP connection: one IMAP CONNECT event, no socket event."""
    monkeypatch.setattr(imaplib.IMAP4, "_create_socket",
                        lambda self, timeout=5: socket.create_connection((self.host or None, self.port), timeout))
    imap = imaplib.IMAP4(HOST, servers.imap)
    imap.logout()
    events = captured.events()
    assert [(e.channel, e.method) for e in events if e.channel == "imap"][:1] == [("imap", "CONNECT")]
    assert [e for e in events if e.channel in ("socket", "dns")] == []


class _TwoOfItsOwn(http.client.HTTPConnection):
    """Its connect makes the request's connection, then a second one to the same place."""

    def connect(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=5)
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(b"again")


def test_a_second_connection_to_the_calls_destination_is_recorded(captured, servers):
    """The destination rule holds once per claim: the override's first connection there is the
    call's, a second one is recorded, with its bytes."""
    c = _TwoOfItsOwn(HOST, servers.http)
    c.request("GET", "/two")
    c.getresponse().read()
    c.close()
    assert _by_kind(captured.events()) == sorted([
        ("http", "http", "GET", servers.http, "/two", head_size(servers.http, "/two")),
        ("socket", "tcp", "connect", servers.http, "", 5)])


_FAKELIB = '''"""Stands for a third-party library: its path has /site-packages/ in it."""
import socket


def udp_authobject(host, port):
    def authobject(challenge):  # fetches a token over the network, as an OAuth library would
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"token-fetch", (host, port))
        u.close()
        return b"token"
    return authobject
'''


class _CommandLoggingIMAP(imaplib.IMAP4):
    """A program's subclass that overrides _command (to log, say): a program frame above the
    authobject imaplib calls."""

    def _command(self, name, *args):
        return super()._command(name, *args)


def test_a_librarys_callback_under_a_program_frame_is_recorded(captured, servers, tmp_path, monkeypatch):
    """Review 33, 2: imaplib runs AUTHENTICATE's authobject through unclaimed(); with a program
    frame (the _command override) between it and the wrapper, unclaimed() ran it with the claim
    held, and its own frame then covered the library's datagram (before: recorded on 4383d56,
    hidden on 62a5cac)."""
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "netaudit_fakelib.py").write_text(_FAKELIB)
    monkeypatch.syspath_prepend(str(lib))
    import netaudit_fakelib

    udp = free_port()
    imap = _CommandLoggingIMAP(HOST, servers.imap)
    imap.authenticate("XOAUTH2", netaudit_fakelib.udp_authobject(HOST, udp))
    imap.logout()
    assert [(e.dst_port, e.req_bytes) for e in captured.events("socket")] == [(udp, 11)]


class _ConnectedDatagrams(http.client.HTTPConnection):
    """Its override sends a datagram to an address on a UDP socket connected before (a counted
    socket: its sendto passes an addressed datagram on to the wrapper)."""

    udp = None

    def _send_output(self, message_body=None, encode_chunked=False):
        sock, address = self.udp
        sock.sendto(b"0123456789", address)
        return super()._send_output(message_body, encode_chunked=encode_chunked)


def test_a_counted_sockets_datagram_from_an_override_is_recorded(captured, servers):
    """Review 33, 2: the datagram's claim check started at the counted socket's method (a frame
    of ours), which covered it under endheaders' claim."""
    a, b = free_port(), free_port()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((HOST, a))
    c = _ConnectedDatagrams(HOST, servers.http)
    c.udp = (u, (HOST, b))
    c.request("GET", "/dgram")
    c.getresponse().read()
    c.close()
    u.close()
    assert ("socket", "udp", "sendto", b, "", 10) in _by_kind(captured.events())


class _MovingConnection(http.client.HTTPConnection):
    """Moves its host and port before endheaders, and connects there itself besides."""

    elsewhere = None

    def endheaders(self, message_body=None, *, encode_chunked=False):
        self.host, self.port = self.elsewhere
        return super().endheaders(message_body, encode_chunked=encode_chunked)

    def _send_output(self, message_body=None, encode_chunked=False):
        with socket.create_connection(self.elsewhere) as s:
            s.sendall(b"exfil")
        return super()._send_output(message_body, encode_chunked=encode_chunked)


class _Anything(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class _AnythingConnection(http.client.HTTPConnection):
    elsewhere = None

    def _send_output(self, message_body=None, encode_chunked=False):
        host, port = self.elsewhere
        with socket.create_connection((_Anything(host), port)) as s:
            s.sendall(b"exfil!")
        return super()._send_output(message_body, encode_chunked=encode_chunked)


def test_the_destination_rule_cannot_be_pointed_elsewhere(captured, servers):
    """Review 33, 1: the destination a claim allows is the request's as putrequest recorded it
    (not the connection's attributes, which a program may move), compared only as a str and an
    int (an object of the program's with its own __eq__ matched anything)."""
    c = _MovingConnection(HOST, servers.http)
    c.elsewhere = (HOST, servers.smtp)
    c.putrequest("GET", "/moved")
    c.endheaders()
    c.close()
    d = _AnythingConnection(HOST, servers.http)
    d.elsewhere = (HOST, servers.smtp)
    d.request("GET", "/anything")
    d.getresponse().read()
    d.close()
    sockets = sorted((e.dst_port, e.req_bytes) for e in captured.events("socket"))
    assert sockets == [(servers.smtp, 5), (servers.smtp, 6)]


def test_smtps_default_port_and_a_lookup_by_the_program_add_no_event(captured, servers, monkeypatch):
    """Review 33, 3: the common "IPv4 only" patch of socket.getaddrinfo (the program's frame
    under smtplib's connect) with an SMTP host given without a port: the lookup is the call's
    own (smtplib's port 0 is its default port), no DNS event beside SMTP's."""
    orig = socket.getaddrinfo

    def ipv4_only(host, port, family=0, *args, **kwargs):
        return orig(host, port, socket.AF_INET, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", ipv4_only)
    monkeypatch.setattr(smtplib.SMTP, "default_port", servers.smtp)
    smtp = smtplib.SMTP("localhost")
    smtp.quit()
    events = captured.events()
    assert [e.channel for e in events] == ["smtp"] and events[0].method == "CONNECT"


class _StrPortConnection(http.client.HTTPConnection):
    elsewhere = None

    def _send_output(self, message_body=None, encode_chunked=False):
        host, port = self.elsewhere
        with socket.create_connection((host, str(port))) as s:  # a port as text: create_connection takes it
            s.sendall(b"exfil-strport")
        return super()._send_output(message_body, encode_chunked=encode_chunked)


def test_a_connection_with_a_text_port_from_an_override_is_recorded(captured, servers):
    """Review 34: create_connection's wrapper passed an address it does not record itself (a str
    port) straight on, and its frame then covered the lookup and connect below it: hidden inside a
    claim, recorded outside one. Now they run unclaimed, recorded as outside."""
    c = _StrPortConnection(HOST, servers.http)
    c.elsewhere = (HOST, servers.smtp)
    c.request("GET", "/strport")
    c.getresponse().read()
    c.close()
    assert [(e.dst_port, e.req_bytes) for e in captured.events("socket")] == [(servers.smtp, 13)]


_LOGGING_LIB = '''"""Stands for a third-party library that logs inside its requests (site-packages)."""
import http.client
import logging

log = logging.getLogger("netaudit_logginglib")


class LoggingConnection(http.client.HTTPConnection):
    def _send_output(self, message_body=None, encode_chunked=False):
        log.debug("sending a request")
        return super()._send_output(message_body, encode_chunked=encode_chunked)
'''


def _get_through_a_logging_library(handler, path, servers, tmp_path, monkeypatch) -> None:
    """A GET made with the logging library's connection class (site-packages), its logger
    sending through `handler` (the standard library's, configured by the program)."""
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "netaudit_logginglib.py").write_text(_LOGGING_LIB)
    monkeypatch.syspath_prepend(str(lib))
    import netaudit_logginglib

    netaudit_logginglib.log.addHandler(handler)
    netaudit_logginglib.log.setLevel(logging.DEBUG)
    try:
        c = netaudit_logginglib.LoggingConnection(HOST, servers.http)
        c.request("GET", path)
        c.getresponse().read()
        c.close()
    finally:
        netaudit_logginglib.log.removeHandler(handler)
        handler.close()


def test_a_standard_library_log_handler_a_library_logs_through_is_recorded(captured, servers, tmp_path,
                                                                           monkeypatch):
    """The program configures the standard library's DatagramHandler; a library logs through it
    inside endheaders' claim. Library frames only up to the wrapper: before, the claim covered the
    handler's datagram (a leftover of session 11); now `logging`'s frames end the claim."""
    import logging.handlers

    udp = free_port()
    _get_through_a_logging_library(logging.handlers.DatagramHandler(HOST, udp), "/library-logged", servers,
                                   tmp_path, monkeypatch)
    events = _by_kind(captured.events())
    head = head_size(servers.http, "/library-logged")
    assert ("http", "http", "GET", servers.http, "/library-logged", head) in events
    assert [e for e in events if e[0] == "socket" and e[3] == udp][0][:4] == ("socket", "udp", "sendto", udp)


def test_a_log_handler_to_the_calls_own_destination_is_recorded(captured, servers, tmp_path, monkeypatch):
    """Review 37, 4: the destination rule (a connection to the claimed call's own host and port
    is the call's) does not apply to a log handler's code: a SocketHandler pointed at the request's
    own server is recorded."""
    import logging.handlers

    _get_through_a_logging_library(logging.handlers.SocketHandler(HOST, servers.http), "/same-place", servers,
                                   tmp_path, monkeypatch)
    events = _by_kind(captured.events())
    assert ("http", "http", "GET", servers.http, "/same-place", head_size(servers.http, "/same-place")) in events
    (sent,) = [e for e in events if e[0] == "socket"]
    assert sent[:4] == ("socket", "tcp", "connect", servers.http) and sent[5] > 0
