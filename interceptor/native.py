"""The operating system's own threads, locks and sockets, in a process gevent has patched too.

gevent's `monkey.patch_all()` (Odoo's evented server, the one that serves /websocket, runs under
it) replaces threading, _thread, time.sleep, socket, ssl... with cooperative versions before any
addon loads. Two things of ours must not be cooperative there:
- the sink's writer. A "thread" started through patched threading is a greenlet of the starting
  thread's hub; started from a thread whose hub never runs (gevent's resolver pool, where a DNS
  lookup's event is submitted), it never ran and its events stayed queued (seen in Odoo 18).
  Here it is a real OS thread, waking and sleeping on real locks, sending on a real socket;
- the classes socket_bytes subclasses. gevent's socket class wraps a `_socket.socket` instead of
  being one (it has no `__del__` to extend: the interceptor failed to install at all). The
  originals gevent saved are used; gevent's own socket class gets a counting subclass of its own
  (interceptor.socket_bytes), made at its first connection.

`original(module, name)` is gevent's saved original where gevent patched that module, and the
module's own attribute otherwise. Standard library only: gevent is looked up in sys.modules,
never imported. Our own relay socket is a `_socket.socket`, which gevent never replaces. The
originals are module constants, taken when a module of ours is imported: a process patched
afterwards keeps the real ones it already had.
"""
from __future__ import annotations

import _thread
import os
import sys
import time

from .guard import pass_on


def patched(module: str) -> bool:
    """True when gevent has replaced `module`'s contents with cooperative ones."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched(module))
    except Exception:  # a gevent without it, or a module named oddly: not patched as far as we know
        return False


def original(module, name: str):
    """`module.name` as the standard library defines it, even where gevent replaced it."""
    if patched(module.__name__):
        try:
            return sys.modules["gevent.monkey"].get_original(module.__name__, name)
        except Exception:
            pass
    return getattr(module, name)


_start_new_thread = original(_thread, "start_new_thread")
_allocate_lock = original(_thread, "allocate_lock")
get_ident = original(_thread, "get_ident")
RLock = original(_thread, "RLock")
Lock = _allocate_lock
sleep = original(time, "sleep")


class Event:
    """threading.Event's set/clear/is_set/wait on one OS lock, for one waiter (the writer thread).

    The lock's state is the flag: released is set, held is clear. set() never blocks, so the
    audited thread (a greenlet of gevent's hub) never waits on the writer."""

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError as exc:  # set already
            pass_on(exc)

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(True, max(0.0, timeout)):
            self.set()  # it stays set until clear()
            return True
        return False


class Thread:
    """The part of threading.Thread the sink uses, on a real OS thread (`_thread`'s own start).

    Like a daemon thread it does not hold the interpreter's exit; threading does not list it."""

    def __init__(self, target, name: str = "", daemon: bool = True) -> None:
        self._target = target
        self.name = name
        self.daemon = daemon
        self.ident = None
        self.native_id = None
        self._done = _allocate_lock()

    def start(self) -> None:
        """Raises RuntimeError where the interpreter starts no thread (as threading does)."""
        self._done.acquire()
        try:
            self.ident = _start_new_thread(self._bootstrap, ())
        except BaseException:
            self._done.release()
            raise

    def _bootstrap(self) -> None:
        try:
            self.native_id = _thread.get_native_id()
            self._target()
        finally:
            try:
                self._done.release()
            except RuntimeError:  # start() released it: an exception (a signal handler's) reached
                pass              # start() after the thread had started

    def is_alive(self) -> bool:
        return self._done.locked()

    def join(self, timeout: float | None = None) -> None:
        if self._done.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            self._done.release()


def wait_exited(thread: Thread, timeout: float) -> bool:
    """Wait until the OS thread of a joined Thread is gone (Linux: its /proc/self/task entry).
    join() returns once the thread's Python part has ended; the OS thread ends a moment later, and
    until then a fork counts it (Python 3.12+ warns of a multi-threaded fork). True if gone (or
    nothing to tell by)."""
    tid = thread.native_id
    if tid is None or not os.path.isdir("/proc/self/task"):
        return True
    path = f"/proc/self/task/{tid}"
    deadline = time.monotonic() + timeout
    spins = 0
    while os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        spins += 1
        if spins < 50:
            os.sched_yield()   # it is only returning from its last call: microseconds
        else:
            sleep(0.0001)
    return True
