# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
import psycopg2

from odoo.exceptions import AccessError
from odoo.tests import tagged
from odoo.tools import mute_logger

from .common import LedgerCase, make_event


@tagged("post_install", "-at_install")
class TestReadOnly(LedgerCase):
    def setUp(self):
        super().setUp()
        self.write_ledger("ro-host", [make_event(i) for i in range(3)])
        self.Ledger._ingest_all()
        self.rows = self.Log.search([("ledger_host", "=", "ro-host")])

    def test_rows_ingested(self):
        self.assertEqual(len(self.rows), 4)  # ledger_opened + 3 calls
        first, last = self.rows.sorted("chain_seq")[0], self.rows.sorted("chain_seq")[-1]
        self.assertEqual(first.display_name, "#1 ledger_opened")
        self.assertEqual(last.display_name, "#4 sale → api.example.com")

    def test_create_refused_even_sudo(self):
        with self.assertRaises(AccessError):
            self.Log.sudo().create({"chain_seq": 99, "audit_ledger_id": self.rows[0].audit_ledger_id.id})

    def test_write_refused_even_sudo(self):
        with self.assertRaises(AccessError):
            self.rows.sudo().write({"host": "evil.example"})
        with self.assertRaises(AccessError):
            self.rows[0].sudo().host = "evil.example"

    def test_unlink_refused_even_sudo(self):
        with self.assertRaises(AccessError):
            self.rows.sudo().unlink()
        with self.assertRaises(AccessError):
            self.rows[0].with_context(mit_network_audit_vacuum=True).sudo().unlink()
        with self.assertRaises(AccessError):
            self.rows[0].sudo().copy()

    def test_no_access_rights_for_users(self):
        user = self.env["res.users"].create({
            "name": "Auditor", "login": "auditor_ro",
            "groups_id": [(6, 0, [self.env.ref("base.group_user").id,
                                  self.env.ref("mit_network_audit.group_user").id])]})
        rows = self.rows.with_user(user)
        self.assertTrue(rows.read(["host"]))
        for op in ("write", "create", "unlink"):
            self.assertFalse(self.Log.with_user(user).has_access(op))

    @mute_logger("odoo.sql_db")
    def test_raw_sql_refused(self):
        cr = self.env.cr
        for sql in ("UPDATE network_egress_log SET host = 'evil.example'",
                    "DELETE FROM network_egress_log",
                    "TRUNCATE network_egress_log CASCADE"):
            with self.subTest(sql=sql), self.assertRaises(psycopg2.Error), cr.savepoint():
                cr.execute(sql)
        cr.execute("SELECT count(*) FROM network_egress_log WHERE ledger_host = 'ro-host'")
        self.assertEqual(cr.fetchone()[0], 4)
