"""No false alarms: any valid history (random events, batch sizes, heads, vacuums) verifies."""
from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interceptor.event import NetEvent
from ledger import Ledger
from verifier.verify import verify_ledger

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
names = st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Zs")),
                         min_size=1, max_size=8), max_size=4).map(tuple)
i64 = st.integers(min_value=0, max_value=2**62)
events = st.builds(
    NetEvent, ts=i64, duration_ms=st.floats(width=64),
    direction=st.sampled_from(["egress", "ingress"]), channel=st.sampled_from(["http", "smtp", "socket", "dns"]),
    protocol=text, method=text, host=text, url_path=text, query_keys=names, src_ip=text,
    src_port=st.integers(0, 65535), dst_ip=text, dst_port=st.integers(0, 65535), status=text, error=text,
    req_bytes=i64, resp_bytes=i64, header_names=names, fingerprint=text, module=text, author=text,
    call_site=text, pid=st.integers(0, 2**31), self_egress=st.booleans())
steps = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(events, min_size=1, max_size=30)),
    st.tuples(st.just("sign"), st.none()),
    st.tuples(st.just("vacuum"), st.integers(0, 3)),
), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_any_valid_history_verifies(history):
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger.open(f"{tmp}/l.sqlite", key_dir=f"{tmp}/keys")
        try:
            appended = 1
            for op, arg in history:
                if op == "append":
                    led.append_many(arg)
                    appended += len(arg)
                elif op == "sign":
                    led.sign_head()
                    appended += 1
                else:
                    led.vacuum(arg, now_ns=2**62 + 10**18)
                    appended += 1
            v = verify_ledger(led.path, led.public_key_text, led.keys.read_heads())
            assert v.valid, v.message
            assert led.last()[0] == appended
        finally:
            led.close()


def test_regression_negative_zero_duration_broke_the_hash(tmp_path):
    """Found by the test above: SQLite reads -0.0 back as 0.0 (and NaN as NULL), so the writer
    hashed bytes that the verifier could never reproduce."""
    from conftest import make_event

    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "k"))
    led.append_many([make_event(1, duration_ms=-0.0), make_event(2, duration_ms=float("nan")),
                     make_event(3, duration_ms=float("inf"))])
    assert verify_ledger(led.path).valid
    led.close()
