"""The ledger format, defined once: columns, canonical row encoding, row hash, checkpoints.

Everything an independent verifier needs is here and in docs/FORMAT.md; the writer (ledger/)
imports these definitions and never re-implements them. Golden vectors in tests/vectors/ pin
every byte: a change of format must bump FORMAT_VERSION and regenerate them.

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
    """The column encoding, for values at `offset` in a sequence (with chain_seq at 0 if with_seq).

    Returns bind(ledger_id) -> encode(values) -> bytes. One body serves the writer (a tuple of
    COLUMNS values: everything of encode_row after ROW_DOMAIN and chain_seq) and the verifier (a
    stored row `(chain_seq, *COLUMNS, prev_hash, row_hash)`: all of encode_row, domain included,
    without slicing). Binding the ledger_id once puts its length and bytes into the struct, so a
    row costs one struct pack, one join and one concatenation; this is the writer's and the
    verifier's hot path.
    """
    int_idx = ((0,) if with_seq else ()) + tuple(i + offset for i in _INT_IDX)
    # itemgetter of several indexes returns a tuple; INT and TEXT have many columns.
    get_nums = itemgetter(*int_idx, _REAL_AT + offset)
    get_texts = itemgetter(*(i + offset for i in _TEXT_IDX))
    real_at = _REAL_AT + offset
    n_lengths = 1 + len(_TEXT_IDX)

    def bind(ledger_id: str):
        if type(ledger_id) is not str:
            raise FormatError(f"ledger_id {ledger_id!r} is not text")
        try:
            lid = ledger_id.encode()
        except UnicodeError as exc:
            raise FormatError(f"ledger_id cannot be encoded: {exc}") from None
        lid_len = len(lid)
        fmt = f">{len(ROW_DOMAIN) if domain else 0}s{'q' * len(int_idx)}d{'I' * n_lengths}{lid_len}s"
        pack = struct.Struct(fmt).pack
        lead = ROW_DOMAIN if domain else b""

        def encode(values) -> bytes:
            try:
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


# Everything of encode_row after ROW_DOMAIN and chain_seq: the writer computes it before it knows
# the row's seq (outside its write lock). columns_encoder(ledger_id) -> encode(values).
columns_encoder = functools.lru_cache(maxsize=16)(_make_encoder(0, with_seq=False, domain=False))
# encode_row of a row as stored, (chain_seq, *COLUMNS values, prev_hash, row_hash): the verifier's
# hot path, in one call. struct's "q" refuses a non-integer chain_seq as it does any INTEGER column.
stored_row_encoder = functools.lru_cache(maxsize=16)(_make_encoder(1, with_seq=True, domain=True))


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
