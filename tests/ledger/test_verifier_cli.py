"""netaudit-verify as an auditor runs it: exit codes, JSON, one-line errors, evidence untouched."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from conftest import evidence_snapshot, make_event
from tamper_helpers import attacker


def verify(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "verifier", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def live(new_ledger, tmp_path):
    """A ledger still open by its writer (rows sitting in the -wal), pubkey and heads files."""
    led = new_ledger(30)
    led.sign_head()
    led.append_many(make_event(i) for i in range(30, 35))
    pub = tmp_path / "pubkey.txt"
    pub.write_text(led.public_key_text + "\n")
    return led, str(pub), os.path.join(led.keys.folder, "heads")


def test_valid_ledger_exits_0_and_leaves_evidence_byte_identical(live):
    led, pub, heads = live
    assert os.path.getsize(led.path + "-wal") > 0
    before = evidence_snapshot(led.path)
    code, out, err = verify(led.path, "--pubkey", pub, "--head", heads)
    assert code == 0, err
    assert out.startswith("VALID")
    assert evidence_snapshot(led.path) == before
    assert not err


def test_json_output_has_the_documented_keys(live):
    led, pub, heads = live
    code, out, _ = verify(led.path, "--pubkey", pub, "--head", heads, "--json")
    doc = json.loads(out)
    assert code == 0
    assert {"valid", "rows", "first_bad_seq", "reason", "head_seq"} <= doc.keys()
    assert doc["valid"] is True and doc["rows"] == led.count() and doc["head_seq"] == 31


def test_tampered_exits_1_and_names_the_row(live):
    led, pub, heads = live
    path = led.path
    led.close()
    con = attacker(path)
    con.execute("UPDATE egress_log SET resp_bytes = 1 WHERE chain_seq = 12")
    con.close()  # now: left to the garbage collector, its close could checkpoint the -wal away mid-test
    before = evidence_snapshot(path)
    code, out, _ = verify(path, "--pubkey", pub, "--head", heads, "--json")
    doc = json.loads(out)
    assert code == 1
    assert (doc["valid"], doc["first_bad_seq"], doc["reason"]) == (False, 12, "hash_mismatch")
    assert evidence_snapshot(path) == before
    code, out, _ = verify(path, "--pubkey", pub)
    assert code == 1 and "TAMPERED" in out and "first bad row: 12 (hash_mismatch)" in out


def _future(path):
    c = attacker(path)
    c.execute("INSERT INTO meta VALUES ('x', 'y')")
    c.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    c.close()


def _unusable_cases(tmp_path, led_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database\n" * 100)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    future = tmp_path / "future.sqlite"
    shutil.copyfile(led_path, future)
    if os.path.exists(led_path + "-wal"):
        shutil.copyfile(led_path + "-wal", str(future) + "-wal")
    _future(str(future))
    bad_cp = tmp_path / "bad.checkpoint"
    bad_cp.write_text("mit-network-audit/checkpoint/v1\nledger: x\n")
    return {
        "missing": ([tmp_path / "nope.sqlite"], "no such file"),
        "directory": ([tmp_path], "is a directory"),
        "empty": ([empty], "empty file"),
        "not sqlite": ([text], "not a SQLite ledger"),
        "other sqlite": ([other], "not a ledger"),
        "future version": ([future], "format version '99'"),
        "malformed checkpoint": ([led_path, "--head", bad_cp], "malformed checkpoint"),
        "malformed key": ([led_path, "--pubkey", "ed25519:nope"], "malformed public key"),
        "key file is a dir": ([led_path, "--pubkey", tmp_path], "is a directory"),
    }


def test_unusable_inputs_exit_2_with_one_line_and_no_traceback(live, tmp_path):
    led, _, _ = live
    for name, (args, needle) in _unusable_cases(tmp_path, led.path).items():
        code, out, err = verify(*args)
        assert code == 2, (name, out, err)
        assert needle in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)


def test_netaudit_verify_console_script_is_installed(live):
    led, pub, heads = live
    exe = shutil.which("netaudit-verify", path=os.path.dirname(sys.executable))
    assert exe
    p = subprocess.run([exe, led.path, "--pubkey", pub, "--head", heads], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_verifier_folder_stands_alone(live, tmp_path):
    """An auditor copies only verifier/: it runs with nothing else of ours importable."""
    led, pub, heads = live
    root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("verifier").__file__)))
    shutil.copytree(os.path.join(root, "verifier"), tmp_path / "alone" / "verifier")
    code = ("import sys; sys.path = [p for p in sys.path if 'site-packages' in p or 'lib/python' in p]; "
            "sys.path.insert(0, sys.argv[1]); import builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    assert name.split('.')[0] not in ('ledger', 'interceptor', 'odoo', 'platformdirs'), name\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "from verifier.cli import main; sys.exit(main(sys.argv[2:]))")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path / "alone"), led.path, "--pubkey", pub,
                        "--head", heads], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_version():
    """`netaudit-verify --version`, the same version as `netaudit --version` (helper 39, L6d)."""
    from importlib.metadata import version

    code, out, err = verify("--version")
    assert (code, out, err) == (0, f"netaudit-verify {version('mit-network-audit')}\n", "")
