"""`netaudit run [--ledger PATH] -- python app.py ARGS`: run a program with every Python process audited.

The interceptor is installed from the first line of every Python process the program starts, with
whatever Python runs it: a private (0700) bootstrap folder holding a `sitecustomize.py` and a copy
of the `interceptor` package (standard library only) is put first on PYTHONPATH, so a Python 3.11+
without our package, apsw or cryptography is audited too. The bootstrap then runs any
`sitecustomize` the program had before.

The copy is named `_netaudit_interceptor` (PRIVATE_PACKAGE), not `interceptor`: that is a common
name, and a program's own `interceptor` (a module beside its script, a package on PYTHONPATH or in
site-packages) must be the one it imports, not ours, found first on the path or already in
sys.modules. The package imports itself only relatively, and recognises its own frames by the
name it was imported under (interceptor.attribution.PACKAGE), so the copy audits and attributes
as the original does. A program whose `interceptor` is our package, the same files (Odoo with our
addon), gets the copy itself when it imports `interceptor`: its install() finds it installed and
its use_sink() routes the calls, as when the copy had the public name. Any other copy of ours is
a second package, whose install() returns False: the first one records every call already
(interceptor.socket_hooks.installed_elsewhere), and a call is never recorded twice. This process
runs with the program's PYTHONPATH too: ledger/siblings.py keeps it to our own `interceptor`, the
one copied.

This process owns the ledger. The children never open it and never see its salt: each sends its
records over the relay (interceptor.relay), a datagram socket in the bootstrap folder named by
NETAUDIT_RELAY, and a receiver thread here (ledger.relay) appends them in batches and drains
them all before `run` returns. The socket's path survives `close_fds`, so the processes a child
starts are audited as well. A process that outlives the program finds the relay gone: its misses
are counted in that process only. A Python the interceptor cannot run on (older than 3.11) says so
on stderr, runs unaudited, and is recorded as `interceptor_not_installed`; a Python started with
-I, -E or -S never reads the bootstrap.

Returns the program's own exit code (128+N when a signal N ended it). Signals sent to this
process while the program runs are passed on to it (_Forwarder), and this process waits for
it to end, then drains the relay.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

import interceptor
from interceptor.relay import ENV_RELAY, WIRE_VERSION
from ledger.errors import LedgerError
from ledger.siblings import PRIVATE_PACKAGE  # the interceptor's copy in the bootstrap folder
from ledger.sink import ENV_KEY_DIR, ENV_LEDGER

RELAY_SOCKET = "relay.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 104 (BSD) or 108 (Linux) bytes

BOOTSTRAP = '''\
"""Written by `netaudit run`: install the network audit interceptor, then the usual sitecustomize."""
import os
import sys

_NETAUDIT_WIRE_VERSION = @WIRE_VERSION@  # interceptor.relay's, for the one message sent without it


def _netaudit_install():
    if not os.environ.get("NETAUDIT_RELAY"):
        return
    try:
        from _netaudit_interceptor.relay import install_from_env
        if install_from_env():
            sys.meta_path.insert(0, _NetauditSamePackage())
    except Exception as exc:  # fail open: the program runs, and says why it is not audited
        sys.stderr.write("netaudit: interceptor not installed in %s: %s: %s\\n"
                         % (sys.executable, type(exc).__name__, exc))
        _netaudit_unaudited(exc)


def _netaudit_unaudited(exc):
    """Put "this process runs unaudited" in the parent's ledger too. Plain code on purpose: it
    runs where the interceptor could not be imported (an older Python, say)."""
    import json
    import socket
    import time
    try:
        msg = json.dumps({"v": _NETAUDIT_WIRE_VERSION, "kind": "unaudited", "pid": os.getpid(),
                          "ts": int(time.time() * 1e9),
                          "python": "%d.%d.%d" % tuple(sys.version_info[:3]),
                          "reason": type(exc).__name__})
        relay = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            relay.settimeout(1.0)
            relay.sendto(msg.encode("ascii"), os.environ["NETAUDIT_RELAY"])
        finally:
            relay.close()
    except Exception:
        pass


class _NetauditSamePackage:
    """`import interceptor` where the program's `interceptor` is this very package, file for file
    (Odoo with our addon, say): the program gets the installed copy, not a second one, so that its
    install() finds it installed and its use_sink() routes the calls. A namesake (any other
    `interceptor`) is left to the ordinary import, as are failures here."""

    def find_spec(self, name, path=None, target=None):
        try:
            if name == "interceptor":
                if not self._same_files(self._ordinary_spec(name, target)):
                    return None
                return _netaudit_alias_spec(name, "_netaudit_interceptor")
            if name.startswith("interceptor.") and \\
                    sys.modules.get("interceptor") is sys.modules.get("_netaudit_interceptor"):
                return _netaudit_alias_spec(name, "_netaudit_interceptor" + name[len("interceptor"):])
        except Exception:
            pass
        return None

    def _ordinary_spec(self, name, target):
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is not self and find is not None:
                spec = find(name, None, target)
                if spec is not None:
                    return spec
        return None

    @staticmethod
    def _same_files(spec):
        if spec is None or not spec.submodule_search_locations:
            return False
        theirs = list(spec.submodule_search_locations)[0]
        ours = sys.modules["_netaudit_interceptor"].__path__[0]

        def entries(folder):  # every file and folder but compiled ones: the copy has .py files only
            return sorted(n for n in os.listdir(folder) if n != "__pycache__" and not n.endswith((".pyc", ".pyo")))

        names = entries(ours)
        if names != entries(theirs):  # a subpackage or data file of theirs would be missing from ours
            return False
        for n in names:
            if not os.path.isfile(os.path.join(theirs, n)):
                return False
            with open(os.path.join(theirs, n), "rb") as a, open(os.path.join(ours, n), "rb") as b:
                if a.read() != b.read():
                    return False
        return True


class _NetauditAlias:
    """Loader of a module that is already loaded under another name; its own spec is kept."""

    def __init__(self, target):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        import importlib
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec


def _netaudit_alias_spec(name, target):
    import importlib.machinery
    return importlib.machinery.ModuleSpec(name, _NetauditAlias(target), is_package=target.count(".") == 0)


def _netaudit_chain():
    import importlib.machinery
    import importlib.util
    # every bootstrap folder is skipped, not only this one: under a `netaudit run` run by another,
    # the two bootstraps chained to each other until the recursion limit (helper 39, L2)
    rest = [p for p in sys.path if not (os.path.isfile(os.path.join(p or os.curdir, "sitecustomize.py"))
                                        and os.path.isdir(os.path.join(p or os.curdir, "_netaudit_interceptor")))]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


_netaudit_install()
_netaudit_chain()
'''.replace("@WIRE_VERSION@", str(WIRE_VERSION))


def _prepare(ledger_path: str | None, key_dir: str | None):
    """The open ledger (created with its keys if new), so that a bad path or key is reported
    before the program starts."""
    from ledger.ledger import Ledger, default_key_dir, default_ledger_path

    path = os.path.abspath(ledger_path or default_ledger_path())
    keys = os.path.abspath(key_dir or default_key_dir())
    return Ledger.open(path, key_dir=keys, create=True)


def _bootstrap_folder() -> str:
    """A private folder with the sitecustomize and a copy of the interceptor package, under its
    private name."""
    boot = tempfile.mkdtemp(prefix="netaudit-run-")
    if len(os.path.join(boot, RELAY_SOCKET)) > MAX_SOCKET_PATH:  # a long TMPDIR
        os.rmdir(boot)
        boot = tempfile.mkdtemp(prefix="netaudit-run-", dir="/tmp")
    try:
        with open(os.path.join(boot, "sitecustomize.py"), "w", encoding="utf-8") as f:
            f.write(BOOTSTRAP)
        shutil.copytree(os.path.dirname(os.path.abspath(interceptor.__file__)), os.path.join(boot, PRIVATE_PACKAGE),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except BaseException:
        shutil.rmtree(boot, ignore_errors=True)
        raise
    return boot


def _say_unwritten(receiver) -> None:
    """One line on stderr: misses that are not in the chain yet (ledger.relay keeps them beside
    the keys for the next writer of that ledger). The exit code stays the program's."""
    import sys

    head = f"netaudit: {receiver.unwritten} record(s) (events, facts) could not be written to {receiver.ledger.path}"
    if receiver.unwritten_kept:
        print(f"{head}; the count is kept in {receiver.unwritten_kept} and becomes a gap row when a writer "
              "opens that ledger again", file=sys.stderr)
    else:
        print(f"{head}, and their count could not be kept either ({receiver.unwritten_error or 'unknown'}): "
              "this line is the only record of them", file=sys.stderr)


# Signals netaudit passes on to the program, which decides what they mean; netaudit keeps waiting
# for it, then drains the relay and exits with its code. Each handler is a Python function, never
# SIG_IGN: an ignored signal stays ignored across exec, and a Python program whose SIGINT is
# ignored at start gets no KeyboardInterrupt (helper 39, H1). A signal ignored where netaudit
# started stays ignored (nohup, `&` in a script): the program inherits that, as without netaudit.
#
# The program runs in netaudit's process group, as a shell job's own process would: it reads the
# terminal, ^Z stops the job, a SIGKILL to the group ends it too, it may call setsid(). ^C and ^\
# typed in the terminal reach it from there (the terminal signals its whole foreground group):
# SIGINT and SIGQUIT are passed on only when netaudit is not its controlling terminal's foreground
# group. A signal sent to netaudit's whole group (`timeout`, `kill -- -PGID`) reaches the program
# twice: once as a member of the group, once passed on. A process group of its own for the
# program avoided that (c08bb57), and broke more (review 42: the program outlived a SIGKILL to the
# group, hung when a background job was brought to the foreground, and could no longer call
# setsid()); the shared group is what a program started by a shell has.
FORWARDED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2")
                  if hasattr(signal, name))
FROM_TERMINAL = tuple(getattr(signal, name) for name in ("SIGINT", "SIGQUIT") if hasattr(signal, name))


def _in_terminal_foreground() -> bool:
    """This process's group is the foreground group of its controlling terminal (/dev/tty: also
    where 0, 1 and 2 are all redirected, review 42, L2)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:  # no controlling terminal
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _Forwarder:
    """Passes signals on to the program while netaudit waits for it (helper 39, H3: a SIGTERM
    from docker, systemd or `timeout` ended netaudit at once, the program ran on orphaned, its
    last calls unrecorded, the bootstrap folder left behind). One that comes before the program
    has started is passed on once it has."""

    def __init__(self) -> None:
        self.proc = None
        self.early: list[int] = []
        self.previous = {}
        for sig in FORWARDED:
            try:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # ignored where netaudit was started: the program inherits that
                self.previous[sig] = signal.signal(sig, self._handle)
            except (OSError, ValueError):  # not settable here (not the main thread)
                pass

    def _handle(self, sig, frame) -> None:
        if sig in FROM_TERMINAL and _in_terminal_foreground():
            return  # typed in the terminal, which sent it to the whole job, the program with it
        if self.proc is None:
            self.early.append(sig)
            return
        try:
            self.proc.send_signal(sig)  # does nothing once the program has ended
        except OSError:
            pass

    def to(self, proc) -> None:
        self.proc = proc
        while self.early:
            self._handle(self.early.pop(0), None)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            try:
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            except (OSError, ValueError, TypeError):
                pass


def run(argv: list[str], ledger_path: str | None = None, key_dir: str | None = None) -> int:
    from ledger.relay import RelayReceiver

    led = _prepare(ledger_path, key_dir)
    boot = receiver = forward = None
    try:
        boot = _bootstrap_folder()
        receiver = RelayReceiver(led, os.path.join(boot, RELAY_SOCKET)).start()
        env = dict(os.environ)
        env.pop(ENV_LEDGER, None)   # the children write nowhere but to the relay
        env.pop(ENV_KEY_DIR, None)
        env[ENV_RELAY] = receiver.path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (boot, env.get("PYTHONPATH", "")) if p)
        forward = _Forwarder()  # until the relay is drained: a signal then finds the program ended
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            raise LedgerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        forward.to(proc)
        code = proc.wait()
    finally:
        if receiver is not None:
            receiver.stop()  # every datagram the program's processes sent is in the ledger now
            if receiver.unwritten:  # or counted, but the ledger's folder never came back to hold the count
                _say_unwritten(receiver)
            if receiver.ledger is not led:  # reopened: the file was deleted or replaced meanwhile
                receiver.ledger.close()
        led.close()
        if boot is not None:
            shutil.rmtree(boot, ignore_errors=True)
        if forward is not None:
            forward.restore()
    return 128 - code if code < 0 else code
