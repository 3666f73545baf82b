"""Large ledgers are verified in spans by worker processes; the joins between spans are checked."""
from __future__ import annotations

import os

import pytest

import verifier.verify as vv
from tamper_helpers import attacker
from verifier.verify import verify_ledger

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to split the work")


@pytest.fixture
def big(new_ledger, monkeypatch):
    monkeypatch.setattr(vv, "PARALLEL_MIN_ROWS", 10)
    led = new_ledger(99)  # + ledger_opened + head_signed = 101 rows: spans 1..51 and 52..101 on 2 cores
    led.sign_head()
    path, pub, heads = led.path, led.public_key_text, led.keys.read_heads()
    led.close()
    return path, pub, heads


def test_valid_large_ledger_verifies_in_spans(big):
    v = verify_ledger(*big)
    assert v.valid and v.rows == 101 and v.head_seq == 100
    assert v.spans == min(os.cpu_count(), 4)


@pytest.mark.parametrize("seq", [3, 50, 51, 52, 99])
def test_tampering_in_any_span_or_at_the_join_is_named(big, seq):
    path, pub, heads = big
    attacker(path).execute("UPDATE egress_log SET host = 'x' WHERE chain_seq = ?", (seq,))
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, seq, "hash_mismatch")


@pytest.mark.parametrize("seq", [51, 52])
def test_deleting_a_row_at_the_join_is_a_gap(big, seq):
    path, pub, heads = big
    attacker(path).execute("DELETE FROM egress_log WHERE chain_seq = ?", (seq,))
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.reason) == (False, seq, "sequence_gap")


def test_relinking_at_the_join_is_a_broken_link(big):
    path, pub, heads = big
    attacker(path).execute("UPDATE egress_log SET prev_hash = zeroblob(32) WHERE chain_seq = 52")
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq) == (False, 52)
    assert v.reason in ("broken_link", "hash_mismatch")


def test_a_worker_that_cannot_run_is_checked_in_process(big, monkeypatch):
    monkeypatch.setattr(vv, "_start_span_worker", lambda *a: None)
    path, pub, heads = big
    assert verify_ledger(path, pub, heads).valid
    attacker(path).execute("UPDATE egress_log SET host = 'x' WHERE chain_seq = 99")
    v = verify_ledger(path, pub, heads)
    assert (v.valid, v.first_bad_seq, v.spans) == (False, 99, 2)


def test_verify_from_a_script_on_stdin_uses_workers(big):
    """multiprocessing's spawn re-imports the caller's __main__ and broke on `python - <script`."""
    import subprocess
    import sys
    path, pub, _ = big
    script = ("import verifier.verify as vv; vv.PARALLEL_MIN_ROWS = 10\n"
              f"v = vv.verify_ledger({path!r}, {pub!r}); print(v.valid, v.spans)\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", str(min(os.cpu_count(), 4))], out.stderr
