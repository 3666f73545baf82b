"""Capture through real client libraries against real local servers: one call = one event."""
from __future__ import annotations

import http.client
import io
import socket
import urllib.error
import urllib.request
import xmlrpc.client

import pytest

import interceptor

from interceptor_fixtures import captured, ledger_sink, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, free_port, head_size



def _requests():
    """requests is optional (the `bench` extra): the tests that drive it skip without it."""
    return pytest.importorskip("requests")


def test_http_client_get_is_one_event_with_names_only(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("GET", "/items/7?token=v1&page=2#frag", headers={"X-Api-Key": "k"})
    body = conn.getresponse().read()
    conn.close()
    assert body == b"ok:/items/7?token=v1&pa"
    (e,) = captured.events()
    assert (e.channel, e.protocol, e.method, e.host, e.url_path) == ("http", "http", "GET", HOST, "/items/7")
    assert e.query_keys == ("token", "page")
    assert e.status == "200" and e.error == ""
    assert "X-Api-Key" in e.header_names and "Host" not in e.header_names
    assert (e.dst_ip, e.dst_port) == (HOST, servers.http) and e.src_port > 0
    # bytes out: the request's head as the server read it (no body)
    assert e.resp_bytes == len(body) and e.req_bytes == head_size(servers.http, "/items/7?token=v1&page=2#frag")
    assert e.fingerprint == ""
    assert e.module == "tests" or e.module.startswith("test")
    assert e.call_site.endswith(":test_http_client_get_is_one_event_with_names_only")
    assert e.pid > 0 and not e.self_egress and e.duration_ms > 0


def test_keep_alive_requests_session_one_event_per_call(captured, servers):
    requests = _requests()
    s = requests.Session()
    for i in range(3):
        assert s.get(servers.url(f"/r{i}?q={i}")).status_code == 200
    s.close()
    events = captured.events(direction="egress")
    assert [e.url_path for e in events] == ["/r0", "/r1", "/r2"]  # no socket or dns rows beside them
    assert all(e.channel == "http" and e.query_keys == ("q",) for e in events)


def test_payload_fingerprint_streams_and_matches_across_clients(captured, servers):
    requests = _requests()
    payload = b"x" * 100_000 + b"end"
    requests.post(servers.url("/a"), data=payload)
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("POST", "/b", body=io.BytesIO(payload), headers={"Content-Length": str(len(payload))})
    conn.getresponse().read()
    conn.request("POST", "/c", body=iter([payload[:5000], payload[5000:]]), encode_chunked=True)
    conn.getresponse().read()
    urllib.request.urlopen(urllib.request.Request(servers.url("/d"), data=payload)).read()
    requests.post(servers.url("/e"), data=b"other")
    conn.close()
    a, b, c, d, other = captured.events()
    assert a.fingerprint and len(a.fingerprint) == 32
    assert a.fingerprint == b.fingerprint == c.fingerprint == d.fingerprint != other.fingerprint
    # each: its head as the server read it (each client's own headers) and the body once, however streamed
    heads = [head_size(servers.http, path) for path in ("/a", "/b", "/c")]
    assert [a.req_bytes, b.req_bytes, c.req_bytes] == [head + len(payload) for head in heads]


def test_urllib_and_xmlrpc(captured, servers):
    with urllib.request.urlopen(servers.url("/u?a=1")) as r:
        assert r.read().startswith(b"ok")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(servers.url("/missing"))
    proxy = xmlrpc.client.ServerProxy(f"http://{HOST}:{servers.xmlrpc}/RPC2")
    assert proxy.add(2, 3) == 5
    u, missing, rpc = captured.events()
    assert (u.method, u.url_path, u.status) == ("GET", "/u", "200")
    assert missing.status == "404"
    assert (rpc.method, rpc.url_path, rpc.status) == ("POST", "/RPC2", "200") and rpc.fingerprint


def test_refused_connection_is_an_event_and_the_error_propagates(captured):
    requests = _requests()
    port = free_port()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{HOST}:{port}/x", timeout=2)
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(HOST, port).request("GET", "/y")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port))
    events = captured.events()
    assert [e.channel for e in events] == ["http", "http", "socket"]
    # requests (urllib3) raises its own NewConnectionError from inside http.client's send
    assert [e.error for e in events] == ["NewConnectionError", "ConnectionRefusedError", "ConnectionRefusedError"]
    assert all(e.dst_port == port for e in events)


def test_raw_sockets_udp_and_dns(captured, servers):
    s = socket.socket()
    s.connect((HOST, servers.http))
    s.close()
    s = socket.socket()
    assert s.connect_ex((HOST, free_port())) != 0
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"datagram", (HOST, free_port()))
    u.close()
    socket.getaddrinfo("localhost", 80)
    ok, refused, udp, dns = captured.events()
    assert (ok.channel, ok.protocol, ok.method, ok.dst_port, ok.error) == ("socket", "tcp", "connect", servers.http, "")
    assert refused.error == "ECONNREFUSED"
    assert (udp.protocol, udp.method) == ("udp", "sendto")
    assert (dns.channel, dns.host, dns.dst_port) == ("dns", "localhost", 80)


def test_an_smtp_transaction_driven_by_hand_is_recorded(captured, servers):
    """mail(), rcpt() and data() called by the program: three events, DATA with the message's size
    and fingerprint (before: the CONNECT alone). Inside sendmail they stay silent: one MAIL event."""
    import smtplib

    message = b"Subject: by hand\r\n\r\nbody"
    with smtplib.SMTP(HOST, servers.smtp) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.com")
        smtp.rcpt("b@example.com")
        smtp.data(message)
        smtp.sendmail("a@example.com", ["b@example.com"], message)
    summary = [(e.method, e.status, e.req_bytes) for e in captured.events("smtp")]
    assert summary == [("CONNECT", "220", 0), ("MAIL", "250", 0), ("RCPT", "250", 0),
                       ("DATA", "250", len(message)), ("MAIL", "250", len(message))]
    data, sent = [e for e in captured.events("smtp") if e.req_bytes]
    assert data.fingerprint == sent.fingerprint != ""


def test_mail_protocols(captured, servers):
    import ftplib
    import imaplib
    import poplib
    import smtplib

    with smtplib.SMTP(HOST, servers.smtp) as smtp:
        smtp.login("user", "pw")
        smtp.sendmail("a@example.com", ["b@example.com"], "Subject: t\r\n\r\nbody")
    pop = poplib.POP3(HOST, servers.pop3)
    pop.user("user")
    pop.pass_("pw")
    pop.retr(1)
    pop.quit()
    imap = imaplib.IMAP4(HOST, servers.imap)
    imap.login("user", "pw")
    imap.select("INBOX")
    imap.logout()
    ftp = ftplib.FTP()
    ftp.connect(HOST, servers.ftp)
    ftp.login("user", "pw")
    ftp.storbinary("STOR f.txt", io.BytesIO(b"data" * 100))
    got = []
    ftp.retrbinary("RETR f.txt", got.append)
    ftp.quit()
    events = captured.events()
    summary = [(e.channel, e.method, e.status) for e in events]
    assert summary[:3] == [("smtp", "CONNECT", "220"), ("smtp", "AUTH", "235"), ("smtp", "MAIL", "250")]
    assert ("pop3", "CONNECT", "+OK") in summary and ("pop3", "PASS", "+OK") in summary
    assert ("pop3", "RETR", "+OK") in summary
    assert ("imap", "LOGIN", "OK") in summary and ("imap", "SELECT", "OK") in summary
    assert ("ftp", "LOGIN", "230") in summary and ("ftp", "STOR", "226") in summary
    assert ("ftp", "RETR", "226") in summary
    assert not [e for e in events if e.channel in ("socket", "dns")], "protocol calls leaked to the socket layer"
    mail = events[2]
    assert mail.fingerprint and mail.req_bytes > 0
    stor = next(e for e in events if e.method == "STOR")
    assert stor.req_bytes == 400 and stor.fingerprint
    retr = next(e for e in events if e.channel == "ftp" and e.method == "RETR")
    assert retr.resp_bytes == sum(map(len, got))


def test_wsgi_middleware_records_ingress(captured):
    requests = _requests()
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from interceptor.wsgi import AuditMiddleware

    def app(environ, start_response):
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"got ", str(len(data)).encode()]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass

    srv = make_server(HOST, 0, AuditMiddleware(app), handler_class=Quiet)
    import threading

    threading.Thread(target=srv.handle_request, daemon=True).start()
    r = requests.post(f"http://{HOST}:{srv.server_port}/in/path?secret=1", data=b"payload",
                      headers={"Cookie": "c=1"})
    assert r.status_code == 201 and r.content == b"got 7"
    srv.server_close()
    (ing,) = captured.events(direction="ingress")
    (eg,) = captured.events("http", direction="egress")
    assert (ing.method, ing.url_path, ing.query_keys, ing.status) == ("POST", "/in/path", ("secret",), "201")
    assert "Cookie" in ing.header_names and ing.resp_bytes == 5 and ing.src_ip == HOST
    assert ing.fingerprint == eg.fingerprint != ""


def test_results_and_exceptions_pass_through_untouched(captured, servers):
    faults = interceptor.GUARD.faults
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("GET", "/same")
    r = conn.getresponse()
    assert isinstance(r, http.client.HTTPResponse) and r.read() == b"ok:/same"
    conn.close()
    with pytest.raises(http.client.CannotSendRequest):
        c = http.client.HTTPConnection(HOST, servers.http)
        c.request("GET", "/1")
        c.request("GET", "/2")  # a response is pending: http.client's own error
    c.close()
    assert interceptor.GUARD.faults == faults  # no fault needed for either
    seen = sorted((e.url_path, e.status, e.error) for e in captured.events("http"))
    assert seen == [("/1", "", ""), ("/2", "", "CannotSendRequest"), ("/same", "200", "")]


def test_double_install_is_harmless(captured, servers):
    requests = _requests()
    assert interceptor.install(sink=interceptor.Sink(interceptor.NullWriter())) is False
    assert interceptor.current_sink() is captured.sink
    assert http.client.HTTPConnection.putrequest.__wrapped__.__module__ == "http.client"
    requests.get(servers.url("/once"))
    assert len(captured.events()) == 1


def test_undecodable_path_is_recorded_not_dropped(ledger_sink, servers):
    """A lone surrogate in a URL (from undecodable bytes) must not make the ledger reject the batch."""
    sink, writer, path, _ = ledger_sink()
    with pytest.raises(UnicodeEncodeError):  # http.client's own error, with or without us
        c = http.client.HTTPConnection(HOST, servers.http)
        c.request("GET", "/bad/\udcff")
    c.close()
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("GET", "/good")
    conn.getresponse().read()
    conn.close()
    assert sink.flush(5)
    paths = [r["url_path"] for r in writer.ledger.rows() if r["channel"] == "http"]
    assert paths == ["/bad/?", "/good"] and sink.dropped_total == 0
