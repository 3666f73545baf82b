"""Check a ledger: recompute the chain, check the signed heads and prune anchors, name the first bad row.

Two entry points:
  - ChainChecker: checks rows streamed from any store (the Odoo addon feeds it PostgreSQL rows);
  - verify_ledger(path, ...): checks a ledger file, on a private copy, so the evidence is untouched.

Reasons (Verdict.reason), each naming the first bad chain_seq:
  hash_mismatch   a row's stored row_hash is not SHA-256(prev_hash || encode(row))
  broken_link     a row's prev_hash is not the previous row's row_hash (or the anchor's)
  sequence_gap    chain_seq does not continue from the previous row (deleted or inserted rows)
  bad_type        a column holds a value of the wrong type (the format forbids it)
  bad_signature   a signed head or prune anchor does not verify with the public key
  foreign_key     a head or anchor was signed by another key, or meta's key is not the given one
  head_mismatch   a signed head names a hash other than its row's: the chain was rewritten
  truncation      a signed head lies beyond the last row: rows were deleted from the tail (or an
                  older copy was restored)
  rollback        a head kept outside the ledger, which the ledger does not hold, disagrees with its
                  row: an older copy was restored and then written on
"""
from __future__ import annotations

import json
import os
import sys
import shutil
import tempfile
from dataclasses import asdict, dataclass, field

from verifier.format import (
    ANCHOR_ORIGIN,
    CHECKPOINT_ORIGIN,
    COLUMN_NAMES,
    FORMAT_VERSION,
    GENESIS_HASH,
    HASH_LEN,
    Checkpoint,
    FormatError,
    check_signature,
    key_id,
    stored_row_encoder,
    public_key_from_text,
    same_hash,
)
from hashlib import sha256
from itertools import islice


class VerifyInputError(Exception):
    """The input cannot be checked at all (missing, not a ledger, future format, bad key...)."""


@dataclass
class Verdict:
    valid: bool
    rows: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int | None = None          # the newest signed head that verified
    message: str = "chain verified"
    warnings: list[str] = field(default_factory=list)
    spans: int = 1                       # how many parts the chain was checked in (worker processes)

    def as_json(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("valid", "rows", "first_bad_seq", "reason", "head_seq", "message", "warnings")}


@dataclass
class Failure:
    seq: int
    reason: str
    message: str


class ChainChecker:
    """Checks rows in chain_seq order; stops at the first failure.

    feed() takes (chain_seq, values, prev_hash, row_hash) with values in COLUMNS order.
    `start_seq`/`start_hash` are where the chain resumes: (0, GENESIS_HASH), or a prune anchor.
    Hashes of the rows in `want` are kept so signed heads can be checked against them afterwards.
    """

    def __init__(self, ledger_id: str, start_seq: int = 0, start_hash: bytes = GENESIS_HASH,
                 want: set[int] | frozenset[int] = frozenset()):
        self.ledger_id = ledger_id
        self.last_seq = start_seq
        self.last_hash = start_hash
        self.rows = 0
        self.failure: Failure | None = None
        self.want = want
        self.seen: dict[int, bytes] = {}

    def feed_many(self, rows) -> Failure | None:
        """rows: iterable of (chain_seq, *values, prev_hash, row_hash) tuples. The hot loop."""
        if self.failure:
            return self.failure
        ledger_id, last_seq, last_hash, want = self.ledger_id, self.last_seq, self.last_hash, self.want
        n, eq = self.rows, same_hash
        try:
            encode = stored_row_encoder(ledger_id)
        except FormatError as exc:  # an unencodable ledger_id: the first row cannot be checked
            def encode(row, _exc=exc):
                raise _exc
        fail = None
        for row in rows:
            seq, prev, stored = row[0], row[-2], row[-1]
            if seq != last_seq + 1:
                fail = Failure(last_seq + 1, "sequence_gap",
                               f"row {last_seq + 1} is missing: row {seq} follows row {last_seq} (rows deleted or inserted)")
                break
            if type(prev) is not bytes or type(stored) is not bytes or len(stored) != HASH_LEN:
                fail = Failure(seq, "bad_type", f"row {seq}: prev_hash/row_hash is not a {HASH_LEN}-byte blob")
                break
            if not eq(prev, last_hash):
                fail = Failure(seq, "broken_link", f"row {seq}: prev_hash does not match row {last_seq}'s hash")
                break
            try:
                computed = sha256(prev + encode(row)).digest()
            except FormatError as exc:
                fail = Failure(seq, "bad_type", f"row {seq}: {exc}")
                break
            if not eq(computed, stored):
                fail = Failure(seq, "hash_mismatch", f"row {seq}: contents do not match its row_hash")
                break
            if seq in want:
                self.seen[seq] = stored
            last_seq, last_hash = seq, stored
            n += 1
        self.last_seq, self.last_hash, self.rows, self.failure = last_seq, last_hash, n, fail
        return fail

    def feed(self, seq: int, values, prev_hash: bytes, row_hash: bytes) -> Failure | None:
        return self.feed_many([(seq, *values, prev_hash, row_hash)])


def check_heads(heads: list[Checkpoint], public_key: bytes, checker: ChainChecker,
                anchor_seq: int, anchor_hash: bytes, ledger_heads: set[tuple[int, bytes]]) -> tuple[Failure | None, int | None]:
    """Check signed heads against a fully fed checker. Returns (first failure, newest good head seq).

    `ledger_heads` are the (seq, row_hash) of the heads the ledger itself holds. A head that
    disagrees with its row is a rewritten chain (head_mismatch) when the ledger holds it, and a
    restored older copy that was then written on (rollback) when only an outside copy holds it.
    """
    newest = None
    for cp in sorted(heads, key=lambda c: c.seq):
        if cp.ledger_id != checker.ledger_id:
            return Failure(cp.seq, "foreign_key", f"head at row {cp.seq} is for ledger {cp.ledger_id}"), newest
        if not check_signature(cp, public_key):
            reason = "foreign_key" if cp.key_id != key_id(public_key) else "bad_signature"
            return Failure(cp.seq, reason, f"signed head at row {cp.seq} does not verify with the public key ({reason})"), newest
        if cp.seq > checker.last_seq:
            return Failure(checker.last_seq + 1, "truncation",
                           f"a signed head names row {cp.seq}, beyond the last row {checker.last_seq}: rows were "
                           "deleted from the tail, or an older copy of the ledger was restored"), newest
        if cp.seq < anchor_seq:
            continue  # pruned, and covered by the anchor's own signature
        expected = anchor_hash if cp.seq == anchor_seq else checker.seen.get(cp.seq)
        if expected is None or not same_hash(expected, cp.row_hash):
            if (cp.seq, cp.row_hash) in ledger_heads:
                return Failure(cp.seq, "head_mismatch",
                               f"row {cp.seq}'s hash differs from its signed head: the chain was rewritten at or before "
                               f"row {cp.seq}"), newest
            return Failure(cp.seq, "rollback",
                           f"row {cp.seq}'s hash differs from a signed head kept outside the ledger, which the ledger "
                           "does not hold: an older copy was restored and written on (or the chain was rewritten)"), newest
        newest = cp.seq if newest is None else max(newest, cp.seq)
    return None, newest


# ---- reading a ledger file -------------------------------------------------------------------

def _private_copy(path: str, tmpdir: str) -> str:
    """Copy the ledger and its -wal so nothing we do (WAL recovery, shm) touches the evidence."""
    if not os.path.exists(path):
        raise VerifyInputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VerifyInputError(f"{path}: is a directory, not a ledger file")
    if os.path.getsize(path) == 0:
        raise VerifyInputError(f"{path}: empty file, not a ledger")
    dst = os.path.join(tmpdir, "ledger.sqlite")
    try:
        with open(path, "rb") as f:
            if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:  # before copying what may be gigabytes
                raise VerifyInputError(f"{path}: not a SQLite ledger (no SQLite header)")
        _copy_sparse(path, dst)
        if os.path.exists(path + "-wal"):
            _copy_sparse(path + "-wal", dst + "-wal")
    except OSError as exc:
        raise VerifyInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return dst


SQLITE_MAGIC = b"SQLite format 3\0"


def _copy_sparse(src: str, dst: str) -> None:
    """Copy a file, keeping its holes: a huge sparse file costs neither minutes nor disk.

    Found by the reliability suite (a ledger followed by an 8 GiB hole took over 30 s and 8 GiB
    of /tmp to copy). Holes read as zeros, so the copy holds the same bytes.
    """
    if not hasattr(os, "SEEK_DATA"):
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left (or the file system cannot say: copy it all)
                break
            end = os.lseek(fi.fileno(), start, os.SEEK_HOLE)
            fi.seek(start)
            fo.seek(start)
            while start < end:
                chunk = fi.read(min(1 << 20, end - start))
                if not chunk:
                    break
                fo.write(chunk)
                start += len(chunk)
            pos = end
        fo.truncate(size)


def _open(copy: str, shown: str):
    import apsw

    try:
        con = apsw.Connection(copy, flags=apsw.SQLITE_OPEN_READWRITE)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except apsw.Error as exc:
        raise VerifyInputError(f"{shown}: not a SQLite ledger ({exc.__class__.__name__})") from None
    missing = {"meta", "egress_log", "signed_heads", "prune_anchors"} - tables
    if missing:
        raise VerifyInputError(f"{shown}: not a ledger (missing tables: {', '.join(sorted(missing))})")
    return con


def _meta(con, shown: str) -> dict[str, str]:
    meta = {}
    for k, v in con.execute("SELECT key, value FROM meta"):
        if k in meta or not isinstance(k, str) or not isinstance(v, str):
            raise VerifyInputError(f"{shown}: malformed meta table")
        meta[k] = v
    for key in ("ledger_id", "format_version", "public_key"):
        if key not in meta:
            raise VerifyInputError(f"{shown}: meta has no {key}")
    if meta["format_version"] != str(FORMAT_VERSION):
        raise VerifyInputError(
            f"{shown}: format version {meta['format_version'][:20]!r}, this verifier reads version {FORMAT_VERSION}")
    return meta


def _stored_checkpoints(con, table: str, seq_col: str, origin: str, ledger_id: str) -> list[Checkpoint]:
    out = []
    for seq, digest, signed_at, kid, sig in con.execute(
            f"SELECT {seq_col}, row_hash, signed_at, key_id, signature FROM {table} ORDER BY id"):
        if not (type(seq) is int and type(digest) is bytes and type(signed_at) is int
                and type(kid) is str and type(sig) is bytes):
            raise FormatError(f"{table} holds a value of the wrong type at row {seq!r}")
        out.append(Checkpoint(origin, ledger_id, seq, digest, signed_at, kid, sig))
    return out


def verify_ledger(path: str, pubkey: str | None = None, heads: list[Checkpoint] | None = None,
                  progress=None) -> Verdict:
    """Verify a ledger file. Raises VerifyInputError for unusable input; returns a Verdict otherwise.

    `pubkey` is the auditor's trusted key text ("ed25519:..."); without it the key in the
    ledger's own meta is used, which proves integrity only against someone without file access.
    `heads` are checkpoints kept outside the ledger (heads file, ir.config_parameter...).
    """
    import apsw

    with tempfile.TemporaryDirectory(prefix="netaudit-verify-") as tmp:
        copy = _private_copy(path, tmp)
        con = _open(copy, path)
        try:
            return _verify(con, copy, path, pubkey, heads or [], progress)
        except apsw.Error as exc:
            raise VerifyInputError(f"{path}: unreadable ledger ({exc.__class__.__name__}: {exc})") from None
        except UnicodeDecodeError:  # rows are named in _check_span; this is meta, a head or an anchor
            return Verdict(False, 0, None, "bad_type", message=f"{path}: a TEXT value is not UTF-8, "
                           "which the writer never stores")
        finally:
            con.close()


_ROWS_SQL = (f"SELECT chain_seq, {', '.join(COLUMN_NAMES)}, prev_hash, row_hash FROM egress_log "
             "WHERE chain_seq BETWEEN ? AND ? ORDER BY chain_seq")
PARALLEL_MIN_ROWS = 200_000  # below this, starting worker processes costs more than it saves


def _check_span(copy: str, ledger_id: str, lo: int, hi: int, want, progress=None) -> ChainChecker:
    """Check rows lo..hi on a connection of its own. The checker starts from the first row's own
    link; the caller joins spans by checking that link against the previous span's last row."""
    import apsw

    con = apsw.Connection(copy, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = con.execute(_ROWS_SQL, (lo, hi))
        first = next(rows, None)
        if first is None:
            return ChainChecker(ledger_id, lo - 1, GENESIS_HASH, want)
        checker = ChainChecker(ledger_id, first[0] - 1, first[-2], want)
        checker.first = (first[0], first[-2])
        checker.feed_many([first])
        while not checker.failure:
            before = checker.rows
            try:
                checker.feed_many(islice(rows, 50_000))
            except UnicodeDecodeError:  # apsw decodes TEXT while fetching: find the row, one by one
                _feed_until_undecodable(con, checker, hi)
            if checker.rows == before:
                break
            if progress:
                progress(checker.rows)
        return checker
    finally:
        con.close()


def _feed_until_undecodable(con, checker: ChainChecker, hi: int) -> None:
    """Feed rows one at a time from where the checker stands, naming the first row whose TEXT
    is not UTF-8 (which the writer never stores) as bad_type."""
    for (seq,) in con.execute("SELECT chain_seq FROM egress_log WHERE chain_seq > ? AND chain_seq <= ? "
                              "ORDER BY chain_seq", (checker.last_seq, hi)).fetchall():
        try:
            row = con.execute(_ROWS_SQL, (seq, seq)).fetchall()
        except UnicodeDecodeError:
            checker.failure = Failure(seq, "bad_type", f"row {seq}: a TEXT column holds bytes that are not UTF-8")
            return
        if checker.feed_many(row):
            return


def _check_chain(con, copy, ledger_id, anchor_seq, anchor_hash, want, progress) -> ChainChecker:
    """Check every row, in spans checked in parallel worker processes when the ledger is large.

    Each row's hash depends only on its own columns and stored prev_hash, so spans are
    independent; joining them checks the one link between neighbouring spans.
    """
    lo, hi, n = con.execute("SELECT min(chain_seq), max(chain_seq), count(*) FROM egress_log").fetchall()[0]
    joined = ChainChecker(ledger_id, anchor_seq, anchor_hash, want)
    joined.spans = 1
    if not n:
        return joined
    workers = min(os.cpu_count() or 1, 4) if n >= PARALLEL_MIN_ROWS else 1
    step = (hi - lo) // workers + 1
    spans = [(lo + i * step, min(hi, lo + (i + 1) * step - 1)) for i in range(workers)]
    joined.spans = workers
    procs = [_start_span_worker(copy, ledger_id, a, b, want) for a, b in spans[1:]]
    results = [_check_span(copy, ledger_id, *spans[0], want, progress)]
    results += [_span_worker_result(p, copy, ledger_id, a, b, want) for p, (a, b) in zip(procs, spans[1:])]
    for part in results:
        first = getattr(part, "first", None)
        if first is not None:
            seq, prev = first
            if seq != joined.last_seq + 1:
                joined.failure = Failure(joined.last_seq + 1, "sequence_gap",
                                         f"row {joined.last_seq + 1} is missing: row {seq} follows row {joined.last_seq}")
                return joined
            if type(prev) is bytes and not same_hash(prev, joined.last_hash):
                joined.failure = Failure(seq, "broken_link", f"row {seq}: prev_hash does not match row {joined.last_seq}'s hash")
                return joined
        joined.rows += part.rows
        joined.seen.update(part.seen)
        if part.failure:
            joined.failure = part.failure
            return joined
        if part.rows:
            joined.last_seq, joined.last_hash = part.last_seq, part.last_hash
    return joined


# ---- span workers: plain subprocesses (`python -m verifier.verify --span ...`), not
# multiprocessing, which would re-import the caller's __main__ (a script on stdin, odoo-bin...).

def _start_span_worker(copy: str, ledger_id: str, lo: int, hi: int, want):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "verifier.verify", "--span", copy, ledger_id, str(lo), str(hi)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        proc.stdin.write(json.dumps(sorted(s for s in want if lo <= s <= hi)).encode())
        proc.stdin.close()
        return proc
    except (OSError, ValueError):
        return None


def _span_worker_result(proc, copy, ledger_id, lo, hi, want) -> ChainChecker:
    """The worker's checker; if the worker could not run or answer, check the span here instead."""
    try:
        if proc is not None:
            out = proc.stdout.read()
            if proc.wait() == 0:
                return _checker_from_json(json.loads(out), ledger_id, want)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _check_span(copy, ledger_id, lo, hi, want)


def _checker_to_json(c: ChainChecker) -> dict:
    first = getattr(c, "first", None)
    return {"rows": c.rows, "last_seq": c.last_seq, "last_hash": c.last_hash.hex(),
            "first": [first[0], first[1].hex() if type(first[1]) is bytes else None] if first else None,
            "failure": [c.failure.seq, c.failure.reason, c.failure.message] if c.failure else None,
            "seen": {str(k): v.hex() for k, v in c.seen.items()}}


def _checker_from_json(d: dict, ledger_id: str, want) -> ChainChecker:
    c = ChainChecker(ledger_id, d["last_seq"], bytes.fromhex(d["last_hash"]), want)
    c.rows = d["rows"]
    if d["first"]:
        seq, prev = d["first"]
        c.first = (seq, bytes.fromhex(prev) if prev is not None else None)
    c.failure = Failure(*d["failure"]) if d["failure"] else None
    c.seen = {int(k): bytes.fromhex(v) for k, v in d["seen"].items()}
    return c


def _span_main(argv: list[str]) -> int:
    copy, ledger_id, lo, hi = argv
    want = frozenset(json.loads(sys.stdin.read() or "[]"))
    sys.stdout.write(json.dumps(_checker_to_json(_check_span(copy, ledger_id, int(lo), int(hi), want))))
    return 0


def _verify(con, copy, shown, pubkey, external, progress) -> Verdict:
    meta = _meta(con, shown)
    ledger_id = meta["ledger_id"]
    try:
        meta_key = public_key_from_text(meta["public_key"])
    except FormatError as exc:
        return Verdict(False, 0, 0, "foreign_key", message=f"meta public key: {exc}")
    warnings = []
    if pubkey is None:
        key = meta_key
        warnings.append("no --pubkey given: signatures checked with the key stored in the ledger itself")
    else:
        key = public_key_from_text(pubkey)
        if not same_hash(key, meta_key):
            return Verdict(False, 0, 0, "foreign_key", message=
                           "the ledger's meta holds another public key than the one given: meta was replaced", warnings=warnings)
    try:
        anchors = _stored_checkpoints(con, "prune_anchors", "pruned_through_seq", ANCHOR_ORIGIN, ledger_id)
        internal = _stored_checkpoints(con, "signed_heads", "seq", CHECKPOINT_ORIGIN, ledger_id)
    except FormatError as exc:
        return Verdict(False, 0, 0, "bad_type", message=str(exc), warnings=warnings)
    for cp in external:
        if cp.origin != CHECKPOINT_ORIGIN:
            raise VerifyInputError("the given checkpoint is a prune anchor, not a signed head")
        if cp.ledger_id != ledger_id:
            raise VerifyInputError(f"the given checkpoint is for ledger {cp.ledger_id!r}, not {ledger_id!r} (the one in meta)")

    anchor_seq, anchor_hash = 0, GENESIS_HASH
    for a in anchors:  # every anchor must verify; the newest is where the chain resumes
        if not check_signature(a, key):
            return Verdict(False, 0, a.seq, "bad_signature", message=f"prune anchor at row {a.seq} does not verify", warnings=warnings)
        if a.seq >= anchor_seq:
            anchor_seq, anchor_hash = a.seq, a.row_hash

    all_heads = internal + list(external)
    checker = _check_chain(con, copy, ledger_id, anchor_seq, anchor_hash, {h.seq for h in all_heads}, progress)
    if checker.failure:
        f = checker.failure
        return Verdict(False, checker.rows, f.seq, f.reason, message=f.message, warnings=warnings, spans=checker.spans)
    failure, newest = check_heads(all_heads, key, checker, anchor_seq, anchor_hash, {(h.seq, h.row_hash) for h in internal})
    if failure:
        return Verdict(False, checker.rows, failure.seq, failure.reason, newest, failure.message, warnings, checker.spans)
    if newest is None:
        warnings.append("no signed head: rows after the last signed head could be cut without trace")
    elif newest < checker.last_seq:
        warnings.append(f"rows {newest + 1}..{checker.last_seq} are not yet covered by a signed head")
    msg = f"chain verified: {checker.rows} rows"
    if anchor_seq:
        msg += f" from prune anchor at row {anchor_seq}"
    msg += f", newest signed head at row {newest}" if newest is not None else ", no signed head"
    return Verdict(True, checker.rows, None, None, newest, msg, warnings, checker.spans)


if __name__ == "__main__" and sys.argv[1:2] == ["--span"]:
    raise SystemExit(_span_main(sys.argv[2:]))
