"""`netaudit run` and signals: the program gets them as it would without netaudit, and netaudit
waits for it, drains the relay and exits with its code (helper 39, H1 and H3).

Real processes throughout: netaudit run, the program, an HTTP server in another process, and in
one test a real pseudo-terminal whose ^C the kernel's terminal driver turns into SIGINT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from interceptor_fixtures import http_rows, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")

# The program: one call, then it says where its relay is and waits; what a signal makes it do is
# added per test. Its output goes to a file (a pipe would tie the reading test to its buffering).
PROGRAM = """
import os, signal, sys, time, urllib.request
def get(path):
    urllib.request.urlopen("http://127.0.0.1:%(port)d" + path).read()
get("/hello")
%(handling)s
with open(%(ready)r, "w") as f:
    f.write(os.environ.get("NETAUDIT_RELAY", "") + "\\n" + repr(signal.getsignal(signal.SIGINT)))
time.sleep(30)
print("slept on", flush=True)
sys.exit(9)
"""


def _start(tmp_path, port, handling, **popen):
    """netaudit run on the program, in a session of its own; returns it once the program waits."""
    ready = tmp_path / "ready.txt"
    app = tmp_path / "app.py"
    app.write_text(PROGRAM % {"port": port, "handling": handling, "ready": str(ready)})
    cmd = [sys.executable, "-m", "ledger.cli", "run", "--ledger", str(tmp_path / "run.sqlite"),
           "--key-dir", str(tmp_path / "keys"), "--", sys.executable, str(app)]
    popen.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=""), cwd=str(tmp_path), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text().count("\n")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the program never got ready"
        time.sleep(0.02)
    relay, _, sigint = ready.read_text().partition("\n")
    return proc, os.path.dirname(relay), sigint


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


GOODBYE = """
def goodbye(sig, frame):
    get("/goodbye-%d" % sig)
    sys.exit(0)
signal.signal(signal.SIGTERM, goodbye)
signal.signal(signal.SIGHUP, goodbye)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_to_netaudit_reaches_the_program_and_netaudit_waits_for_it(tmp_path, servers, sig):
    """As docker stop, systemd or `timeout` stop a service: the signal goes to netaudit's process
    alone. It ended netaudit at once; the program ran on orphaned, its shutdown call unrecorded,
    and the bootstrap folder stayed in /tmp."""
    number = getattr(signal, sig)
    proc, boot, _ = _start(tmp_path, servers.http, GOODBYE)
    assert os.path.isdir(boot)
    os.kill(proc.pid, number)   # netaudit only, not its process group
    code, out, err = _finish(proc)
    assert code == 0 and "slept on" not in out, (code, out, err)
    assert set(http_rows(tmp_path)) == {"/hello", f"/goodbye-{number}"}
    assert not os.path.exists(boot)  # netaudit cleaned up after the program ended


def test_a_program_ended_by_the_signal_gives_netaudit_its_exit_code(tmp_path, servers):
    proc, boot, _ = _start(tmp_path, servers.http, "")
    os.kill(proc.pid, signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 128 + signal.SIGTERM and "slept on" not in out, (code, out, err)
    assert set(http_rows(tmp_path)) == {"/hello"} and not os.path.exists(boot)


INTERRUPTED = """
def _sleep_then_record(seconds, _sleep=time.sleep):
    try:
        _sleep(seconds)
    except KeyboardInterrupt:
        get("/interrupted")
        sys.exit(5)
time.sleep = _sleep_then_record
"""


def test_the_program_gets_keyboard_interrupt_as_without_netaudit(tmp_path, servers):
    """netaudit ignored SIGINT (SIG_IGN) before starting the program: an ignored signal stays
    ignored across exec, so Python installed no KeyboardInterrupt handler and ^C did nothing."""
    proc, _, sigint = _start(tmp_path, servers.http, INTERRUPTED)
    assert sigint == repr(signal.default_int_handler)
    os.kill(proc.pid, signal.SIGINT)  # to netaudit alone, which has no terminal: passed on
    code, out, err = _finish(proc)
    assert code == 5, (code, out, err)
    assert set(http_rows(tmp_path)) == {"/hello", "/interrupted"}


def test_a_signal_ignored_where_netaudit_started_stays_ignored_for_the_program(tmp_path, servers):
    """`nohup`, or `&` in a script, starts a command with SIGHUP or SIGINT ignored: the program
    inherits that, as it would without netaudit."""
    def ignore():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc, _, sigint = _start(tmp_path, servers.http, "", preexec_fn=ignore)
    os.kill(proc.pid, signal.SIGTERM)
    _finish(proc)
    assert sigint == repr(signal.SIG_IGN)


COUNTING = """
got = []
signal.signal(signal.%(signal)s, lambda sig, frame: got.append(sig))
def _count(seconds, _sleep=time.sleep):
    while not got:
        _sleep(0.01)
    _sleep(1.0)  # time for a second one, had netaudit passed on what already reached the program
    get("/%(signal)s-%%d" %% len(got))
    sys.exit(0)
time.sleep = _count
"""


def test_a_terminals_ctrl_c_reaches_the_program_once(tmp_path, servers):
    """^C typed in a terminal goes to its foreground process group, netaudit and the program
    both: netaudit does not pass it on a second time (a program's second ^C often means "stop
    now"). A real pseudo-terminal, netaudit's controlling terminal, gets the ^C byte."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def take_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the session's controlling terminal: stdin, the pty

    try:
        proc, _, _ = _start(tmp_path, servers.http, COUNTING % {"signal": "SIGINT"}, stdin=slave,
                            preexec_fn=take_terminal)
        os.write(master, b"\x03")  # ^C: the terminal driver signals its foreground group
        code, out, err = _finish(proc)
    finally:
        os.close(master)
        os.close(slave)
    assert code == 0, (code, out, err)
    assert set(http_rows(tmp_path)) == {"/hello", "/SIGINT-1"}


def test_a_sigkill_to_netaudits_group_ends_the_program_too(tmp_path, servers):
    """`timeout -k`, `kill -9 -- -PGID`, a supervisor's kill-as-group: the program shares
    netaudit's process group and ends with it. Given a group of its own (c08bb57), it outlived
    netaudit, unaudited from then on (review 42, H1)."""
    proc, boot, _ = _start(tmp_path, servers.http, "")
    relay = os.path.join(boot, "relay.sock")
    program = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _environ_has(p, relay))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)  # not communicate(): a program still running holds the output pipes open
    deadline = time.monotonic() + 10  # well before the program's own sleep (30 s) would end it
    while _alive(program) and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = _alive(program)
    if alive:
        os.kill(program, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not alive


def _environ_has(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SETSID = """
os.setsid()  # a daemon's first step: refused (EPERM) to a process group's leader
"""


def test_the_program_may_start_a_session_of_its_own(tmp_path, servers):
    """A program that calls os.setsid() must not be a process group's leader: under a group of its
    own (c08bb57) it got PermissionError where, without netaudit, it ran (review 42, M1)."""
    proc, _, _ = _start(tmp_path, servers.http, SETSID)
    os.kill(proc.pid, signal.SIGTERM)
    code, out, err = _finish(proc)
    assert code == 128 + signal.SIGTERM and "PermissionError" not in err, (code, out, err)
