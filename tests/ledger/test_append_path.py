"""The writer's append path: its rows carry the format's encoding (verifier.format.columns_encoder,
tested in test_encoders.py), loose types are coerced and unencodable rows refused, encoded rows are
used once, the compact INSERT follows egress_log's column order, and a COMMIT that raised is
reported by whether its last row landed."""
from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_event
from ledger import Ledger, LedgerError, event_values
from ledger.ledger import _INSERT
from verifier.format import COLUMN_NAMES, COLUMNS, INT, REAL, ROW_DOMAIN, SEQ, FormatError, columns_encoder, row_hash
from verifier.verify import verify_ledger

LEDGER_ID = "0b7e0f0c-7f0e-4a4e-9a53-4a0b7f7f7f7f"

text = st.one_of(st.text(st.characters(max_codepoint=127), max_size=20),  # ASCII: the unrolled path
                 st.text(max_size=20),                                     # any other: the general path
                 st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=4))  # lone surrogates
column = {INT: st.integers(min_value=-2**63, max_value=2**63 - 1), REAL: st.floats(width=64, allow_nan=False)}
values = st.one_of(st.tuples(*(column.get(kind, text) for _, kind in COLUMNS)),
                   st.tuples(*(column.get(kind, st.text(st.characters(max_codepoint=127))) for _, kind in COLUMNS)))


@settings(max_examples=200, deadline=None)
@given(values)
def test_writer_rows_carry_the_format_encoding(vals):
    """The writer's rows are the INSERT's bindings around the format's own encoding of the columns
    (verifier.format.columns_encoder; its tests are in test_encoders.py): the writer has no copy."""
    led = Ledger(None, "", LEDGER_ID, {}, "", None)
    try:
        expected = columns_encoder(LEDGER_ID)(vals)
    except FormatError:  # a text the format cannot encode (a lone surrogate): the writer refuses it too
        with pytest.raises(FormatError):
            led.encode_values([vals])
        return
    assert led.encode_values([vals]) == [[0, *vals, None, expected]]


def test_writer_rows_carry_the_golden_vectors():
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "format_v1.json").read_text(encoding="utf-8"))
    led = Ledger(None, "", vectors["ledger_id"], {}, "", None)
    rows = [tuple(row["values"][name] for name in COLUMN_NAMES) for row in vectors["rows"]]
    encoded = led.encode_values(rows)
    assert [r[:-1] for r in encoded] == [[0, *vals, None] for vals in rows]
    assert [r[-1].hex() for r in encoded] == [row["encoding"][2 * (len(ROW_DOMAIN) + SEQ.size):] for row in vectors["rows"]]


def test_loose_types_are_coerced_and_verify(new_ledger):
    led = new_ledger()
    good = event_values(make_event(1))
    loose = list(event_values(make_event(2)))
    loose[COLUMN_NAMES.index("status")] = 201                   # int in a TEXT column
    loose[COLUMN_NAMES.index("error")] = None                   # None in a TEXT column
    loose[COLUMN_NAMES.index("host")] = b"h\xffost"             # bytes in a TEXT column
    loose[COLUMN_NAMES.index("duration_ms")] = 3                # int in the REAL column
    loose[COLUMN_NAMES.index("req_bytes")] = None               # None in an INT column
    seq = led.append_values([good, tuple(loose), good])
    rows = list(led.rows(after_seq=seq - 3))
    assert [r["chain_seq"] for r in rows] == [seq - 2, seq - 1, seq]
    assert tuple(rows[0][n] for n in COLUMN_NAMES) == good == tuple(rows[2][n] for n in COLUMN_NAMES)
    assert (rows[1]["status"], rows[1]["error"], rows[1]["host"], rows[1]["duration_ms"], rows[1]["req_bytes"]) == \
        ("201", "", "h\ufffdost", 3.0, 0)
    assert verify_ledger(led.path).valid


@pytest.mark.parametrize("column, bad", [("url_path", "/a\ud800b"), ("ts", 2**63), ("pid", -2**63 - 1)])
def test_unencodable_rows_are_refused_and_nothing_is_written(new_ledger, column, bad):
    led = new_ledger(3)
    before = led.last()
    vals = list(event_values(make_event(9)))
    vals[COLUMN_NAMES.index(column)] = bad
    with pytest.raises(FormatError):
        led.append_values([event_values(make_event(8)), tuple(vals)])
    assert led.last() == before


def test_encoded_rows_are_used_once(new_ledger):
    led = new_ledger(1)
    encoded = led.encode_values([event_values(make_event(i)) for i in range(3)])
    seq = led.append_encoded(encoded)
    with pytest.raises(LedgerError, match="already appended"):
        led.append_encoded(encoded)
    assert led.last()[0] == seq
    assert verify_ledger(led.path).valid


def test_compact_insert_follows_the_table_column_order(new_ledger):
    led = new_ledger()
    names = tuple(r[1] for r in led.con.execute("PRAGMA table_info(egress_log)"))
    assert names == ("chain_seq", *COLUMN_NAMES, "prev_hash", "row_hash")
    assert _INSERT.count("?") == len(names)
    seq, digest = led.last()
    row = led.rows(after_seq=seq - 1).__next__()
    assert row_hash(led.ledger_id, seq, [row[n] for n in COLUMN_NAMES], row["prev_hash"]) == digest


class _CommitRaises:
    """The ledger's connection, except that its next COMMIT raises apsw.IOError after it either
    committed (`land`) or rolled back, as SQLite reports a failed post-commit checkpoint or a
    failed WAL write. `meanwhile` runs between the two, as another writer could."""

    def __init__(self, con, land: bool, meanwhile=None):
        self._con, self.land, self.meanwhile, self.raised = con, land, meanwhile, 0

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.raised:
            self.raised += 1
            self._con.execute("COMMIT" if self.land else "ROLLBACK")
            if self.meanwhile:
                self.meanwhile()
            raise apsw.IOError("injected: disk I/O error")
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_commit_that_raised_but_landed_returns_its_seq(new_ledger):
    led = new_ledger(2)
    con = led.con
    led.con = _CommitRaises(con, land=True)
    seq = led.append_many([make_event(10), make_event(11)])
    assert led.con.raised == 1
    assert seq == 5 and led.last()[0] == 5
    led.con = con
    assert verify_ledger(led.path).valid


def test_commit_that_raised_and_rolled_back_raises(new_ledger):
    led = new_ledger(2)
    con = led.con
    led.con = _CommitRaises(con, land=False)
    with pytest.raises(apsw.IOError):
        led.append_many([make_event(10)])
    led.con = con
    assert led.last()[0] == 3
    assert led.append_many([make_event(12)]) == 4  # the connection is usable again
    assert verify_ledger(led.path).valid


def test_commit_that_landed_is_recognised_after_another_writer_appended(new_ledger):
    """The landed check looks up this append's own seq: a row appended by another writer between
    the COMMIT and the check does not make a durable append look failed."""
    led, other = new_ledger(2), new_ledger(name="l")
    con = led.con
    led.con = _CommitRaises(con, land=True, meanwhile=lambda: other.append_many([make_event(20)]))
    assert led.append_many([make_event(10)]) == 4
    assert led.last()[0] == 5
    led.con = con
    assert verify_ledger(led.path).valid


def test_rolled_back_commit_is_not_mistaken_for_another_writers_row_at_its_seq(new_ledger):
    led, other = new_ledger(2), new_ledger(name="l")
    con = led.con
    led.con = _CommitRaises(con, land=False, meanwhile=lambda: other.append_many([make_event(20)]))
    with pytest.raises(apsw.IOError):
        led.append_many([make_event(10)])  # seq 4 exists, but it is the other writer's row
    led.con = con
    assert [r["url_path"] for r in led.rows(after_seq=3)] == [make_event(20).url_path]
    assert verify_ledger(led.path).valid


def test_sign_head_whose_commit_raised_but_landed_returns_the_head(new_ledger):
    led = new_ledger(2)
    con = led.con
    led.con = _CommitRaises(con, land=True)
    text = led.sign_head()
    led.con = con
    assert led.head().to_text() == text
    assert verify_ledger(led.path, led.public_key_text, led.keys.read_heads()).valid


def test_empty_append_writes_nothing(new_ledger):
    led = new_ledger(2)
    assert led.append_many([]) == led.append_encoded([]) == 3
