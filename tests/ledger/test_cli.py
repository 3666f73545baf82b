"""netaudit's ledger commands, run as a user would, with the default location from NETAUDIT_HOME."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import make_event
from ledger import Ledger, default_key_dir, default_ledger_path
from verifier.format import Checkpoint, check_signature, public_key_from_text


def netaudit(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "ledger.cli", *map(str, args)], capture_output=True, text=True,
                       env=env or os.environ.copy())
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def default_ledger(home):
    led = Ledger.open()  # the default location under NETAUDIT_HOME
    led.append_many(make_event(i) for i in range(20))
    led.close()
    return default_ledger_path()


def test_default_location_is_under_netaudit_home(home, default_ledger):
    assert default_ledger.startswith(str(home))
    assert default_key_dir().startswith(str(home))


def test_sign_head_head_and_pubkey(default_ledger):
    code, signed, err = netaudit("sign-head")
    assert code == 0, err
    code, head, _ = netaudit("head")
    assert code == 0 and head == signed
    code, pub, _ = netaudit("pubkey")
    assert code == 0
    assert check_signature(Checkpoint.from_text(head), public_key_from_text(pub))


def test_vacuum_and_report(default_ledger):
    assert netaudit("sign-head")[0] == 0
    code, out, err = netaudit("vacuum", "--retention-days", "0")
    assert code == 0 and "deleted 20 rows" in out, out + err
    code, out, _ = netaudit("report")
    assert code == 0 and "Self-egress: 0" in out and "vacuum 1" in out


def test_report_counts_modules_and_self_egress(home, default_ledger):
    led = Ledger.open()
    led.append(make_event(99, module="mit_network_audit", self_egress=True))
    led.close()
    code, out, _ = netaudit("report")
    assert code == 0
    assert "Self-egress: 1 (ALARM" in out
    assert "mod0" in out and "mod1" in out and "mod2" in out


@pytest.mark.parametrize("args,needle", [
    (["head"], "no signed head yet"),
    (["vacuum", "--retention-days", "-1"], "retention days must be 0 or more"),
    (["report", "--ledger", "/nonexistent/x.sqlite"], "no such ledger"),
    (["pubkey", "--ledger", "/"], "is a directory"),
    (["run"], "nothing to run"),
])
def test_errors_are_one_line_exit_2(default_ledger, args, needle):
    code, out, err = netaudit(*args)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_a_ledger_file(tmp_path, home):
    bad = tmp_path / "junk.sqlite"
    bad.write_text("junk" * 1000)
    before = bad.read_bytes()
    code, _, err = netaudit("report", "--ledger", bad)
    assert code == 2 and "not a SQLite file" in err
    assert bad.read_bytes() == before


@pytest.mark.parametrize("command", [["run", "--", sys.executable, "-c", "print(1)"], ["sign-head"], ["report"]])
def test_a_database_of_something_else_is_never_written(tmp_path, home, command):
    """`--ledger` naming an application's own SQLite database (a typo): `netaudit run` turned it
    into a ledger, adding tables and switching it to WAL (helper 39, M3). It is refused, byte
    for byte unchanged, and no keys are made for it."""
    import sqlite3

    app_db = tmp_path / "app.sqlite"
    con = sqlite3.connect(app_db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO orders (total) VALUES (9.5)")
    con.commit()
    con.close()
    before = app_db.read_bytes()
    keys = tmp_path / "keys"
    code, out, err = netaudit(command[0], "--ledger", app_db, "--key-dir", keys, *command[1:])
    assert code == 2 and "1\n" not in out, (out, err)
    assert "it holds other tables" in err and err.count("\n") == 1 and "Traceback" not in err
    assert app_db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]
