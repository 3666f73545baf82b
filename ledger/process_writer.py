"""A sink writer that keeps the ledger's work out of the audited process.

`ProcessWriter(path, key_dir)` is a drop-in writer for interceptor.Sink, like `LedgerWriter`,
but the hashing, encoding and SQLite appends run in a helper process it starts on first use:
`python -m ledger.process_writer`, the receiver of `netaudit run`'s relay (ledger.relay) bound in
a private 0700 folder. The audited process's writer thread only turns each record into one relay
row (metadata and the payload's SHA-256: interceptor.relay) and sends it as a local datagram.

Why: the writer thread's ledger work (~10 us of Python per event) shares the GIL and the CPU
caches with the audited threads; relaying costs the audited process less (see the README's
interceptor benchmark, and the note of the commit that added this module).

Lifetime and fail-open:
- The helper lives as long as a pipe to it is open: the process that started it holds the write
  end, and so do the children it forks afterwards (a server that calls start() in its master
  shares one helper with its workers: the Odoo addon does so for the databases named with -d;
  another database's helper starts at a worker's first call to it). When the last holder exits, the helper appends every datagram already sent, then
  exits. It ignores SIGINT and SIGTERM and runs in its own session, so neither a terminal's ^C
  nor a service manager's stop cuts that drain short; nothing here ever kills it.
- `Sink.flush()` (and so the interpreter's exit) waits until the helper has appended what this
  process sent (a `sync` through the relay): a flush means "in the ledger", as in process.
  `close()` also waits a little (CLOSE_TIMEOUT_S) for the helper to exit.
- If the helper cannot start (no usable Python at sys.executable, the ledger cannot be opened),
  or it died and cannot be started again, the writer falls back to an in-process `LedgerWriter`
  for the rest of the process's life, the batch at hand included: slower, never blind. `mode` and
  `fallback_reason` say which.
- A helper found out of reach (a send or a flush fails with ECONNREFUSED/ENOENT: it died, or a
  /tmp cleaner removed its folder while it runs): this process lets go of its pipe and, once the
  helper is settled (the ledger holds all this process relayed to it, or it has exited: an
  exited helper's appends are all in), counts what the ledger does not hold (events and gap
  counts after this process's hello there) as a miss. Until then no new helper is started (it
  would get rows of the same pid and blur the count), up to SETTLE_TIMEOUT_S; the next write
  then starts one, and the misses come back as a gap row through it (at exit too: the exit
  flush tries twice). _held says where this count cannot be exact, and why.
- Fork-safe: a fork (in another thread) while a helper starts never leaves the child holding
  that helper's pipe (see _START_LOCK).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from interceptor import native
from ledger.errors import LedgerError

SOCKET_NAME = "w.sock"
MAX_SOCKET_PATH = 100        # AF_UNIX paths are limited to 108 bytes on Linux
START_TIMEOUT_S = 20.0       # the helper imports apsw and cryptography and opens the ledger
CLOSE_TIMEOUT_S = 5.0        # close() waits this long for the helper to exit (never kills it)
SETTLE_TIMEOUT_S = 5.0       # a helper out of reach gets this long to append what it holds, or exit
READY = "ready"
_GONE = (errno.ECONNREFUSED, errno.ENOENT)
# The standard library's own, also where gevent patched it (interceptor.native): the sink's writer
# thread, which starts and watches the helper, is a real OS thread, and gevent's Popen there
# fails ("child watchers are only available on the default loop").
_Popen = native.original(subprocess, "Popen")
_FORK_EXEC = native.original(subprocess, "_fork_exec") if hasattr(subprocess, "_fork_exec") else None
_TimeoutExpired = native.original(subprocess, "TimeoutExpired")
_DefaultSelector = native.original(selectors, "DefaultSelector")
_poll = native.original(select, "poll")


def _popen(*args, **kwargs):
    """The standard library's Popen, also where gevent patched subprocess: there (Python 3.11+)
    gevent sets `subprocess._fork_exec`, which that Popen calls, to None ("look like a pure Python
    version", gevent/subprocess.py), so the saved one is put back for the call. gevent's own Popen
    never reads it; our calls are one at a time (under _START_LOCK)."""
    if _FORK_EXEC is None or subprocess._fork_exec is _FORK_EXEC:
        return _Popen(*args, **kwargs)
    current, subprocess._fork_exec = subprocess._fork_exec, _FORK_EXEC
    try:
        return _Popen(*args, **kwargs)
    finally:
        subprocess._fork_exec = current


def _core_root() -> str:
    """The folder holding our top-level packages (so the helper imports this very code)."""
    import ledger

    return os.path.dirname(os.path.dirname(os.path.abspath(ledger.__file__)))


# ---- fork safety ---------------------------------------------------------------------------------
# A helper's lifetime pipe must be held only by processes that know they hold it: a child forked
# (by another thread) while a helper is being started would otherwise inherit the new pipe with
# no owner, and keep that helper alive as long as it lives. So the Popen (where the pipe is made)
# and the moment the started helper becomes the writer's are done under _START_LOCK, which a fork
# waits for (os.register_at_fork below); a helper between the two is in _STARTING, and a forked
# child closes its copies of that helper's pipes at once: it never had that helper.
_START_LOCK = native.RLock()
_STARTING: dict[int, tuple] = {}   # id(proc) -> (proc, pidfd), helpers being started here


def _before_fork() -> None:
    _START_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _START_LOCK.release()


def _after_fork_in_child() -> None:
    global _START_LOCK
    _START_LOCK = native.RLock()  # the parent's holder (the forking thread) is this thread
    starting = list(_STARTING.values())
    _STARTING.clear()
    for proc, pidfd in starting:
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except Exception:
                pass
        _close_fd(pidfd)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _pidfd_open(pid: int) -> int:
    """A descriptor that becomes readable when the helper exits (Linux 5.3+), or -1. Opened while
    the helper is our unreaped child, so it names that process, never a later one with its pid;
    a forked child inherits it, and so can tell too."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _close_fd(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


@dataclasses.dataclass
class _Sent:
    """What this process relayed to one helper: counted against the ledger if the helper is lost."""
    events: int = 0
    gaps: int = 0          # misses, in gap messages
    t1: int = 0
    t2: int = 0
    inflight: int = 0      # sends not yet returned: the helper is not settled before they have

    def returned(self, events: int, gaps: int, t1: int, t2: int) -> None:
        self.inflight = max(0, self.inflight - 1)
        if events or gaps:
            self.events += events
            self.gaps += gaps
            self.t1 = self.t1 or t1
            self.t2 = max(self.t2, t2)


@dataclasses.dataclass(eq=False)
class _Unreachable:
    """A helper this process can no longer send to (dead, or its socket's path removed), and what
    this process relayed to it: counted against the ledger once it is settled (_settle)."""
    pid: int
    proc: subprocess.Popen | None   # in the process that started it (poll() is exact there)
    pidfd: int
    folder: str | None
    base_seq: int
    ledger_id: str
    t0: int
    sent: _Sent
    relay: object          # the relay it was sent through: a send still in flight is credited here

    def exited(self) -> bool:
        if self.pidfd >= 0:
            poll = _poll()
            poll.register(self.pidfd, select.POLLIN)
            return bool(poll.poll(0))
        if self.proc is not None:
            return self.proc.poll() is not None
        try:  # no pidfd (an older kernel) in a forked child: by pid, which a new process may reuse
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return True  # another user's process has that pid now: ours is gone
        return False

    def release(self) -> None:
        _close_fd(self.pidfd)
        self.pidfd = -1
        if self.proc is not None and self.proc.poll() is not None and self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)  # the helper removes it too, as it exits


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
        self._pidfd = -1              # readable once the helper has exited (-1: none)
        self._folder = None
        self._ledger_id = ""          # the ledger the helper opened (it may reopen a replaced file)
        self._t0 = 0                  # time_ns before this process's first send to the helper
        self._unreachable: list[_Unreachable] = []  # helpers out of reach, not yet counted
        # The writer thread (a write) and a flushing thread (sync) may both find a helper gone:
        # it is let go once, and each helper out of reach is counted once.
        self._settle_lock = native.Lock()
        self._owner = 0               # pid of the process that started the helper
        self._fallback = None         # ledger.sink.LedgerWriter after a fallback
        self._base_seq = 0            # the ledger's last seq when the helper started
        self._sent = _Sent()          # what this process relayed to that helper
        self._relay_missed_n = 0
        self._closed = False

    # ---- the sink's writer interface ------------------------------------------------------------

    def write_records(self, records) -> None:
        relay = self._relay_or_fallback()
        if relay is None:
            return self._fallback.write_records(records)
        self._relay_missed_n = 0
        self._send_counted(relay, relay.write_records, (records,),  # a tail not sent is a miss already:
                           lambda: (len(records) - self._relay_missed_n, 0, records[0].ts, records[-1].ts))

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        relay = self._relay_or_fallback()
        if relay is None:
            return self._fallback.write_gap(dropped, t1_ns, t2_ns, reason)
        self._send_counted(relay, relay.write_gap, (dropped, t1_ns, t2_ns, reason),
                           lambda: (0, dropped, t1_ns, t2_ns))

    def _send_counted(self, relay, send, args, counts) -> None:
        """Send through `relay`, in flight meanwhile; then credit counts() (events, gaps, t1, t2)
        to the helper it went to. A send that raises relayed nothing (the sink counts the batch);
        it ends its flight before a helper found gone is let go, so that one settles at once."""
        with self._settle_lock:
            if self._relay is relay:
                self._sent.inflight += 1
        try:
            send(*args)
        except BaseException as exc:
            self._credit(relay, 0, 0, 0, 0)
            if isinstance(exc, OSError) and exc.errno in _GONE:  # the helper is gone: the next write starts another
                self._gone(relay)
            raise
        self._credit(relay, *counts())

    def _credit(self, relay, events: int, gaps: int, t1: int, t2: int) -> None:
        """A send to `relay` returned: count what it relayed for the helper it went to. Another
        thread (a flush finding the helper gone) may have let that helper go meanwhile: then the
        count goes to its _Unreachable, which is not settled while a send is in flight."""
        with self._settle_lock:
            if self._relay is relay:
                self._sent.returned(events, gaps, t1, t2)
                return
            for u in self._unreachable:
                if u.relay is relay:
                    u.sent.returned(events, gaps, t1, t2)
                    return

    def sync(self, timeout: float = 5.0) -> bool:
        """True once the helper has appended everything this process sent it (Sink.flush calls
        this, so a flush means "in the ledger" here as with the in-process writer). A helper found
        gone counts what it took with it, as a failed write does: once it is settled (_settle),
        within the timeout; until then, or if it lost any, the answer is False (the sink then
        writes the gap row, and the exit's flush tries again for it)."""
        deadline = time.monotonic() + timeout
        relay, ok = self._relay, True  # no relay: never started, fallen back (synchronous), closed, or gone
        if relay is not None:
            try:
                ok = relay.sync(timeout)
            except OSError as exc:
                if exc.errno in _GONE:
                    self._gone(relay)
                ok = False
        if self._unreachable:
            ok = self._settle(max(0.0, deadline - time.monotonic())) == 0 and ok
        return ok and not self._unreachable

    def start(self) -> "ProcessWriter":
        """Start the helper now (e.g. in a server's master process, before it forks workers that
        will then share it); otherwise the first write starts it. A failure falls back, as there."""
        if self._fallback is None and self._relay is None and not self._closed:
            try:
                self._start()
            except Exception as exc:
                self._fall_back(str(exc))
        return self

    def after_fork(self) -> None:
        """In a forked child: keep the helper (and the inherited pipe, which keeps it alive for
        this child too), with a socket and a hello of the child's own."""
        self._sent = _Sent()  # the child counts its own
        self._t0 = time.time_ns()  # before the child's hello: an earlier process with its pid said its own before
        self._settle_lock = native.Lock()  # a parent's thread may have held it at the fork
        unreachable, self._unreachable = self._unreachable, []  # the parent's to count
        for u in unreachable:
            _close_fd(u.pidfd)  # the child's copy
        if self._relay is not None:
            self._relay.after_fork()
        if self._fallback is not None:
            self._fallback.after_fork()

    def at_exit(self) -> None:
        """The interpreter is exiting, after the sink's last flush (which waited until the helper
        had appended this process's events): let go of the helper. It drains anything still
        queued and exits once every process holding its pipe is gone; nothing waits for or kills
        it here, so forked children still running keep their helper and this exit is not held up.
        The helper hears `bye` first: this process ended with its flush (ledger.relay)."""
        if not self._closed:
            self.bye()
        self._closed = True
        if self._owner == os.getpid():
            self._stop_helper(0.0)

    def bye(self) -> None:
        """Tell the helper this process's flush is done (at exit, or before an exec)."""
        relay = self._relay
        if relay is not None:
            try:
                relay.bye()
            except Exception:  # a helper gone: it finds this process gone without its bye
                pass

    def gap_now(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> bool:
        """The relay's one gap count sent at once (interceptor.sink: an exit's flush out of time)."""
        relay = self._relay
        return relay is not None and relay.gap_now(dropped, t1_ns, t2_ns, reason)

    def bye_now(self) -> bool:
        relay = self._relay
        return relay is not None and relay.bye_now()

    def close(self) -> None:
        """Stop sending; in the process that started the helper, let it drain and wait a little
        for it to exit (it stays while forked children that share it are alive; never killed)."""
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
            if self._unreachable:  # settled first: rows of this pid through a new helper would blur the count
                self._settle(SETTLE_TIMEOUT_S, final=True)
            try:
                self._start()
            except Exception as exc:  # whatever the cause, once: from now on, write in process
                self._fall_back(str(exc))
        return None if self._fallback is not None else self._relay

    def _relay_missed(self, ts: int, reason: str, n: int = 1, until: int = 0) -> None:
        self._relay_missed_n += n
        if self.on_miss is not None:
            self.on_miss(ts, reason, n=n, until=until)
        else:
            raise OSError(f"{reason}: {n} record(s) not relayed")

    def _gone(self, relay) -> None:
        with self._settle_lock:
            first = self._relay is relay  # not already let go by another thread
            if first:
                self._relay = None
                self._let_go(relay)
        relay.close()
        self._settle(0.0)

    def _let_go(self, relay) -> None:
        """The helper is out of reach (dead, or its socket's path removed, e.g. by a /tmp cleaner:
        no process can send to it any more). Close our end of its pipe, so that once it has
        appended what it holds it exits, and keep what this process sent it, to be counted."""
        with _START_LOCK:  # a fork sees the helper held, or let go: never an open pipe nobody owns
            owner = self._owner == os.getpid()
            u = _Unreachable(self.helper_pid, self._proc if owner else None, self._pidfd,
                             self._folder if owner else None, self._base_seq, self._ledger_id, self._t0,
                             self._sent, relay)
            self._release()
        self._sent = _Sent()
        self._unreachable.append(u)

    def _settle(self, wait: float, final: bool = False) -> int:
        """Count what each helper out of reach took with it: what this process relayed to it and
        the ledger does not hold. Exact once settled: the ledger holds all of it (nothing lost), or
        the helper has exited (its appends are all in, the rest is lost). A helper alive and still
        behind (it was only unreachable: it is appending what it holds) is waited for up to `wait`
        seconds, and meanwhile no new helper gets this pid's rows (they would blur the count).
        `final`: what is still unsettled then is counted now (a helper alive but stuck that long,
        e.g. stopped: if it appends later, those rows are in the ledger and in the gap row)."""
        deadline, lost_total = time.monotonic() + wait, 0
        while self._unreachable:
            for u in list(self._unreachable):
                exited = u.exited()  # first: if it has exited, the ledger read next is final
                held = self._held(u)
                if held is None:  # the ledger cannot say
                    events = gaps = 0
                    settled = exited
                else:
                    events, gaps = held
                    settled = exited or (events >= u.sent.events and gaps >= u.sent.gaps)
                settled = settled and u.sent.inflight == 0  # a send still in flight adds to u.sent
                if not settled and not (final and time.monotonic() >= deadline):
                    continue
                with self._settle_lock:
                    if u not in self._unreachable:
                        continue  # counted by another thread meanwhile
                    self._unreachable.remove(u)
                    u.release()
                    lost = max(0, u.sent.events - events) + max(0, u.sent.gaps - gaps)
                    lost_total += lost
                    if lost > 0 and self.on_miss is not None:
                        self.on_miss(u.sent.t1 or time.time_ns(), "WriterProcessGone", n=lost,
                                     until=u.sent.t2 or time.time_ns())
            if not self._unreachable or time.monotonic() >= deadline:
                break
            time.sleep(0.02)  # patched under gevent: a flush's sync on a greenlet lets the hub run
        return lost_total

    def _held(self, u: _Unreachable):
        """(events, gap misses) of this process that the ledger holds through helper `u`, or None.

        Anchored on this process's hello to `u` (its interceptor_installed row: this pid, after
        the ledger's last row when `u` started, and not older than this process's first send to
        `u`, u.t0): an earlier process with the same pid said its hello before this process
        existed, so a reused pid is not mistaken for ours. Every row of this pid after the hello
        came through `u` (no other helper gets this pid's rows until `u` is settled). Not exact
        (the reason is in each case outside what the ledger records): if the wall clock stepped
        back past an earlier same-pid process's hello to `u`; if `u` refused one of our rows (it
        is in `u`'s own gap row, which names no sender, and counted here again).

        A ledger file replaced while `u` ran (the ledger_id is not the one `u` started on): `u`
        reopened the path and repeated our hello there (ledger.relay's _rehellos) with what we
        had relayed until then (carried_events, carried_gaps: in the old file, or in `u`'s gap
        row): those count as held, since this ledger can no longer hold them and they are not
        missed either; rows after that hello are counted as above."""
        if not (u.sent.events or u.sent.gaps):
            return 0, 0
        try:
            import apsw

            from ledger.ledger import audit_count

            con = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                con.setbusytimeout(5000)
                (ledger_id,), = con.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchall()
                base = u.base_seq if ledger_id == u.ledger_id else 0  # 0: a file `u` opened in place of ours
                pid = os.getpid()
                found = con.execute(
                    "SELECT chain_seq, url_path FROM egress_log WHERE chain_seq > ? AND pid = ? AND ts >= ? "
                    "AND channel = 'audit' AND method = 'interceptor_installed' ORDER BY chain_seq LIMIT 1",
                    (base, pid, u.t0)).fetchall()
                if not found:
                    return 0, 0
                (hello, detail), = found
                (events,), = con.execute(
                    "SELECT count(*) FROM egress_log WHERE chain_seq > ? AND pid = ? AND channel != 'audit'",
                    (hello, pid)).fetchall()
                gaps = sum(audit_count(d, "dropped") for (d,) in con.execute(
                    "SELECT url_path FROM egress_log WHERE chain_seq > ? AND pid = ? AND channel = 'audit' "
                    "AND method = 'gap'", (hello, pid)))
                return (events + audit_count(detail, "carried_events"),
                        gaps + audit_count(detail, "carried_gaps"))
            finally:
                con.close()
        except Exception:
            return None

    def _start(self):
        from interceptor.relay import RelayWriter

        if self._owner == os.getpid():
            self._stop_helper(0.0)  # ours, gone or unreachable: let go of its pipe
        folder = tempfile.mkdtemp(prefix="netaudit-writer-")
        if len(os.path.join(folder, SOCKET_NAME)) > MAX_SOCKET_PATH:  # a long TMPDIR
            os.rmdir(folder)
            folder = tempfile.mkdtemp(prefix="netaudit-writer-", dir="/tmp")
        sock = os.path.join(folder, SOCKET_NAME)
        env = {k: v for k, v in os.environ.items() if k != "NETAUDIT_RELAY"}  # not audited itself
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_core_root(), env.get("PYTHONPATH", "")) if p)
        proc, pidfd = None, -1
        try:
            if not sys.executable:
                raise LedgerError("no Python interpreter to run it (sys.executable is empty)")
            with _START_LOCK:  # see _STARTING: a fork waits for this, and its child closes these pipes
                proc = _popen(
                    [sys.executable, "-m", "ledger.process_writer", sock, self.path, self.key_dir],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    env=env, close_fds=True, start_new_session=True)
                pidfd = _pidfd_open(proc.pid)
                _STARTING[id(proc)] = (proc, pidfd)
            line = _read_line(proc.stdout, self.start_timeout)
            word, seq, ledger_id = (line.split(" ") + ["", ""])[:3]
            if word != READY or not seq.isdigit():
                why = line[len("error: "):] if line.startswith("error: ") else (line[:200] or "no answer")
                raise LedgerError(f"the ledger writer process did not start: {why}")
            relay = RelayWriter(sock)
        except BaseException as exc:
            if proc is not None:  # whatever it is: its whole session goes, with its pipes
                with _START_LOCK:
                    _STARTING.pop(id(proc), None)
                _close_fd(pidfd)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                for stream in (proc.stdin, proc.stdout):
                    try:
                        stream.close()
                    except OSError:
                        pass
                proc.wait()
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, LedgerError):
                raise LedgerError(f"cannot start the ledger writer process: {type(exc).__name__}: {exc}") from None
            raise
        relay.on_miss = self._relay_missed
        with _START_LOCK:  # at once, as a fork sees it: a helper being started (not the child's) or ours
            _STARTING.pop(id(proc), None)
            proc.stdout.close()
            self._base_seq, self._ledger_id = int(seq), ledger_id
            self._sent = _Sent()
            self._t0 = time.time_ns()  # before our hello to it (sent with our first write)
            self._proc, self._pipe, self._pidfd, self._folder = proc, proc.stdin, pidfd, folder
            self._owner = os.getpid()
            self.helper_pid = proc.pid
            self._relay = relay
        return relay

    def _release(self) -> tuple:
        """Forget the helper and close our end of its pipe (under _START_LOCK); returns its
        (process, pidfd, folder), which the caller may still wait on, close or remove."""
        proc, pipe, pidfd, folder = self._proc, self._pipe, self._pidfd, self._folder
        self._proc = self._pipe = self._folder = None
        self._pidfd, self._owner = -1, 0
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
        return proc, pidfd, folder

    def _stop_helper(self, wait: float) -> None:
        """Close our end of the helper's pipe (it drains and exits once no process holds it);
        wait up to `wait` seconds for that. Never kills it: what it holds would be lost."""
        with _START_LOCK:  # a fork sees the pipe held, or closed: never open with no owner
            proc, pidfd, folder = self._release()
        _close_fd(pidfd)
        if proc is not None:
            try:
                proc.wait(wait) if wait else proc.poll()
            except _TimeoutExpired:
                pass
            if proc.returncode is not None and folder is not None:
                shutil.rmtree(folder, ignore_errors=True)  # the helper removes it too, as it exits

    def _fall_back(self, reason: str) -> None:
        """Write in process from now on (the ledger's own faults are then counted as usual)."""
        from ledger.sink import LedgerWriter

        self.mode, self.fallback_reason = "in-process", reason
        self._fallback = LedgerWriter(self.path, self.key_dir)


def _read_line(stream, timeout: float) -> str:
    """One line from a pipe within `timeout` seconds, or "" (poll: any descriptor number)."""
    deadline = time.monotonic() + timeout
    data = b""
    with _DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not data.endswith(b"\n") and len(data) < 4096:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


# ---- the helper process -------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """python -m ledger.process_writer SOCKET LEDGER KEY_DIR: receive until stdin closes."""
    # ^C and a service manager's stop are for the audited processes: this one exits when they
    # are gone (its pipe closes), after appending what they sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
    try:
        print(f"{READY} {led.last()[0]} {led.ledger_id}", flush=True)  # rows after this seq are the helper's
        while os.read(sys.stdin.fileno(), 4096):  # until every holder of the pipe has exited
            pass
    except OSError:  # the starter is gone already (a broken pipe): drain what came, and go
        pass
    receiver.stop()
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)  # an owner killed before its cleanup leaves none
    receiver.ledger.close()  # the one it writes to (it reopens the path if the file was replaced)
    if receiver.ledger is not led:
        led.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
