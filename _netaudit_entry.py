"""The console scripts (`netaudit`, `netaudit-verify`): our own ledger and verifier, never a
namesake on the audited program's PYTHONPATH.

netaudit runs in the program's environment: `PYTHONPATH=. netaudit run -- python manage.py` puts
the program's folder before site-packages, and a package of its own named `ledger` (an accounting
app) or `verifier` would be imported in place of ours, so netaudit failed before it could say
anything. This module has a name of its own; it imports the package its command line is in from
the folder it sits in (where our packages were installed beside it), then the command line, whose
own imports of our other packages ledger/siblings.py keeps to ours. Only those names: the rest of
the path (the standard library first) is as Python made it. The program is not affected: its
processes get PYTHONPATH from the environment, unchanged (with `netaudit run`'s bootstrap first).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

HOME = os.path.dirname(os.path.abspath(__file__))  # the folder holding ledger/ and verifier/


def _ours(name: str) -> None:
    """Import package `name` from HOME, whatever sys.path would find first."""
    if name in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(name, [HOME])
    if spec is None or spec.loader is None:
        return  # not beside us: the ordinary import decides
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def netaudit() -> int:
    _ours("ledger")
    from ledger.cli import main

    return main()


def netaudit_verify() -> int:
    _ours("verifier")
    from verifier.cli import main

    return main()
