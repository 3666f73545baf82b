"""A sink writer that keeps the ledger's work out of the audited process.

`ProcessWriter(path, key_dir)` is a drop-in writer for interceptor.Sink, like `LedgerWriter`,
but the hashing, encoding and SQLite appends run in a helper process it starts on first use:
`python -m ledger.process_writer`, the receiver of `netaudit run`'s relay (ledger.relay) bound in
a private 0700 folder. The audited process's writer thread only turns each record into one relay
row (metadata and the payload's SHA-256: interceptor.relay) and sends it as a local datagram.

Why: the writer thread's ledger work (~10 us of Python per event) shares the GIL and the CPU
caches with the audited threads. Measured with `python -m bench interceptor`, an in-process writer
adds about twice as much to the calling thread's CPU per requests GET as one that only relays.

Lifetime and fail-open:
- The helper lives as long as a pipe to it is open: the process that started it holds the write
  end, and so do the children it forks afterwards (an Odoo master and its workers share one
  helper). When the last holder exits, the helper records every datagram already sent, then exits.
  It ignores ^C and runs in its own session, so a terminal's signals do not cut that drain short.
- `close()` in the process that started it closes the pipe and waits for the helper's drain, so
  what was written is in the ledger when `close()` returns.
- If the helper cannot start (no usable Python at sys.executable, the ledger cannot be opened),
  or it died and cannot be started again, the writer falls back to an in-process `LedgerWriter`
  for the rest of the process's life: slower, never blind. `mode` and `fallback_reason` say which.
- A send that fails because the helper is gone raises, so the sink counts the batch as missed;
  the next write starts a new helper, and the misses come back as a gap row through it.
"""
from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ledger.errors import LedgerError

SOCKET_NAME = "w.sock"
MAX_SOCKET_PATH = 100        # AF_UNIX paths are limited to 108 bytes on Linux
START_TIMEOUT_S = 20.0       # the helper imports apsw and cryptography and opens the ledger
CLOSE_TIMEOUT_S = 30.0       # close() waits this long for the helper's drain
EXIT_TIMEOUT_S = 10.0        # and the interpreter's exit this long
READY = "ready"
_GONE = (errno.ECONNREFUSED, errno.ENOENT)


def _core_root() -> str:
    """The folder holding our top-level packages (so the helper imports this very code)."""
    import ledger

    return os.path.dirname(os.path.dirname(os.path.abspath(ledger.__file__)))


class ProcessWriter:
    """write_records / write_gap for interceptor.Sink, appended by a helper process."""

    def __init__(self, path: str | None = None, key_dir: str | None = None,
                 start_timeout: float = START_TIMEOUT_S):
        from ledger.ledger import default_key_dir, default_ledger_path

        self.path = os.path.abspath(path or default_ledger_path())
        self.key_dir = os.path.abspath(key_dir or default_key_dir())
        self.start_timeout = start_timeout
        self.on_miss = None           # the sink's miss(), set by interceptor.Sink
        self.mode = "process"         # or "in-process" after a fallback
        self.fallback_reason = ""
        self.helper_pid = 0
        self._relay = None            # interceptor.relay.RelayWriter to the helper's socket
        self._proc = None             # the helper, in the process that started it
        self._pipe = None             # write end of the helper's lifetime pipe
        self._folder = None
        self._owner = 0               # pid of the process that started the helper
        self._fallback = None         # ledger.sink.LedgerWriter after a fallback
        self._starts = 0
        self._base_seq = 0            # the ledger's last seq when the helper started
        self._sent = 0                # events this process relayed to that helper
        self._sent_t1 = self._sent_t2 = 0
        self._relay_missed_n = 0
        self._closed = False

    # ---- the sink's writer interface ------------------------------------------------------------

    def write_records(self, records) -> None:
        relay = self._relay_or_fallback()
        if relay is None:
            return self._fallback.write_records(records)
        self._relay_missed_n = 0
        self._sending(relay, lambda: relay.write_records(records))
        sent = len(records) - self._relay_missed_n  # a tail the relay could not send is a miss already
        if sent > 0:
            self._sent += sent
            self._sent_t1 = self._sent_t1 or records[0].ts
            self._sent_t2 = max(self._sent_t2, records[-1].ts)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        relay = self._relay_or_fallback()
        if relay is None:
            return self._fallback.write_gap(dropped, t1_ns, t2_ns, reason)
        self._sending(relay, lambda: relay.write_gap(dropped, t1_ns, t2_ns, reason))

    def sync(self, timeout: float = 5.0) -> bool:
        """True once the helper has appended everything this process sent it (Sink.flush calls
        this, so a flush means "in the ledger" here as with the in-process writer)."""
        relay = self._relay
        if relay is None:
            return True  # nothing in flight: never started, fallen back (synchronous), or closed
        try:
            return relay.sync(timeout)
        except OSError:
            return False

    def start(self) -> "ProcessWriter":
        """Start the helper now (e.g. in a server's master process, before it forks workers that
        will then share it); otherwise the first write starts it. A failure falls back, as there."""
        if self._fallback is None and self._relay is None:
            try:
                self._start()
            except LedgerError:
                pass
        return self

    def after_fork(self) -> None:
        """In a forked child: keep the helper (and the inherited pipe, which keeps it alive for
        this child too), with a socket and a hello of the child's own."""
        self._sent = self._sent_t1 = self._sent_t2 = 0  # the child counts what it sends itself
        if self._relay is not None:
            self._relay.after_fork()
        if self._fallback is not None:
            self._fallback.after_fork()

    def at_exit(self) -> None:
        """The interpreter is exiting (after the sink's last flush): in the process that started
        the helper, wait for its drain, so the rows are in the ledger when this process ends."""
        self._closed = True
        if self._owner == os.getpid():
            self._stop_helper(EXIT_TIMEOUT_S)

    def close(self) -> None:
        """Stop sending; in the process that started the helper, let it drain and wait for it."""
        self._closed = True
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
        if self._fallback is not None:
            self._fallback.close()
        if self._owner == os.getpid():
            self._stop_helper(CLOSE_TIMEOUT_S)

    # ---- the helper -----------------------------------------------------------------------------

    def _relay_or_fallback(self):
        """The relay to a running helper (started if need be), or None: write in process."""
        if self._fallback is None and self._relay is None:
            if self._closed:  # closed, or exiting: no new helper now
                raise LedgerError("the ledger writer is closed")
            try:
                self._start()
            except LedgerError as exc:
                self._fall_back(str(exc))
        return None if self._fallback is not None else self._relay

    def _relay_missed(self, ts: int, reason: str, n: int = 1, until: int = 0) -> None:
        self._relay_missed_n += n
        if self.on_miss is not None:
            self.on_miss(ts, reason, n=n, until=until)
        else:
            raise OSError(f"{reason}: {n} record(s) not relayed")

    def _sending(self, relay, send) -> None:
        try:
            send()
        except OSError as exc:
            if exc.errno in _GONE:  # the helper is gone: the next write starts another
                self._relay = None
                relay.close()
                self._count_lost()
            raise

    def _count_lost(self) -> None:
        """Events this process relayed to a helper that died before appending them: the ledger
        tells how many of ours it holds since that helper started; the rest is a miss (gap row)."""
        sent, self._sent = self._sent, 0
        if not sent:
            return
        lost = sent
        try:
            import apsw

            con = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                con.setbusytimeout(5000)
                lost -= con.execute(
                    "SELECT count(*) FROM egress_log WHERE chain_seq > ? AND pid = ? AND channel != 'audit'",
                    (self._base_seq, os.getpid())).fetchall()[0][0]
            finally:
                con.close()
        except Exception:
            pass  # the ledger cannot say: count every event sent to the dead helper
        if lost > 0 and self.on_miss is not None:
            self.on_miss(self._sent_t1, "WriterProcessGone", n=lost, until=self._sent_t2)

    def _start(self):
        from interceptor.relay import RelayWriter

        if self._owner == os.getpid():
            self._stop_helper(0.0)  # ours, gone or unreachable: reap it, drop its folder
        self._starts += 1
        folder = tempfile.mkdtemp(prefix="netaudit-writer-")
        if len(os.path.join(folder, SOCKET_NAME)) > MAX_SOCKET_PATH:  # a long TMPDIR
            os.rmdir(folder)
            folder = tempfile.mkdtemp(prefix="netaudit-writer-", dir="/tmp")
        sock = os.path.join(folder, SOCKET_NAME)
        env = {k: v for k, v in os.environ.items() if k != "NETAUDIT_RELAY"}  # not audited itself
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_core_root(), env.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledger.process_writer", sock, self.path, self.key_dir],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, close_fds=True, start_new_session=True)
        except (OSError, ValueError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise LedgerError(f"cannot start the ledger writer process: {exc}") from None
        line = _read_line(proc.stdout, self.start_timeout)
        proc.stdout.close()
        word, _, seq = line.partition(" ")
        if word != READY or not seq.isdigit():
            proc.kill()
            proc.wait()
            proc.stdin.close()
            shutil.rmtree(folder, ignore_errors=True)
            why = line[len("error: "):] if line.startswith("error: ") else (line or "no answer")
            raise LedgerError(f"the ledger writer process did not start: {why}")
        relay = RelayWriter(sock)
        relay.on_miss = self._relay_missed
        self._base_seq, self._sent, self._sent_t1, self._sent_t2 = int(seq), 0, 0, 0
        self._proc, self._pipe, self._folder, self._owner = proc, proc.stdin, folder, os.getpid()
        self.helper_pid = proc.pid
        self._relay = relay
        return relay

    def _stop_helper(self, timeout: float) -> None:
        proc, pipe, folder = self._proc, self._pipe, self._folder
        self._proc = self._pipe = self._folder = None
        self._owner = 0
        if pipe is not None:
            try:
                pipe.close()  # the helper drains what was sent, then exits
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if timeout:
                    proc.kill()  # it stays in the helper's own session; never block an exit on it
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _fall_back(self, reason: str) -> None:
        """Write in process from now on (the ledger's own faults are then counted as usual)."""
        from ledger.sink import LedgerWriter

        self.mode, self.fallback_reason = "in-process", reason
        self._fallback = LedgerWriter(self.path, self.key_dir)


def _read_line(stream, timeout: float) -> str:
    """One line from a pipe within `timeout` seconds, or ""."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            break
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


# ---- the helper process -------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """python -m ledger.process_writer SOCKET LEDGER KEY_DIR: receive until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 3:
        print("error: usage: python -m ledger.process_writer SOCKET LEDGER KEY_DIR", flush=True)
        return 2
    sock, path, key_dir = argv
    try:
        from ledger.ledger import Ledger
        from ledger.relay import RelayReceiver

        led = Ledger.open(path, key_dir=key_dir, create=True)
        receiver = RelayReceiver(led, sock).start()
    except Exception as exc:  # one line for the starting process, which falls back and says why
        print(f"error: {type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
        return 2
    print(f"{READY} {led.last()[0]}", flush=True)  # rows after this seq are the helper's
    try:
        while os.read(sys.stdin.fileno(), 4096):  # until every holder of the pipe has exited
            pass
    except OSError:
        pass
    receiver.stop()
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)  # an owner killed before its cleanup leaves none
    receiver.ledger.close()  # the one it writes to (it reopens the path if the file was replaced)
    if receiver.ledger is not led:
        led.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
