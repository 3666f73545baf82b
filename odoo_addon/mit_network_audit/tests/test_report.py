# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
import datetime
from unittest.mock import patch

from odoo import fields
from odoo.tests import tagged
from odoo.tools import mute_logger

from ..glue import hooks
from .common import LedgerCase, make_event


@tagged("post_install", "-at_install")
class TestTrustReport(LedgerCase):
    def report(self):
        action = self.env["network.audit.report"].action_open_report()
        return self.env["network.audit.report"].browse(action["res_id"])

    def line(self, report, module):
        return report.line_ids.filtered(lambda l: l.module == module)

    def test_verdicts_and_chips(self):
        self.env["network.audit.declared_host"].create({"module": "sale", "host": "*.example.com"})
        self.write_ledger("host-r", [
            make_event(1, module="sale", host="api.example.com"),
            make_event(2, module="sale", host="cdn.example.com"),
            make_event(3, module="crm", host="tracker.example.net"),
        ], sign=True)
        self.Ledger._ingest_all()
        self.Ledger.search([])._verify_pg()
        report = self.report()
        self.assertEqual(self.line(report, "sale").verdict, "declared")
        self.assertEqual(self.line(report, "sale").calls, 2)
        self.assertEqual(self.line(report, "sale").bytes_out, 101 + 102)
        self.assertEqual(self.line(report, "crm").verdict, "undeclared")
        self.assertEqual(self.line(report, "crm").undeclared_hosts, "tracker.example.net")
        self.assertEqual(self.line(report, "base").verdict, "quiet")
        self.assertEqual(report.verdict, "review")  # crm's undeclared egress
        self.assertTrue(report.chain_chip.startswith("verified at"), report.chain_chip)
        self.assertTrue(report.head_ok)
        self.assertEqual((report.self_egress_count, report.dropped_count), (0, 0))
        self.assertTrue(report.forensic_chip.startswith("off ("), report.forensic_chip)
        self.assertTrue(report.capture_ok, report.capture_chip)
        self.assertIn("1 ledger(s)", report.hosts_chip)
        events = self.line(report, "crm").action_open_events()
        self.assertEqual(self.Log.search_count(events["domain"]), 1)

    def test_trusted_when_everything_declared(self):
        self.env["network.audit.declared_host"].create({"module": "sale", "host": "api.example.com"})
        self.write_ledger("host-ok", [make_event(1, module="sale")], sign=True)
        self.Ledger._ingest_all()
        self.Ledger.search([])._verify_pg()
        self.assertEqual(self.report().verdict, "trusted")

    def test_self_egress_is_alarm(self):
        self.write_ledger("host-s", [
            make_event(1, module="mit_network_audit", host="exfil.example", self_egress=True)],
            sign=True)
        self.Ledger._ingest_all()
        report = self.report()
        self.assertEqual(report.self_egress_count, 1)
        self.assertEqual(report.verdict, "alarm")
        self.assertEqual(self.line(report, "mit_network_audit").verdict, "alarm")

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_broken_chain_is_alarm(self):
        path, _head = self.write_ledger("host-b", [make_event(i) for i in range(4)])
        self.tamper(path, "UPDATE egress_log SET req_bytes = 0 WHERE chain_seq = 3")
        self.Ledger._ingest_all()
        report = self.report()
        self.assertEqual(report.verdict, "alarm")
        self.assertEqual(report.chain_chip, "broken at host host-b row 3 (hash_mismatch)")

    def test_gap_rows_count_as_dropped(self):
        from ledger import Ledger  # the writer's own gap fact, as the sink writes it

        path, _head = self.write_ledger("host-gap", [make_event(1)], sign=True)
        with Ledger.open(path, key_dir=f"{self.folder}/keys/host-gap") as led:
            led.append_audit("gap", dropped=7, t1=1, t2=2, reason="QueueFull")
        self.Ledger._ingest_all()
        report = self.report()
        self.assertEqual(report.dropped_count, 7)
        self.assertEqual(report.verdict, "review")

    def test_forensic_chip(self):
        officer = self.env.ref("base.user_admin")
        self.env["network.audit.forensic.session"].with_user(officer).create({
            "reason": "incident 42",
            "expires_at": fields.Datetime.now() + datetime.timedelta(hours=2)})
        report = self.report()
        self.assertTrue(report.forensic_on)
        self.assertIn("incident 42", report.forensic_chip)
        self.assertIn(officer.name, report.forensic_chip)

    def test_capture_off_is_review(self):
        """post_load failed (fail-open: Odoo runs on): the report says capture is off."""
        self.env["network.audit.declared_host"].create({"module": "sale", "host": "api.example.com"})
        self.write_ledger("host-off", [make_event(1, module="sale")], sign=True)
        self.Ledger._ingest_all()
        self.Ledger.search([])._verify_pg()
        self.assertEqual(self.report().verdict, "trusted")
        with patch.dict(hooks._STATE, installed=False, error="RuntimeError: no interceptor"):
            report = self.report()
        self.assertFalse(report.capture_ok)
        self.assertIn("no interceptor", report.capture_chip)
        self.assertEqual(report.verdict, "review")
