"""The installed console scripts run our own packages, whatever the program's PYTHONPATH holds.

netaudit runs in the audited program's environment. Installed from the real wheel (not the
editable install of this checkout, whose import hook finds our packages first anyway), with a
program folder on PYTHONPATH that has packages of its own named `ledger`, `verifier` and
`interceptor`: before, `netaudit` stopped at once (`from ledger.cli import main` found the
program's `ledger`).
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig


def test_console_scripts_use_ours_over_the_programs_namesakes(release, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(site), str(release.wheel)], check=True, capture_output=True, timeout=300)
    program = tmp_path / "program"
    for name in ("ledger", "verifier", "interceptor"):
        (program / name).mkdir(parents=True)
        (program / name / "__init__.py").write_text("OWN = 'the program'\n")
    # The program's folder first, as PYTHONPATH puts it; then the wheel's files and our
    # dependencies (this venv's site-packages), as site-packages would come. -S keeps this
    # checkout's editable import hook out of netaudit's own process.
    env = {"PYTHONPATH": f"{program}:{site}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "NO_COLOR": "1"}
    ledger = tmp_path / "run.sqlite"
    # The program runs on the interpreter this venv was made from (no editable import hook there),
    # audited by `netaudit run`'s bootstrap: it imports its own `ledger`, and its call is recorded.
    child = getattr(sys, "_base_executable", sys.executable)
    run = subprocess.run([sys.executable, "-S", str(site / "bin" / "netaudit"), "run", "--ledger", str(ledger),
                          "--", child, "-c",
                          "import ledger, socket; print(ledger.OWN); socket.getaddrinfo('localhost', 9)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "the program"
    verify = subprocess.run([sys.executable, "-S", str(site / "bin" / "netaudit-verify"), str(ledger)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = subprocess.run([sys.executable, "-S", str(site / "bin" / "netaudit"), "report", "--ledger",
                             str(ledger)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "__main__" in report.stdout and "localhost" in report.stdout, report.stdout  # the child's call
