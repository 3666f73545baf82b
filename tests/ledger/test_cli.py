"""netaudit's ledger commands, run as a user would, with the default location from NETAUDIT_HOME."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

from conftest import make_event
from ledger import Ledger, default_key_dir, default_ledger_path
from verifier.format import Checkpoint, check_signature, public_key_from_text


def netaudit(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "ledger.cli", *map(str, args)], capture_output=True, text=True,
                       env=env or os.environ.copy())
    return p.returncode, p.stdout, p.stderr


def one_line_error(code, err, needle):
    return code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


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


@pytest.fixture
def unwritable(tmp_path):
    """Factory: a folder holding copies of the given files that cannot be written, not even by
    root: a tmpfs remounted read-only where we may mount one (root), else a folder without write
    permission. Skipped where neither makes it truly unwritable (a container without mount rights)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = []

    def seal(files: dict[str, str]):
        as_root = os.geteuid() == 0
        if as_root:
            if not shutil.which("mount") or subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", folder], capture_output=True).returncode:
                pytest.skip("root, and no tmpfs can be mounted here: no folder is unwritable for root")
            mounted.append(folder)
        for name, src in files.items():
            shutil.copyfile(src, folder / name)
        if as_root:
            subprocess.run(["mount", "-o", "remount,ro", folder], capture_output=True)
        else:
            folder.chmod(0o555)
        try:
            (folder / "probe").touch()
        except OSError:
            return folder
        pytest.skip("cannot make a folder unwritable here")

    yield seal
    if mounted:
        subprocess.run(["umount", folder], capture_output=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("parts", [("",), ("", "-wal", "-shm"), ("", "-wal")],
                         ids=["file only", "with -wal and -shm", "with -wal, no -shm"])
def test_read_only_commands_on_an_unwritable_folder(tmp_path, home, unwritable, parts):
    """report, head and pubkey on a ledger in a folder the user cannot write (a read-only mount,
    an auditor's read access) failed: "cannot open ledger: unable to open database file", as
    SQLite wanted a -shm beside the file (helper 39, L1). They read what the file holds, its
    -wal's rows too (here 5 rows not yet checkpointed), and leave no private copy behind; the
    writing commands still say in one line that they cannot."""
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(home / "keys"))
    led.append_many(make_event(i) for i in range(20))
    signed = led.sign_head()
    led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    in_file = led.count()
    led.append_many(make_event(i) for i in range(20, 25))  # these 5 are in the -wal only
    folder = unwritable({"l.sqlite" + part: led.path + part for part in parts})
    led.close()
    path = folder / "l.sqlite"
    private = tmp_path / "tmp"
    private.mkdir()
    env = dict(os.environ, TMPDIR=str(private))

    code, out, err = netaudit("report", "--json", "--ledger", path, env=env)
    assert code == 0, err
    assert json.loads(out)["rows"] == (in_file + 5 if "-wal" in parts else in_file)
    code, out, err = netaudit("head", "--ledger", path, env=env)
    assert (code, out) == (0, signed), err
    code, out, err = netaudit("pubkey", "--ledger", path, env=env)
    assert (code, out) == (0, led.public_key_text + "\n"), err
    assert list(private.iterdir()) == []
    for command in (["sign-head"], ["vacuum", "--retention-days", "0"]):
        code, out, err = netaudit(*command, "--ledger", path, "--key-dir", home / "keys", env=env)
        assert one_line_error(code, err, str(path)), err


def test_a_folder_that_cannot_be_created_is_named(tmp_path, home):
    """`netaudit run --ledger /ro/sub/x.sqlite` said only "OSError: [Errno 30] Read-only file
    system: '/ro/sub'" (helper 39, L6a). A regular file standing where a folder must be
    created fails the same way on any machine."""
    (tmp_path / "afile").write_text("")
    ledger = tmp_path / "afile" / "sub" / "x.sqlite"
    code, out, err = netaudit("run", "--ledger", ledger, "--", sys.executable, "-c", "print(1)")
    assert one_line_error(code, err, f"cannot create the ledger's folder {ledger.parent}: "), err
    assert out == ""


def test_a_malformed_ledger_is_named(tmp_path, home):
    """SQLite's "database disk image is malformed", met while reading the rows of a damaged
    ledger, came out as "ledger: database disk image is malformed", naming no file (helper 39, L6b)."""
    path = tmp_path / "big.sqlite"
    led = Ledger.open(str(path), key_dir=str(home / "keys"))
    led.append_many(make_event(i) for i in range(3000))
    led.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a page of egress_log's rows, half way through the file
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)
    code, out, err = netaudit("report", "--ledger", path)
    assert one_line_error(code, err, f"netaudit: error: {path}: database disk image is malformed"), err


@pytest.mark.parametrize("command", [["report"], ["head"], ["pubkey"], ["sign-head"]])
def test_an_empty_file_is_not_a_ledger(tmp_path, home, command):
    """A 0-byte file was reported as "no such ledger" (helper 39, L6c): it is there, and empty."""
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    code, out, err = netaudit(*command, "--ledger", empty)
    assert one_line_error(code, err, f"{empty}: empty file, not a ledger"), err
    assert empty.read_bytes() == b""


def test_version(home):
    """`netaudit --version` (helper 39, L6d): the installed package's version, which is also the
    one the interceptor records in the ledger (interceptor_installed)."""
    import interceptor

    code, out, err = netaudit("--version")
    assert (code, out, err) == (0, f"netaudit {version('mit-network-audit')}\n", "")
    assert interceptor.VERSION == version("mit-network-audit")
