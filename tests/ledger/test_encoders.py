"""The format's row encoders (verifier/format.py), the writer's and the verifier's hot paths.

columns_encoder and stored_row_encoder are the layout unrolled, one local per column, with the
general encoder (_make_encoder) as their fallback. These tests hold the unrolled code to the general
encoder and to the independent encoder of test_vectors.py, on its own path (a fallback that raises
shows a row left it), and check that a change of COLUMNS without the same change in the unrolled
code stops verifier.format from importing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_vectors import reference_encode
from verifier import format as fmt
from verifier.format import (
    COLUMN_NAMES, COLUMNS, INT, REAL, ROW_DOMAIN, SEQ, FormatError, columns_encoder, stored_row_encoder,
)

ROOT = Path(__file__).resolve().parents[2]
LEDGER_ID = "0b7e0f0c-7f0e-4a4e-9a53-4a0b7f7f7f7f"
PREFIX = len(ROW_DOMAIN) + SEQ.size  # encode_row's bytes before the columns

i64 = st.integers(min_value=-2**63, max_value=2**63 - 1)
real = st.floats(width=64, allow_nan=False)
ascii_text = st.text(st.characters(max_codepoint=127), max_size=20)
any_text = st.one_of(ascii_text,                                                   # the unrolled path
                     st.text(max_size=20),                                         # UTF-8 lengths: general path
                     st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=4))  # surrogates
ascii_rows = st.tuples(*({INT: i64, REAL: real}.get(kind, ascii_text) for _, kind in COLUMNS))
# All 16 texts ASCII or not: drawn per text, hardly a row would stay on the unrolled path.
typed_rows = st.one_of(ascii_rows, st.tuples(*({INT: i64, REAL: real}.get(kind, any_text) for _, kind in COLUMNS)))
# A value of any type in any column: what a caller with loose types, or a tampered ledger, may hold.
loose = st.one_of(i64, st.integers(), real, st.floats(), any_text, st.none(), st.binary(max_size=4), st.booleans())


@st.composite
def nearly_typed_rows(draw):
    """A well-typed row with one to three columns holding a value of any type."""
    row = list(draw(typed_rows))
    for at, value in draw(st.lists(st.tuples(st.integers(0, len(COLUMNS) - 1), loose), min_size=1, max_size=3)):
        row[at] = value
    return tuple(row)


loose_rows = st.one_of(nearly_typed_rows(),
                       st.lists(loose, min_size=len(COLUMNS), max_size=len(COLUMNS)).map(tuple),
                       st.lists(loose, max_size=len(COLUMNS) + 2).map(tuple))          # and wrong counts
hashes = st.binary(min_size=32, max_size=32)


def _left_the_unrolled_path(values):
    raise AssertionError("the row left the unrolled path")


def unrolled_columns(ledger_id=LEDGER_ID):
    return fmt._unrolled_columns(ledger_id, _left_the_unrolled_path)


def unrolled_stored_row(ledger_id=LEDGER_ID):
    return fmt._unrolled_stored_row(ledger_id, _left_the_unrolled_path)


def outcome(encode, values):
    try:
        return encode(values)
    except FormatError:
        return FormatError


@settings(max_examples=300, deadline=None)
@given(ascii_rows, i64, hashes, hashes)
def test_unrolled_encoders_write_the_format_bytes_on_their_own_path(vals, seq, prev, digest):
    """A well-typed ASCII row never leaves the unrolled path (else the hot path would be the slow
    one), and its bytes are the general encoder's and the independent encoder's."""
    expected = reference_encode(LEDGER_ID, seq, list(vals))
    assert unrolled_columns()(vals) == fmt._general_columns(LEDGER_ID)(vals) == expected[PREFIX:]
    stored = (seq, *vals, prev, digest)
    assert unrolled_stored_row()(stored) == fmt._general_stored_row(LEDGER_ID)(stored) == expected


@settings(max_examples=400, deadline=None)
@given(st.one_of(typed_rows, loose_rows), i64, st.one_of(hashes, loose))
def test_encoders_agree_with_the_general_encoder_for_any_row(vals, seq, prev):
    """Any row at all, well typed or not, non-ASCII, with lone surrogates, with too few or too many
    values: the same bytes as the general encoder, or FormatError as it raises."""
    assert outcome(columns_encoder(LEDGER_ID), vals) == outcome(fmt._general_columns(LEDGER_ID), vals)
    stored = (seq, *vals, prev, prev)
    assert outcome(stored_row_encoder(LEDGER_ID), stored) == outcome(fmt._general_stored_row(LEDGER_ID), stored)
    if outcome(columns_encoder(LEDGER_ID), vals) is not FormatError and len(vals) == len(COLUMNS):
        assert stored_row_encoder(LEDGER_ID)(stored) == ROW_DOMAIN + SEQ.pack(seq) + columns_encoder(LEDGER_ID)(vals)


@pytest.mark.parametrize("bad", [3, None, "3.0", True])
def test_a_non_float_real_column_is_refused_by_both_encoders(bad):
    """struct's "d" would pack an int as a float: the type check is the format's, on every path."""
    vals = list(_distinct_values())
    vals[COLUMN_NAMES.index("duration_ms")] = bad
    with pytest.raises(FormatError):
        columns_encoder(LEDGER_ID)(tuple(vals))
    with pytest.raises(FormatError):
        stored_row_encoder(LEDGER_ID)((1, *vals, bytes(32), bytes(32)))


@pytest.mark.parametrize("count", [0, len(COLUMNS) - 1, len(COLUMNS) + 1])
def test_a_wrong_number_of_values_is_refused(count):
    vals = (_distinct_values() * 2)[:count]
    with pytest.raises(FormatError, match="values, expected"):
        columns_encoder(LEDGER_ID)(vals)
    with pytest.raises(FormatError, match="values, expected"):
        stored_row_encoder(LEDGER_ID)((1, *vals, bytes(32), bytes(32)))


def test_unrolled_encoders_write_the_golden_vectors():
    vectors = json.loads((ROOT / "tests" / "vectors" / "format_v1.json").read_text(encoding="utf-8"))
    lid = vectors["ledger_id"]
    for row in vectors["rows"]:
        vals = tuple(row["values"][name] for name in COLUMN_NAMES)
        stored = (row["chain_seq"], *vals, bytes.fromhex(row["prev_hash"]), bytes.fromhex(row["row_hash"]))
        ascii_row = all(v.isascii() for v in vals if type(v) is str)
        cols = (unrolled_columns(lid) if ascii_row else columns_encoder(lid))(vals)
        assert cols.hex() == row["encoding"][2 * PREFIX:]
        assert (unrolled_stored_row(lid) if ascii_row else stored_row_encoder(lid))(stored).hex() == row["encoding"]


def _distinct_values() -> tuple:
    """A distinct value (and text length) in every column: two columns swapped cannot agree."""
    return tuple(1000 + i if kind == INT else 0.5 + i if kind == REAL else f"c{i:02d}" * (i + 1)
                 for i, (_, kind) in enumerate(COLUMNS))


def test_unrolled_encoders_keep_every_column_in_its_place():
    vals = _distinct_values()
    assert unrolled_columns()(vals) == reference_encode(LEDGER_ID, 0, list(vals))[PREFIX:]
    assert unrolled_stored_row()((77, *vals, b"p" * 32, b"h" * 32)) == reference_encode(LEDGER_ID, 77, list(vals))
    for wide in ("é", "\u20ac", "\U0001f600"):  # non-ASCII: UTF-8 lengths, by the general encoder
        v = tuple(x + wide if type(x) is str else x for x in vals)
        assert columns_encoder(LEDGER_ID)(v) == reference_encode(LEDGER_ID, 0, list(v))[PREFIX:]
        assert stored_row_encoder(LEDGER_ID)((5, *v, b"", b"")) == reference_encode(LEDGER_ID, 5, list(v))


def test_unrolled_locals_are_named_as_columns():
    """The unrolled code unpacks the columns under their COLUMNS names, in order (the import-time
    check relies on co_varnames listing the locals in the order they first appear)."""
    names = unrolled_columns().__code__.co_varnames
    assert names[1:1 + len(COLUMNS)] == COLUMN_NAMES
    names = unrolled_stored_row().__code__.co_varnames
    assert names[1:2 + len(COLUMNS)] == ("chain_seq", *COLUMN_NAMES)


def _import_format_with(tmp_path: Path, edit) -> subprocess.CompletedProcess:
    """Import a copy of verifier/ whose format.py went through `edit`, in a fresh interpreter."""
    shutil.copytree(ROOT / "verifier", tmp_path / "verifier", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "verifier" / "format.py"
    source = path.read_text(encoding="utf-8")
    edited = edit(source)
    assert edited != source or edit is _unchanged
    path.write_text(edited, encoding="utf-8")
    return subprocess.run([sys.executable, "-c", "import verifier.format"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def _unchanged(source: str) -> str:
    return source


def _swap(a: str, b: str):
    return lambda s: s.replace(a, "\0").replace(b, a).replace("\0", b)


@pytest.mark.parametrize("edit", [
    _swap('("host", TEXT),', '("url_path", TEXT),'),                       # two TEXT columns moved
    _swap('("src_port", INT),', '("dst_port", INT),'),                     # two INT columns moved
    lambda s: s.replace('    ("error", TEXT),\n', ""),                     # a column removed
    lambda s: s.replace('    ("pid", INT),\n', '    ("pid", INT),\n    ("tid", INT),\n'),  # one added
    lambda s: s.replace('("status", TEXT),', '("status", INT),'),          # one retyped
    lambda s: s.replace('("module", TEXT),', '("addon", TEXT),'),          # one renamed
], ids=["text-swapped", "int-swapped", "removed", "added", "retyped", "renamed"])
def test_a_change_of_columns_alone_fails_at_import(tmp_path, edit):
    result = _import_format_with(tmp_path, edit)
    assert result.returncode != 0
    assert "ImportError: verifier/format.py: the unrolled columns_encoder does not follow COLUMNS" in result.stderr


def test_the_copy_of_verifier_imports_when_unchanged(tmp_path):
    """The control for the test above: the copy itself imports."""
    result = _import_format_with(tmp_path, _unchanged)
    assert result.returncode == 0, result.stderr
