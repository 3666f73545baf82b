"""The one fail-open guard: every capture, attribution, redaction and recording fault lands here.

The audited call never sees the auditor fail. A step that raises is swallowed, counted by step
and by exception class, and reported to the sink as a miss, so the ledger later shows a `gap` row
for the event that could not be recorded (DESIGN.md: a fail-open miss is visible, never silent).

One exception is not ours to swallow: one that a signal handler of the program raised while our
code ran (`handler_raised`). Odoo's prefork worker raises `Exception('CPU time limit exceeded.')`
from its SIGXCPU handler, and a program's SIGALRM timeout often raises so: it lands in whatever
runs, and where that is one of our steps, swallowing it would let the program go on past its own
time limit. `fault` passes it on (re-raises it), as it would have reached the program without us;
the other sites of the calling thread that swallow an exception (an `except OSError` around a
syscall, a cache miss's KeyError) call `pass_on`. What cannot pass it on: a finalizer (`__del__`,
where Python reports any exception as unraisable and goes on) and an at-fork hook.
"""
from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
import types
from typing import Callable

_SIGNALS = frozenset(int(s) for s in signal.valid_signals())
_ANCESTORS = 3   # how far above a handler's frame the frame it got may be (decorators between)
_CO_VARARGS = 0x04
_OURS = __name__.rpartition(".")[0] + "."   # this package, under whatever name it was imported
_get_native_id = getattr(_thread, "get_native_id", None)


_LINUX = sys.platform.startswith("linux")
_main_native_id = [None]   # the main thread's OS id in a forked child: the forking thread's


def _forked_child() -> None:
    _main_native_id[0] = _get_native_id() if _get_native_id is not None else None


os.register_at_fork(after_in_child=_forked_child)


def on_main_thread() -> bool:
    """Python runs signal handlers on its main thread only: the one that started it (an embedding
    program may start it on any thread), or, in a forked child, the thread that forked. Told by OS
    thread ids, which gevent does not patch (its main thread's `ident` is a greenlet's): the id
    recorded after a fork, else threading's record of the main thread's, which a child forked
    before we were imported keeps from its parent (Python 3.11): on Linux, an id that is no thread
    of this process is then the pid's (review 31, H1; review 32, 1)."""
    try:
        if _get_native_id is None:
            return True
        main = _main_native_id[0]
        if main is None:
            main = threading.main_thread().native_id
            if _LINUX and main is not None and not os.path.exists(f"/proc/self/task/{main}"):
                main = os.getpid()
        return main == _get_native_id()
    except Exception:
        return True


def _positional(frame, code) -> list:
    """The values of a frame's positional parameters, then of its *args."""
    local = frame.f_locals
    n = code.co_argcount
    values = [local.get(name) for name in code.co_varnames[:n]]
    if code.co_flags & _CO_VARARGS:
        rest = local.get(code.co_varnames[n + code.co_kwonlyargcount])
        if type(rest) is tuple:
            values.extend(rest)
    return values


def _is_handler_call(frame) -> bool:
    """Is this frame a signal handler's, called by the interpreter for a signal? Python calls a
    handler with (signum, frame), `frame` the one the signal interrupted: the frame that called it
    (or, through a decorator or two, one a little above). Two positional values side by side, a
    signal's number then such a frame, are that call's mark. A method handler has `self` before
    them; a `*args` handler has them in its tuple. Our own frames never are a handler's (capture.begin
    takes a port, which may be 1-64, then a frame)."""
    name = frame.f_globals.get("__name__")
    if isinstance(name, str) and name.startswith(_OURS):
        return False
    code = frame.f_code
    if code.co_argcount < 2 and not code.co_flags & _CO_VARARGS:
        return False
    above, callers = frame.f_back, []
    while above is not None and len(callers) < _ANCESTORS:
        callers.append(above)
        above = above.f_back
    if not callers:
        return False
    values = _positional(frame, code)
    for signum, interrupted in zip(values, values[1:]):
        if (type(signum) is int and signum in _SIGNALS and type(interrupted) is types.FrameType
                and any(interrupted is c for c in callers)):
            return True
    return False


def handler_raised(exc: BaseException) -> bool:
    """True when `exc` was raised by a Python signal handler of the program (or code it called):
    its traceback runs through the frame of a handler the interpreter called for a signal (see
    _is_handler_call). A handler runs between two bytecodes of the code it interrupts, so its
    exception comes out of whatever ran, ours included. Told by the call itself, not by the
    handlers installed now: a one-shot handler may have put SIG_DFL back before raising. Only on a
    fault path: it reads the arguments of the traceback's frames."""
    tb = exc.__traceback__
    if tb is None or tb.tb_next is None:  # raised in the frame that caught it: not through a handler
        return False
    if not on_main_thread():  # the writer thread, say: no handler runs there
        return False
    tb = tb.tb_next
    while tb is not None:
        if _is_handler_call(tb.tb_frame):
            return True
        tb = tb.tb_next
    return False


def pass_on(exc: BaseException) -> None:
    """Re-raise `exc` if the program's signal handler raised it (see the module docstring); else
    nothing: the caller swallows it as its own fault. Raises nothing else (it runs at interpreter
    shutdown too, from a socket's close)."""
    for _ in range(_RECHECKS):
        try:
            program = handler_raised(exc)
        except Exception as again:
            # Another handler's exception landed in the check (a signal storm), or the check
            # itself failed: judge the newer one (the older is its __context__, as Python's own
            # except blocks leave it). A failing check's error is no handler's: it is swallowed.
            exc = again
            continue
        if program:
            raise exc
        return


_RECHECKS = 4  # pass_on's tries at a check interrupted again and again


class Guard:
    """Counts swallowed faults; `on_miss(ts_ns, reason)` forwards each one to the sink."""

    __slots__ = ("faults", "by_step", "last", "on_miss")

    def __init__(self) -> None:
        self.faults = 0
        self.by_step: dict[str, int] = {}
        self.last = ""                     # "step: ExceptionClass" of the newest fault
        self.on_miss: Callable[[int, str], None] | None = None

    def fault(self, step: str, exc: BaseException, ts: int = 0) -> None:
        """Swallow one fault of `step`. Never raises, whatever the sink does, but for an exception
        the program's signal handler raised: that one is counted (what the step was doing is lost)
        and then re-raised, to the program."""
        try:
            program = handler_raised(exc)
        except Exception as again:  # a second one landed in this check (or an audit hook refused)
            self._count(step, exc, ts)
            pass_on(again)
            return
        self._count(step, exc, ts)
        if program:
            raise exc

    def _count(self, step: str, exc: BaseException, ts: int) -> None:
        try:
            reason = type(exc).__name__
            self.faults += 1
            self.by_step[step] = self.by_step.get(step, 0) + 1
            self.last = f"{step}: {reason}"
            on_miss = self.on_miss
            if on_miss is not None:
                on_miss(ts or time.time_ns(), reason)
        except Exception as exc:  # the guard itself must never be the reason a call fails
            pass_on(exc)

    def snapshot(self) -> dict:
        return {"faults": self.faults, "by_step": dict(self.by_step), "last": self.last}


GUARD = Guard()
