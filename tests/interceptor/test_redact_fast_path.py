"""clean_path's fast path (printable ASCII, no space: returned as is) agrees with the full cleaning
for every text, and what it keeps never holds whitespace or control characters."""
from __future__ import annotations

from hypothesis import given, strategies as st

from interceptor.redact import _SPACE, clean_path, utf8_safe


def _full(path: str) -> str:
    return utf8_safe(_SPACE.sub("_", path)[:2048])


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FFF), max_size=40))
def test_clean_path_fast_path_matches_full_cleaning(path):
    assert clean_path(path) == _full(path)
    assert not _SPACE.search(clean_path(path))


def test_clean_path_cases():
    assert clean_path("/v1/orders/42") == "/v1/orders/42"
    assert clean_path("/a b\tc\x00d\x7f") == "/a_b_c_d_"
    assert clean_path("/x" * 2000) == ("/x" * 2000)[:2048]
    assert clean_path("/caf\u00e9\u2028x") == "/caf\u00e9_x"
    assert clean_path("/\ud800") == "/?"
