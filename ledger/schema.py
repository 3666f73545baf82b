"""The ledger file's schema and the triggers that make it append-only.

Columns come from verifier.format.COLUMNS, so the format is defined in one place. Triggers are a
guard against mistakes and casual edits (a plain `sqlite3` shell cannot UPDATE or DELETE); they are
not a defence against someone who owns the file, which is what the hash chain and the signed
heads kept outside the file are for.
"""
from __future__ import annotations

from verifier.format import COLUMNS

# Registered only by the retention vacuum, on its own connection, for its own transaction.
VACUUM_GATE = "netaudit_vacuum_gate"

_cols = ",\n    ".join(f"{name} {sqltype} NOT NULL" for name, sqltype in COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS egress_log (
    chain_seq INTEGER PRIMARY KEY,
    {_cols},
    prev_hash BLOB NOT NULL,
    row_hash BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS signed_heads (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    row_hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS prune_anchors (
    id INTEGER PRIMARY KEY,
    pruned_through_seq INTEGER NOT NULL,
    row_hash BLOB NOT NULL,
    signed_at INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
) STRICT;

-- Nothing in the ledger is ever changed in place.
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'ledger meta is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'ledger meta is append-only'); END;
CREATE TRIGGER IF NOT EXISTS egress_log_no_update BEFORE UPDATE ON egress_log
BEGIN SELECT RAISE(ABORT, 'egress_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS signed_heads_no_update BEFORE UPDATE ON signed_heads
BEGIN SELECT RAISE(ABORT, 'signed_heads is append-only'); END;
CREATE TRIGGER IF NOT EXISTS signed_heads_no_delete BEFORE DELETE ON signed_heads
BEGIN SELECT RAISE(ABORT, 'signed_heads is append-only'); END;
CREATE TRIGGER IF NOT EXISTS prune_anchors_no_update BEFORE UPDATE ON prune_anchors
BEGIN SELECT RAISE(ABORT, 'prune_anchors is append-only'); END;
CREATE TRIGGER IF NOT EXISTS prune_anchors_no_delete BEFORE DELETE ON prune_anchors
BEGIN SELECT RAISE(ABORT, 'prune_anchors is append-only'); END;

-- Only the retention vacuum deletes: the gate function exists on its connection alone, so
-- anywhere else this trigger fails ("no such function") or the gate answers no.
CREATE TRIGGER IF NOT EXISTS egress_log_delete_gate BEFORE DELETE ON egress_log
WHEN {VACUUM_GATE}(OLD.chain_seq) IS NOT 1
BEGIN SELECT RAISE(ABORT, 'egress_log rows are deleted only by the retention vacuum'); END;

-- Every new row continues the chain: next seq, and prev_hash = the last row's hash. One index
-- lookup of the last row; an empty table must start at row 1 from the genesis hash.
CREATE TRIGGER IF NOT EXISTS egress_log_link BEFORE INSERT ON egress_log
WHEN coalesce(
       (SELECT NEW.chain_seq IS NOT chain_seq + 1 OR NEW.prev_hash IS NOT row_hash
          FROM egress_log ORDER BY chain_seq DESC LIMIT 1),
       NEW.chain_seq IS NOT 1 OR NEW.prev_hash IS NOT zeroblob(32))
BEGIN SELECT RAISE(ABORT, 'egress_log insert must link to the last row'); END;
"""

INSERT_ROW = (
    "INSERT INTO egress_log (chain_seq, "
    + ", ".join(name for name, _ in COLUMNS)
    + ", prev_hash, row_hash) VALUES ("
    + ", ".join("?" * (len(COLUMNS) + 3))
    + ")"
)
