"""Golden vectors pin the format: encoding, row hashes and a signed head, byte for byte."""
import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from verifier.format import (
    COLUMNS, FORMAT_VERSION, Checkpoint, check_signature, encode_row, encode_stored_row, public_key_from_text, row_hash,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "format_v1.json").read_text(encoding="utf-8"))


def reference_encode(ledger_id: str, seq: int, values: list) -> bytes:
    """A second encoder written from docs/FORMAT.md alone, field by field."""
    out = b"mit-network-audit/row/v1\n" + struct.pack(">q", seq)
    typed = list(zip((t for _, t in COLUMNS), values))
    out += b"".join(struct.pack(">q", v) for t, v in typed if t == "INTEGER")
    out += b"".join(struct.pack(">d", v) for t, v in typed if t == "REAL")
    texts = [ledger_id.encode("utf-8")] + [v.encode("utf-8") for t, v in typed if t == "TEXT"]
    out += b"".join(struct.pack(">I", len(b)) for b in texts)
    return out + b"".join(texts)


def test_format_version_matches_vectors():
    assert VECTORS["format_version"] == FORMAT_VERSION


def test_rows_encode_and_hash_to_golden_bytes():
    lid = VECTORS["ledger_id"]
    prev = bytes(32)
    for row in VECTORS["rows"]:
        values = [row["values"][name] for name, _ in COLUMNS]
        enc = encode_row(lid, row["chain_seq"], values)
        assert enc.hex() == row["encoding"]
        assert reference_encode(lid, row["chain_seq"], values) == enc
        stored = (row["chain_seq"], *values, prev, bytes.fromhex(row["row_hash"]))
        assert encode_stored_row(lid, stored) == enc  # the verifier's path, on a row as stored
        assert bytes.fromhex(row["prev_hash"]) == prev
        digest = row_hash(lid, row["chain_seq"], values, prev)
        assert digest == hashlib.sha256(prev + enc).digest()
        assert digest.hex() == row["row_hash"]
        prev = digest


def test_signed_head_golden_bytes_and_signature():
    sh = VECTORS["signed_head"]
    cp = Checkpoint.from_text(sh["text"])
    assert cp.body().decode() == sh["body"]
    assert cp.signature.hex() == sh["signature"]
    assert cp.row_hash.hex() == VECTORS["rows"][-1]["row_hash"]
    pub = public_key_from_text(VECTORS["public_key"])
    assert check_signature(cp, pub)
    # Ed25519 is deterministic: re-signing with the vector's seed gives the same bytes.
    sk = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["private_key_seed"]))
    assert sk.sign(cp.body()).hex() == sh["signature"]
    assert cp.to_text() == sh["text"]


def test_generator_reproduces_the_committed_file():
    import subprocess
    import sys

    here = Path(__file__).parents[1] / "vectors"
    out = subprocess.run([sys.executable, str(here / "generate.py")], capture_output=True, text=True, check=True).stdout
    assert out == (here / "format_v1.json").read_text(encoding="utf-8")
