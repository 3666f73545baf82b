"""The ledger format, defined once: columns, canonical row encoding, row hash, checkpoints.

Everything an independent verifier needs is here and in docs/FORMAT.md; the writer (ledger/)
imports these definitions and never re-implements them: it encodes its rows with columns_encoder,
the verifier checks them with stored_row_encoder. Golden vectors in tests/vectors/ pin every byte:
a change of format must bump FORMAT_VERSION and regenerate them.

row_hash = SHA-256(prev_hash || encode_row(ledger_id, chain_seq, values))

encode_row layout (all integers big-endian):
    ROW_DOMAIN                                  25 bytes, "mit-network-audit/row/v1\\n"
    chain_seq                                   i64
    each INT column, in COLUMNS order           i64
    each REAL column, in COLUMNS order          IEEE 754 binary64
    len(ledger_id), len(each TEXT column)       u32, lengths of the UTF-8 bytes
    ledger_id, each TEXT column                 UTF-8 bytes, concatenated
The schema fixes every column's type and forbids NULL, so the lengths block is the whole
framing: no two different rows encode to the same bytes.

The layout is written here twice, both in this module: generally, from COLUMNS (_make_encoder, the
reference), and unrolled with one local per column for the two hot paths (columns_encoder and
stored_row_encoder), which hand any row they do not handle to the general encoder. At import,
_check_unrolled() fails (ImportError) unless the unrolled code follows COLUMNS and writes the
general encoder's bytes.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import struct
from operator import itemgetter
from dataclasses import dataclass

FORMAT_VERSION = 1
ROW_DOMAIN = b"mit-network-audit/row/v1\n"
GENESIS_HASH = bytes(32)  # prev_hash of the first row when nothing was pruned
HASH_LEN = 32
KEY_PREFIX = "ed25519:"
CHECKPOINT_ORIGIN = "mit-network-audit/checkpoint/v1"  # signed head
ANCHOR_ORIGIN = "mit-network-audit/anchor/v1"          # prune anchor

INT, REAL, TEXT = "INTEGER", "REAL", "TEXT"

# egress_log columns after chain_seq, in canonical order (= NetEvent's field order).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", INT),
    ("duration_ms", REAL),
    ("direction", TEXT),
    ("channel", TEXT),
    ("protocol", TEXT),
    ("method", TEXT),
    ("host", TEXT),
    ("url_path", TEXT),
    ("query_keys", TEXT),     # names joined by single spaces
    ("src_ip", TEXT),
    ("src_port", INT),
    ("dst_ip", TEXT),
    ("dst_port", INT),
    ("status", TEXT),
    ("error", TEXT),
    ("req_bytes", INT),
    ("resp_bytes", INT),
    ("header_names", TEXT),   # names joined by single spaces
    ("fingerprint", TEXT),
    ("module", TEXT),
    ("author", TEXT),
    ("call_site", TEXT),
    ("pid", INT),
    ("self_egress", INT),     # 0 or 1
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

_INT_IDX = tuple(i for i, (_, t) in enumerate(COLUMNS) if t == INT)
_REAL_IDX = tuple(i for i, (_, t) in enumerate(COLUMNS) if t == REAL)
_TEXT_IDX = tuple(i for i, (_, t) in enumerate(COLUMNS) if t == TEXT)
(_REAL_AT,) = _REAL_IDX
SEQ = struct.Struct(">q")  # chain_seq, after ROW_DOMAIN


class FormatError(ValueError):
    """A value that the format cannot represent (wrong type, out of range, malformed text)."""


def _make_encoder(offset: int, with_seq: bool, domain: bool):
    """The column encoding, generically: for values at `offset` in a sequence (with chain_seq at 0
    if with_seq). The reference for the unrolled encoders below, and their fallback.

    Returns bind(ledger_id) -> encode(values) -> bytes. One body serves the writer (a tuple of
    COLUMNS values: everything of encode_row after ROW_DOMAIN and chain_seq) and the verifier (a
    stored row `(chain_seq, *COLUMNS, prev_hash, row_hash)`: all of encode_row, domain included).
    Binding the ledger_id once puts its length and bytes into the struct.
    """
    int_idx = ((0,) if with_seq else ()) + tuple(i + offset for i in _INT_IDX)
    # itemgetter of several indexes returns a tuple; INT and TEXT have many columns.
    get_nums = itemgetter(*int_idx, _REAL_AT + offset)
    get_texts = itemgetter(*(i + offset for i in _TEXT_IDX))
    real_at = _REAL_AT + offset
    n_lengths = 1 + len(_TEXT_IDX)
    n_values = offset + len(COLUMNS) + (2 if with_seq else 0)  # a stored row ends with its two hashes

    def bind(ledger_id: str):
        lid, lid_len = _ledger_id_bytes(ledger_id)
        fmt = f">{len(ROW_DOMAIN) if domain else 0}s{'q' * len(int_idx)}d{'I' * n_lengths}{lid_len}s"
        pack = struct.Struct(fmt).pack
        lead = ROW_DOMAIN if domain else b""

        def encode(values) -> bytes:
            try:
                if len(values) != n_values:
                    raise TypeError(f"{len(values)} values, expected {n_values}")
                texts = get_texts(values)
                joined = "".join(texts)
                if type(values[real_at]) is not float:
                    raise TypeError(f"REAL column holds {type(values[real_at]).__name__}")
                # str.isascii() is O(1) in CPython: then each text's length is its UTF-8 length.
                lengths = map(len, texts) if joined.isascii() else [len(t.encode()) for t in texts]
                return pack(lead, *get_nums(values), lid_len, *lengths, lid) + joined.encode()
            except (AttributeError, TypeError, struct.error, UnicodeError, IndexError) as exc:
                raise FormatError(f"row cannot be encoded: {exc}") from None

        return encode

    return bind


def _ledger_id_bytes(ledger_id: str) -> tuple[bytes, int]:
    if type(ledger_id) is not str:
        raise FormatError(f"ledger_id {ledger_id!r} is not text")
    try:
        lid = ledger_id.encode()
    except UnicodeError as exc:
        raise FormatError(f"ledger_id cannot be encoded: {exc}") from None
    return lid, len(lid)


_general_columns = _make_encoder(0, with_seq=False, domain=False)
_general_stored_row = _make_encoder(1, with_seq=True, domain=True)

# The hot paths: the writer encodes every row it appends, the verifier every row it checks. The
# two encoders below are the layout above unrolled, each column a local variable in COLUMNS order
# (no itemgetter, no star-args): a well-typed ASCII row costs one unpacking, one join, one struct
# pack and one concatenation (~1.5 -> ~0.85 us a row, writer and verifier alike). Anything else, a
# non-ASCII row (its lengths are UTF-8 lengths), a wrong type or a wrong number of values, takes the
# general encoder above, which encodes it or raises FormatError; so an unrolled encoder either
# returns exactly the general encoder's bytes or hands the row to it. _check_unrolled() below holds
# both to the general encoder when this module is imported, tests/ledger/test_encoders.py for any row.
_NUMS_LENGTHS = f"{len(_INT_IDX)}qd{1 + len(_TEXT_IDX)}I"  # the INT columns, the REAL one, 1 + TEXT lengths
_UNHANDLED = (TypeError, ValueError, struct.error)


def _unrolled_columns(ledger_id: str, fallback):
    """encode(values) -> encode_row's bytes after ROW_DOMAIN and chain_seq, COLUMNS values in order."""
    lid, lid_len = _ledger_id_bytes(ledger_id)
    pack = struct.Struct(f">{_NUMS_LENGTHS}{lid_len}s").pack

    def encode(values) -> bytes:
        try:
            (ts, duration_ms, direction, channel, protocol, method, host, url_path, query_keys, src_ip,
             src_port, dst_ip, dst_port, status, error, req_bytes, resp_bytes, header_names, fingerprint,
             module, author, call_site, pid, self_egress) = values
            joined = "".join((direction, channel, protocol, method, host, url_path, query_keys, src_ip,
                              dst_ip, status, error, header_names, fingerprint, module, author, call_site))
            if type(duration_ms) is float and joined.isascii():  # isascii() is O(1): len() = UTF-8 length
                return pack(ts, src_port, dst_port, req_bytes, resp_bytes, pid, self_egress, duration_ms,
                            lid_len, len(direction), len(channel), len(protocol), len(method), len(host),
                            len(url_path), len(query_keys), len(src_ip), len(dst_ip), len(status), len(error),
                            len(header_names), len(fingerprint), len(module), len(author), len(call_site),
                            lid) + joined.encode()
        except _UNHANDLED:
            pass
        return fallback(values)

    return encode


def _unrolled_stored_row(ledger_id: str, fallback):
    """encode(row) -> encode_row of a stored row (chain_seq, *COLUMNS values, prev_hash, row_hash)."""
    lid, lid_len = _ledger_id_bytes(ledger_id)
    pack = struct.Struct(f">{len(ROW_DOMAIN)}sq{_NUMS_LENGTHS}{lid_len}s").pack

    def encode(row) -> bytes:
        try:
            (chain_seq, ts, duration_ms, direction, channel, protocol, method, host, url_path, query_keys,
             src_ip, src_port, dst_ip, dst_port, status, error, req_bytes, resp_bytes, header_names,
             fingerprint, module, author, call_site, pid, self_egress, _prev_hash, _row_hash) = row
            joined = "".join((direction, channel, protocol, method, host, url_path, query_keys, src_ip,
                              dst_ip, status, error, header_names, fingerprint, module, author, call_site))
            if type(duration_ms) is float and joined.isascii():
                return pack(ROW_DOMAIN, chain_seq, ts, src_port, dst_port, req_bytes, resp_bytes, pid,
                            self_egress, duration_ms, lid_len, len(direction), len(channel), len(protocol),
                            len(method), len(host), len(url_path), len(query_keys), len(src_ip), len(dst_ip),
                            len(status), len(error), len(header_names), len(fingerprint), len(module),
                            len(author), len(call_site), lid) + joined.encode()
        except _UNHANDLED:
            pass
        return fallback(row)

    return encode


def _check_unrolled() -> None:
    """At import, for each unrolled encoder: its locals are COLUMNS' names in COLUMNS' order, and on
    its own path (no fallback) it gives the general encoder's bytes for a row with a distinct value
    in every column. A column added, removed, moved, renamed or retyped in COLUMNS without the same
    change in the unrolled code fails here, loudly, instead of writing or checking other bytes."""
    def no_fallback(values):
        raise FormatError("the row left the unrolled path")

    lid = "00000000-0000-4000-8000-00000000c0de"
    values = tuple(1000 + i if kind == INT else 0.5 + i if kind == REAL else f"c{i:02d}" * (i + 1)
                   for i, (_, kind) in enumerate(COLUMNS))
    for name, unrolled, general, probe, lead in (
            ("columns_encoder", _unrolled_columns, _general_columns, values, ()),
            ("stored_row_encoder", _unrolled_stored_row, _general_stored_row, (999, *values, b"p" * 32, b"h" * 32),
             ("chain_seq",))):
        encode = unrolled(lid, no_fallback)
        # co_varnames: the arguments, then the locals in the order they first appear
        names = encode.__code__.co_varnames[1:1 + len(lead) + len(COLUMNS)]
        try:
            agree = names == (*lead, *COLUMN_NAMES) and encode(probe) == general(lid)(probe)
        except FormatError:
            agree = False
        if not agree:
            raise ImportError(f"verifier/format.py: the unrolled {name} does not follow COLUMNS; "
                              "update it with COLUMNS (and FORMAT_VERSION, docs/FORMAT.md, the vectors)")


_check_unrolled()


@functools.lru_cache(maxsize=16)
def columns_encoder(ledger_id: str):
    """encode(values) -> everything of encode_row after ROW_DOMAIN and chain_seq, for COLUMNS values
    in order; FormatError for a row the format cannot represent. The writer computes it before it
    knows the row's seq (outside its write lock)."""
    return _unrolled_columns(ledger_id, _general_columns(ledger_id))


@functools.lru_cache(maxsize=16)
def stored_row_encoder(ledger_id: str):
    """encode(row) -> encode_row of a row as stored, (chain_seq, *COLUMNS values, prev_hash,
    row_hash): the verifier's hot path, in one call. struct's "q" refuses a non-integer chain_seq as
    it does any INTEGER column."""
    return _unrolled_stored_row(ledger_id, _general_stored_row(ledger_id))


def encode_columns(ledger_id: str, values) -> bytes:
    """encode_row's bytes after ROW_DOMAIN and chain_seq; `values` are the COLUMNS values in order."""
    if type(ledger_id) is not str:
        raise FormatError(f"ledger_id {ledger_id!r} is not text")
    return columns_encoder(ledger_id)(values)


def encode_stored_row(ledger_id: str, row) -> bytes:
    """encode_row of a stored row (chain_seq, *COLUMNS values, prev_hash, row_hash)."""
    if type(ledger_id) is not str:
        raise FormatError(f"ledger_id {ledger_id!r} is not text")
    return stored_row_encoder(ledger_id)(row)


def encode_row(ledger_id: str, chain_seq: int, values) -> bytes:
    """Canonical bytes of one row; `values` are the COLUMNS values in order."""
    return row_prefix(chain_seq) + encode_columns(ledger_id, values)


def row_prefix(chain_seq: int) -> bytes:
    """ROW_DOMAIN || i64(chain_seq)."""
    if type(chain_seq) is not int:
        raise FormatError(f"chain_seq {chain_seq!r} is not an integer")
    try:
        return ROW_DOMAIN + SEQ.pack(chain_seq)
    except struct.error as exc:
        raise FormatError(f"chain_seq {chain_seq!r}: {exc}") from None


def row_hash(ledger_id: str, chain_seq: int, values, prev_hash: bytes) -> bytes:
    """SHA-256(prev_hash || encode_row(...)), the 32-byte hash that links the chain."""
    return hashlib.sha256(prev_hash + encode_row(ledger_id, chain_seq, values)).digest()


def same_hash(a: bytes, b: bytes) -> bool:
    """Constant-time equality for hashes and signatures."""
    return hmac.compare_digest(a, b)


# ---- keys ----------------------------------------------------------------------------------

def key_id(public_key: bytes) -> str:
    """First 8 bytes of SHA-256 of the raw 32-byte Ed25519 public key, hex."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def public_key_to_text(public_key: bytes) -> str:
    return KEY_PREFIX + base64.b64encode(public_key).decode()


def public_key_from_text(text: str) -> bytes:
    """Parse "ed25519:<base64 of 32 raw bytes>"; raises FormatError."""
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise FormatError(f"malformed public key: expected '{KEY_PREFIX}<base64>'")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except ValueError:
        raise FormatError("malformed public key: not base64") from None
    if len(raw) != 32:
        raise FormatError(f"malformed public key: {len(raw)} bytes, expected 32")
    return raw


# ---- checkpoints (signed heads and prune anchors) -------------------------------------------

_CP_FIELDS = ("ledger", "seq", "hash", "time", "key")


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "ledger L's row `seq` has hash H", made at `signed_at` by `key_id`.

    Text form (each line ends with "\\n"; the signature covers every line before "sig:"):
        mit-network-audit/checkpoint/v1      (or .../anchor/v1 for a prune anchor)
        ledger: <ledger_id>
        seq: <decimal>
        hash: <64 lowercase hex>
        time: <signed_at, decimal ns since the epoch, UTC>
        key: <16 lowercase hex key id>
        sig: <base64 of the 64-byte Ed25519 signature>
    """

    origin: str
    ledger_id: str
    seq: int
    row_hash: bytes
    signed_at: int
    key_id: str
    signature: bytes = b""

    def body(self) -> bytes:
        """The exact bytes that are signed."""
        return (
            f"{self.origin}\nledger: {self.ledger_id}\nseq: {self.seq}\nhash: {self.row_hash.hex()}\n"
            f"time: {self.signed_at}\nkey: {self.key_id}\n"
        ).encode()

    def to_text(self) -> str:
        return self.body().decode() + f"sig: {base64.b64encode(self.signature).decode()}\n"

    @classmethod
    def from_text(cls, text: str) -> "Checkpoint":
        """Parse one checkpoint; any deviation raises FormatError("malformed checkpoint: ...")."""
        lines = text.strip("\n").split("\n")
        if len(lines) != 7:
            raise FormatError(f"malformed checkpoint: {len(lines)} lines, expected 7")
        origin = lines[0]
        if origin not in (CHECKPOINT_ORIGIN, ANCHOR_ORIGIN):
            raise FormatError(f"malformed checkpoint: unknown origin line {origin[:60]!r}")
        fields = {}
        for name, line in zip(_CP_FIELDS + ("sig",), lines[1:]):
            prefix = name + ": "
            if not line.startswith(prefix):
                raise FormatError(f"malformed checkpoint: expected '{prefix}...', got {line[:40]!r}")
            fields[name] = line[len(prefix):]
        try:
            seq, signed_at = int(fields["seq"]), int(fields["time"])
            digest = bytes.fromhex(fields["hash"])
            signature = base64.b64decode(fields["sig"], validate=True)
        except ValueError as exc:
            raise FormatError(f"malformed checkpoint: {exc}") from None
        if (seq < 0 or len(digest) != HASH_LEN or len(signature) != 64 or len(fields["key"]) != 16
                or fields["seq"] != str(seq) or fields["time"] != str(signed_at)
                or fields["hash"] != digest.hex()):
            raise FormatError("malformed checkpoint: bad seq, hash, key id or signature length")
        return cls(origin, fields["ledger"], seq, digest, signed_at, fields["key"], signature)


def parse_checkpoints(text: str, skip_torn: bool = False) -> list[Checkpoint]:
    """Parse a heads file: checkpoints separated by blank lines.

    `skip_torn` skips an unfinished checkpoint (its lines are right, in order, but stop short),
    which a writer killed while appending leaves behind; anything else malformed still raises.
    Skipping one hides no more than deleting it would, which the holder of the file can do anyway.
    """
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    out = []
    for b in blocks:
        try:
            out.append(Checkpoint.from_text(b))
        except FormatError:
            if not (skip_torn and _torn(b)):
                raise
    if not out:
        raise FormatError("malformed checkpoint: no checkpoint found")
    return out


def _torn(block: str) -> bool:
    """True when `block` is a strict prefix of a checkpoint's text: each line has the expected
    field name, and it stops within the last line or before it (found by the reliability suite)."""
    lines = block.strip("\n").split("\n")
    expected = [f"{name}: " for name in _CP_FIELDS + ("sig",)]
    if len(lines) > 1 + len(expected) or lines[0] not in (CHECKPOINT_ORIGIN, ANCHOR_ORIGIN):
        return len(lines) == 1 and any(o.startswith(lines[0]) for o in (CHECKPOINT_ORIGIN, ANCHOR_ORIGIN))
    for i, line in enumerate(lines[1:]):
        if not (line.startswith(expected[i]) or (i == len(lines) - 2 and expected[i].startswith(line))):
            return False
    return len(lines) < 1 + len(expected) or len(lines[-1]) < len("sig: ") + 88  # 88: base64 of 64 bytes


def check_signature(cp: Checkpoint, public_key: bytes) -> bool:
    """True when cp is signed by `public_key` and names that key's id."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not same_hash(cp.key_id.encode(), key_id(public_key).encode()):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(cp.signature, cp.body())
    except InvalidSignature:
        return False
    return True
