"""The receiver's misses outlive it when the ledger's folder never comes back before it stops.

Real datagrams to a real receiver, a real ledger whose folder is removed and later made again,
a real key dir: the miss count must reach the chain (as a gap row of the next receiver that
opens that ledger), never vanish with the process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from interceptor.relay import RelayWriter
from interceptor_fixtures import servers  # noqa: F401  (fixture)
from ledger.ledger import Ledger
from ledger.relay import UNWRITTEN, RelayReceiver
from verifier.verify import verify_ledger


def _wait(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def _gone_for_good(tmp_path):
    """A receiver whose ledger's folder is removed and does not come back before it stops."""
    folder, keys = tmp_path / "ledgers", str(tmp_path / "keys")
    folder.mkdir()
    path = str(folder / "l.sqlite")
    led = Ledger.open(path, key_dir=keys, create=True)
    receiver = RelayReceiver(led, str(tmp_path / "r.sock")).start()
    sender = RelayWriter(receiver.path)
    sender.write_gap(1, 10, 20, "Injected")  # rows the receiver appends: the sender's hello, its gap
    assert _wait(lambda: receiver.recorded == 2)
    shutil.rmtree(folder)  # the ledger's folder is gone (an admin, a cleaner, a lost mount)
    for dropped in (1, 2, 3):  # rows it cannot append: misses, each gap row for the events it counts
        sender.write_gap(dropped, 30 + dropped, 40 + dropped, "Injected")
    assert _wait(lambda: sum(receiver.rejected.values()) >= 6)
    receiver.stop()
    led.close()
    sender.close()
    return receiver, path, keys


def test_misses_the_receiver_could_not_write_are_kept_beside_the_keys_and_written_at_the_next_open(tmp_path):
    receiver, path, keys = _gone_for_good(tmp_path)
    assert receiver.unwritten == 6  # 1 + 2 + 3 dropped events, not 3 rows
    kept = os.listdir(os.path.join(keys, UNWRITTEN))
    assert len(kept) == 1 and kept[0].endswith(".gap")  # before: nothing anywhere, the count was lost
    os.makedirs(os.path.dirname(path))  # the folder comes back; a new receiver opens the ledger there
    led = Ledger.open(path, key_dir=keys, create=True)
    second = RelayReceiver(led, str(tmp_path / "r2.sock")).start()
    assert _wait(lambda: not os.listdir(os.path.join(keys, UNWRITTEN)))
    second.stop()
    assert second.unwritten == 0
    gaps = [r["url_path"] for r in led.rows() if r["method"] == "gap"]
    led.close()
    assert len(gaps) == 1 and gaps[0].startswith("dropped=6;"), gaps  # the new ledger's only gap row
    assert "Injected" in gaps[0]  # the sender's own reason travels with its count
    assert "relay_LedgerError" in gaps[0] and "carried_" in gaps[0]
    assert verify_ledger(path).valid


def test_a_kept_count_is_written_once_though_two_receivers_open_the_ledger(tmp_path):
    _, path, keys = _gone_for_good(tmp_path)
    os.makedirs(os.path.dirname(path))
    leds = [Ledger.open(path, key_dir=keys, create=True) for _ in range(2)]
    receivers = [RelayReceiver(led, str(tmp_path / f"r{i}.sock")) for i, led in enumerate(leds)]
    for r in receivers:
        r.start()
    for r in receivers:
        r.stop()
    gaps = [r["url_path"] for r in leds[0].rows() if r["method"] == "gap"]
    for led in leds:
        led.close()
    assert len(gaps) == 1 and gaps[0].startswith("dropped=6;"), gaps
    assert not os.listdir(os.path.join(keys, UNWRITTEN))


def _claimed_by(keys, pid) -> tuple[str, str]:
    """The kept count's file as a receiver with `pid` leaves it once it took it: (folder, ID)."""
    folder = os.path.join(keys, UNWRITTEN)
    (kept,) = os.listdir(folder)
    rid = kept.partition(".")[0]
    os.rename(os.path.join(folder, kept), os.path.join(folder, f"{rid}.claimed-{pid}"))
    return folder, rid


def _next_receiver_gaps(path, keys, sock) -> list[str]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    led = Ledger.open(path, key_dir=keys, create=True)
    RelayReceiver(led, sock).start().stop()
    gaps = [r["url_path"] for r in led.rows() if r["method"] == "gap"]
    led.close()
    return gaps


def test_a_claim_left_by_a_receiver_that_died_is_taken_though_its_pid_lives_again(tmp_path):
    """Review 16, M6: a claim is named after its receiver's pid, and pids are reused. A receiver
    died and left ID.claimed-PID, and another process has PID now: the count stayed out of the
    chain for as long as that process lived. The claim's lock tells now: free, its taker is gone."""
    _, path, keys = _gone_for_good(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder, rid = _claimed_by(keys, other.pid)  # a living process, not a receiver
        gaps = _next_receiver_gaps(path, keys, str(tmp_path / "r2.sock"))
    finally:
        other.kill()
        other.wait()
    assert len(gaps) == 1 and gaps[0].startswith("dropped=6;") and f"carried_{rid}" in gaps[0], gaps
    assert not os.listdir(folder)


HOLD_CLAIM = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_claim_its_living_taker_holds_is_left_until_it_is_gone(tmp_path):
    """The other side: a claim whose taker lives (another process holds its lock) is not taken,
    whatever the pid in its name; once that process is gone, the next receiver takes it."""
    _, path, keys = _gone_for_good(tmp_path)
    folder, rid = _claimed_by(keys, 1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, os.path.join(folder, f"{rid}.claimed-1")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert _next_receiver_gaps(path, keys, str(tmp_path / "r2.sock")) == []
        assert os.listdir(folder) == [f"{rid}.claimed-1"]
    finally:
        holder.kill()
        holder.wait()
    gaps = _next_receiver_gaps(path, keys, str(tmp_path / "r3.sock"))
    assert len(gaps) == 1 and gaps[0].startswith("dropped=6;") and f"carried_{rid}" in gaps[0], gaps


def test_a_claim_is_left_when_the_ledger_cannot_say_whether_it_holds_its_count(tmp_path):
    """Review 18, L2: a claim left by a receiver that died is deleted only if a gap row names it.
    When the ledger cannot answer, the claim stays for a later receiver; it was deleted, and its
    count lost. Stand-in, said so: the query fails through a wrapper of the ledger's connection
    (a real SQLite read fails this way only on a damaged file or a lost mount)."""
    import apsw

    _, path, keys = _gone_for_good(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder, rid = _claimed_by(keys, dead.pid)  # its receiver died: the lock is free

    class Failing:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if "carried_" in str(args):
                raise apsw.IOError("disk I/O error")
            return self.con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.con, name)

    os.makedirs(os.path.dirname(path))
    led = Ledger.open(path, key_dir=keys, create=True)
    real, led.con = led.con, Failing(led.con)
    try:
        RelayReceiver(led, str(tmp_path / "r2.sock")).start().stop()
    finally:
        led.con = real
    assert os.listdir(folder) == [f"{rid}.claimed-{dead.pid}"]  # kept for the next receiver
    assert not [r for r in led.rows() if r["method"] == "gap"]
    led.close()
    gaps = _next_receiver_gaps(path, keys, str(tmp_path / "r3.sock"))  # one that can read the ledger
    assert len(gaps) == 1 and gaps[0].startswith("dropped=6;") and f"carried_{rid}" in gaps[0], gaps


def test_a_kept_count_for_another_ledger_is_left_alone(tmp_path):
    _, path, keys = _gone_for_good(tmp_path)
    other = str(tmp_path / "other.sqlite")
    led = Ledger.open(other, key_dir=keys, create=True)
    RelayReceiver(led, str(tmp_path / "o.sock")).start().stop()
    assert not [r for r in led.rows() if r["method"] == "gap"]
    led.close()
    assert len(os.listdir(os.path.join(keys, UNWRITTEN))) == 1


def test_netaudit_run_says_so_and_keeps_its_exit_code_and_the_next_run_writes_the_gap_row(tmp_path, servers):
    folder, keys = tmp_path / "ledgers", str(tmp_path / "keys")
    folder.mkdir()
    ledger = str(folder / "run.sqlite")
    program = (f"import shutil, sys, urllib.request; shutil.rmtree({str(folder)!r}); "
               f"urllib.request.urlopen('http://127.0.0.1:{servers.http}/after-removal').read(); sys.exit(3)")

    def run(code):
        return subprocess.run([sys.executable, "-m", "ledger.cli", "run", "--ledger", ledger, "--key-dir", keys,
                               "--", sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=""),
                              capture_output=True, text=True, timeout=120, cwd=str(tmp_path))

    r = run(program)
    assert r.returncode == 3, r.stderr  # the program's own exit code, whatever the auditor met
    # two rows it could not write: the program's hello (interceptor_installed) and its call
    assert "netaudit: 2 record(s) (events, facts) could not be written to" in r.stderr, r.stderr
    assert len(os.listdir(os.path.join(keys, UNWRITTEN))) == 1
    folder.mkdir()
    r = run("pass")
    assert r.returncode == 0 and "netaudit:" not in r.stderr, r.stderr
    with Ledger.open(ledger, key_dir=keys, readonly=True) as led:
        gaps = [x["url_path"] for x in led.rows() if x["method"] == "gap"]
    assert len(gaps) == 1 and gaps[0].startswith("dropped=2;") and "carried_" in gaps[0], gaps
    assert not os.listdir(os.path.join(keys, UNWRITTEN))
    assert verify_ledger(ledger).valid


def test_a_count_that_cannot_be_kept_is_said_so_not_claimed_kept(tmp_path, capsys):
    """Review 16, L2: the stderr line said "kept" even when keeping failed (a full disk, say; here a
    file stands where the folder must go)."""
    from ledger.run import _say_unwritten

    folder, keys = tmp_path / "ledgers", tmp_path / "keys"
    folder.mkdir()
    led = Ledger.open(str(folder / "l.sqlite"), key_dir=str(keys), create=True)
    receiver = RelayReceiver(led, str(tmp_path / "r.sock")).start()
    sender = RelayWriter(receiver.path)
    sender.write_gap(1, 10, 20, "Injected")
    assert _wait(lambda: receiver.recorded == 2)
    shutil.rmtree(folder)
    (keys / UNWRITTEN).write_text("not a folder")
    sender.write_gap(4, 30, 40, "Injected")
    assert _wait(lambda: sum(receiver.rejected.values()) >= 4)
    receiver.stop()
    led.close()
    sender.close()
    assert (receiver.unwritten, receiver.unwritten_kept) == (4, "") and receiver.unwritten_error
    _say_unwritten(receiver)
    err = capsys.readouterr().err
    assert "netaudit: 4 record(s)" in err and "could not be kept either" in err and "kept in" not in err, err
