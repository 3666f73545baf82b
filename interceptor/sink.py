"""The sink: a bounded queue and one writer thread per process, batched, fail-open.

`Sink(writer)` is generic over a writer object with
    write_batch(events: list[NetEvent]) -> None
    write_gap(dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None
and optionally `salt` (bytes, for payload fingerprints; may open storage lazily and raise),
`after_fork()` and `close()`. A writer with `write_records(records: list[Record])` gets the
records themselves instead of `write_batch` (interceptor.relay sends them to another process,
which holds the salt).

The audited thread only appends to a deque. When the queue is full, or the writer raises, the
events are dropped and counted (with the first and last timestamp and the reasons); the writer
writes one gap row for them as soon as writing works again. After `os.fork` the child gets a fresh
queue and writer thread; the queue is flushed at exit. Before `os.fork` the writer thread is
stopped once it has written what is queued (`_park`, waited for at most FORK_PARK_S): a process
forks with no thread of ours, so the child cannot inherit a lock our writer held in SQLite or
elsewhere, and Python 3.12+ does not warn that the process is multi-threaded (Odoo logs that
DeprecationWarning with a traceback at every worker its master forks). The next event starts a
writer again. Where no writer thread can start (Python
3.12 starts none once its main thread has returned), the calling thread writes its events itself.
The writer is a real OS thread with the OS's own locks, also where gevent patched threading
(interceptor.native: a greenlet writer may never run). Started with `_thread`, not threading, it
is not in threading.enumerate() and gets no threading.settrace/setprofile or excepthook.
"""
from __future__ import annotations

import operator
import os
import time
import weakref
from collections import deque

from . import native
from .capture import EXIT_FLUSHES, Record, at_exit, flush_at_multiprocessing_exit
from .guard import on_main_thread, pass_on

DEFAULT_MAXSIZE = 10_000
DEFAULT_BATCH = 512
LINGER_S = 0.1          # the writer waits this long after waking, to batch the events behind it
IDLE_WAIT_S = 0.5        # safety net for a lost wake-up
MAX_BACKOFF_S = 1.0
QUEUE_FULL = "QueueFull"
# Events converted between two GIL offers on the writer thread (about 0.3 ms of work). An offer is
# time.sleep(0), which on Linux sleeps ~70 us (timer slack): offered every 8 events, it cost the
# writer 9 us of wall time per event; a shorter offer (os.sched_yield) does not hand the GIL over.
YIELD_EVERY = 64
INLINE_S = 5.0           # the longest a call waits on its own write, where no writer thread can start
FORK_PARK_S = 1.0        # the longest a fork waits for the writer thread to stop (the batch in hand)
PARK_EXPIRY_S = 10.0     # a park older than this is over (its fork's unpark was cut short)

_SINKS: "weakref.WeakSet[Sink]" = weakref.WeakSet()


class Sink:
    def __init__(self, writer, maxsize: int = DEFAULT_MAXSIZE, batch_size: int = DEFAULT_BATCH,
                 linger_s: float = LINGER_S):
        self.writer = writer
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.written = 0          # events handed to write_batch / write_records successfully
        self.dropped_total = 0    # events ever dropped (overflow, writer fault, capture fault)
        self.gaps_written = 0
        self.write_faults = 0
        self.last_fault = ""
        if getattr(writer, "on_miss", False) is None:  # a relaying writer counts a batch's unsent tail
            writer.on_miss = self.miss
        self._arm()
        _SINKS.add(self)

    def _arm(self) -> None:
        """Fresh queue, lock, wake-up and gap counters (at start, and in a forked child)."""
        self._q: deque[Record] = deque()
        # The OS's own thread and locks (interceptor.native), also where gevent patched threading.
        # Reentrant: socket_bytes emits from __del__, which the garbage collector may run inside
        # a section that holds this lock (any allocation can start a collection); its submit or
        # miss must not wait on its own thread.
        self._lock = native.RLock()
        self._wake = native.Event()
        self._writing = native.Lock()  # one writer at a time: the thread, or a caller (_write_here)
        self._sleeping = False
        self._busy = False
        self._stop = False
        self._thread: native.Thread | None = None
        self._threadless = False  # a thread start was refused: the callers write (_write_here)
        self._parking = False     # a fork is under way: no writer runs or starts (_park)
        self._parked_at = 0.0     # when; a park never ended (a signal at _unpark's entry) expires
        self._park_left = 0       # events queued when the park began: the writer writes these, then stops
        self._gap_n = 0
        self._gap_t1 = 0
        self._gap_t2 = 0
        self._gap_reasons: set[str] = set()

    # ---- the audited thread's side: cheap -----------------------------------------------------

    def submit(self, rec: Record) -> None:
        q = self._q
        if len(q) >= self.maxsize:
            self.miss(rec.ts, QUEUE_FULL)
            return
        q.append(rec)
        if self._thread is None:
            self._start_or_write(time.monotonic() + INLINE_S)
        if self._sleeping:
            # once: the writer may take a while to get the GIL back, and a set() of a set wake-up
            # raises (and is swallowed) in every submit meanwhile
            self._sleeping = False
            self._wake.set()

    def miss(self, ts: int, reason: str, n: int = 1, until: int = 0) -> None:
        """Count events that will never be written; they come back as one gap row."""
        with self._lock:
            if self._gap_n == 0 or ts < self._gap_t1:
                self._gap_t1 = ts
            self._gap_t2 = max(self._gap_t2, until or ts, ts)
            self._gap_n += n
            self._gap_reasons.add(reason)
            self.dropped_total += n
        if self._thread is None:
            self._start()

    @property
    def pending(self) -> int:
        return len(self._q)

    @property
    def pending_gap(self) -> int:
        return self._gap_n

    # ---- the writer thread --------------------------------------------------------------------

    def _parked(self) -> bool:
        """A fork is under way. A park left on (an exception the program's signal handler raised
        as the unpark began) expires, rather than keep every writer from starting (review 30, 6)."""
        if self._parking and time.monotonic() - self._parked_at > PARK_EXPIRY_S:
            self._parking = False
        return self._parking

    def _start(self) -> None:
        if self._thread is not None or self._threadless or self._parked():
            return
        _register_fork_hooks()
        # Made outside the lock: a collection during the construction may emit and start a writer
        # itself, and then this one is not needed.
        t = native.Thread(target=lambda: self._run(t), name="netaudit-writer")
        started = False
        try:
            with self._lock:
                if self._thread is not None:
                    started = True  # another call started one: nothing of ours to undo
                    return
                self._thread = t
            self._hello()  # this thread starts the writer: the one to say hello
            t.start()
            started = True
        except RuntimeError as exc:  # 3.12 once its main thread has returned, or no thread is left:
            pass_on(exc)      # (a signal handler's goes on: the finally undoes the start)
            started = True    # the callers write the events themselves from now on (_start_or_write)
            with self._lock:
                if self._thread is t:
                    self._thread = None
                    self._threadless = True
        finally:
            # Another exception (one the program's signal handler raised here) may have come before
            # the thread started: a sink whose _thread never ran would queue every event for good.
            # The next submit starts one. Should this one have started after all, it takes the
            # place back or gives way (_run), so one writer runs.
            if not started and self._thread is t:
                self._thread = None

    def _hello(self) -> None:
        """A relay's hello, before the first linger (interceptor.relay: RelayWriter.started)."""
        hello = getattr(self.writer, "started", None)
        if hello is not None:
            try:
                hello()
            except Exception as exc:  # said with the first batch then
                pass_on(exc)

    def _start_or_write(self, deadline: float) -> None:
        """Start the writer thread; where none can start, write the queue on this thread."""
        self._start()
        if self._thread is None and not self._parked():
            self._write_here(deadline)

    def _run(self, me) -> None:
        q = self._q
        backoff = 0.0
        while True:
            if self._parking and (not q or backoff or self._park_left <= 0):
                # a fork is under way (_park): what was queued then is written (what other threads
                # queued since waits for the next writer), or writing fails. No lock taken: no
                # writer starts during a park, and the forking thread may hold it (review 29, 4).
                if self._thread is me:
                    self._thread = None
                return
            if self._thread is not me:  # _start undid this thread's start (see there): one writer only
                with self._lock:
                    if self._thread is None:
                        self._thread = me
                    elif self._thread is not me:
                        return
            if not q and not (self._gap_n and backoff == 0.0):
                if self._stop:
                    return
                self._sleeping = True
                if not q:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                self._sleeping = False
                if self._gap_n and not q:
                    backoff = 0.0  # try to write the pending gap row alone
                if self.linger_s and q and len(q) < self.batch_size:
                    self._wake.clear()
                    if not self._parking:
                        self._wake.wait(self.linger_s)  # flush() and _park() cut the wait short
                continue
            self._busy = True
            batch = []
            try:
                with self._writing:
                    try:
                        for _ in range(min(len(q), self.batch_size)):
                            batch.append(q.popleft())
                    except IndexError:  # emptied meanwhile by an exit's count (_count_unsent)
                        pass
                    ok = self._write(batch)
            finally:
                self._busy = False
            self._park_left -= len(batch)
            if ok:
                backoff = 0.0
                if self.linger_s and q and len(q) < self.batch_size:
                    # traffic goes on: wait one linger for the next batch, rather than write the few
                    # events queued meanwhile at once. Each wake of this thread takes the GIL from
                    # the audited threads (with a forced switch where they run Python all along:
                    # about 5 ms of waiting, the audited thread signalled at each of its GIL
                    # releases meanwhile), so one wake per linger, not one per trickle.
                    self._wake.clear()
                    if not (self._parking or self._stop):
                        self._wake.wait(self.linger_s)  # flush(), close() and _park() cut it short
            else:
                backoff = min(MAX_BACKOFF_S, backoff * 2 or 0.05)
                self._wake.wait(backoff)
                self._wake.clear()

    def _write(self, batch: list[Record]) -> bool:
        """Write the pending gap row, then the batch. On a fault, drop and count the batch."""
        writer = self.writer
        write_records = getattr(writer, "write_records", None)  # a writer that takes the records
        try:
            salt = getattr(writer, "salt", None) if batch and write_records is None else None
            events = []
            for i in range(0, len(batch) if write_records is None else 0, YIELD_EVERY):
                if i:
                    native.sleep(0)  # let the audited threads take the GIL: their calls wait less
                events.extend(r.to_event(salt) for r in batch[i:i + YIELD_EVERY])
            if self._gap_n:
                with self._lock:
                    n, t1, t2 = self._gap_n, self._gap_t1, self._gap_t2
                    reason = ",".join(sorted(self._gap_reasons))
                writer.write_gap(n, t1, t2, reason)
                with self._lock:
                    self._gap_n -= n
                    if self._gap_n == 0:
                        self._gap_t1 = self._gap_t2 = 0
                        self._gap_reasons.clear()  # no allocation here: a collection could run __del__ emits
                self.gaps_written += 1
            if write_records is not None and batch:
                write_records(batch)
                self.written += len(batch)
            elif events:
                writer.write_batch(events)
                self.written += len(events)
            return True
        except Exception as exc:
            self.write_faults += 1
            self.last_fault = type(exc).__name__
            if batch:
                self.miss(batch[0].ts, type(exc).__name__, n=len(batch), until=batch[-1].ts)
            pass_on(exc)  # where the calling thread writes (_write_here): its signal handler's exception goes on
            return False

    # ---- flush, exit, fork --------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event (and a pending gap row) was written: handed to the writer
        and, for a writer that relays to another process (it has `sync`), appended there."""
        deadline = time.monotonic() + timeout
        if (self._q or self._gap_n) and self._thread is None:
            self._start_or_write(deadline)
            if self._thread is None and (self._q or self._gap_n):
                return False  # written here, and a batch failed (counted): no writer to try again
        while (self._q or self._busy or self._gap_n) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.0005)  # the caller's own sleep: under gevent, the hub runs meanwhile
        if self._q or self._busy or self._gap_n:
            return False
        sync = getattr(self.writer, "sync", None)  # a relaying writer: wait until it is in the ledger
        if sync is None:
            return True
        try:
            return bool(sync(max(0.0, deadline - time.monotonic())))
        except Exception as exc:
            pass_on(exc)
            return False

    def _write_here(self, deadline: float) -> None:
        """The writer thread's work, done by the calling thread where no writer thread can start:
        Python 3.12 starts none once its main thread has returned (a thread still making calls
        then, or the exit flush: a connection still open is emitted only at exit). Stops at the
        first batch that fails (it is counted) or at the deadline. Another thread writing, or
        this one already (an emit from __del__ inside a write), leaves the events to it."""
        if not self._writing.acquire(blocking=False):
            return
        try:
            q = self._q
            while (q or self._gap_n) and time.monotonic() < deadline:
                batch = []
                while q and len(batch) < self.batch_size:
                    batch.append(q.popleft())
                if not self._write(batch):
                    return
        finally:
            self._writing.release()

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t.ident != native.get_ident():
            t.join(timeout)
        close = getattr(self.writer, "close", None)
        if close is not None and not self._busy:
            try:
                close()
            except Exception as exc:
                pass_on(exc)

    def _park(self, timeout: float = FORK_PARK_S, wait: bool = True) -> None:
        """Before os.fork: the writer thread writes what is queued now and stops, and no other
        starts until the fork is done. At most `timeout` is waited for (none if not `wait`, or if
        this thread holds the sink's lock, which the writer may need): a writer still writing then
        (a slow or locked ledger; it stops at its first failed batch) is forked past, as it was
        before; its queue waits for the next writer."""
        self._park_left = len(self._q)
        self._parked_at = time.monotonic()
        self._parking = True
        t = self._thread
        if t is None or t.ident == native.get_ident():  # none, or the fork is made by the writer itself
            return
        self._wake.set()
        if not wait or self._lock._is_owned():
            return
        t.join(timeout)
        if not t.is_alive():
            native.wait_exited(t, 0.05)  # the OS thread itself, not only its Python part, has ended

    def _unpark(self) -> None:
        """After os.fork, in the parent: writers may start again. One starts at once only for
        events left queued (submitted by another thread during the fork, or not written in time):
        Python 3.13 counts the threads after these hooks ran, and warns of it then."""
        self._parking = False
        if (self._q or self._gap_n) and self._thread is None:
            self._start()

    def _after_fork_in_child(self) -> None:
        self._arm()  # the parent's queued events are the parent's to write
        after_fork = getattr(self.writer, "after_fork", None)
        if after_fork is not None:
            try:
                after_fork()
            except Exception:
                pass


class MemoryWriter:
    """A writer that keeps events in a list (tests, embedding). `salt` enables fingerprints."""

    def __init__(self, salt: bytes | None = b"netaudit-memory-writer-salt"):
        self.salt = salt
        self.events = []
        self.gaps: list[tuple[int, int, int, str]] = []

    def write_batch(self, events) -> None:
        self.events.extend(events)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        self.gaps.append((dropped, t1_ns, t2_ns, reason))


class LazyWriter:
    """A writer made by `factory()` on first use, on the writer thread: a process that makes no
    network call never pays for it (e.g. a factory that imports and opens the ledger). It has no
    `write_records`: the sink hands it NetEvents (write_batch)."""

    def __init__(self, factory):
        self._factory = factory
        self._writer = None

    def _get(self):
        if self._writer is None:
            self._writer = self._factory()
        return self._writer

    @property
    def salt(self):
        return getattr(self._get(), "salt", None)

    @property
    def wrapped(self):
        return self._get()

    def write_batch(self, events) -> None:
        self._get().write_batch(events)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        self._get().write_gap(dropped, t1_ns, t2_ns, reason)

    def after_fork(self) -> None:
        after_fork = getattr(self._writer, "after_fork", None)
        if after_fork is not None:
            after_fork()

    def close(self) -> None:
        close = getattr(self._writer, "close", None)
        if close is not None:
            close()


class NullWriter:
    """Discards events (install() without a sink)."""

    salt = None

    def write_batch(self, events) -> None:
        pass

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        pass


def _after_fork_in_child() -> None:
    for sink in list(_SINKS):
        sink._after_fork_in_child()
    flush_at_multiprocessing_exit(_flush_all_at_exit, priority=100)


# os.fork parks the writers itself (`_fork`, which replaces it at the first writer start), in the
# caller's frame: a wait there may run the program's signal handlers, and an exception one raises
# must reach the program (no fork then), where from an at-fork hook Python would drop it (review 29,
# finding 2). It restarts them after the fork returns, after Python 3.13 counted the threads. The
# at-fork hooks cover forks made otherwise (a `fork` imported before, os.forkpty, gevent's, a
# subprocess with preexec_fn): they wait only off the main thread, where no handler runs.
_FORKING = [False]   # True while _fork parks and forks: the hooks leave it to _fork
_os_fork = None


def _park_all(wait: bool) -> None:
    for sink in list(_SINKS):
        try:
            sink._park(wait=wait)
        except Exception as exc:
            pass_on(exc)


def _park_all_before_fork() -> None:
    if not _FORKING[0]:
        _park_all(wait=not on_main_thread())


def _unpark_all_in_parent() -> None:
    if _FORKING[0]:
        return
    _unpark_all()


def _unpark_all() -> None:
    for sink in list(_SINKS):
        try:
            sink._unpark()
        except Exception as exc:
            pass_on(exc)


def _fork():
    """os.fork, with our writer threads stopped first, here (see above)."""
    try:
        _park_all(wait=True)
        _FORKING[0] = True
        try:
            pid = _os_fork()
        finally:
            _FORKING[0] = False
    except BaseException:
        _unpark_all()
        raise
    if pid:
        _unpark_all()
    return pid


def _standing_for(wrapper, original):
    """`wrapper`, the os function we put in place of `original`, documented as it."""
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original
    return wrapper


_fork_hooks_registered = False


def _register_fork_hooks() -> None:
    """At the first writer start: os.fork replaced by _fork, and the at-fork hooks registered (not
    at import: before-fork hooks run in the reverse order of registration, and a writer,
    ledger.process_writer's, imported before any sink is made, takes a lock its own hook holds)."""
    global _fork_hooks_registered, _os_fork
    if not _fork_hooks_registered:
        _fork_hooks_registered = True
        os.register_at_fork(before=_park_all_before_fork, after_in_parent=_unpark_all_in_parent)
        fork = getattr(os, "fork", None)
        if fork is not None and fork is not _fork:
            _os_fork = fork
            os.fork = _standing_for(_fork, fork)


def _flush_all_at_exit(ending: bool = True, timeout: float = 5.0) -> None:
    """Every sink's queue written; then the writer's `at_exit` (a relay's bye, a helper let go), or
    before an exec, which may fail and leave the process running on (not `ending`), its `bye`."""
    for sink in list(_SINKS):
        try:
            if not sink.flush(timeout=timeout) and sink.pending_gap:
                sink.flush(timeout=timeout)  # a miss found by the flush itself (a relay gone): its gap row
            # each looked up by a literal name: the release gate follows a computed one as a network original
            done = getattr(sink.writer, "at_exit", None) if ending else getattr(sink.writer, "bye", None)
            if done is not None:
                done()
        except Exception:
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
at_exit(_flush_all_at_exit)


# os._exit skips atexit: a forked child that ends with it (a program's own fork, a fork server,
# Odoo's forced shutdown; multiprocessing's children run our flushes from its finalizers first)
# lost every event still queued, held or open (helper 39, H2). It runs the exit flushes first, on a
# thread of its own, waited for EXIT_FLUSH_S at most: os._exit may come from a signal handler
# that interrupted our code while it held a lock, and the process exits whatever happens. Replaced
# at install (interceptor.install); a `from os import _exit` made before keeps the original.
EXIT_FLUSH_S = 2.0
_os_exit = None


def _exit(status):
    try:
        refused = not -2 ** 31 <= operator.index(status) < 2 ** 31  # os._exit takes a C int
    except Exception as exc:
        pass_on(exc)
        refused = True
    if refused:  # os._exit raises, and the process goes on: nothing flushed, nothing held (review 42, M3)
        return _os_exit(status)
    try:
        _flush_before_exit()
    finally:
        _os_exit(status)


def _flush_before_exit(ending: bool = True) -> None:
    flushes = EXIT_FLUSHES[::-1]  # as atexit runs them: held and open records, then the queues
    reached = [None]  # the flush under way: past the held and open records once it is the queues'

    def run(timeout: float = 5.0):
        for flush in flushes:
            reached[0] = flush
            try:
                if flush is _flush_all_at_exit:
                    flush(ending, timeout)
                else:
                    flush()
            except BaseException:  # noqa: S110  the process is exiting: nothing to report to
                pass

    t = native.Thread(target=run, name="netaudit-exit-flush")
    try:
        t.start()
    except RuntimeError:  # no thread starts here (an atexit handler of the program's, on 3.12):
        run(EXIT_FLUSH_S / 2)  # here, within the same bound (each sink's flush may run twice)
        return
    t.join(EXIT_FLUSH_S)
    if ending and t.is_alive():
        _count_unsent(reached[0] is _flush_all_at_exit)


EXIT_FLUSH_TIMEOUT = "ExitFlushTimeout"


def _count_unsent(records_handed: bool) -> None:
    """The exit's flush ran out of time: what is still queued, and the misses not yet written,
    go out as one gap count, where the writer can send one at once (a relay's `gap_now`), so that
    they are counted, not silently lost (review 41, M2). Exactly what will never be sent: the
    writer is kept from taking more (its `_writing` lock, held from here to the exit), or, where
    it is in the middle of a batch, the queue is emptied here and the misses it may be writing are
    left out; the batch in its hand is not counted (it may have been written). An event is never
    both a row and in a gap. Nothing left at all, the held and open records handed over
    (`records_handed`) and the writer idle: all was sent, and the flush only waited for the
    receiver's answer, so the relay says bye (`bye_now`): without it, the process was reported gone
    unflushed (review 42, L3)."""
    for sink in list(_SINKS):
        try:
            tell = getattr(sink.writer, "gap_now", None)
            if tell is None:
                continue
            held = sink._writing.acquire(True, 0.1)  # kept: the process exits next
            q, unsent = sink._q, []
            while q:
                try:
                    unsent.append(q.popleft())
                except IndexError:  # the writer took the last one meanwhile
                    break
            times = [r.ts for r in unsent[:1] + unsent[-1:]]
            n = len(unsent)
            if held and sink._gap_n:
                n += sink._gap_n
                times += [sink._gap_t1, sink._gap_t2]
            if n:
                tell(n, min(times), max(times), ",".join(sorted({EXIT_FLUSH_TIMEOUT, *sink._gap_reasons})))
            elif held and records_handed and not sink._gap_n:
                bye = getattr(sink.writer, "bye_now", None)
                if bye is not None:
                    bye()
        except Exception:  # noqa: S110  the process is exiting: nothing to report to
            pass


def _flushing_first(exec_function):
    """os.execv or os.execve, after the exit flushes: the process image is replaced, and what it
    queued would go with it (a launcher that calls home, then execs the real program)."""
    def flushed_then(*args, **kwargs):
        _flush_before_exit(ending=False)  # an exec that fails leaves the process as it was, writer and all
        return exec_function(*args, **kwargs)
    flushed_then.__name__ = flushed_then.__qualname__ = exec_function.__name__
    flushed_then._netaudit_flushes = True
    return _standing_for(flushed_then, exec_function)


def wrap_os_exit() -> None:
    """os._exit, os.execv and os.execve run the exit flushes first (os.execl*, execvp* and
    execle call the last two)."""
    global _os_exit
    exit_now = getattr(os, "_exit", None)
    if exit_now is not None and exit_now is not _exit:
        _os_exit = exit_now
        os._exit = _standing_for(_exit, exit_now)
    # named literally, each: the release gate follows a function looked up by a computed name
    execv, execve = getattr(os, "execv", None), getattr(os, "execve", None)
    if execv is not None and not getattr(execv, "_netaudit_flushes", False):
        os.execv = _flushing_first(execv)
    if execve is not None and not getattr(execve, "_netaudit_flushes", False):
        os.execve = _flushing_first(execve)
