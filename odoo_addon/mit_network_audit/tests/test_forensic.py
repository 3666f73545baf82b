# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
import datetime
import os

from odoo import fields
from odoo.exceptions import AccessError, ValidationError
from odoo.tests import tagged, new_test_user

from ..glue import forensic as forensic_glue
from .common import LedgerCase


@tagged("post_install", "-at_install")
class TestForensicMode(LedgerCase):
    def setUp(self):
        super().setUp()
        self.Session = self.env["network.audit.forensic.session"]
        self.user = new_test_user(self.env, "netaudit_user", groups="base.group_user,mit_network_audit.group_user")
        self.officer = new_test_user(self.env, "netaudit_officer",
                                     groups="base.group_user,mit_network_audit.group_officer")
        self.in_2h = fields.Datetime.now() + datetime.timedelta(hours=2)
        self.addCleanup(forensic_glue.reset)  # a session turned on here must not leave the tap set

    def own_facts(self):
        self.env["ir.config_parameter"].sudo().set_param("mit_network_audit.ledger_folders", "")
        self.Ledger._ingest_all()
        own = self.Ledger.search([("is_own", "=", True)])
        return self.Log.search([("audit_ledger_id", "=", own.id), ("channel", "=", "audit")],
                               order="chain_seq")

    def test_off_by_default(self):
        self.assertFalse(self.Session.current())
        self.assertFalse(self.env["network.audit.forensic.body"].store(b"secret"))

    def test_only_officers_turn_it_on(self):
        with self.assertRaises(AccessError):
            self.Session.with_user(self.user).create({"reason": "x", "expires_at": self.in_2h})
        session = self.Session.with_user(self.officer).create({"reason": "x", "expires_at": self.in_2h})
        self.assertEqual(session.user_id, self.officer)
        self.assertTrue(self.Session.current())

    def test_admin_is_officer(self):
        admin = self.env.ref("base.user_admin")
        self.assertTrue(admin.has_group("mit_network_audit.group_officer"))
        self.assertTrue(admin.has_group("mit_network_audit.group_user"))

    def test_reason_and_expiry_are_mandatory_and_bounded(self):
        officer_sessions = self.Session.with_user(self.officer)
        with self.assertRaises(ValidationError):
            officer_sessions.create({"reason": "  ", "expires_at": self.in_2h})
        with self.assertRaises(ValidationError):
            officer_sessions.create({
                "reason": "x", "expires_at": fields.Datetime.now() + datetime.timedelta(hours=25)})
        with self.assertRaises(ValidationError):
            officer_sessions.create({
                "reason": "x", "expires_at": fields.Datetime.now() - datetime.timedelta(minutes=1)})

    def test_bodies_encrypted_officers_only_deleted_at_expiry(self):
        session = self.Session.with_user(self.officer).create({"reason": "x", "expires_at": self.in_2h})
        body = self.env["network.audit.forensic.body"].store(b"card=4111", module="sale", host="h")
        self.assertNotIn(b"4111", body.ciphertext)
        self.assertEqual(body.with_user(self.officer).plaintext(), b"card=4111")
        shown = body.with_user(self.officer).action_show_plaintext()
        self.assertEqual(shown["params"]["message"], "card=4111")
        with self.assertRaises(AccessError):
            body.with_user(self.user).read(["ciphertext"])
        with self.assertRaises(AccessError):
            body.with_user(self.user).plaintext()
        self.assertNotIn("body", self.env["network.egress_log"]._fields)
        now = fields.Datetime.now()  # the session started 3 h ago, for 2 h
        session.sudo().write({"started_at": now - datetime.timedelta(hours=3),
                              "expires_at": now - datetime.timedelta(hours=1)})
        self.assertEqual(self.Session._cron_expire(), session)
        self.assertTrue(session.ended_at)
        self.assertFalse(body.exists())
        self.assertFalse(self.Session.current())

    def test_on_and_off_are_chain_rows(self):
        session = self.Session.with_user(self.officer).create({"reason": "inc-7", "expires_at": self.in_2h})
        session.with_user(self.officer).action_turn_off()
        facts = self.own_facts()
        on = facts.filtered(lambda r: r.method == "forensic_on")
        off = facts.filtered(lambda r: r.method == "forensic_off")
        self.assertTrue(on and off)
        self.assertIn("inc-7", on[-1].url_path)
        self.assertIn("netaudit_officer", on[-1].url_path)
        self.assertGreater(off[-1].chain_seq, on[-1].chain_seq)

    def test_session_cannot_be_edited(self):
        session = self.Session.with_user(self.officer).create({"reason": "x", "expires_at": self.in_2h})
        with self.assertRaises(AccessError):
            session.with_user(self.officer).write({"reason": "other"})
        self.assertTrue(os.path.isdir(self.folder))
