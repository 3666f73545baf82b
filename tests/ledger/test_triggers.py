"""The append-only triggers, from a plain stdlib sqlite3 connection and from apsw; the vacuum gate."""
from __future__ import annotations

import sqlite3

import apsw
import pytest

from conftest import make_event
from verifier.verify import verify_ledger

STATEMENTS = [
    "UPDATE egress_log SET host = 'x' WHERE chain_seq = (SELECT max(chain_seq) FROM egress_log)",
    "DELETE FROM egress_log WHERE chain_seq = (SELECT max(chain_seq) FROM egress_log)",
    "DELETE FROM egress_log",
    "UPDATE meta SET value = 'x' WHERE key = 'public_key'",
    "DELETE FROM meta",
    "UPDATE signed_heads SET seq = 1",
    "DELETE FROM signed_heads",
    "UPDATE prune_anchors SET pruned_through_seq = 1",
    "DELETE FROM prune_anchors",
]


@pytest.fixture
def ledger_path(new_ledger):
    led = new_ledger(10)
    led.sign_head()
    led.vacuum(0)  # so prune_anchors has a row too
    path = led.path
    led.close()
    return path


def _counts(path):
    con = sqlite3.connect(path)
    out = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("egress_log", "meta", "signed_heads", "prune_anchors")]
    con.close()
    return out


@pytest.mark.parametrize("sql", STATEMENTS)
def test_stdlib_sqlite3_cannot_update_or_delete(ledger_path, sql):
    before = _counts(ledger_path)
    con = sqlite3.connect(ledger_path, isolation_level=None)
    with pytest.raises(sqlite3.Error):
        con.execute(sql)
    con.close()
    assert _counts(ledger_path) == before
    assert verify_ledger(ledger_path).valid


@pytest.mark.parametrize("sql", STATEMENTS)
def test_apsw_cannot_update_or_delete(ledger_path, sql):
    before = _counts(ledger_path)
    con = apsw.Connection(ledger_path)
    with pytest.raises(apsw.Error):
        con.execute(sql)
    con.close()
    assert _counts(ledger_path) == before


def test_a_gate_function_that_says_no_still_blocks(ledger_path):
    con = apsw.Connection(ledger_path)
    con.create_scalar_function("netaudit_vacuum_gate", lambda seq: 0, 1)
    with pytest.raises(apsw.ConstraintError, match="retention vacuum"):
        con.execute("DELETE FROM egress_log WHERE chain_seq = (SELECT max(chain_seq) FROM egress_log)")


@pytest.mark.parametrize("bad", ["seq", "prev"])
def test_insert_must_link_to_the_last_row(ledger_path, bad):
    from ledger.schema import INSERT_ROW
    from ledger import event_values

    con = apsw.Connection(ledger_path)
    seq, last = con.execute("SELECT chain_seq, row_hash FROM egress_log ORDER BY chain_seq DESC LIMIT 1").fetchall()[0]
    row = (seq + (2 if bad == "seq" else 1), *event_values(make_event(1)), bytes(32) if bad == "prev" else last, bytes(32))
    with pytest.raises(apsw.ConstraintError, match="link to the last row"):
        con.execute(INSERT_ROW, row)


def test_vacuum_deletes_only_below_the_signed_head(new_ledger):
    led = new_ledger(50)
    assert led.vacuum(0).deleted == 0          # no signed head: nothing may go
    assert led.prune_anchor() is None
    head_seq = led.last()[0]
    led.sign_head()
    led.append_many(make_event(i) for i in range(50, 60))
    result = led.vacuum(0)                     # everything is "old", yet the head row stays
    assert result.deleted == head_seq - 1
    assert result.pruned_through == head_seq - 1
    anchor = led.prune_anchor()
    from verifier.format import check_signature, public_key_from_text
    assert anchor.seq == head_seq - 1 and check_signature(anchor, public_key_from_text(led.public_key_text))
    first = led.con.execute("SELECT min(chain_seq) FROM egress_log").fetchall()[0][0]
    assert first == head_seq
    facts = [r["url_path"] for r in led.rows() if r["method"] == "vacuum"]
    assert facts and f"deleted={head_seq - 1}" in facts[-1]
    v = verify_ledger(led.path, led.public_key_text, led.keys.read_heads())
    assert v.valid, v.message
    assert led.vacuum(0).deleted == 0          # idempotent until a newer head is signed


def test_vacuum_keeps_rows_inside_the_retention_window(new_ledger):
    clock = iter(range(10**18, 10**18 + 10**12, 10**6))
    led = new_ledger(0, clock=lambda: next(clock))
    day = 86_400 * 10**9
    now = 1_764_806_400_000_000_000 + 100 * day
    old = [make_event(i, ts=now - 30 * day + i) for i in range(20)]
    new = [make_event(i, ts=now - 1 * day + i) for i in range(20)]
    led.append_many(old + new)
    led.sign_head()
    result = led.vacuum(7, now_ns=now)
    remaining = [r["ts"] for r in led.rows() if r["channel"] != "audit"]
    assert len(remaining) == 20 and min(remaining) >= now - 7 * day
    assert result.deleted == 21  # the ledger_opened row (clock ~1e18, long ago) and 20 old events
