"""`netaudit run [--ledger PATH] -- python app.py ARGS`: run a program with the interceptor installed.

The interceptor is installed from the first line of every Python process the program starts:
a bootstrap folder holding a `sitecustomize.py` is put first on PYTHONPATH, and NETAUDIT_LEDGER /
NETAUDIT_KEY_DIR name the ledger. The bootstrap then runs any `sitecustomize` the program had
before. Returns the program's own exit code (128+N when a signal N ended it).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from ledger.errors import LedgerError
from ledger.sink import ENV_KEY_DIR, ENV_LEDGER

BOOTSTRAP = '''\
"""Written by `netaudit run`: install the network audit interceptor, then the usual sitecustomize."""
import os
import sys


def _netaudit_install():
    path = os.environ.get("NETAUDIT_LEDGER")
    if not path:
        return
    key_dir = os.environ.get("NETAUDIT_KEY_DIR") or None

    def open_ledger_writer():  # on the writer thread, at the first event: the ledger's imports wait
        from ledger.sink import LedgerWriter
        return LedgerWriter(path, key_dir)

    try:
        import interceptor
        interceptor.install(sink=interceptor.Sink(interceptor.LazyWriter(open_ledger_writer)))
    except Exception as exc:  # fail open: the program runs, and says why it is not audited
        sys.stderr.write("netaudit: interceptor not installed in %s: %s: %s\\n"
                         % (sys.executable, type(exc).__name__, exc))


def _netaudit_chain():
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_netaudit_install()
_netaudit_chain()
'''


def _prepare(ledger_path: str | None, key_dir: str | None) -> tuple[str, str]:
    """Absolute ledger and key paths; the ledger is created (with its keys) now, so that a bad
    path is reported before the program starts, and children never race to create it."""
    from ledger.ledger import Ledger, default_key_dir, default_ledger_path

    path = os.path.abspath(ledger_path or default_ledger_path())
    keys = os.path.abspath(key_dir or default_key_dir())
    Ledger.open(path, key_dir=keys, create=True).close()
    return path, keys


def run(argv: list[str], ledger_path: str | None = None, key_dir: str | None = None) -> int:
    path, keys = _prepare(ledger_path, key_dir)
    boot = tempfile.mkdtemp(prefix="netaudit-run-")
    try:
        with open(os.path.join(boot, "sitecustomize.py"), "w", encoding="utf-8") as f:
            f.write(BOOTSTRAP)
        env = dict(os.environ)
        env[ENV_LEDGER] = path
        env[ENV_KEY_DIR] = keys
        env["PYTHONPATH"] = os.pathsep.join(p for p in (boot, env.get("PYTHONPATH", "")) if p)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the program gets ^C and decides
        try:
            try:
                proc = subprocess.Popen(argv, env=env)
            except OSError as exc:
                raise LedgerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            code = proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        shutil.rmtree(boot, ignore_errors=True)
    return 128 - code if code < 0 else code
