"""The real release passes the gate, and the gate's command line behaves as documented."""
from __future__ import annotations

import pytest

from .gate_helpers import release_gate, run_gate_process as run_gate

RULE_IDS = release_gate.RULE_IDS


def test_real_release_passes_every_rule(release):
    run = run_gate(release.wheel, release.sdist)
    assert run.rc == 0, run.stdout
    assert run.report["ok"] is True
    assert {r["rule"]: r["status"] for r in run.report["rules"]} == {r: "PASS" for r in RULE_IDS}


def test_local_leftovers_stay_out_of_the_sdist(release):
    """MANIFEST.in keeps virtualenvs, caches and build output of the tree out of the release."""
    import tarfile
    with tarfile.open(release.sdist) as tf:
        names = tf.getnames()
    assert not [n for n in names if any(part in n for part in (".venv", "__pycache__", "/build/"))]
    assert any("/tests/" in n for n in names) and any("/odoo_addon/mit_network_audit/" in n for n in names)


def test_real_source_tree_passes(release):
    run = run_gate("--source", release.source)
    assert run.rc == 0, run.stdout
    assert run.failed_rules() == set()


def test_text_report_is_one_summary_line_per_rule(release):
    run = run_gate(release.wheel, release.sdist, json_output=False)
    lines = run.stdout.splitlines()
    assert run.rc == 0
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", r] for r in RULE_IDS]
    assert lines[-1] == "release gate: passed"


def test_wheel_alone_skips_the_sdist_rules(release):
    """A reader who downloaded only the wheel can still gate it."""
    run = run_gate(release.wheel)
    assert run.rc == 0, run.stdout
    assert run.status("sdist-contents") == "SKIP"
    assert run.status("wheel-matches-sdist") == "SKIP"
    assert run.status("obfuscator") == "PASS"


def test_a_failure_names_the_artifact_file_and_reason(plant_wheel):
    wheel = plant_wheel({"ledger/hidden.pyc": b"\x00" * 16})
    run = run_gate(wheel, json_output=False)
    assert run.rc == 1
    assert run.stdout.splitlines()[0].startswith("FAIL compiled-code")
    assert f"  compiled-code: {wheel.name}:ledger/hidden.pyc: compiled Python in the artifact" \
        in run.stdout.splitlines()
    assert run.stdout.splitlines()[-1] == "release gate: FAILED"


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "missing.whl", "no such file"),
    (lambda tmp: _write(tmp / "fake-0.1-py3-none-any.whl", b"not a zip"), "not a readable wheel"),
    (lambda tmp: _write(tmp / "fake-0.1.tar.gz", b"not a tar"), "not a readable sdist"),
    (lambda tmp: _write(tmp / "notes.txt", b"hello"), "not a wheel"),
])
def test_unusable_input_exits_2_with_one_line(tmp_path, make_input, message):
    run = run_gate(make_input(tmp_path))
    assert run.rc == 2
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr
    assert "Traceback" not in run.stderr


def test_no_input_is_a_usage_error():
    run = run_gate(json_output=False)
    assert run.rc == 2 and "ARTIFACT" in run.stderr


def _write(path, data: bytes):
    path.write_bytes(data)
    return path

