"""clean_path's fast path (printable ASCII, no space: returned as is) agrees with the full cleaning
for every text, and what it keeps never holds whitespace or control characters."""
from __future__ import annotations

from hypothesis import given, strategies as st

from interceptor.redact import _PARAM_VALUE, _SPACE, clean_name, clean_path, utf8_safe


def _full(path: str) -> str:
    return utf8_safe(_SPACE.sub("_", _PARAM_VALUE.sub(r"\1", path))[:2048])


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FFF), max_size=40)
       | st.lists(st.sampled_from(["/", ";", "=", "a", "jsessionid", "SECRET", " "]), max_size=12).map("".join))
def test_clean_path_fast_path_matches_full_cleaning(path):
    assert clean_path(path) == _full(path)
    assert not _SPACE.search(clean_path(path))


def test_clean_path_cases():
    assert clean_path("/v1/orders/42") == "/v1/orders/42"
    assert clean_path("/a b\tc\x00d\x7f") == "/a_b_c_d_"
    assert clean_path("/x" * 2000) == ("/x" * 2000)[:2048]
    assert clean_path("/caf\u00e9\u2028x") == "/caf\u00e9_x"
    assert clean_path("/\ud800") == "/?"


def test_path_parameters_keep_their_names_only():
    """A session token in the path ("/cart;jsessionid=SECRET") was kept whole (helper 39, M4)."""
    assert clean_path("/cart;jsessionid=SECRET") == "/cart;jsessionid"
    assert clean_path("/a;x=1;y=2/b;z=3/c") == "/a;x;y/b;z/c"
    assert clean_path("/a;flag/b=c") == "/a;flag/b=c"   # no parameter value: nothing cut; "=" in a segment stays
    assert clean_path("/v1/orders/42") == "/v1/orders/42"


_NO_SEPARATOR = st.text(max_size=20).map(lambda t: t.replace(";", "").replace("/", ""))


@given(_NO_SEPARATOR.map(lambda t: t.replace("=", "")), _NO_SEPARATOR, st.sampled_from(["", "/next", ";more=1"]))
def test_a_path_parameters_value_never_reaches_the_path(name, value, rest):
    kept = clean_path("/p;" + name + "=SECRETMARK" + value + rest)
    assert "SECRETMARK" not in kept and "SECRET" not in kept


def test_a_query_names_encoded_equals_sign_cuts_it():
    """"token%3DSECRET" decodes to "token=SECRET", which read like a key and its value (M4)."""
    assert clean_name("token%3DSECRET", unquote=True) == "token"
    assert clean_name("page", unquote=True) == "page"
