"""The tamper matrix: every edit an attacker with the file could make is caught and the row named."""
from __future__ import annotations

import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import make_event
from tamper_helpers import attacker, rechain
from verifier.format import COLUMNS, public_key_to_text
from verifier.verify import verify_ledger

N = 40
TARGET = 17


@pytest.fixture
def signed(new_ledger):
    """A ledger with N sample rows plus audit rows, head signed; returns (path, pubkey text, heads)."""
    led = new_ledger(N)
    led.sign_head()
    led.append_many(make_event(i) for i in range(N, N + 5))
    led.sign_head()
    path, pub, heads = led.path, led.public_key_text, led.keys.read_heads()
    led.close()
    assert verify_ledger(path, pub, heads).valid
    return path, pub, heads


def _changed(value, kind):
    if kind == "INTEGER":
        return value + 1
    if kind == "REAL":
        return value + 0.5
    if kind == "TEXT":
        return value + "x"
    return bytes([value[0] ^ 1]) + value[1:]


@pytest.mark.parametrize("column,kind", list(COLUMNS) + [("prev_hash", "BLOB"), ("row_hash", "BLOB")])
def test_changing_any_column_names_that_row(signed, column, kind):
    path, pub, heads = signed
    con = attacker(path)
    (value,) = con.execute(f"SELECT {column} FROM egress_log WHERE chain_seq = ?", (TARGET,)).fetchone()
    con.execute(f"UPDATE egress_log SET {column} = ? WHERE chain_seq = ?", (_changed(value, kind), TARGET))
    con.close()
    v = verify_ledger(path, pub, heads)
    assert not v.valid
    assert v.first_bad_seq == TARGET
    assert v.reason in ("hash_mismatch", "broken_link")


def test_changing_chain_seq_is_a_gap_at_that_row(signed):
    path, pub, heads = signed
    con = attacker(path)
    con.execute("UPDATE egress_log SET chain_seq = 100000 WHERE chain_seq = ?", (TARGET,))
    con.close()
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, TARGET, "sequence_gap")


def test_deleting_a_middle_row(signed):
    path, pub, heads = signed
    attacker(path).execute("DELETE FROM egress_log WHERE chain_seq = ?", (TARGET,))
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, TARGET, "sequence_gap")


def test_inserting_a_forged_row_in_the_middle(signed):
    path, pub, heads = signed
    con = attacker(path)
    last = con.execute("SELECT max(chain_seq) FROM egress_log").fetchone()[0]
    # make room at TARGET by shifting the tail up by one, then forge a row there
    for seq in range(last, TARGET - 1, -1):
        con.execute("UPDATE egress_log SET chain_seq = chain_seq + 1 WHERE chain_seq = ?", (seq,))
    cols = ", ".join(n for n, _ in COLUMNS)
    con.execute(f"INSERT INTO egress_log SELECT ?, {cols}, prev_hash, row_hash FROM egress_log WHERE chain_seq = ?",
                (TARGET, TARGET + 1))
    con.execute("UPDATE egress_log SET host = 'forged.example' WHERE chain_seq = ?", (TARGET,))
    con.close()
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq) == (False, TARGET)


def test_appending_a_forged_row_at_the_end(signed):
    path, pub, heads = signed
    con = attacker(path)
    last, last_hash = con.execute("SELECT chain_seq, row_hash FROM egress_log ORDER BY chain_seq DESC LIMIT 1").fetchone()
    cols = ", ".join(n for n, _ in COLUMNS)
    con.execute(f"INSERT INTO egress_log SELECT ?, {cols}, ?, ? FROM egress_log WHERE chain_seq = 1",
                (last + 1, last_hash, bytes(32)))
    con.close()
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, last + 1, "hash_mismatch")


def test_swapping_two_rows(signed):
    path, pub, heads = signed
    con = attacker(path)
    con.execute("UPDATE egress_log SET chain_seq = -1 WHERE chain_seq = ?", (TARGET,))
    con.execute("UPDATE egress_log SET chain_seq = ? WHERE chain_seq = ?", (TARGET, TARGET + 3))
    con.execute("UPDATE egress_log SET chain_seq = ? WHERE chain_seq = -1", (TARGET + 3,))
    con.close()
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq) == (False, TARGET)


def test_truncating_the_tail_is_caught_with_the_external_head(signed):
    path, pub, heads = signed
    con = attacker(path)
    newest = max(h.seq for h in heads)
    con.execute("DELETE FROM egress_log WHERE chain_seq > ?", (newest - 10,))
    con.execute("DELETE FROM signed_heads WHERE seq > ?", (newest - 10,))
    con.close()
    assert verify_ledger(path, pub).valid  # without the outside head, a careful cut is invisible...
    v = verify_ledger(path, pub, heads)    # ...with it, it is caught
    assert (v.valid, v.first_bad_seq, v.reason) == (False, newest - 9, "truncation")


def test_truncating_rows_but_not_heads_is_caught_from_the_file_alone(signed):
    path, pub, _ = signed
    attacker(path).execute("DELETE FROM egress_log WHERE chain_seq > 30")
    v = verify_ledger(path, pub)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, 31, "truncation")


def test_consistent_rewrite_without_the_key_is_caught_by_signatures(signed):
    path, pub, heads = signed
    import sqlite3
    lid = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]
    con = attacker(path)
    con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = ?", (TARGET,))
    rechain(con, lid, TARGET)
    con.close()
    v = verify_ledger(path, pub)  # the heads inside the file no longer match
    assert not v.valid and v.reason == "head_mismatch"
    # forging the stored heads too needs the private key: the signature check catches it
    con = attacker(path)
    for (seq,) in con.execute("SELECT seq FROM signed_heads").fetchall():
        new = con.execute("SELECT row_hash FROM egress_log WHERE chain_seq = ?", (seq,)).fetchone()[0]
        con.execute("UPDATE signed_heads SET row_hash = ? WHERE seq = ?", (new, seq))
    con.close()
    v = verify_ledger(path, pub)
    assert (v.valid, v.reason) == (False, "bad_signature")
    assert v.first_bad_seq >= TARGET


def test_replacing_the_public_key_in_meta_is_caught_with_pubkey(signed):
    path, pub, heads = signed
    import sqlite3
    lid = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key='ledger_id'").fetchone()[0]
    mallory = Ed25519PrivateKey.generate()
    mpub = mallory.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    con = attacker(path)
    con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = ?", (TARGET,))
    rechain(con, lid, TARGET)
    con.execute("DELETE FROM signed_heads")
    con.execute("UPDATE meta SET value = ? WHERE key = 'public_key'", (public_key_to_text(mpub),))
    con.close()
    assert verify_ledger(path).valid  # trusting the file's own key proves nothing against its holder
    v = verify_ledger(path, pub)
    assert (v.valid, v.reason) == (False, "foreign_key")


def test_restoring_an_older_copy_is_caught(new_ledger, tmp_path):
    led = new_ledger(20)
    led.sign_head()
    path = led.path
    led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(path, tmp_path / "old.sqlite")
    led.append_many(make_event(i) for i in range(20, 40))
    led.sign_head()
    heads, pub = led.keys.read_heads(), led.public_key_text
    led.close()
    shutil.copyfile(tmp_path / "old.sqlite", path)  # restore, WAL is empty after the checkpoint
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.reason) == (False, "truncation")
    # the restored copy is written on: now it is a fork, a rollback
    from ledger import Ledger
    led = Ledger.open(path, key_dir=led.key_dir)
    led.append_many(make_event(i) for i in range(100, 140))
    led.close()
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.reason) == (False, "rollback")
    assert v.first_bad_seq == max(h.seq for h in heads)
