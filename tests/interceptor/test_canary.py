"""Canary: secrets sent through every channel never reach the ledger, its -wal or the key dir.

Every value below carries a unique marker: bodies, Authorization and Cookie header values, query
values, SMTP message text, and passwords for SMTP, POP3, IMAP and FTP. After the calls the
ledger must hold their events (so the test can fail by recording nothing), and no byte sequence
of any marker may appear in the ledger file, its -wal, or any non-key file of the key dir.
The same calls through the relay of `netaudit run` (interceptor.relay) put no marker into the
datagrams a child sends to the parent.
"""
from __future__ import annotations

import ftplib
import http.client
import imaplib
import io
import os
import poplib
import smtplib
import socket
import threading
import urllib.request
import uuid
import xmlrpc.client

import pytest

import interceptor
from interceptor_fixtures import captured, ledger_sink, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST

try:
    import requests
except ImportError:  # optional (the `bench` extra): urllib carries the same canaries then
    requests = None

KEY_FILES = {"ed25519.key", "hmac.salt"}  # secrets by design; everything else is scanned


def test_no_marker_reaches_the_evidence(ledger_sink, servers):
    sink, writer, path, key_dir = ledger_sink()
    m = _markers()
    _canary_calls(servers, m)
    assert sink.flush(10)
    led = writer.ledger
    rows = list(led.rows())
    methods = {(r["channel"], r["method"]) for r in rows}
    assert {("http", "GET"), ("http", "POST"), ("http", "PUT"), ("smtp", "MAIL"), ("pop3", "PASS"),
            ("imap", "LOGIN"), ("ftp", "LOGIN"), ("ftp", "STOR"), ("socket", "connect")} <= methods
    assert any(r["fingerprint"] for r in rows if r["channel"] == "smtp")
    assert any("Authorization" in r["header_names"] for r in rows)
    sink.close(5)

    evidence = [path, path + "-wal"]
    for root, _, files in os.walk(key_dir):
        evidence += [os.path.join(root, f) for f in files if f not in KEY_FILES]
    scanned = 0
    for p in evidence:
        if not os.path.exists(p):
            continue
        data = open(p, "rb").read()
        scanned += len(data)
        for name, marker in m.items():
            for form in {marker.encode(), marker.encode("utf-16-le"), marker.lower().encode()}:
                assert form not in data, f"{name} marker found in {p}"
    assert scanned > 4096


def _markers() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    return {k: f"CANARY{k.upper()}{tag}" for k in (
        "body", "auth", "cookie", "query", "smtptext", "smtppw", "poppw", "imappw", "ftppw", "rpc", "raw", "form",
        "pathparam", "encodedquery")}


def _canary_calls(servers, m: dict[str, str]) -> None:
    """One call per channel, each carrying its markers in a body, a header value, a query value
    or a password."""
    if requests is not None:
        s = requests.Session()
        s.get(servers.url(f"/search?q={m['query']}&page=1"),
              headers={"Authorization": f"Bearer {m['auth']}", "Cookie": f"sid={m['cookie']}"})
        s.post(servers.url("/post"), data=m["body"].encode(), auth=("user", m["auth"]))
        s.post(servers.url("/form"), data={"field": m["form"]})
        s.close()
    else:
        urllib.request.urlopen(urllib.request.Request(
            servers.url(f"/search?q={m['query']}&page=1"),
            headers={"Authorization": f"Bearer {m['auth']}", "Cookie": f"sid={m['cookie']}"})).read()
        urllib.request.urlopen(servers.url("/form"), data=f"field={m['form']}".encode()).read()
    urllib.request.urlopen(urllib.request.Request(
        servers.url(f"/u?token={m['query']}"), data=m["body"].encode(), headers={"Cookie": m["cookie"]})).read()
    conn = http.client.HTTPConnection(HOST, servers.http)
    # a session token as a path parameter, a query name whose "=" is encoded (helper 39, M4)
    conn.request("GET", f"/cart;jsessionid={m['pathparam']}/items?page=1&token%3D{m['encodedquery']}")
    conn.getresponse().read()
    conn.request("PUT", f"/put?k={m['query']}", body=io.BytesIO(m["body"].encode() * 100),
                 headers={"Content-Length": str(len(m["body"]) * 100), "X-Token": m["auth"]})
    conn.getresponse().read()
    conn.close()
    xmlrpc.client.ServerProxy(f"http://{HOST}:{servers.xmlrpc}/RPC2").length(m["rpc"])

    with smtplib.SMTP(HOST, servers.smtp) as smtp:
        smtp.login("user", m["smtppw"])
        smtp.sendmail("a@example.com", ["b@example.com"], f"Subject: {m['smtptext']}\r\n\r\n{m['smtptext']}")
    pop = poplib.POP3(HOST, servers.pop3)
    pop.user("user")
    pop.pass_(m["poppw"])
    pop.quit()
    imap = imaplib.IMAP4(HOST, servers.imap)
    imap.login("user", m["imappw"])
    imap.logout()
    ftp = ftplib.FTP()
    ftp.connect(HOST, servers.ftp)
    ftp.login("user", m["ftppw"])
    ftp.storbinary(f"STOR {m['body']}.txt", io.BytesIO(m["body"].encode()))
    ftp.quit()
    raw = socket.create_connection((HOST, servers.http))
    raw.sendall(f"GET /raw?x={m['raw']} HTTP/1.1\r\nHost: h\r\nAuthorization: {m['auth']}\r\n\r\n".encode())
    raw.recv(1024)
    raw.close()


def test_no_marker_crosses_the_relay(tmp_path, servers):
    """`netaudit run`'s children send their records to the parent: the datagrams themselves carry
    metadata and a payload digest, never a marker. A socket bound here taps the channel."""
    from interceptor import Sink
    from interceptor.relay import MAX_DATAGRAM, RelayWriter, decode

    path = str(tmp_path / "relay.sock")
    tap = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap.bind(path)
    datagrams: list[bytes] = []
    stop = threading.Event()

    def drain():
        tap.settimeout(0.05)
        while True:
            try:
                data = tap.recv(MAX_DATAGRAM + 1)
            except TimeoutError:
                if stop.is_set():
                    return
                continue
            datagrams.append(data)
            msg = decode(data, b"salt")
            if msg.kind == "sync":  # answer as the real receiver does, so that flush() completes
                (tmp_path / f"synced-{msg.pid}-{msg.detail['token']}").touch()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    writer = RelayWriter(path)
    sink = Sink(writer, linger_s=0)
    writer.on_miss = sink.miss
    previous = interceptor.use_sink(sink)
    m = _markers()
    try:
        _canary_calls(servers, m)
        assert sink.flush(10)
    finally:
        interceptor.use_sink(previous)
        sink.close(5)
        stop.set()
        reader.join(5)
        tap.close()
    assert sink.dropped_total == 0
    events = [e for d in datagrams for e in decode(d, b"salt").events]
    assert any(decode(d, b"salt").kind == "sync" for d in datagrams)
    methods = {(e.channel, e.method) for e in events}
    assert {("http", "GET"), ("http", "POST"), ("http", "PUT"), ("smtp", "MAIL"), ("pop3", "PASS"),
            ("imap", "LOGIN"), ("ftp", "LOGIN"), ("ftp", "STOR"), ("socket", "connect")} <= methods
    assert any(e.fingerprint for e in events if e.channel == "smtp")
    assert any("Authorization" in e.header_names for e in events)
    data = b"".join(datagrams)
    assert len(data) > 2048
    for name, marker in m.items():
        for form in {marker.encode(), marker.encode("utf-16-le"), marker.lower().encode()}:
            assert form not in data, f"{name} marker found in a relay datagram"
