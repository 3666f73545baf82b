# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Views, actions and menus as each group sees them."""
from odoo.exceptions import AccessError
from odoo.tests import new_test_user, tagged

from .common import LedgerCase, make_event


@tagged("post_install", "-at_install")
class TestUi(LedgerCase):
    def setUp(self):
        super().setUp()
        self.user = new_test_user(self.env, "netaudit_ui_user",
                                  groups="base.group_user,mit_network_audit.group_user")
        self.officer = new_test_user(self.env, "netaudit_ui_officer",
                                     groups="base.group_user,mit_network_audit.group_officer")
        self.nobody = new_test_user(self.env, "netaudit_ui_nobody", groups="base.group_user")

    def test_views_load_for_audit_user(self):
        log = self.env["network.egress_log"].with_user(self.user)
        views = log.get_views([(False, v) for v in ("list", "form", "search", "graph", "pivot")])
        self.assertEqual(set(views["views"]), {"list", "form", "search", "graph", "pivot"})
        # the officer-only Verify chain button is not even sent to a plain user
        self.assertNotIn("action_verify_chain", views["views"]["list"]["arch"])
        officer_views = self.env["network.egress_log"].with_user(self.officer).get_views([(False, "list")])
        self.assertIn("action_verify_chain", officer_views["views"]["list"]["arch"])
        for model in ("network.audit.ledger", "network.audit.declared_host"):
            self.env[model].with_user(self.user).get_views([(False, "list"), (False, "form")])

    def test_trust_report_for_audit_user(self):
        self.write_ledger("host-ui", [make_event(1)])
        self.Ledger._ingest_all()
        action = self.env.ref("mit_network_audit.action_network_audit_report")
        result = action.with_user(self.user).run()
        report = self.env["network.audit.report"].with_user(self.user).browse(result["res_id"])
        self.assertTrue(report.verdict)
        self.assertIn("sale", report.line_ids.mapped("module"))
        report.get_views([(False, "form")])

    def test_menus_by_group(self):
        root = self.env.ref("mit_network_audit.menu_network_audit_root")
        config = self.env.ref("mit_network_audit.menu_network_audit_config")
        Menu = self.env["ir.ui.menu"]
        self.assertIn(root.id, Menu.with_user(self.user)._visible_menu_ids())
        self.assertNotIn(config.id, Menu.with_user(self.user)._visible_menu_ids())
        self.assertIn(config.id, Menu.with_user(self.officer)._visible_menu_ids())
        self.assertNotIn(root.id, Menu.with_user(self.nobody)._visible_menu_ids())

    def test_verify_chain_is_for_officers(self):
        with self.assertRaises(AccessError):
            self.Ledger.with_user(self.user).action_verify_all()
        action = self.Ledger.with_user(self.officer).action_verify_all()
        self.assertEqual(action["tag"], "display_notification")
        with self.assertRaises(AccessError):
            self.env["network.egress_log"].with_user(self.nobody).search([])

    def test_declared_hosts_by_officers_only(self):
        Declared = self.env["network.audit.declared_host"]
        with self.assertRaises(AccessError):
            Declared.with_user(self.user).create({"module": "sale", "host": "x.example"})
        Declared.with_user(self.officer).create({"module": "sale", "host": "x.example"})

    def test_settings_form_loads(self):
        admin = self.env.ref("base.user_admin")
        arch = self.env["res.config.settings"].with_user(admin).get_views([(False, "form")])
        self.assertIn("netaudit_retention_days", arch["views"]["form"]["arch"])
