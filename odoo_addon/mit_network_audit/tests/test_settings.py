# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
from odoo.tests import tagged

from .common import LedgerCase, make_event


@tagged("post_install", "-at_install")
class TestSettings(LedgerCase):
    def test_defaults_and_save(self):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param("mit_network_audit.retention_days", False)
        settings = self.env["res.config.settings"].create({})
        self.assertEqual(settings.netaudit_retention_days, 365)
        self.assertEqual(settings.netaudit_forensic_chip, "off")
        settings.netaudit_retention_days = 30
        settings.netaudit_ledger_folders = "/srv/ledgers"
        settings.execute()
        self.assertEqual(params.get_param("mit_network_audit.retention_days"), "30")
        self.assertEqual(self.Ledger._retention_days(), 30)
        self.assertEqual(self.Ledger._folders(), ["/srv/ledgers"])

    def test_folders_setting_drives_ingest(self):
        self.write_ledger("host-f", [make_event(1)])
        self.env["ir.config_parameter"].sudo().set_param("mit_network_audit.ledger_folders", "/nonexistent")
        self.assertEqual(self.Ledger._ingest_all(), {})
        self.env["ir.config_parameter"].sudo().set_param(
            "mit_network_audit.ledger_folders", f"/nonexistent, {self.folder}/ledgers")
        self.assertEqual(list(self.Ledger._ingest_all().values()), [2])

    def test_manifest_declared_hosts(self):
        declared = self.env["network.audit.declared_host"]
        self.assertTrue(declared.is_declared("api.example.com", {"*.example.com"}))
        self.assertFalse(declared.is_declared("example.org", {"*.example.com"}))
        self.assertEqual(declared.declared_hosts("no_such_module"), set())
