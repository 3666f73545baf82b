"""Raw sockets: one event per connection with the bytes sent and received (interceptor/socket_bytes).

A local "count" server on 127.0.0.1 reads a line "N M\\n", then N bytes, then answers M bytes
and closes: the client knows exactly what it sent and received, so the event's sizes are exact.
"""
from __future__ import annotations

import errno
import gc
import http.client
import json
import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interceptor import GUARD
from interceptor import socket_bytes

from interceptor_fixtures import captured, pythons, servers, tls_files  # noqa: F401  (fixtures)
from interceptor_servers import HOST, PRINTING, free_port, head_size

ROOT = Path(__file__).resolve().parents[2]


class _CountHandler(socketserver.StreamRequestHandler):
    def handle(self):
        try:
            n, m = map(int, self.rfile.readline().split())
        except ValueError:  # a client that hung up mid-line (the detach test)
            return
        got = 0
        while got < n:
            data = self.rfile.read(min(65536, n - got))
            if not data:
                return
            got += len(data)
        self.wfile.write(b"r" * m)


class _CountServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


_count_server: list[int] = []


@pytest.fixture
def count_port(servers):
    """Port of the count server, started once per test process (a daemon thread)."""
    if not _count_server:
        server = _CountServer((HOST, 0), _CountHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _count_server.append(server.server_address[1])
    return _count_server[0]


def _ask(n: int, m: int) -> bytes:
    return f"{n} {m}\n".encode() + b"q" * n


def _recv_all(sock) -> int:
    total = 0
    while True:
        data = sock.recv(4096)
        if not data:
            return total
        total += len(data)


def _socket_events(captured):
    return captured.events("socket")


def test_raw_tcp_is_one_event_with_bytes_sent_and_received(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    request = _ask(100_000, 12_345)
    sent = sock.send(request[:10])            # every send method counts
    sock.sendall(memoryview(request)[sent:])  # sized in bytes, not items
    received = _recv_all(sock)
    assert not _socket_events(captured), "emitted before close"
    sock.close()
    sock.close()  # a second close adds nothing
    (e,) = captured.events()
    assert received == 12_345
    assert (e.channel, e.protocol, e.method, e.error) == ("socket", "tcp", "connect", "")
    assert (e.req_bytes, e.resp_bytes) == (len(request), 12_345)
    assert (e.dst_ip, e.dst_port) == (HOST, count_port) and e.src_port > 0
    assert e.call_site.endswith(":test_raw_tcp_is_one_event_with_bytes_sent_and_received")
    assert e.fingerprint == ""  # no payload digest for raw sockets: nothing of the bytes is kept


def test_recv_into_recvfrom_and_connect_method(captured, count_port):
    sock = socket.socket()
    sock.connect((HOST, count_port))
    sock.sendall(_ask(10, 300))
    buf = bytearray(100)
    got = sock.recv_into(buf)
    got += len(sock.recvfrom(100)[0])
    got += sock.recvfrom_into(buf)[0]
    got += _recv_all(sock)
    with sock:
        pass
    (e,) = _socket_events(captured)
    assert got == 300 and (e.req_bytes, e.resp_bytes) == (len(_ask(10, 300)), 300)


def test_makefile_counts_through_socketio(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    f = sock.makefile("rwb")
    f.write(_ask(5000, 7000))
    f.flush()
    sock.close()  # the file still holds the connection: not closed yet
    assert not _socket_events(captured)
    assert len(f.read()) == 7000
    f.close()
    (e,) = _socket_events(captured)
    assert (e.req_bytes, e.resp_bytes) == (len(_ask(5000, 7000)), 7000)


def test_dup_shares_one_event_emitted_when_the_last_closes(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    twin = sock.dup()
    sock.sendall(_ask(10, 0)[:5])
    twin.sendall(_ask(10, 0)[5:])
    sock.close()
    assert not _socket_events(captured)
    assert _recv_all(twin) == 0
    twin.close()
    (e,) = _socket_events(captured)
    assert (e.req_bytes, e.resp_bytes) == (len(_ask(10, 0)), 0)


def test_collected_socket_is_recorded(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    sock.sendall(_ask(3, 4))
    assert _recv_all(sock) == 4
    del sock
    gc.collect()
    (e,) = _socket_events(captured)
    assert (e.req_bytes, e.resp_bytes) == (len(_ask(3, 4)), 4)


def test_detach_ends_the_event(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    sock.sendall(b"1 ")
    fd = sock.detach()  # what ssl's wrap_socket does to the raw socket it takes over
    os.close(fd)
    (e,) = _socket_events(captured)
    assert (e.req_bytes, e.resp_bytes) == (2, 0)


def test_non_blocking_connect_is_counted(captured, count_port):
    sock = socket.socket()
    sock.setblocking(False)
    assert sock.connect_ex((HOST, count_port)) in (0, 115, 36)  # 0 or EINPROGRESS (Linux, macOS)
    select.select([], [sock], [], 5)
    sock.setblocking(True)
    sock.sendall(_ask(20, 30))
    assert _recv_all(sock) == 30
    sock.close()
    (e,) = _socket_events(captured)
    assert (e.req_bytes, e.resp_bytes) == (len(_ask(20, 30)), 30)
    assert e.src_port > 0  # read at close for a connect that was in progress
    assert (e.status, e.error) == ("", "")  # it connected: no longer "in_progress"


def _refused_non_blocking():
    port = free_port()
    sock = socket.socket()
    sock.setblocking(False)
    if sock.connect_ex((HOST, port)) not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
        sock.close()
        pytest.skip("this system refuses a loopback connect at once: nothing is in progress")
    select.select([], [sock], [], 5)
    return sock, port


def test_non_blocking_connect_takes_the_outcome_the_program_reads_from_so_error(captured):
    sock, port = _refused_non_blocking()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED  # what the program sees
    sock.close()
    (e,) = _socket_events(captured)
    assert (e.status, e.error, e.dst_port, e.req_bytes) == ("", "ECONNREFUSED", port, 0)


def test_non_blocking_connect_closed_unread_is_settled_at_close(captured):
    sock, _ = _refused_non_blocking()
    sock.close()  # nobody asked SO_ERROR: the close does
    (e,) = _socket_events(captured)
    assert (e.status, e.error) == ("", "ECONNREFUSED")


def test_non_blocking_connect_whose_outcome_we_cannot_know_says_so(captured):
    sock, _ = _refused_non_blocking()
    socket.socket.getsockopt(sock, socket.SOL_SOCKET, socket.SO_ERROR)  # the base method: we do not see it
    sock.close()
    (e,) = _socket_events(captured)
    assert (e.status, e.error) == ("in_progress", "ENOTCONN")  # closed before it connected


def test_a_detached_connect_in_progress_leaves_its_error_to_the_new_owner(captured):
    sock, _ = _refused_non_blocking()
    fd = sock.detach()
    owner = socket.socket(fileno=fd)  # the program reads the outcome later, on the descriptor
    assert owner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    owner.close()
    (e,) = _socket_events(captured)
    assert (e.status, e.error) == ("in_progress", "")


def test_a_polling_program_is_one_attempt_with_its_outcome(captured, count_port):
    ok = socket.socket()
    ok.setblocking(False)
    answers = [ok.connect_ex((HOST, count_port))]
    while answers[-1] in (errno.EINPROGRESS, errno.EALREADY):
        select.select([], [ok], [], 5)
        answers.append(ok.connect_ex((HOST, count_port)))
    assert answers[-1] in (0, errno.EISCONN)
    ok.setblocking(True)
    ok.sendall(_ask(5, 7))
    assert _recv_all(ok) == 7
    ok.close()
    refused, port = _refused_non_blocking()
    assert refused.connect_ex((HOST, port)) == errno.ECONNREFUSED  # asked again: the outcome
    refused.close()
    events = _socket_events(captured)
    assert [(e.dst_port, e.status, e.error) for e in events] == [(count_port, "", ""), (port, "", "ECONNREFUSED")]
    assert (events[0].req_bytes, events[0].resp_bytes) == (len(_ask(5, 7)), 7)


def test_a_descriptor_closed_behind_the_socket_still_gives_its_event(captured):
    sock, _ = _refused_non_blocking()
    os.close(sock.fileno())
    with pytest.raises(OSError):
        sock.close()  # the program's own fault, as without the interceptor
    (e,) = _socket_events(captured)
    assert e.status == "in_progress"


def test_asyncio_connections_carry_their_outcome(captured, count_port):
    import asyncio

    refused = free_port()

    async def main():
        reader, writer = await asyncio.open_connection(HOST, count_port)
        writer.write(_ask(10, 20))
        assert len(await reader.readexactly(20)) == 20
        writer.close()
        await writer.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, refused)

    asyncio.run(main())
    ok, failed = sorted(_socket_events(captured), key=lambda e: e.dst_port != count_port)
    assert (ok.status, ok.error, ok.req_bytes, ok.resp_bytes) == ("", "", len(_ask(10, 20)), 20)
    assert ok.src_port > 0 and ok.call_site.endswith(":main")
    assert (failed.status, failed.error, failed.dst_port) == ("", "ECONNREFUSED", refused)


def test_connected_udp_is_one_event_and_sendto_one_per_datagram(captured, servers):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((HOST, 0))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(server.getsockname())
    u.send(b"12345")
    data, addr = server.recvfrom(100)
    server.sendto(b"abc", addr)  # the test's own server: one datagram event too
    assert u.recv(100) == b"abc"
    u.close()
    server.close()
    events = _socket_events(captured)
    assert [(e.protocol, e.method) for e in events] == [("udp", "sendto"), ("udp", "connect")]
    assert (events[1].req_bytes, events[1].resp_bytes) == (5, 3)


def test_datagrams_to_an_address_are_sized_attributed_and_carry_their_error(captured, servers):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((HOST, 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((HOST, 0))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert u.sendto(b"1234567", server.getsockname()) == 7
    assert u.sendto(b"12", 0, server.getsockname()) == 2
    assert u.sendmsg([b"abc", b"de"], [], 0, server.getsockname()) == 5
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(server.getsockname())  # a counted socket: a datagram to another address is its own event
    assert c.sendto(b"xyz", other.getsockname()) == 3
    with pytest.raises(OSError) as raised:
        u.sendto(b"x" * 70_000, server.getsockname())  # beyond a UDP datagram: EMSGSIZE
    c.close()
    events = _socket_events(captured)
    sends = [e for e in events if e.method == "sendto"]
    assert [(e.req_bytes, e.dst_port, e.error) for e in sends] == [
        (7, server.getsockname()[1], ""), (2, server.getsockname()[1], ""), (5, server.getsockname()[1], ""),
        (3, other.getsockname()[1], ""), (0, server.getsockname()[1], type(raised.value).__name__)]
    name = "test_datagrams_to_an_address_are_sized_attributed_and_carry_their_error"
    assert all(e.call_site.endswith(":" + name) and not e.self_egress for e in sends), sends
    for s in (u, server, other):
        s.close()


def test_sendto_on_a_connected_stream_names_its_peer(captured, count_port):
    client = socket.create_connection((HOST, count_port))  # one event of its own, at close
    assert client.sendto(_ask(3, 2), ("192.0.2.55", 53)) == len(_ask(3, 2))  # the kernel ignores the address
    assert _recv_all(client) == 2
    client.close()
    events = _socket_events(captured)
    assert [(e.method, e.dst_port) for e in events] == [("connect", count_port)]
    assert events[0].req_bytes == len(_ask(3, 2))  # counted for the connection, no event to 192.0.2.55
    raw = socket.socket(fileno=os.dup(socket.create_connection((HOST, count_port)).detach()))  # uncounted
    try:
        raw.sendto(_ask(1, 1), ("192.0.2.55", 53))
        assert _recv_all(raw) == 1
    finally:
        raw.close()
    sent = [e for e in _socket_events(captured) if e.method == "sendto"]
    assert [(e.dst_ip, e.dst_port, e.req_bytes) for e in sent] == [(HOST, count_port, len(_ask(1, 1)))]


def test_datagram_calls_refused_before_sending_are_no_event_and_keep_their_errors(captured, servers):
    import _socket

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = (HOST, free_port())
    for args, kwargs in [(("text", target), {}), ((b"x", (HOST, 70_000)), {}), ((), {"data": b"x", "address": target})]:
        with pytest.raises(Exception) as ours:
            u.sendto(*args, **kwargs)
        with pytest.raises(Exception) as theirs:
            _socket.socket.sendto(u, *args, **kwargs)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    u.close()
    assert not [e for e in _socket_events(captured) if e.method == "sendto" and e.dst_port != target[1]]
    assert not [e for e in _socket_events(captured) if e.method == "sendto" and e.error]


@pytest.mark.skipif(not hasattr(socket, "AF_NETLINK"), reason="Linux only")
def test_a_datagram_of_another_family_is_no_network_event(captured):
    n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    try:
        n.sendto(b"\x00" * 16, (0, 0))  # to the kernel: an (int, int) address, not a host and port
    except OSError:
        pass
    n.close()
    assert not _socket_events(captured)


def test_refused_connect_is_an_immediate_event(captured):
    port = free_port()
    sock = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        sock.connect((HOST, port))
    (e,) = _socket_events(captured)  # before the socket is closed
    assert (e.error, e.dst_port, e.req_bytes, e.resp_bytes) == ("ConnectionRefusedError", port, 0, 0)
    assert type(sock) is socket.socket  # never switched: nothing to count
    sock.close()
    assert len(_socket_events(captured)) == 1


def test_the_http_servers_count_of_a_request_head_is_the_bytes_it_was_sent(servers):
    """The tests' measure of a request head (interceptor_servers.head_size): what the server read
    of it, here two requests of known bytes on one kept-alive connection, the first with a body."""
    first = b"POST /head-probe HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX-Pad: abcdefghij\r\n\r\n"
    second = b"GET /head-probe-2?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((HOST, servers.http)) as s:
        for request in (first + b"body", second):
            s.sendall(request)
            got = b""
            while not got.endswith(b"ok:" + request.split(b" ")[1][:20]):
                data = s.recv(4096)
                assert data, "the server closed early"
                got += data
    assert (head_size(servers.http, "/head-probe"), head_size(servers.http, "/head-probe-2?q=1")) == (
        len(first), len(second))


def test_http_client_is_not_counted_twice(captured, servers):
    conn = http.client.HTTPConnection(HOST, servers.http)
    conn.request("POST", "/p", body=b"z" * 1000)
    body = conn.getresponse().read()
    assert type(conn.sock) is socket.socket  # the protocol wrapper's socket is never switched
    conn.close()
    (e,) = captured.events()
    # the head as the server read it and the body, once each: the socket layer below counted nothing
    assert (e.channel, e.req_bytes, e.resp_bytes) == ("http", head_size(servers.http, "/p") + 1000, len(body))


def test_faults_are_swallowed_and_counted(captured, count_port):
    sock = socket.create_connection((HOST, count_port))
    socket_bytes._OPEN[hash(sock)].req_bytes = None  # the counting step will fault
    faults = GUARD.faults
    assert sock.send(b"1 1\n") == 4
    assert GUARD.faults == faults + 1
    sock.close()
    with pytest.raises(OSError) as closed:  # the C method's own exception, untouched
        sock.send(b"x")
    assert closed.value.errno == 9  # EBADF, as for a plain socket


_EXIT_PROGRAM = PRINTING + """
KEEP = socket.create_connection(("127.0.0.1", %(port)d))
KEEP.sendall(b"7 9\\n" + b"q" * 7)
got = 0
while got < 9:
    got += len(KEEP.recv(100))
print("received", got, flush=True)
"""


# Python 3.12 starts no thread once the interpreter is exiting; 3.11 and 3.13 do. Added to the
# program, this makes any Python refuse as 3.12 does, from the moment the exit handlers run (ours
# run after it: atexit calls the last registered first).
_NO_THREAD_AT_EXIT = """
import atexit, interceptor.native
def _refuse(*args):
    raise RuntimeError("can't create new thread at interpreter shutdown")
atexit.register(lambda: setattr(interceptor.native, "_start_new_thread", _refuse))
"""


@pytest.mark.parametrize("threads_at_exit", [True, False], ids=["as-this-python", "none-at-exit"])
def test_socket_never_closed_is_recorded_at_exit(count_port, tmp_path, threads_at_exit):
    """The connection is emitted only at exit, so the sink's writer thread starts only then: where
    no thread can start (Python 3.12, found by running the suite on it), the flush at exit writes
    the event itself. It was lost there, with no gap row."""
    program = tmp_path / "never_closed.py"
    program.write_text(_EXIT_PROGRAM % {"root": str(ROOT), "port": count_port,
                                        "fields": ("channel", "req_bytes", "resp_bytes", "dst_port")}
                       + ("" if threads_at_exit else _NO_THREAD_AT_EXIT))
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # nothing "ignored" at shutdown either
    lines = r.stdout.splitlines()
    assert lines[0] == "received 9"
    assert [json.loads(x) for x in lines[1:]] == [["socket", 11, 9, count_port]]


# Registered before the interceptor is installed, this exit handler runs after ours (atexit calls
# the last registered first): the program asks the refused connect's outcome after our flush.
_ASKS_AFTER_OUR_EXIT = """
import atexit, socket
def _ask_so_error():
    import __main__
    print("so_error", __main__.REFUSED.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
atexit.register(_ask_so_error)
"""

_IN_PROGRESS_AT_EXIT = _ASKS_AFTER_OUR_EXIT + PRINTING + """
import errno, select
def connected():  # a non-blocking connect, until it is up
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", %(port)d))
    select.select([], [s], [], 5)
    return s
def ask(s, n, m):  # the count server: n bytes up, m back
    s.setblocking(True)
    s.sendall(b"%%d %%d\\n" %% (n, m) + b"q" * n)
    got = 0
    while got < m:
        got += len(s.recv(100))
OK = connected()
ask(OK, 7, 9)
ORIGINAL = connected()
DUPPED = ORIGINAL.dup()  # outlives the socket that connected, so the weak reference is dead at exit
del ORIGINAL
ask(DUPPED, 3, 4)
REFUSED = socket.socket()
REFUSED.setblocking(False)
print("in progress", REFUSED.connect_ex(("127.0.0.1", %(refused)d)) in (errno.EINPROGRESS, errno.EWOULDBLOCK), flush=True)
select.select([], [REFUSED], [], 5)
"""


def test_a_connect_in_progress_at_exit_is_settled_there(count_port, tmp_path):
    """Non-blocking connects the program never settled (no SO_ERROR read, no connect again) and
    never closed. At exit, the one that connected and moved data is no longer "in_progress" and
    has its source address (before: "in_progress", source port 0); so is one whose socket is gone
    (a dup() outlived it), by the bytes it moved. The refused one keeps
    "in_progress": its SO_ERROR is not read there, since reading clears it, and the program (here
    an exit handler that runs after ours; a forked child, a daemon thread) may still ask."""
    program = tmp_path / "in_progress_at_exit.py"
    refused = free_port()
    program.write_text(_IN_PROGRESS_AT_EXIT % {"root": str(ROOT), "port": count_port, "refused": refused,
                                               "fields": ("dst_port", "status", "error", "req_bytes", "resp_bytes",
                                                          "src_port")})
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    if lines[0] != "in progress True":
        pytest.skip("this system refuses a loopback connect at once: nothing is in progress")
    assert lines[-1] == f"so_error {errno.ECONNREFUSED}"  # the program still gets its answer
    rows = [json.loads(x) for x in lines[1:-1]]
    ok, dupped = sorted((row for row in rows if row[0] == count_port), key=lambda row: -row[3])
    assert ok[1:5] == ["", "", 11, 9] and ok[5] > 0
    assert dupped[1:5] == ["", "", 7, 4]  # its socket gone: connected by the bytes it moved
    assert [row[:3] for row in rows if row[0] == refused] == [[refused, "in_progress", ""]]


# The main thread returns; a thread it left makes the process's first calls afterwards (a server
# thread, a pool's job nobody waited for), then runs on until the process is terminated.
_LATE_PROGRAM = PRINTING + """
def late():
    time.sleep(0.3)
    for _ in range(3):
        try:
            socket.create_connection(("127.0.0.1", %(refused)d))
        except OSError:
            pass
    time.sleep(60)

threading.Thread(target=late).start()
"""
# Python 3.12 refuses new threads once the main thread has returned; 3.11 and 3.13 do not. This
# makes any Python refuse them from then on (threading's own exit callbacks run at that moment).
_NO_THREAD_AFTER_MAIN = """
import interceptor.native
def _refuse(*args):
    raise RuntimeError("can't create new thread at interpreter shutdown")
threading._register_atexit(lambda: setattr(interceptor.native, "_start_new_thread", _refuse))
"""


@pytest.mark.parametrize("python", [pytest.param(None, id="main-gone-as-in-3.12"),
                                    *(pytest.param(p, id=os.path.basename(p)) for p in pythons())])
def test_calls_made_after_the_main_thread_returned_are_written_while_the_process_runs(tmp_path, python):
    """Review 18, M1: where no writer thread can start (3.12, once the main thread has returned), the
    calls of a thread left running stayed queued until exit, and a SIGTERM lost them without a gap
    row. Now the calling thread writes them itself: they are out before the process is stopped."""
    program = tmp_path / "late.py"
    program.write_text(_LATE_PROGRAM % {"root": str(ROOT), "refused": free_port(),
                                        "fields": ("channel", "error", "dst_port")}
                       + (_NO_THREAD_AFTER_MAIN if python is None else ""))
    proc = subprocess.Popen([python or sys.executable, str(program)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()  # SIGTERM: no exit handler runs, what is still queued is lost
        proc.wait(10)
    assert [json.loads(x)[1] for x in lines] == ["ConnectionRefusedError"] * 3, lines


_FORK_PROGRAM = PRINTING + """
def exchange(sock, n, m):
    sock.sendall(b"%%d %%d\\n" %% (n, m) + b"q" * n)
    got = 0
    while got < m:
        got += len(sock.recv(100))

sock = socket.create_connection(("127.0.0.1", %(port)d))
exchange(sock, 1, 2)
pid = os.fork()
if pid == 0:  # the child: its copy of the parent's connection is not its event
    sock.close()
    own = socket.create_connection(("127.0.0.1", %(port)d))
    exchange(own, 3, 4)
    own.close()
    sys.exit(0)
os.waitpid(pid, 0)
print("parent", os.getpid(), flush=True)  # before the close: the writer thread prints after it
sock.close()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_forgets_the_parents_connections(count_port, tmp_path):
    program = tmp_path / "forks.py"
    program.write_text(_FORK_PROGRAM % {"root": str(ROOT), "port": count_port,
                                        "fields": ("pid", "req_bytes", "resp_bytes")})
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    parent = int(next(x for x in lines if x.startswith("parent ")).split()[1])
    events = sorted(json.loads(x) for x in lines if not x.startswith("parent "))
    child = next(e[0] for e in events if e[0] != parent)
    assert events == sorted([[parent, len(b"1 2\n") + 1, 2], [child, len(b"3 4\n") + 3, 4]])


# ---- TLS over a counted socket ----------------------------------------------------------------

class _TLSCountServer(_CountServer):
    context = None
    handshake_delay = 0.0   # seconds the server waits before its side of the handshake

    def get_request(self):
        conn, addr = super().get_request()
        time.sleep(self.handshake_delay)
        return self.context.wrap_socket(conn, server_side=True), addr


_tls_server: list[int] = []


@pytest.fixture
def tls_port(servers, tls_files):
    """A count server speaking TLS with a throwaway self-signed certificate (openssl CLI)."""
    import ssl

    if not _tls_server:
        server = _TLSCountServer((HOST, 0), _CountHandler)
        server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.context.load_cert_chain(*tls_files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _tls_server.append(server.server_address[1])
    return _tls_server[0]


def _client_context():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a throwaway certificate: these tests count bytes, not trust
    return ctx


def test_tls_over_a_raw_socket_stays_one_event_with_application_bytes(captured, tls_port):
    raw = socket.create_connection((HOST, tls_port))
    tls = _client_context().wrap_socket(raw, server_hostname="localhost")
    tls.sendall(_ask(50_000, 20_000))
    got = 0
    buf = bytearray(1000)
    got += tls.recv_into(buf)
    while True:
        data = tls.recv(4096)
        if not data:
            break
        got += len(data)
    assert not _socket_events(captured), "the wrap ended the raw event"
    tls.close()
    (e,) = _socket_events(captured)
    assert got == 20_000
    assert (e.protocol, e.dst_port, e.error) == ("tls", tls_port, "")
    assert (e.req_bytes, e.resp_bytes) == (len(_ask(50_000, 20_000)), 20_000)


def test_tls_makefile_and_self_connecting_sslsocket(captured, tls_port):
    tls = _client_context().wrap_socket(socket.socket(), server_hostname="localhost")
    tls.connect((HOST, tls_port))
    f = tls.makefile("rwb")
    f.write(_ask(300, 400))
    f.flush()
    assert len(f.read()) == 400
    f.close()
    tls.close()
    (e,) = _socket_events(captured)
    assert (e.protocol, e.req_bytes, e.resp_bytes) == ("tls", len(_ask(300, 400)), 400)


def test_failed_tls_handshake_ends_the_event_with_the_error(captured, servers):
    import ssl

    raw = socket.create_connection((HOST, servers.http))  # an HTTP server: no TLS there
    with pytest.raises((ssl.SSLError, ConnectionError)) as failed:
        _client_context().wrap_socket(raw, server_hostname="localhost")
    (e,) = _socket_events(captured)
    assert (e.protocol, e.error) == ("tls", type(failed.value).__name__)


def test_counted_socket_still_pickles_for_multiprocessing(captured, count_port):
    from multiprocessing.reduction import ForkingPickler

    sock = socket.create_connection((HOST, count_port))
    assert type(sock) is not socket.socket and repr(sock).startswith("<socket.socket fd=")
    with ForkingPickler.loads(ForkingPickler.dumps(sock)) as copy:  # as without the auditor
        assert type(copy) is socket.socket
    with pytest.raises(TypeError, match="cannot pickle 'socket' object"):  # plain pickle: the same error
        __import__("pickle").dumps(sock)
    sock.close()


_HANDED_TO_A_CHILD = PRINTING + """
SOCK = socket.create_connection(("127.0.0.1", %(port)d))   # counted before multiprocessing is imported
import copy, multiprocessing, pickle

def child(conn):
    s = conn.recv()                      # the socket, rebuilt from the parent's
    s.sendall(b"5 3\\n" + b"q" * 5)
    print("child got", len(s.recv(100)), flush=True)

for how in (pickle.dumps, copy.copy):   # elsewhere, it fails as the program's own socket would
    try:
        how(SOCK)
    except TypeError as exc:
        print("refused:", exc, flush=True)
ours, theirs = multiprocessing.Pipe()
p = multiprocessing.get_context("fork").Process(target=child, args=(theirs,), daemon=True)
p.start()
ours.send(SOCK)                          # multiprocessing's pickler: the socket's own reducer
p.join(30)
print("child exit", p.exitcode, flush=True)
"""


@pytest.mark.parametrize("audited", [True, False], ids=["audited", "bare"])
def test_a_socket_counted_before_multiprocessing_is_imported_goes_to_a_child(count_port, tmp_path, audited):
    """multiprocessing pickles a socket by its exact class, and learns the counting classes at the
    first connection after it is imported. A socket counted before that reached pickle's generic
    path and failed ("cannot pickle 'socket' object", helper 36): the program broke where, without
    us, its child got the socket. The bare run shows what the program does without the auditor."""
    program = tmp_path / "hand_over.py"
    text = _HANDED_TO_A_CHILD % {"root": str(ROOT), "port": count_port, "fields": ("channel", "req_bytes")}
    if not audited:
        text = text.replace("interceptor.install(", "(lambda **kw: None)(")
    program.write_text(text)
    r = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "child got 3" in lines and "child exit 0" in lines, r.stdout + r.stderr
    assert lines.count("refused: cannot pickle 'socket' object") == 2, r.stdout


def test_a_self_connecting_sslsocket_whose_handshake_fails_records_the_error(captured):
    """An SSLSocket that connects itself is tracked from its TCP connect, which succeeds; its
    handshake comes after. Review 25: one that failed left the event without an error (a good
    "tls" connection). Now the handshake's exception is the event's error; the caller's is its own."""
    import ssl

    srv = socket.create_server((HOST, 0))
    port = srv.getsockname()[1]

    def answer():
        conn, _ = srv.accept()
        conn.recv(1000)
        conn.sendall(b"no TLS here\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    tls = _client_context().wrap_socket(socket.socket(), server_hostname="localhost")
    with pytest.raises(ssl.SSLError):
        tls.connect((HOST, port))
    tls.close()
    srv.close()
    (e,) = _socket_events(captured)
    assert (e.protocol, e.method, e.dst_port, e.error) == ("tls", "connect", port, "SSLError")


def test_a_handshake_a_non_blocking_socket_must_retry_is_no_error(captured, tls_port):
    """SSLWantReadError from a non-blocking handshake asks the caller to try again: not a failure."""
    import ssl

    tls = _client_context().wrap_socket(socket.socket(), server_hostname="localhost",
                                        do_handshake_on_connect=False)
    # The server answers late, so the first try cannot complete: without the delay, a client
    # thread descheduled between its ClientHello and its read (a loaded machine) found the whole
    # server flight there and completed at once, and the test saw no retry at all.
    _TLSCountServer.handshake_delay = 0.2
    try:
        tls.connect((HOST, tls_port))
        tls.setblocking(False)
        wants = 0
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                wants += 1
                select.select([tls], [], [], 5)
            except ssl.SSLWantWriteError:
                wants += 1
                select.select([], [tls], [], 5)
    finally:
        _TLSCountServer.handshake_delay = 0.0
    tls.close()
    (e,) = _socket_events(captured)
    assert wants and (e.protocol, e.error) == ("tls", "")
