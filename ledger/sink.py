"""The ledger-backed writer for interceptor.Sink.

`LedgerWriter` opens the ledger lazily, on the sink's writer thread, so a ledger that cannot be
opened (missing key, read-only folder, locked file) is one more fail-open fault: the events are
dropped, counted, and come back as a `gap` row once the ledger opens. The first open in a process
records an `interceptor_installed` audit row (version, pid) in the chain.
"""
from __future__ import annotations

import os

from interceptor import native
from interceptor.event import NetEvent
from interceptor.sink import YIELD_EVERY
from ledger.errors import LedgerError

# Named the ledger for the children of `netaudit run` before the relay; run.py still removes them
# from the children's environment.
ENV_LEDGER = "NETAUDIT_LEDGER"
ENV_KEY_DIR = "NETAUDIT_KEY_DIR"

_orphans: list = []  # connections inherited across fork: never used, never closed, by the child


class LedgerWriter:
    """write_batch / write_gap / salt over one ledger file (see interceptor.sink.Sink)."""

    def __init__(self, path: str | None = None, key_dir: str | None = None,
                 busy_timeout_ms: int | None = None):
        self.path = path
        self.key_dir = key_dir
        self.busy_timeout_ms = busy_timeout_ms
        self._ledger = None
        self._file_id = None      # (st_dev, st_ino) of the file we opened
        self._opened_once = False

    def _open(self):
        led = self._ledger
        if led is None:
            from interceptor import VERSION
            from ledger.ledger import Ledger

            if self._opened_once and self.path and not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                # The folder was removed under us: wait for it to come back rather than make it
                # again behind the operator's back. Meanwhile the sink counts the misses.
                raise LedgerError(f"{self.path}: the ledger's folder is gone")
            led = Ledger.open(self.path, key_dir=self.key_dir, create=True)
            try:
                if self.busy_timeout_ms is not None:
                    led.con.setbusytimeout(self.busy_timeout_ms)
                led.hmac_salt  # fail now, not on the first fingerprint, if the key is unusable
                led.append_audit("interceptor_installed", version=VERSION, pid=os.getpid())
                st = os.stat(led.path)
            except BaseException:
                led.close()
                raise
            self._ledger = led
            self._file_id = (st.st_dev, st.st_ino)
            self._opened_once = True
        return led

    def _checked(self):
        """The open ledger, if its file is still the one at the path. A deleted or replaced file
        would swallow writes unseen: drop the connection, fail this write (the sink counts it
        as a miss) and reopen the path next time."""
        led = self._open()
        try:
            st = os.stat(led.path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except FileNotFoundError:
            same = False
        if not same:
            self._ledger = None
            try:
                led.close()
            except Exception:
                pass
            raise LedgerError(f"{led.path}: the ledger file was deleted or replaced")
        return led

    @property
    def ledger(self):
        return self._open()

    @property
    def salt(self) -> bytes:
        return self._open().hmac_salt

    def write_batch(self, events: list[NetEvent]) -> None:
        self._checked().append_many(events)

    def write_records(self, records) -> None:
        """The sink's records straight to column values: no NetEvent is built on the way (see
        Record.fields). Every YIELD_EVERY records, converted and encoded, the GIL is offered to the
        audited threads; only the hashing and the insert run as one stretch."""
        from ledger.ledger import fields_values

        led = self._checked()
        salt, encode = led.hmac_salt, led.encode_values
        encoded = []
        for i in range(0, len(records), YIELD_EVERY):
            if i:
                native.sleep(0)  # on the sink's writer thread, an OS thread also under gevent
            encoded += encode([fields_values(r.fields(salt)) for r in records[i:i + YIELD_EVERY]])
        led.append_encoded(encoded)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        from ledger.ledger import audit_event

        self._checked().append(audit_event("gap", t1_ns, dropped=dropped, until=t2_ns, reason=reason))

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connection (SQLite forbids using it here)."""
        if self._ledger is not None:
            _orphans.append(self._ledger)
            self._ledger = None

    def close(self) -> None:
        led, self._ledger = self._ledger, None
        if led is not None:
            led.close()
