"""The core has no Odoo imports, interceptor/ is stdlib-only, verifier/ imports nothing else of ours."""
from __future__ import annotations

import pytest

from .gate_helpers import run_gate

ODOO_IMPORTS = [
    ("import odoo\n", 1, "imports odoo"),
    ("from odoo import api, models\n", 1, "imports odoo"),
    ("from odoo.addons.base.models import res_partner\n", 1, "imports odoo.addons.base.models"),
    ("import os\nimport odoo.tools as t\n", 2, "imports odoo.tools"),
    ("ODOO = __import__('odoo')\n", 1, "imports odoo"),
    ("import importlib\nTOOLS = importlib.import_module('odoo.tools')\n", 2, "imports odoo.tools"),
    ("from importlib import import_module as im\nODOO = im('odoo')\n", 2, "imports odoo"),
    ("import importlib as il\n\ndef load(name):\n    return il.import_module(f'odoo.{name}')\n", 4,
     "imports odoo."),
    ("import importlib\n\ndef load(name):\n    return importlib.import_module(name)\n", 4,
     "computed module name"),
    ("import builtins\nODOO = builtins.__import__('odoo.api')\n", 2, "imports odoo.api"),
    ("from importlib import *\nODOO = import_module('odoo')\n", 2, "imports odoo"),
]


@pytest.mark.parametrize("package", ["interceptor", "ledger", "verifier"])
@pytest.mark.parametrize("code, line, reason", ODOO_IMPORTS)
def test_odoo_import_in_the_core_fails(plant_wheel, package, code, line, reason):
    path = f"{package}/planted.py"
    run = run_gate(plant_wheel({path: code.encode()}))
    assert run.rc == 1
    assert run.failed_rules() == {"core-no-odoo"}, run.stdout
    assert any(f":{path}:{line}: " in f and reason in f for f in run.failures("core-no-odoo")), \
        run.failures("core-no-odoo")


def test_odoo_import_in_the_addon_passes(plant_sdist):
    """The addon is the only place that imports odoo."""
    sdist = plant_sdist({"odoo_addon/mit_network_audit/models/planted.py": b"from odoo import models\n"})
    assert run_gate(sdist).rc == 0


@pytest.mark.parametrize("path, code, reason", [
    ("interceptor/planted.py", "import apsw\n", "not in the standard library"),
    ("interceptor/planted.py", "from cryptography.hazmat.primitives import hashes\n",
     "not in the standard library"),
    ("interceptor/planted.py", "from ledger import ledger\n", "interceptor may import nothing"),
    ("interceptor/planted.py", "from ..verifier import format\n", "interceptor imports verifier"),
    ("verifier/planted.py", "import ledger.keys\n", "verifier imports ledger.keys"),
    ("verifier/planted.py", "from interceptor import NetEvent\n", "verifier imports interceptor"),
    ("verifier/planted.py", "import odoo_addon.mit_network_audit\n", "verifier imports odoo_addon"),
    ("verifier/planted.py", "from .. import ledger\n", "verifier imports ledger"),
    ("verifier/planted.py", "import importlib\nL = importlib.import_module('ledger')\n",
     "verifier imports ledger"),
    ("verifier/planted.py", "import platformdirs\n", "the verifier uses only the standard library"),
    ("verifier/planted.py", "from requests import get\n", "verifier imports requests:"),
    ("ledger/planted.py", "from odoo_addon.mit_network_audit import glue\n",
     "ledger may import interceptor, verifier"),
])
def test_layering_violation_fails(plant_wheel, path, code, reason):
    run = run_gate(plant_wheel({path: code.encode()}))
    assert run.failed_rules() == {"layering"}, run.stdout
    assert any(f":{path}:" in f and reason in f for f in run.failures("layering")), \
        run.failures("layering")


@pytest.mark.parametrize("path, code", [
    ("interceptor/planted.py", "import socket, http.client, sys\nfrom . import event\n"),
    ("ledger/planted.py", "import apsw\nfrom verifier import format\nfrom interceptor import NetEvent\n"),
    ("verifier/planted.py", "import cryptography\nfrom . import format\nfrom .format import COLUMNS\n"),
])
def test_allowed_imports_pass(plant_wheel, path, code):
    run = run_gate(plant_wheel({path: code.encode()}))
    assert run.rc == 0, run.stdout
