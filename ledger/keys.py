"""Per-ledger secrets: the Ed25519 signing key and the HMAC salt, plus the heads file beside them.

Layout under the key dir (0700), one folder per ledger_id:
    <key_dir>/<ledger_id>/ed25519.key   raw 32-byte private key, mode 0600
    <key_dir>/<ledger_id>/hmac.salt     32 random bytes for payload fingerprints, mode 0600
    <key_dir>/<ledger_id>/pubkey        "ed25519:<base64>", for auditors (not secret)
    <key_dir>/<ledger_id>/heads         every signed head ever made, append-only text
Secrets are never written into the ledger, never printed, never in source.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ledger.errors import KeyMaterialError
from verifier.format import Checkpoint, key_id, parse_checkpoints, public_key_to_text

SIGNING_KEY = "ed25519.key"
SALT = "hmac.salt"
PUBKEY = "pubkey"
HEADS = "heads"


def _write_secret(path: str, data: bytes) -> None:
    """Create a 0600 file exclusively; never overwrite an existing secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read key material: {exc.strerror}") from None
    if len(data) != size:
        raise KeyMaterialError(f"{path}: corrupt key material ({len(data)} bytes, expected {size})")
    if os.stat(path).st_mode & 0o077:
        raise KeyMaterialError(f"{path}: permissions too open, expected 0600")
    return data


@dataclass
class LedgerKeys:
    folder: str
    signing_key: Ed25519PrivateKey
    public_key: bytes
    salt: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def public_key_text(self) -> str:
        return public_key_to_text(self.public_key)

    @property
    def heads_path(self) -> str:
        return os.path.join(self.folder, HEADS)

    def sign(self, cp: Checkpoint) -> Checkpoint:
        return Checkpoint(cp.origin, cp.ledger_id, cp.seq, cp.row_hash, cp.signed_at, cp.key_id,
                          self.signing_key.sign(cp.body()))

    def append_head(self, cp: Checkpoint) -> None:
        """Append a checkpoint to the heads file outside the ledger, durably."""
        fd = os.open(self.heads_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            # a writer killed mid-append leaves a torn checkpoint: start a block of our own after it
            sep = "\n\n" if size and os.pread(fd, 2, max(0, size - 2)) != b"\n\n" else ""
            os.write(fd, (sep + cp.to_text() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_heads(self) -> list[Checkpoint]:
        try:
            with open(self.heads_path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        return parse_checkpoints(text, skip_torn=True) if text.strip() else []


def _raw_public(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def create_keys(key_dir: str, ledger_id: str) -> LedgerKeys:
    """Generate a fresh signing key and salt for a new ledger."""
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    folder = os.path.join(key_dir, ledger_id)
    os.makedirs(folder, mode=0o700)
    sk = Ed25519PrivateKey.generate()
    _write_secret(os.path.join(folder, SIGNING_KEY), sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    _write_secret(os.path.join(folder, SALT), secrets.token_bytes(32))
    with open(os.path.join(folder, PUBKEY), "w", encoding="ascii") as f:
        f.write(public_key_to_text(_raw_public(sk)) + "\n")
    return load_keys(key_dir, ledger_id)


def load_keys(key_dir: str, ledger_id: str) -> LedgerKeys:
    folder = os.path.join(key_dir, ledger_id)
    if not os.path.isdir(folder):
        raise KeyMaterialError(f"no keys for ledger {ledger_id} under {key_dir}")
    raw = _read_secret(os.path.join(folder, SIGNING_KEY), 32)
    sk = Ed25519PrivateKey.from_private_bytes(raw)
    return LedgerKeys(folder, sk, _raw_public(sk), _read_secret(os.path.join(folder, SALT), 32))
