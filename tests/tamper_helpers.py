"""Test helpers: tampering with a ledger file the way an attacker holding it would."""
from __future__ import annotations

import sqlite3

from verifier.format import COLUMN_NAMES, row_hash


def attacker(path: str) -> sqlite3.Connection:
    """A plain stdlib sqlite3 connection with every trigger dropped, autocommit."""
    con = sqlite3.connect(path, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    return con


def rechain(con: sqlite3.Connection, ledger_id: str, from_seq: int) -> None:
    """Recompute every row_hash/prev_hash from `from_seq` on, as an attacker knowing the format would."""
    prev = con.execute("SELECT row_hash FROM egress_log WHERE chain_seq = ?", (from_seq - 1,)).fetchone()
    prev = prev[0] if prev else bytes(32)
    rows = con.execute(f"SELECT chain_seq, {', '.join(COLUMN_NAMES)} FROM egress_log WHERE chain_seq >= ? "
                       "ORDER BY chain_seq", (from_seq,)).fetchall()
    for seq, *values in rows:
        digest = row_hash(ledger_id, seq, values, prev)
        con.execute("UPDATE egress_log SET prev_hash = ?, row_hash = ? WHERE chain_seq = ?", (prev, digest, seq))
        prev = digest
