"""The one fail-open guard: every capture, attribution, redaction and recording fault lands here.

The audited call never sees the auditor fail. A step that raises is swallowed, counted by step
and by exception class, and reported to the sink as a miss, so the ledger later shows a `gap` row
for the event that could not be recorded (DESIGN.md: a fail-open miss is visible, never silent).
"""
from __future__ import annotations

import time
from typing import Callable


class Guard:
    """Counts swallowed faults; `on_miss(ts_ns, reason)` forwards each one to the sink."""

    __slots__ = ("faults", "by_step", "last", "on_miss")

    def __init__(self) -> None:
        self.faults = 0
        self.by_step: dict[str, int] = {}
        self.last = ""                     # "step: ExceptionClass" of the newest fault
        self.on_miss: Callable[[int, str], None] | None = None

    def fault(self, step: str, exc: BaseException, ts: int = 0) -> None:
        """Swallow one fault of `step`. Never raises, whatever the sink does."""
        try:
            reason = type(exc).__name__
            self.faults += 1
            self.by_step[step] = self.by_step.get(step, 0) + 1
            self.last = f"{step}: {reason}"
            on_miss = self.on_miss
            if on_miss is not None:
                on_miss(ts or time.time_ns(), reason)
        except Exception:  # the guard itself must never be the reason a call fails
            pass

    def snapshot(self) -> dict:
        return {"faults": self.faults, "by_step": dict(self.by_step), "last": self.last}


GUARD = Guard()
