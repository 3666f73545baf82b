"""Real local servers on 127.0.0.1 for the interceptor tests: HTTP, XML-RPC, SMTP, POP3, IMAP, FTP.

Each is a small standard-library server on an ephemeral port, run in a daemon thread. They speak
just enough of their protocol for the real client libraries to complete their calls.
"""
from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

HOST = "127.0.0.1"


def _serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# The size of each request head the HTTP servers here read, as they read it: (server port, request
# target as received, path and query) -> one size per request, in order. Cleared as a test starts
# (interceptor_fixtures.servers).
_HEADS: dict[tuple[int, str], list[int]] = {}
_HEADS_LOCK = threading.Lock()


class _CountingReader:
    """A request handler's rfile, counting the bytes the handler reads from it (data passes as is)."""

    def __init__(self, fp):
        self._fp = fp
        self.count = 0

    def read(self, *args):
        data = self._fp.read(*args)
        self.count += len(data)
        return data

    def read1(self, *args):
        data = self._fp.read1(*args)
        self.count += len(data)
        return data

    def readline(self, *args):
        data = self._fp.readline(*args)
        self.count += len(data)
        return data

    def readinto(self, buffer):
        n = self._fp.readinto(buffer)
        self.count += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self._fp, name)


class _HeadCounting:
    """Mixed into a BaseHTTPRequestHandler: measures each request's head (its request line, its
    header lines and the blank line ending them) by the bytes the handler read from the connection
    between the start of the request and the end of its headers, and keeps that size in _HEADS."""

    def setup(self):
        super().setup()
        self.rfile = _CountingReader(self.rfile)

    def handle_one_request(self):
        self._head_start = self.rfile.count  # the previous request on the connection was read to its end
        super().handle_one_request()

    def parse_request(self):
        parsed = super().parse_request()  # reads the header lines, up to and with the blank line
        if parsed:
            size = self.rfile.count - self._head_start
            with _HEADS_LOCK:
                _HEADS.setdefault((self.server.server_address[1], self.path), []).append(size)
        return parsed


def forget_heads() -> None:
    """Forget the request heads the servers read so far (a test starts)."""
    with _HEADS_LOCK:
        _HEADS.clear()


def head_size(port: int, target: str, timeout: float = 5.0) -> int:
    """The size in bytes of the head of the request for `target` (the request target as sent: path,
    query) that the HTTP server here on `port` (HTTP, HTTPS or XML-RPC) read since the test began:
    request line, header lines and blank line, counted by the server as it read them. Waits up to
    `timeout` for the server to read it (a request sent and never answered may still be in transit).
    Several requests for the target: their heads must have had one size."""
    deadline = time.monotonic() + timeout
    while True:
        with _HEADS_LOCK:
            sizes = list(_HEADS.get((port, target), ()))
        if sizes:
            break
        assert time.monotonic() < deadline, f"the server on port {port} read no request for {target!r}"
        time.sleep(0.01)
    assert len(set(sizes)) == 1, f"requests for {target!r} with heads of different sizes: {sizes}"
    return sizes[0]


class _HTTPHandler(_HeadCounting, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True

    def _reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding") == "chunked":
            while True:
                line = self.rfile.readline().strip()
                if not line:  # the client gave up on its body (tests abort some on purpose)
                    self.close_connection = True
                    return
                size = int(line, 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        body = b"ok:" + self.path.encode()[:20]
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _reply

    def log_message(self, *args):
        pass


class _QuietErrors:
    """Clients in these tests hang up on purpose (refused, reset, pending-request cases)."""

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ThreadingTCP(_QuietErrors, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HTTPServer(_QuietErrors, http.server.ThreadingHTTPServer):
    daemon_threads = True


class _LineHandler(socketserver.StreamRequestHandler):
    """Base of the text protocols: greet, then answer each line."""

    greeting = b""

    def send(self, text: str):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        if self.greeting:
            self.wfile.write(self.greeting + b"\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            if self.answer(line.decode("latin-1").rstrip("\r\n")) is False:
                return


class SMTPHandler(_LineHandler):
    greeting = b"220 localhost ESMTP test"

    def answer(self, line):
        cmd = line.split(" ", 1)[0].upper()
        if cmd == "EHLO":
            self.send("250-localhost")
            self.send("250 AUTH PLAIN LOGIN")
        elif cmd == "HELO":
            self.send("250 localhost")
        elif cmd == "AUTH":
            self.send("235 2.7.0 Authentication successful")
        elif cmd == "DATA":
            self.send("354 go ahead")
            while self.rfile.readline().rstrip(b"\r\n") != b".":
                pass
            self.send("250 2.0.0 queued")
        elif cmd == "QUIT":
            self.send("221 bye")
            return False
        else:
            self.send("250 ok")


class POP3Handler(_LineHandler):
    greeting = b"+OK test POP3 ready"

    def answer(self, line):
        cmd = line.split(" ", 1)[0].upper()
        if cmd == "STAT":
            self.send("+OK 1 20")
        elif cmd == "RETR":
            self.send("+OK 20 octets")
            self.send("Subject: hi")
            self.send("")
            self.send("hello there")
            self.send(".")
        elif cmd == "QUIT":
            self.send("+OK bye")
            return False
        else:
            self.send("+OK")


class IMAPHandler(_LineHandler):
    greeting = b"* OK test IMAP4rev1 ready"

    def answer(self, line):
        tag, _, rest = line.partition(" ")
        cmd = rest.split(" ", 1)[0].upper()
        if cmd == "CAPABILITY":
            self.send("* CAPABILITY IMAP4rev1 AUTH=PLAIN")
        elif cmd == "SELECT":
            self.send("* 1 EXISTS")
        elif cmd == "AUTHENTICATE":
            self.send("+ ")
            self.rfile.readline()  # the client's answer (its authobject's), not checked
        elif cmd == "LOGOUT":
            self.send("* BYE")
            self.send(f"{tag} OK done")
            return False
        self.send(f"{tag} OK {cmd} done")


class FTPHandler(_LineHandler):
    greeting = b"220 test FTP ready"

    def answer(self, line):
        cmd, _, arg = line.partition(" ")
        cmd = cmd.upper()
        if cmd == "USER":
            self.send("331 password please")
        elif cmd == "PASS":
            self.send("230 logged in")
        elif cmd == "PASV":
            self.data = socket.create_server((HOST, 0))
            p = self.data.getsockname()[1]
            self.send(f"227 Entering Passive Mode (127,0,0,1,{p >> 8},{p & 255})")
        elif cmd in ("RETR", "STOR", "LIST", "NLST"):
            self.send("150 opening data connection")
            conn, _ = self.data.accept()
            with conn:
                if cmd == "STOR":
                    while conn.recv(65536):
                        pass
                else:
                    conn.sendall(b"file contents\r\n")
            self.data.close()
            self.send("226 transfer complete")
        elif cmd == "QUIT":
            self.send("221 bye")
            return False
        else:
            self.send("200 ok")


class Servers:
    """Start every server once; `.http`, `.xmlrpc`, `.smtp`, `.pop3`, `.imap`, `.ftp` are ports."""

    def __init__(self):
        self._servers = []
        h = self._add(_HTTPServer((HOST, 0), _HTTPHandler))
        self.http = h.server_address[1]

        class _RPCHandler(_HeadCounting, SimpleXMLRPCRequestHandler):
            def log_message(self, *args):
                pass

        rpc = SimpleXMLRPCServer((HOST, 0), requestHandler=_RPCHandler, logRequests=False, allow_none=True)
        rpc.register_function(lambda a, b: a + b, "add")
        rpc.register_function(lambda s: len(s), "length")
        self.xmlrpc = self._add(rpc).server_address[1]
        self.smtp = self._add(_ThreadingTCP((HOST, 0), SMTPHandler)).server_address[1]
        self.pop3 = self._add(_ThreadingTCP((HOST, 0), POP3Handler)).server_address[1]
        self.imap = self._add(_ThreadingTCP((HOST, 0), IMAPHandler)).server_address[1]
        self.ftp = self._add(_ThreadingTCP((HOST, 0), FTPHandler)).server_address[1]

    def _add(self, server):
        self._servers.append(_serve(server))
        return server

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.http}{path}"

    def close(self):
        for s in self._servers:
            s.shutdown()
            s.server_close()


# How the tests' programs (run in a subprocess) begin: the interceptor installed, writing each event's `fields` as a JSON
# line on stdout (a gap row as ["gap", ...]).
PRINTING = """
import json, os, socket, sys, threading, time
sys.path.insert(0, %(root)r)
import interceptor

class PrintWriter:
    salt = None
    def write_batch(self, events):
        for e in events:
            print(json.dumps([getattr(e, f) for f in %(fields)r]), flush=True)
    def write_gap(self, *args):
        print(json.dumps(["gap", *args]), flush=True)

interceptor.install(sink=interceptor.Sink(PrintWriter()))
"""


def self_signed(directory) -> tuple[str, str] | None:
    """A throwaway self-signed certificate and key for 127.0.0.1 in `directory` (openssl CLI), or
    None where the openssl command is missing."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        return None
    cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class _HTTPSServer(_HTTPServer):
    """TLS on each accepted connection, in its own thread (one stalled handshake stalls no other)."""

    context = None

    def finish_request(self, request, client_address):
        request.settimeout(10)
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            request.close()
            return
        super().finish_request(request, client_address)


def https(cert: str, key: str) -> int:
    """The HTTP server's twin speaking TLS (keep-alive, the same replies); its port."""
    import ssl

    server = _HTTPSServer((HOST, 0), _HTTPHandler)
    server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.context.load_cert_chain(cert, key)
    return _serve(server).server_address[1]


# An HTTP proxy's CONNECT: one line and headers in, "200", then bytes relayed both ways. It runs
# in a process of its own: its own connections upstream, closed whenever the client's end goes,
# are no events of the tests' process (in a thread here, they landed in a later test's sink).
_TUNNEL_PROGRAM = r"""
import select, socket, socketserver, sys

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        ends = [self.request, upstream]
        try:
            while True:
                ready, _, _ = select.select(ends, [], [], 10)
                if not ready:
                    return
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.request else self.request).sendall(data)
        finally:
            upstream.close()

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
_tunnel: list[int] = []


def tunnel_proxy() -> int:
    """A local HTTP proxy that serves CONNECT (http.client's set_tunnel, urllib3's HTTPS proxying),
    in a process of its own, started once; its port."""
    if not _tunnel:
        import atexit
        import subprocess
        import sys

        proc = subprocess.Popen([sys.executable, "-c", _TUNNEL_PROGRAM], stdout=subprocess.PIPE, text=True)
        atexit.register(proc.kill)
        _tunnel.append(int(proc.stdout.readline()))
    return _tunnel[0]


def datagram(port: int) -> None:
    """One UDP datagram (1 byte) to HOST:port: the smallest call a test's program code can make."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"p", (HOST, port))
    u.close()


def free_port() -> int:
    """A port with nothing listening (for refused connections)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
