"""The console scripts (`netaudit`, `netaudit-verify`): our own ledger and verifier, never a
namesake on the audited program's PYTHONPATH.

netaudit runs in the program's environment: `PYTHONPATH=. netaudit run -- python manage.py` puts
the program's folder before site-packages, and a package of its own named `ledger` (an accounting
app) or `verifier` would be imported in place of ours, so netaudit failed before it could say
anything. This module has a name of its own; it puts the folder it sits in (where our packages
were installed beside it) first on netaudit's own sys.path, then imports the command line. The
program is not affected: its processes get PYTHONPATH from the environment, unchanged (with
`netaudit run`'s bootstrap first). ledger/siblings.py does the same for one name at a time where
the ledger is imported by a program (the Odoo addon), whose own namesakes must stay its own.
"""
from __future__ import annotations

import os
import sys

HOME = os.path.dirname(os.path.abspath(__file__))  # the folder holding ledger/ and verifier/


def _ours_first() -> None:
    if sys.path[:1] != [HOME]:
        sys.path.insert(0, HOME)


def netaudit() -> int:
    _ours_first()
    from ledger.cli import main

    return main()


def netaudit_verify() -> int:
    _ours_first()
    from verifier.cli import main

    return main()
