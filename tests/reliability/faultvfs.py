"""An apsw VFS shim that injects faults into SQLite's real file I/O.

    vfs = FaultVFS()                # registered as the process's default VFS until .close()
    vfs.arm("full")                 # every write to a file whose name matches fails: SQLITE_FULL
    vfs.clear()

Kinds: full (SQLITE_FULL on write), eio_write, eio_read (SQLITE_IOERR), fsync (xSync fails),
short_write (half the bytes reach the disk, then SQLITE_IOERR: a torn page), lock (another connection holds
the write lock past the busy timeout), readonly (SQLITE_READONLY on write, and new files
cannot be created: a read-only directory). `match` limits a fault to file names containing it
(for instance "-wal"); `after` lets that many calls through first.
"""
from __future__ import annotations

import threading

import apsw

KINDS = ("full", "eio_write", "eio_read", "fsync", "short_write", "lock", "readonly")


class FaultVFS(apsw.VFS):
    def __init__(self, name: str = "netaudit-faulty"):
        self.vfs_name = name
        self.kind: str | None = None
        self.match = ""
        self.after = 0
        self.hits = 0
        self._lock = threading.Lock()
        self.base = apsw.vfs_names()[0]  # the real default ("unix"), before we take its place
        super().__init__(name, self.base, makedefault=True)

    def arm(self, kind: str, match: str = "", after: int = 0, path: str | None = None) -> None:
        """Start failing. `lock` needs the ledger's `path`: in WAL mode every connection holds its
        SHARED file lock for good and takes write locks in shared memory, which a Python VFS
        cannot see, so the lock is really taken, by a connection of our own, until clear()."""
        assert kind in KINDS, kind
        with self._lock:
            self.kind, self.match, self.after, self.hits = kind, match, after, 0
        if kind == "lock":
            self._holder = apsw.Connection(path, vfs=self.base)
            self._holder.execute("BEGIN IMMEDIATE")
            self.hits = 1

    def clear(self) -> None:
        with self._lock:
            self.kind = None
        holder, self._holder = getattr(self, "_holder", None), None
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()

    def fires(self, kind: str, name: str) -> bool:
        if self.kind != kind or self.match not in (name or ""):
            return False
        with self._lock:
            if self.after > 0:
                self.after -= 1
                return False
            self.hits += 1
            return True

    def close(self) -> None:
        self.clear()
        self.unregister()

    def xOpen(self, name, flags):
        fname = name if isinstance(name, str) or name is None else name.filename()
        if (self.fires("readonly", fname or "") and flags[0] & apsw.SQLITE_OPEN_CREATE
                and not flags[0] & apsw.SQLITE_OPEN_MAIN_DB):
            raise apsw.CantOpenError("injected: read-only directory")
        return FaultFile(self, self.base, name, flags)


class FaultFile(apsw.VFSFile):
    def __init__(self, vfs: FaultVFS, base: str, name, flags):
        self.vfs = vfs
        self.fname = (name if isinstance(name, str) or name is None else name.filename()) or ""
        super().__init__(base, name, flags)

    def xWrite(self, data, offset):
        v = self.vfs
        if v.fires("full", self.fname):
            raise apsw.FullError("injected: disk full")
        if v.fires("eio_write", self.fname):
            raise apsw.IOError("injected: EIO on write")
        if v.fires("readonly", self.fname):
            raise apsw.ReadOnlyError("injected: read-only")
        if v.fires("short_write", self.fname):
            data = bytes(data)
            super().xWrite(data[:len(data) // 2], offset)
            raise apsw.IOError("injected: short write")
        return super().xWrite(data, offset)

    def xRead(self, amount, offset):
        if self.vfs.fires("eio_read", self.fname):
            raise apsw.IOError("injected: EIO on read")
        return super().xRead(amount, offset)

    def xSync(self, flags):
        if self.vfs.fires("fsync", self.fname):
            raise apsw.IOError("injected: fsync failed")
        return super().xSync(flags)

