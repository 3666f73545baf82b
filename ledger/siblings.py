"""Our own `interceptor` and `verifier`: the ones installed beside this package, never a namesake.

netaudit runs in the program's environment: `PYTHONPATH=lib netaudit run -- python app.py`
puts the program's `lib` before site-packages in netaudit's own process too, and an `interceptor`
(a common name) or `verifier` there would be imported in place of ours: the ledger would then
run, and `netaudit run` copy into its bootstrap, someone else's code. So before the ledger
imports them, each name that would resolve to another folder than the one beside this package is
imported from beside it. Where it resolves there anyway (the usual case), or is already imported,
nothing is done. A namesake of `ledger` itself is found before any of this runs: the console
scripts' entry (_netaudit_entry.py) imports ours from beside it first.
Only netaudit's own command line (ledger/cli.py) calls pin(): in a program that imports the ledger
(the Odoo addon does), the program's own `verifier` or `interceptor` must stay the program's.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

OURS = ("interceptor", "verifier")
PRIVATE_PACKAGE = "_netaudit_interceptor"  # `netaudit run`'s copy of the interceptor (ledger/run.py)
HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding ledger/


def _origin(spec) -> str | None:
    return os.path.realpath(spec.origin) if spec is not None and spec.origin else None


def pin() -> None:
    """Import each of OURS from HOME when an ordinary import would find another one first."""
    for name in OURS:
        if name in sys.modules:
            continue
        if name == "interceptor" and PRIVATE_PACKAGE in sys.modules:
            continue  # inside `netaudit run`: its bootstrap's finder decides what `interceptor` is
        try:
            ours = importlib.machinery.PathFinder.find_spec(name, [HOME])
            if ours is None or ours.loader is None:
                continue  # not installed beside us: the ordinary import decides, as before
            if _origin(importlib.util.find_spec(name)) == _origin(ours):
                continue
        except (ImportError, ValueError, OSError):
            continue  # a finder that cannot say: the ordinary import decides
        module = importlib.util.module_from_spec(ours)
        sys.modules[name] = module
        try:
            ours.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
