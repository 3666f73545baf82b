"""tools/addon_check.py: passes on the addon as it is, fails (exit 1) on each kind of real problem."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "odoo_addon" / "mit_network_audit"
CHECK = ROOT / "tools" / "addon_check.py"


def run(addon):
    proc = subprocess.run([sys.executable, str(CHECK), str(addon), "--no-pylint"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_addon_passes():
    code, out = run(ADDON)
    assert code == 0, out
    assert "OK (" in out


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


BREAKAGES = {
    "unknown view field": ("views/network_egress_log_views.xml", '<field name="dst_port" optional="show"/>',
                           '<field name="dst_portx"/>', "dst_portx, which does not exist"),
    "unknown button method": ("views/network_audit_forensic_views.xml", 'name="action_turn_off"',
                              'name="action_turn_of"', "action_turn_of(), which does not exist"),
    "broken XML": ("data/ir_cron.xml", "</odoo>", "<odoo>", "XML does not parse"),
    "field without help": ("models/network_audit_declared_host.py", 'help="Why this module needs this host."',
                           'string="Note"', "has no help="),
    "bad version": ("__manifest__.py", '"18.0.1.0.0"', '"17.0.1.0.0"', "is not 18.0.x.y.z"),
    "access to a foreign model": ("security/ir.model.access.csv", "model_network_audit_ledger,group_user",
                                  "model_res_partner,group_user", "is not a model of this addon"),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_a_real_problem_fails(tmp_path, name):
    rel, old, new, message = BREAKAGES[name]
    copy = tmp_path / "mit_network_audit"
    shutil.copytree(ADDON, copy, ignore=shutil.ignore_patterns("__pycache__"))
    _edit(copy / rel, old, new)
    code, out = run(copy)
    assert code == 1, out
    assert message in out, out
