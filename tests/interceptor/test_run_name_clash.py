"""`netaudit run` and a program with its own `interceptor`: the program imports its own, and is
still audited (real `netaudit run`, real processes, real local servers, a real ledger).

`interceptor` is a common name. The bootstrap's copy of our package is private
(ledger.run.PRIVATE_PACKAGE), so a program's `interceptor` module beside its script, package on
its PYTHONPATH (the program's, or netaudit's too) or package in its site-packages is the one it
gets, in its multiprocessing children as well. Before, the bootstrap put ours in sys.modules
under that name first and the program got ours (it broke), or netaudit itself took the program's
for ours and the program ran unaudited. Also here: under the private name our code is still
self-egress and the program's `interceptor` is not, and a program that installs our
`interceptor` itself is not recorded twice.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import interceptor
from interceptor_fixtures import http_rows, line_of, netaudit_run, run_rows, servers  # noqa: F401  (servers: a fixture)
from ledger.run import BOOTSTRAP, PRIVATE_PACKAGE
from verifier.verify import verify_ledger

THEIRS = '''\
"""The program's own `interceptor` (%(kind)s): nothing to do with the network audit."""
import urllib.request

MARKER = "THEIR-INTERCEPTOR:%(kind)s"


def fetch(url):
    return urllib.request.urlopen(url).read()  # THEIR-CALL
'''

APP = '''\
import sys, urllib.request
import interceptor
print(interceptor.MARKER, flush=True)
assert not hasattr(interceptor, "install"), "the program got the auditor's interceptor"
interceptor.fetch("http://127.0.0.1:%(port)d/from-theirs")  # APP-CALLS-THEIRS
urllib.request.urlopen("http://127.0.0.1:%(port)d/from-app").read()  # APP-OWN-CALL
sys.exit(3)
'''


@pytest.fixture(scope="module")
def bare_python_with_their_package(tmp_path_factory):
    """A venv with only the standard library and an `interceptor` package of its own in site-packages."""
    venv = tmp_path_factory.mktemp("bare-theirs") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=""),
                             cwd=str(venv)).stdout.strip()
    (venv / purelib / "interceptor").mkdir()
    (venv / purelib / "interceptor" / "__init__.py").write_text(THEIRS % {"kind": "site-packages"})
    return str(python)


def _program(tmp_path, port: int, kind: str, python: str) -> tuple[list[str], str, str]:
    """(argv for netaudit run, the app's text, netaudit's PYTHONPATH) for one place of the
    program's `interceptor`."""
    prog = tmp_path / "prog"
    prog.mkdir()
    app_text = APP % {"port": port}
    (prog / "app.py").write_text(app_text)
    argv = [python, str(prog / "app.py")]
    if kind == "beside":
        (prog / "interceptor.py").write_text(THEIRS % {"kind": kind})
        return argv, app_text, ""
    if kind == "site-packages":
        return argv, app_text, ""  # the venv holds it
    lib = tmp_path / "lib"
    (lib / "interceptor").mkdir(parents=True)
    (lib / "interceptor" / "__init__.py").write_text(THEIRS % {"kind": kind})
    if kind == "pythonpath":
        # the program's launcher puts its library first on the PYTHONPATH netaudit run handed it
        launch = 'PYTHONPATH="$0${PYTHONPATH:+:$PYTHONPATH}" exec "$1" "$2"'
        return ["sh", "-c", launch, str(lib), *argv], app_text, ""
    # netaudit-pythonpath: `PYTHONPATH=lib netaudit run -- python app.py`, netaudit sees it too,
    # with a `verifier` of the program's own beside the `interceptor`
    (lib / "verifier").mkdir()
    (lib / "verifier" / "__init__.py").write_text('raise ImportError("the program\'s own verifier")\n')
    return argv, app_text, str(lib)


@pytest.mark.parametrize("kind", ["beside", "pythonpath", "netaudit-pythonpath", "site-packages"])
def test_a_program_imports_its_own_interceptor_and_is_audited(tmp_path, servers, kind, request):
    python = request.getfixturevalue("bare_python_with_their_package") if kind == "site-packages" \
        else sys.executable  # this venv: our own `interceptor` is installed in it, theirs must still win
    argv, app_text, pythonpath = _program(tmp_path, servers.http, kind, python)

    r = netaudit_run(tmp_path, *argv, env=dict(os.environ, PYTHONPATH=pythonpath))
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == [f"THEIR-INTERCEPTOR:{kind}"], (r.stdout, r.stderr)
    assert "netaudit:" not in r.stderr and "Error" not in r.stderr, r.stderr

    rows = run_rows(tmp_path)
    http = http_rows(tmp_path)
    assert sorted(http) == ["/from-app", "/from-theirs"]
    app_row, their_row = http["/from-app"], http["/from-theirs"]
    assert (app_row["module"], app_row["call_site"]) == ("app", f"app:{line_of(app_text, 'APP-OWN-CALL')}:<module>")
    if kind == "site-packages":  # an installed library: skipped, its caller is named
        assert (their_row["module"], their_row["call_site"]) == (
            "app", f"app:{line_of(app_text, 'APP-CALLS-THEIRS')}:<module>")
    else:  # the program's own code, a top-level `interceptor` that is not ours
        assert (their_row["module"], their_row["call_site"]) == (
            "interceptor", f"interceptor:{line_of(THEIRS, 'THEIR-CALL')}:fetch")
    assert not app_row["self_egress"] and not their_row["self_egress"]
    assert not any(x["self_egress"] for x in rows)
    installed = [x for x in rows if x["method"] == "interceptor_installed"]
    assert [x["pid"] for x in installed] == [app_row["pid"]]
    assert not any(x["method"] in ("gap", "interceptor_not_installed") for x in rows)
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid


PLANTED = '''\
import urllib.request


def fetch(url):
    urllib.request.urlopen(url).read()  # PLANTED-CALL
'''

SELF_APP = '''\
import importlib.util, sys


def load(name):
    """The same file, as a module of the given name (the name is all attribution reads)."""
    spec = importlib.util.spec_from_file_location(name, sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


url = "http://127.0.0.1:%(port)d"
load("%(private)s.planted").fetch(url + "/as-ours")
load("interceptor.planted").fetch(url + "/as-theirs")
'''


def test_our_private_copy_is_self_egress_and_their_interceptor_is_not(tmp_path, servers):
    """Under `netaudit run` our code is the private copy: a call from a module of that name is
    self-egress (an alarm), a call from a module of the program's `interceptor` is the program's."""
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "planted.py").write_text(PLANTED)
    app = tmp_path / "prog" / "self_app.py"
    app.write_text(SELF_APP % {"port": servers.http, "private": PRIVATE_PACKAGE})
    r = netaudit_run(tmp_path, sys.executable, str(app), str(tmp_path / "prog" / "planted.py"))
    assert r.returncode == 0, r.stderr

    http = http_rows(tmp_path)
    assert sorted(http) == ["/as-ours", "/as-theirs"]
    site = f"{line_of(PLANTED, 'PLANTED-CALL')}:fetch"
    ours, theirs = http["/as-ours"], http["/as-theirs"]
    assert (ours["module"], ours["call_site"], ours["self_egress"]) == (
        PRIVATE_PACKAGE, f"{PRIVATE_PACKAGE}.planted:{site}", 1)
    assert (theirs["module"], theirs["call_site"], theirs["self_egress"]) == ("interceptor", f"interceptor.planted:{site}", 0)
    rep = subprocess.run([sys.executable, "-m", "ledger.cli", "report", "--ledger", str(tmp_path / "run.sqlite"),
                          "--key-dir", str(tmp_path / "keys")], env=dict(os.environ, PYTHONPATH=""),
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert rep.returncode == 0 and "Self-egress: 1" in rep.stdout, rep.stdout


OWN_AUDIT_APP = '''\
import urllib.request
import interceptor  # our package, beside this script: the same files as netaudit run's copy, or changed

writer = interceptor.MemoryWriter()
print("install:", interceptor.install(sink=interceptor.Sink(writer, linger_s=0)), flush=True)
print("installed:", interceptor.installed(), flush=True)
interceptor.use_sink(interceptor.Sink(writer, linger_s=0))  # as the Odoo addon does: route the calls
urllib.request.urlopen("http://127.0.0.1:%(port)d/self-audited").read()
interceptor.flush(5)
print("own sink:", len([e for e in writer.events if e.channel == "http"]), flush=True)
'''


@pytest.mark.parametrize("same", [True, False], ids=["same-files", "changed-copy"])
def test_a_program_that_installs_our_interceptor_itself(tmp_path, servers, same):
    """The program imports our own `interceptor` and installs it, as the Odoo addon does. The same
    files as the bootstrap's copy: the program gets that copy, installed, and routes its calls to
    its own sink (the run's ledger then has none). Changed files: a second copy, which stays
    uninstalled, and each call is still one row of the run's ledger, never two."""
    prog = tmp_path / "prog"
    shutil.copytree(Path(interceptor.__file__).parent, prog / "interceptor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not same:
        with open(prog / "interceptor" / "event.py", "a", encoding="utf-8") as f:
            f.write("# a changed copy\n")
    (prog / "own_audit.py").write_text(OWN_AUDIT_APP % {"port": servers.http})
    r = netaudit_run(tmp_path, sys.executable, str(prog / "own_audit.py"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == (["install: False", "installed: True", "own sink: 1"] if same else
                                     ["install: False", "installed: False", "own sink: 0"]), (r.stdout, r.stderr)
    rows = [(x["channel"], x["module"], x["self_egress"]) for x in run_rows(tmp_path) if x["url_path"] == "/self-audited"]
    assert rows == ([] if same else [("http", "own_audit", 0)])
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid


def test_our_files_plus_a_subpackage_of_theirs_is_their_package(tmp_path, servers):
    """Our .py files, and a subpackage ours does not have: not our package (review 16, L1: it was
    taken for ours, and `import interceptor.contrib` failed under netaudit run)."""
    prog = tmp_path / "prog"
    shutil.copytree(Path(interceptor.__file__).parent, prog / "interceptor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (prog / "interceptor" / "contrib").mkdir()
    (prog / "interceptor" / "contrib" / "__init__.py").write_text("MARK = 'THEIR-CONTRIB'\n")
    (prog / "app.py").write_text("import interceptor.contrib\nprint(interceptor.contrib.MARK)\n")
    r = netaudit_run(tmp_path, sys.executable, str(prog / "app.py"))
    assert (r.returncode, r.stdout.strip()) == (0, "THEIR-CONTRIB"), r.stderr


def test_the_bootstrap_imports_the_private_copy_only():
    """The bootstrap imports the copy run.py writes, by the name it writes it under, and never
    the public name (which it only maps to that copy when the program's is the same files)."""
    imported = [(n.module if isinstance(n, ast.ImportFrom) else a.name)
                for n in ast.walk(ast.parse(BOOTSTRAP)) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names]
    assert f"{PRIVATE_PACKAGE}.relay" in imported
    assert not [m for m in imported if m.split(".")[0] == "interceptor"]
    assert set(re.findall(r"_netaudit_\w*interceptor", BOOTSTRAP)) == {PRIVATE_PACKAGE}


def test_the_interceptor_imports_itself_only_relatively():
    """An absolute `from interceptor... import` (lazy ones in functions too) would, in the private
    copy, reach the program's `interceptor` or none: each import of ours must be relative."""
    found = [f"{path.name}:{line}: {name}" for path in sorted(Path(interceptor.__file__).parent.glob("*.py"))
             for line, name in _absolute_imports(ast.parse(path.read_text(encoding="utf-8")))
             if name.split(".")[0] == "interceptor"]
    assert found == []


def _absolute_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.lineno, node.module or ""


MP_APP = '''\
import multiprocessing, socket, sys, urllib.request
import interceptor  # the program's own, beside it
URL = "http://127.0.0.1:%(port)d"


def child(conn):
    sock = conn.recv()  # a counted socket, sent by multiprocessing's own reducer
    sock.sendall(b"GET /mp-socket HTTP/1.0\\r\\n\\r\\n")
    sock.recv(100)
    sock.close()
    interceptor.fetch(URL + "/mp-child")  # a fork child ends with os._exit: multiprocessing's finalizers flush


if __name__ == "__main__":
    method = sys.argv[1]
    print(interceptor.MARKER, method, flush=True)
    ctx = multiprocessing.get_context(method)
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=child, args=(child_end,))
    p.start()
    sock = socket.create_connection(("127.0.0.1", %(port)d))
    parent_end.send(sock)
    sock.close()
    p.join(60)
    print("child", p.pid, flush=True)
    sys.exit(p.exitcode)
'''


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_with_their_interceptor_are_audited(tmp_path, servers, method):
    """fork and spawn children of a program with its own `interceptor`: theirs is imported, the
    parent's counted socket still goes to the child with multiprocessing's reducer (registered for
    the counting class by the private copy), and the child's call is a row of its pid attributed
    to the program."""
    if method == "fork" and not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    prog = tmp_path / "prog"
    prog.mkdir()
    (prog / "interceptor.py").write_text(THEIRS % {"kind": "beside"})
    (prog / "mp_app.py").write_text(MP_APP % {"port": servers.http})
    r = netaudit_run(tmp_path, sys.executable, str(prog / "mp_app.py"), method)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == f"THEIR-INTERCEPTOR:beside {method}", r.stdout
    child_pid = int(out[-1].split()[1])
    rows = run_rows(tmp_path)
    mp_child = [x for x in rows if x["url_path"] == "/mp-child"]
    assert [(x["pid"], x["module"], x["self_egress"]) for x in mp_child] == [(child_pid, "interceptor", 0)]
    raw = [x for x in rows if x["channel"] == "socket" and x["dst_port"] == servers.http]
    assert raw and all(not x["self_egress"] for x in raw)
    assert not any(x["self_egress"] for x in rows)
    assert not any(x["method"] in ("gap", "interceptor_not_installed") for x in rows)
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid


def test_a_program_that_imports_our_ledger_keeps_its_own_verifier(tmp_path):
    """The Odoo addon imports ledger.process_writer in the audited process; the program's own
    `verifier` (beside its script) must stay the program's: only netaudit's own command line pins
    ours (review 16, M1: importing the ledger pinned it, and the program got our verifier)."""
    (tmp_path / "verifier.py").write_text("def check(x):\n    return 'THEIR-VERIFIER:%d' % x\n")
    (tmp_path / "app.py").write_text("import ledger.process_writer\nimport verifier\nprint(verifier.check(1))\n")
    r = subprocess.run([sys.executable, str(tmp_path / "app.py")], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert (r.returncode, r.stdout.strip()) == (0, "THEIR-VERIFIER:1"), r.stderr
