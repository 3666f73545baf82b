"""The ledger writer: one SQLite (WAL) file, append-only, hash-chained, heads signed with Ed25519.

Every write is one `BEGIN IMMEDIATE` transaction, so several processes and threads can append to
one file at once: the write lock is taken before the last row is read, so no two writers can
link to the same row (a plain deferred `BEGIN` would fail with SQLITE_BUSY instead of waiting).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields as dataclass_fields
from operator import attrgetter
from hashlib import sha256
from typing import Iterable, Iterator
from urllib.parse import quote

import apsw

from interceptor.event import AUDIT, EGRESS, NetEvent
from ledger.errors import KeyMaterialError, LedgerError, NotALedgerError
from ledger.keys import LedgerKeys, create_keys, load_keys
from ledger.schema import SCHEMA, VACUUM_GATE
from verifier.format import (
    ANCHOR_ORIGIN,
    CHECKPOINT_ORIGIN,
    COLUMN_NAMES,
    COLUMNS,
    FORMAT_VERSION,
    GENESIS_HASH,
    Checkpoint,
    FormatError,
    columns_encoder,
    public_key_from_text,
    ROW_DOMAIN,
    SEQ,
    same_hash,
)

NS_PER_DAY = 86_400 * 10**9
BUSY_TIMEOUT_MS = 10_000


def netaudit_home() -> str:
    """NETAUDIT_HOME, or the platform's per-user data dir."""
    home = os.environ.get("NETAUDIT_HOME")
    if home:
        return home
    import platformdirs

    return platformdirs.user_data_dir("mit-network-audit", appauthor=False)


def default_host_id() -> str:
    return socket.gethostname() or "localhost"


def default_ledger_path() -> str:
    return os.path.join(netaudit_home(), "ledgers", f"{default_host_id()}.sqlite")


def default_key_dir() -> str:
    return os.path.join(netaudit_home(), "keys")


def _real(x) -> float:
    """SQLite stores -0.0 as 0 and NaN as NULL: write what will be read back, or the hash breaks."""
    x = float(x) + 0.0  # -0.0 + 0.0 == +0.0
    return x if x == x else 0.0


def fields_values(f) -> tuple:
    """A NetEvent's field values, in field order, as the ledger's column values (COLUMNS order):
    names joined by single spaces, the duration as SQLite will read it back, the flag as 0/1."""
    return (f[0], _real(f[1]), f[2], f[3], f[4], f[5], f[6], f[7], " ".join(f[8]), f[9], f[10], f[11],
            f[12], f[13], f[14], f[15], f[16], " ".join(f[17]), f[18], f[19], f[20], f[21], f[22],
            1 if f[23] else 0)


_event_fields = attrgetter(*(f.name for f in dataclass_fields(NetEvent)))


def event_values(e: NetEvent) -> tuple:
    """A NetEvent as the ledger's column values (verifier.format.COLUMNS order)."""
    return fields_values(_event_fields(e))


def _coerce(values: tuple) -> tuple:
    """Slow path for events whose fields have loose types (an int status, None for ""...)."""
    from verifier.format import COLUMNS, INT, REAL

    if len(values) != len(COLUMNS):
        raise FormatError(f"row cannot be encoded: {len(values)} values, expected {len(COLUMNS)}")
    out = []
    for (_, kind), v in zip(COLUMNS, values):
        if kind == INT:
            out.append(int(v or 0))
        elif kind == REAL:
            out.append(_real(v or 0.0))
        else:
            out.append("" if v is None else (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)))
    return tuple(out)


# A row on its way in is the INSERT's bindings, a list in table order: (chain_seq, *COLUMNS values,
# prev_hash, row_hash). Until the write lock gives it a seq and a prev_hash, its row_hash slot holds
# the row's encoded columns (encode_row after ROW_DOMAIN and chain_seq, verifier/format.py).
_SEQ_AT, _PREV_AT, _HASH_AT = 0, 1 + len(COLUMNS), 2 + len(COLUMNS)
# Positional, as short as the statement can be: apsw looks up executemany's SQL text in its statement
# cache again for every row, hashing the whole text; the long form with 27 column names cost ~0.25 us
# a row. The order is egress_log's (ledger/schema.py), which a test checks.
_INSERT = f"INSERT INTO egress_log VALUES({','.join('?' * (3 + len(COLUMNS)))})"
_ROW_AT = "SELECT row_hash FROM egress_log WHERE chain_seq = ?"


def audit_event(fact: str, ts: int, **detail) -> NetEvent:
    """An admin fact (ledger_opened, head_signed, vacuum, gap, ...) as a chain row.

    The detail goes into url_path as "k=v;k=v", made only of values the auditor itself produced.
    """
    text = ";".join(f"{k}={str(v).replace(';', ',').replace('=', ':')}" for k, v in detail.items())
    return NetEvent(ts=ts, duration_ms=0.0, direction=EGRESS, channel=AUDIT, protocol="",
                    method=fact, url_path=text, pid=os.getpid())


def audit_detail(text: str) -> dict[str, str]:
    """An admin fact's detail as audit_event wrote it: "k=v;k=v" -> {k: v}."""
    return dict(part.partition("=")[::2] for part in text.split(";") if "=" in part)


def audit_count(text: str, name: str) -> int:
    """The count `name=N` of an admin fact's detail (a gap row's dropped=N), or 0."""
    value = audit_detail(text).get(name, "")
    return int(value) if value.isdigit() else 0


@dataclass
class VacuumResult:
    deleted: int
    pruned_through: int      # 0 when nothing was ever pruned
    message: str


class Ledger:
    """One open ledger file. Thread-safe: writes from several threads are serialised."""

    def __init__(self, con: apsw.Connection, path: str, ledger_id: str, meta: dict[str, str],
                 key_dir: str, clock=time.time_ns):
        self.con = con
        self.path = path
        self.ledger_id = ledger_id
        self._encode_columns = columns_encoder(ledger_id)
        self._appended: tuple[int, bytes] | None = None  # (chain_seq, row_hash) this transaction wrote last
        self.meta = meta
        self.key_dir = key_dir
        self.clock = clock
        self._lock = threading.RLock()
        self._keys: LedgerKeys | None = None
        self._private_copy: str | None = None  # the folder of a read-only open's private copy

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | None = None, *, key_dir: str | None = None, host_id: str | None = None,
             create: bool = True, readonly: bool = False, clock=time.time_ns) -> "Ledger":
        """Open (and on first use create) a ledger. Creating also generates its keys."""
        path = path or default_ledger_path()
        key_dir = key_dir or default_key_dir()
        if os.path.isdir(path):
            raise NotALedgerError(f"{path}: is a directory, not a ledger file")
        present = os.path.exists(path)
        exists = present and os.path.getsize(path) > 0
        if not exists and (readonly or not create):
            # an empty file is not a missing one: say what the user sees (helper 39, L6c)
            raise NotALedgerError(f"{path}: " + ("empty file, not a ledger" if present else "no such ledger"))
        if not exists:
            cls._make_folder(path)
        con = private = None
        try:
            con, private = cls._connect_readonly(path) if readonly else (
                apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE), None)
            con.setbusytimeout(BUSY_TIMEOUT_MS)
            meta = cls._read_meta(con)
            # A database with tables but no ledger in it is something else's (a typo in --ledger
            # naming an application's database): never written, not even switched to WAL (helper
            # 39, M3). Read again first: a concurrent creator's tables come with its meta.
            foreign = meta is None and cls._has_tables(con) and cls._read_meta(con) is None
            if not readonly and not foreign:
                con.execute("PRAGMA journal_mode=WAL").fetchall()
                con.execute("PRAGMA synchronous=NORMAL")
        except apsw.NotADBError:
            cls._discard(con, private)
            raise NotALedgerError(f"{path}: not a SQLite file") from None
        except apsw.Error as exc:
            cls._discard(con, private)
            raise LedgerError(f"{path}: cannot open ledger: {exc}") from None
        except BaseException:
            cls._discard(con, private)
            raise
        if meta is None:
            if readonly or foreign:
                cls._discard(con, private)
                raise NotALedgerError(f"{path}: not a ledger (no meta table)"
                                      + ("; it holds other tables: a database of something else, left as it is"
                                         if foreign else ""))
            meta = cls._create(con, key_dir, host_id or default_host_id(), clock)
        if meta.get("format_version") != str(FORMAT_VERSION):
            cls._discard(con, private)
            raise NotALedgerError(f"{path}: ledger format version {meta.get('format_version')!r}, "
                                  f"this code writes version {FORMAT_VERSION}")
        led = cls(con, path, meta["ledger_id"], meta, key_dir, clock)
        led._private_copy = private
        return led

    @staticmethod
    def _make_folder(path: str) -> None:
        """The new ledger's folder, or a one-line error naming it (helper 39, L6a: a bare
        "OSError: [Errno 30] Read-only file system: '/ro/sub'" did not say what it was for)."""
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger's folder {folder}: {exc.strerror or exc}") from None

    @classmethod
    def _connect_readonly(cls, path: str) -> tuple[apsw.Connection, str | None]:
        """A read-only connection to what the file holds, and the private folder it was copied
        to (or None).

        A WAL ledger opened read-only still needs its -shm beside it, so in a folder the user
        cannot write (a read-only mount, an auditor's read access) every read failed with "unable
        to open database file" (helper 39, L1). There, with no -wal content, the file is all there
        is and cannot change under us (no writer can create the -wal either): SQLite reads it as
        immutable, without a -shm. A -wal with content holds committed rows the file does not yet;
        immutable would silently leave them out, so the file and its -wal are read from a private
        copy instead, as the verifier always does. A -wal and -shm both present need neither.
        """
        con = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            cls._has_tables(con)  # SQLite opens lazily: the first read is where a missing -shm shows
            return con, None
        except BaseException as exc:
            con.close()
            if not isinstance(exc, apsw.CantOpenError) or os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
                raise  # not the unwritable folder: SQLite's own reason stands
        wal = path + "-wal"
        if not (os.path.exists(wal) and os.path.getsize(wal) > 0):
            uri = "file:" + quote(os.path.abspath(path)) + "?immutable=1"
            return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI), None
        from verifier.verify import _copy_sparse  # keeps a huge sparse file's holes, as the verifier's copy does

        private = tempfile.mkdtemp(prefix="netaudit-read-")
        copy = os.path.join(private, "ledger.sqlite")
        try:
            _copy_sparse(path, copy)
            _copy_sparse(wal, copy + "-wal")
            return apsw.Connection(copy, flags=apsw.SQLITE_OPEN_READONLY), private
        except OSError as exc:
            shutil.rmtree(private, ignore_errors=True)
            raise LedgerError(f"{path}: cannot read it and its -wal into a private copy: "
                              f"{exc.strerror or exc}") from None
        except BaseException:  # ^C during a large copy: no partial copy left in the temp folder (review 41, L2)
            shutil.rmtree(private, ignore_errors=True)
            raise

    @staticmethod
    def _discard(con: apsw.Connection | None, private: str | None) -> None:
        """Close a connection Ledger.open will not return, and remove its private copy."""
        if con is not None:
            con.close()
        if private:
            shutil.rmtree(private, ignore_errors=True)

    @staticmethod
    def _has_tables(con) -> bool:
        return bool(con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall())

    @staticmethod
    def _read_meta(con) -> dict[str, str] | None:
        has = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchall()
        if not has:
            return None
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        return meta or None

    @classmethod
    def _create(cls, con, key_dir: str, host_id: str, clock) -> dict[str, str]:
        """Schema, keys and meta in one transaction; a concurrent creator waits and reuses ours."""
        ledger_id = str(uuid.uuid4())
        led = Ledger(con, "", ledger_id, {}, key_dir, clock)
        with led._transaction():
            meta = cls._read_meta(con)
            if meta:
                return meta
            con.execute(SCHEMA)
            keys = create_keys(key_dir, ledger_id)
            meta = {"ledger_id": ledger_id, "format_version": str(FORMAT_VERSION), "host_id": host_id,
                    "created_at": str(clock()), "public_key": keys.public_key_text, "key_id": keys.key_id}
            con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            led._append_fact_locked("ledger_opened", clock(), created=1, host=host_id)
        return meta

    def close(self) -> None:
        self.con.close()
        if self._private_copy:
            shutil.rmtree(self._private_copy, ignore_errors=True)
            self._private_copy = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- keys ------------------------------------------------------------------------------

    @property
    def keys(self) -> LedgerKeys:
        """This ledger's signing key and salt, checked against the public key in meta."""
        if self._keys is None:
            keys = load_keys(self.key_dir, self.ledger_id)
            if not same_hash(keys.public_key, public_key_from_text(self.meta["public_key"])):
                raise KeyMaterialError(f"the key in {keys.folder} does not match the ledger's public key")
            self._keys = keys
        return self._keys

    @property
    def hmac_salt(self) -> bytes:
        return self.keys.salt

    @property
    def public_key_text(self) -> str:
        return self.meta["public_key"]

    # ---- appending -------------------------------------------------------------------------

    def last(self) -> tuple[int, bytes]:
        """(chain_seq, row_hash) of the last row, or (0, GENESIS_HASH) for an empty ledger."""
        rows = self.con.execute(
            "SELECT chain_seq, row_hash FROM egress_log ORDER BY chain_seq DESC LIMIT 1").fetchall()
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS_HASH)

    def append_many(self, events: Iterable[NetEvent]) -> int:
        """Append events as one transaction. Returns the last chain_seq.

        Columns are encoded before the write lock is taken; under the lock only the seq, the
        hash and the insert remain, so concurrent writers wait on each other as little as possible.
        """
        return self.append_values(list(map(event_values, events)))

    def append_values(self, rows: list[tuple]) -> int:
        """append_many for rows already in column order (see fields_values). Returns the last chain_seq."""
        return self.append_encoded(self.encode_values(rows))

    def append_encoded(self, encoded: list[list]) -> int:
        """Append rows made by encode_values, as one transaction. Returns the last chain_seq.

        The sink's writer thread encodes in slices between which it lets the audited threads
        run, then appends here: under the lock only the seq, the hash and the insert remain.
        The rows are used up (they become the rows as inserted): after a failed append, encode
        the values again.
        """
        if not encoded:
            return self.last()[0]
        if encoded[0][_PREV_AT] is not None:
            raise LedgerError("these encoded rows were already appended once: encode the values again")
        with self._write():
            return self._append_locked(encoded)

    def append(self, event: NetEvent) -> int:
        return self.append_many([event])

    def append_audit(self, fact: str, **detail) -> int:
        """Record an admin fact (interceptor_installed, forensic_on, ...) as a chain row."""
        return self.append(audit_event(fact, self.clock(), **detail))

    def encode_values(self, rows: list[tuple]) -> list[list]:
        """The rows for append_encoded, their columns encoded; loose types are coerced.

        Each is a list in egress_log's order, its chain_seq, prev_hash and row_hash still to come
        (the row_hash slot holds the encoded columns until then). The encoding is the format's
        (verifier.format.columns_encoder); the writer has no copy of its layout.
        """
        encode = self._encode_columns
        try:
            return [[0, *values, None, encode(values)] for values in rows]
        except FormatError:  # loose types from a caller: coerce those rows once, then they must encode
            return [self._encode(values) for values in rows]

    def _encode(self, values: tuple) -> list:
        """One row; if its types are loose, they are coerced once and the format's encoder decides
        again (FormatError for what it still cannot encode)."""
        try:
            body = self._encode_columns(values)
        except FormatError:
            values = _coerce(values)
            body = self._encode_columns(values)
        return [0, *values, None, body]

    def _append_fact_locked(self, fact: str, ts: int, **detail) -> int:
        return self._append_locked([self._encode(event_values(audit_event(fact, ts, **detail)))])

    def _append_locked(self, rows: list[list]) -> int:
        """Chain the rows after the last one and insert them; the caller holds the write lock."""
        seq, prev = self.last()
        pack_seq = SEQ.pack
        for row in rows:
            seq += 1
            digest = sha256(prev + ROW_DOMAIN + pack_seq(seq) + row[_HASH_AT]).digest()  # = row_hash(), inlined
            row[_SEQ_AT], row[_PREV_AT], row[_HASH_AT] = seq, prev, digest
            prev = digest
        self.con.executemany(_INSERT, rows)
        self._appended = seq, prev
        return seq

    @contextmanager
    def _write(self):
        with self._lock, self._transaction():
            yield

    @contextmanager
    def _transaction(self):
        """One write transaction on this ledger's connection: the write lock is taken first
        (waiting up to the busy timeout), so the last row read inside stays the last row.

        Every write ends by appending a chain row, which tells whether a COMMIT that raised landed
        anyway: SQLite reports a failed post-commit checkpoint (an fsync error, say) as the COMMIT's
        error. Reporting that durable write as failed made the sink count it as dropped too. The
        row is looked up by its seq, so a row another writer appended since cannot be taken for it.
        """
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        self._appended = None
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            con.execute("COMMIT")
        except apsw.Error:
            if not (self._appended and con.getautocommit() and self._landed(*self._appended)):
                raise

    def _landed(self, seq: int, digest: bytes) -> bool:
        """True when row `seq` is in the ledger, committed, with hash `digest`."""
        return self.con.execute(_ROW_AT, (seq,)).fetchall() == [(digest,)]

    # ---- signed heads ------------------------------------------------------------------------

    def sign_head(self) -> str:
        """Sign the current last row; store the head in the ledger and in the heads file.

        The heads file is written (and fsynced) before the commit: a head outside the ledger
        is what catches truncation and rollback, so it must never lag behind the ledger's own.
        """
        keys = self.keys
        with self._write():
            seq, digest = self.last()
            if seq == 0:
                raise LedgerError(f"{self.path}: nothing to sign, the ledger has no rows")
            cp = keys.sign(Checkpoint(CHECKPOINT_ORIGIN, self.ledger_id, seq, digest, self.clock(), keys.key_id))
            keys.append_head(cp)
            self.con.execute(
                "INSERT INTO signed_heads (seq, row_hash, signed_at, key_id, signature) VALUES (?, ?, ?, ?, ?)",
                (cp.seq, cp.row_hash, cp.signed_at, cp.key_id, cp.signature))
            self._append_fact_locked("head_signed", cp.signed_at, seq=seq)
        return cp.to_text()

    def head(self) -> Checkpoint | None:
        """The newest signed head stored in the ledger."""
        rows = self.con.execute(
            "SELECT seq, row_hash, signed_at, key_id, signature FROM signed_heads ORDER BY id DESC LIMIT 1").fetchall()
        if not rows:
            return None
        return Checkpoint(CHECKPOINT_ORIGIN, self.ledger_id, *rows[0])

    def prune_anchor(self) -> Checkpoint | None:
        """The newest signed prune anchor (where the chain now resumes), or None if never pruned."""
        rows = self.con.execute(
            "SELECT pruned_through_seq, row_hash, signed_at, key_id, signature FROM prune_anchors "
            "ORDER BY pruned_through_seq DESC LIMIT 1").fetchall()
        return Checkpoint(ANCHOR_ORIGIN, self.ledger_id, *rows[0]) if rows else None

    # ---- retention vacuum ----------------------------------------------------------------------

    def vacuum(self, retention_days: float, now_ns: int | None = None) -> VacuumResult:
        """Delete rows older than the retention window, strictly below the latest signed head.

        The only deleter. It runs on a connection of its own, the only one where the delete
        trigger's gate function exists; it writes a signed prune anchor for the last deleted row
        first, so the rest of the chain still verifies from the anchor, and records itself as a
        `vacuum` audit row, all in one transaction.
        """
        if not retention_days >= 0:
            raise LedgerError(f"retention days must be 0 or more, got {retention_days}")
        now_ns = self.clock() if now_ns is None else now_ns
        cutoff = now_ns - int(retention_days * NS_PER_DAY)
        keys = self.keys
        allowed = {"through": 0}
        con = apsw.Connection(self.path)
        con.setbusytimeout(BUSY_TIMEOUT_MS)
        con.create_scalar_function(VACUUM_GATE, lambda seq: 1 if seq <= allowed["through"] else 0, 1)
        vac = Ledger(con, self.path, self.ledger_id, self.meta, self.key_dir, self.clock)
        vac._keys = keys
        try:
            with self._lock, vac._transaction():
                head = con.execute("SELECT max(seq) FROM signed_heads").fetchall()[0][0]
                anchor = con.execute("SELECT max(pruned_through_seq) FROM prune_anchors").fetchall()[0][0] or 0
                first_recent = con.execute(
                    "SELECT min(chain_seq) FROM egress_log WHERE ts >= ?", (cutoff,)).fetchall()[0][0]
                last_seq = vac.last()[0]
                through = min((head or 1) - 1, (first_recent - 1) if first_recent else last_seq)
                deleted = 0
                if head and through > anchor:
                    digest = con.execute("SELECT row_hash FROM egress_log WHERE chain_seq = ?", (through,)).fetchall()[0][0]
                    cp = keys.sign(Checkpoint(ANCHOR_ORIGIN, self.ledger_id, through, digest, now_ns, keys.key_id))
                    con.execute("INSERT INTO prune_anchors (pruned_through_seq, row_hash, signed_at, key_id, signature) "
                                "VALUES (?, ?, ?, ?, ?)", (cp.seq, cp.row_hash, cp.signed_at, cp.key_id, cp.signature))
                    allowed["through"] = through
                    con.execute("DELETE FROM egress_log WHERE chain_seq <= ?", (through,))
                    deleted = con.changes()
                    allowed["through"] = 0
                    anchor = through
                vac._append_fact_locked("vacuum", now_ns, retention_days=retention_days, deleted=deleted,
                                        pruned_through=anchor)
        finally:
            con.close()
        if not head:
            msg = "nothing deleted: no signed head yet (the vacuum never deletes unsigned rows)"
        elif deleted:
            msg = f"deleted {deleted} rows through row {anchor} (prune anchor signed)"
        else:
            msg = "nothing to delete: no row is both older than the retention window and below the signed head"
        return VacuumResult(deleted, anchor, msg)

    # ---- reading -------------------------------------------------------------------------------

    def rows(self, after_seq: int = 0, limit: int | None = None) -> Iterator[dict]:
        """Rows with chain_seq > after_seq, in order, as dicts (for ingest and reports)."""
        names = ("chain_seq", *COLUMN_NAMES, "prev_hash", "row_hash")
        sql = f"SELECT {', '.join(names)} FROM egress_log WHERE chain_seq > ? ORDER BY chain_seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        for row in self.con.execute(sql, (after_seq,)):
            yield dict(zip(names, row))

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM egress_log").fetchall()[0][0]
