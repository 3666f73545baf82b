# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
import time

from odoo.tests import tagged
from odoo.tools import mute_logger

from ledger import Ledger

from .common import LedgerCase, make_event

HEAD_PARAM = "mit_network_audit.head."


@tagged("post_install", "-at_install")
class TestIngest(LedgerCase):
    def test_incremental_ingest(self):
        self.write_ledger("host-a", [make_event(i) for i in range(5)])
        self.assertEqual(list(self.Ledger._ingest_all().values()), [6])
        rec = self.Ledger.search([("host_id", "=", "host-a")])
        self.assertEqual((rec.last_seq, rec.ingest_state), (6, "ok"))
        self.assertEqual(list(self.Ledger._ingest_all().values()), [0])  # nothing new
        self.write_ledger("host-a", [make_event(i) for i in range(5, 8)])
        self.assertEqual(list(self.Ledger._ingest_all().values()), [3])
        rows = self.Log.search([("audit_ledger_id", "=", rec.id)], order="chain_seq")
        self.assertEqual(rows.mapped("chain_seq"), list(range(1, 10)))
        self.assertEqual(rows[0].method, "ledger_opened")
        self.assertEqual(rows[3].host, "api.example.com")
        self.assertEqual(rows[3].query_keys, "page")
        self.assertEqual(rows[3].module, "sale")
        for prev, row in zip(rows, rows[1:]):
            self.assertEqual(row.prev_hash, prev.row_hash)

    def test_several_hosts(self):
        self.write_ledger("host-a", [make_event(1)])
        self.write_ledger("host-b", [make_event(2, module="crm")])
        self.Ledger._ingest_all()
        self.assertEqual(sorted(self.Ledger.search([]).mapped("host_id")), ["host-a", "host-b"])
        self.assertEqual(self.Log.search_count([("module", "=", "crm")]), 1)

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_tampered_ledger_stops_at_bad_row(self):
        path, _head = self.write_ledger("host-t", [make_event(i) for i in range(9)])
        self.tamper(path, "UPDATE egress_log SET host = 'evil.example' WHERE chain_seq = 5")
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-t")])
        self.assertEqual(rec.ingest_state, "broken")
        self.assertEqual((rec.break_seq, rec.break_reason), (5, "hash_mismatch"))
        self.assertEqual(rec.last_seq, 4)
        self.assertEqual(self.Log.search_count([("audit_ledger_id", "=", rec.id)]), 4)
        self.assertFalse(self.Log.search_count([("host", "=", "evil.example")]))

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_deleted_row_is_a_gap(self):
        path, _head = self.write_ledger("host-g", [make_event(i) for i in range(6)])
        self.tamper(path, "DELETE FROM egress_log WHERE chain_seq = 3")
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-g")])
        self.assertEqual((rec.ingest_state, rec.break_seq, rec.break_reason),
                         ("broken", 3, "sequence_gap"))  # row 3 is the missing one

    def test_verify_chain_valid_then_tampered_in_postgres(self):
        self.write_ledger("host-v", [make_event(i) for i in range(6)], sign=True)
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-v")])
        self.assertEqual(rec.head_seq, 7)  # ledger_opened + 6 calls; head_signed row is 8
        [result] = rec._verify_pg()
        self.assertTrue(result["valid"], result)
        self.assertEqual((rec.verify_state, result["rows"]), ("valid", 8))
        # Someone with database superuser rights edits a row behind the trigger's back.
        cr = self.env.cr
        cr.execute("ALTER TABLE network_egress_log DISABLE TRIGGER network_egress_log_guard")
        cr.execute("UPDATE network_egress_log SET resp_bytes = 1 WHERE audit_ledger_id = %s "
                   "AND chain_seq = 3", [rec.id])
        cr.execute("ALTER TABLE network_egress_log ENABLE TRIGGER network_egress_log_guard")
        self.Log.invalidate_model()
        [result] = rec._verify_pg()
        self.assertFalse(result["valid"])
        self.assertEqual((result["seq"], result["reason"]), (3, "hash_mismatch"))
        self.assertEqual((rec.verify_state, rec.verify_seq), ("tampered", 3))

    def test_verify_chain_catches_deleted_tail(self):
        self.write_ledger("host-d", [make_event(i) for i in range(4)])
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-d")])
        cr = self.env.cr
        cr.execute("ALTER TABLE network_egress_log DISABLE TRIGGER network_egress_log_guard")
        cr.execute("DELETE FROM network_egress_log WHERE audit_ledger_id = %s AND chain_seq = 5",
                   [rec.id])
        cr.execute("ALTER TABLE network_egress_log ENABLE TRIGGER network_egress_log_guard")
        [result] = rec._verify_pg()
        self.assertEqual((result["valid"], result["seq"], result["reason"]), (False, 5, "truncation"))

    def test_verify_chain_button_names_tampered_row(self):
        self.write_ledger("host-n", [make_event(i) for i in range(3)])
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-n")])
        cr = self.env.cr
        cr.execute("ALTER TABLE network_egress_log DISABLE TRIGGER network_egress_log_guard")
        cr.execute("UPDATE network_egress_log SET host = 'x' WHERE audit_ledger_id = %s "
                   "AND chain_seq = 2", [rec.id])
        cr.execute("ALTER TABLE network_egress_log ENABLE TRIGGER network_egress_log_guard")
        action = self.Ledger.action_verify_all()
        self.assertEqual(action["params"]["type"], "danger")
        self.assertIn("host-n row 2", action["params"]["message"])

    def test_sign_head_stores_checkpoint_outside_the_ledger(self):
        text = self.Ledger.sign_own_head()
        rec = self.Ledger.search([("is_own", "=", True)])
        self.assertEqual(rec.head_checkpoint, text)
        self.assertEqual(
            self.env["ir.config_parameter"].sudo().get_param(HEAD_PARAM + rec.ledger_uuid), text)

    def _old_signed_ledger(self, host):
        """A ledger whose first rows are 400 days old, signed, pruned by its own host (365 days)."""
        old = time.time_ns() - 400 * 86400 * 10**9
        path, _head = self.write_ledger(host, [make_event(i, ts=old + i) for i in range(5)],
                                        sign=True, clock=lambda: old + 10)
        self.Ledger._ingest_all()
        with Ledger.open(path, key_dir=f"{self.folder}/keys/{host}") as led:
            result = led.vacuum(365)
        return self.Ledger.search([("host_id", "=", host)]), result

    def test_vacuum_never_at_or_after_signed_head(self):
        rec, result = self._old_signed_ledger("host-old")
        head = rec.head_seq
        self.assertEqual(result.pruned_through, head - 1)  # the ledger's own rule
        deleted = self.Ledger.run_vacuum(retention_days=365)
        self.assertEqual(deleted[rec.ledger_uuid], head - 1)
        seqs = self.Log.search([("audit_ledger_id", "=", rec.id)]).mapped("chain_seq")
        self.assertEqual(min(seqs), head)
        self.assertEqual(rec.start_seq, head - 1)
        self.assertIn("mit-network-audit/anchor/v1", rec.start_anchor)
        [result] = rec._verify_pg()  # the remaining chain still verifies from the signed anchor
        self.assertTrue(result["valid"], result)

    def test_vacuum_waits_for_the_ledgers_own_anchor(self):
        old = time.time_ns() - 400 * 86400 * 10**9
        self.write_ledger("host-unpruned", [make_event(i, ts=old + i) for i in range(5)],
                          sign=True, clock=lambda: old + 10)
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-unpruned")])
        self.assertEqual(self.Ledger.run_vacuum(retention_days=365)[rec.ledger_uuid], 0)

    def test_moved_prune_point_is_caught(self):
        rec, _result = self._old_signed_ledger("host-mv")
        self.Ledger.run_vacuum(retention_days=365)
        self.env.flush_all()
        # someone deletes one more row and moves the prune point onto it
        cr = self.env.cr
        cr.execute("SELECT row_hash FROM network_egress_log WHERE audit_ledger_id = %s "
                   "AND chain_seq = %s", [rec.id, rec.start_seq + 1])
        moved_hash = cr.fetchone()[0]
        cr.execute("ALTER TABLE network_egress_log DISABLE TRIGGER network_egress_log_guard")
        cr.execute("DELETE FROM network_egress_log WHERE audit_ledger_id = %s AND chain_seq = %s",
                   [rec.id, rec.start_seq + 1])
        cr.execute("ALTER TABLE network_egress_log ENABLE TRIGGER network_egress_log_guard")
        cr.execute("UPDATE network_audit_ledger SET start_seq = start_seq + 1, start_hash = %s "
                   "WHERE id = %s", [moved_hash, rec.id])
        self.env.invalidate_all()
        [result] = rec._verify_pg()
        self.assertFalse(result["valid"])
        self.assertEqual(result["reason"], "broken_link")
        # and without any anchor at all
        cr.execute("UPDATE network_audit_ledger SET start_anchor = NULL WHERE id = %s", [rec.id])
        self.env.invalidate_all()
        [result] = rec._verify_pg()
        self.assertEqual(result["reason"], "bad_signature")

    def test_crons_run(self):
        self.write_ledger("host-c", [make_event(1)])
        for xmlid in ("ir_cron_ingest", "ir_cron_sign_head", "ir_cron_verify", "ir_cron_vacuum",
                      "ir_cron_forensic_expire"):
            cron = self.env.ref(f"mit_network_audit.{xmlid}")
            cron.method_direct_trigger()
        rec = self.Ledger.search([("host_id", "=", "host-c")])
        self.assertTrue(rec.last_ingest)
        self.assertEqual(rec.verify_state, "valid")

    def test_awkward_text_survives_ingest_and_verifies(self):
        awkward = "/a\tb\\c\nd\re é ✓ \\N"
        self.write_ledger("host-x", [make_event(1, url_path=awkward, host="ünï.example")])
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-x")])
        row = self.Log.search([("audit_ledger_id", "=", rec.id), ("chain_seq", "=", 2)])
        self.assertEqual((row.url_path, row.host), (awkward, "ünï.example"))
        [result] = rec._verify_pg()
        self.assertTrue(result["valid"], result)

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_unreadable_file_does_not_stop_the_others(self):
        self.write_ledger("host-good", [make_event(1)])
        with open(f"{self.folder}/ledgers/half-shipped.sqlite", "wb") as fh:
            fh.write(b"SQLite format 3\0" + b"\x01" * 3000)
        with open(f"{self.folder}/ledgers/not-a-ledger.sqlite", "wb") as fh:
            fh.write(b"hello")
        self.assertEqual(list(self.Ledger._ingest_all().values()), [2])
        self.assertEqual(self.Ledger.search([]).mapped("host_id"), ["host-good"])

    def test_rewritten_chain_is_caught_by_the_signed_head(self):
        """Someone rewrites a row in PostgreSQL and recomputes every later hash: the links all
        hold, but the signed head (kept in ir.config_parameter too) names the old hash."""
        from verifier.format import COLUMNS, row_hash

        self.write_ledger("host-w", [make_event(i) for i in range(5)], sign=True)
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-w")])
        cr = self.env.cr
        cr.execute("ALTER TABLE network_egress_log DISABLE TRIGGER network_egress_log_guard")
        cr.execute("UPDATE network_egress_log SET host = 'elsewhere.example' "
                   "WHERE audit_ledger_id = %s AND chain_seq = 3", [rec.id])
        rows = list(rec._pg_rows())
        prev = rows[1][-1]
        for row in rows[2:]:
            digest = row_hash(rec.ledger_uuid, row[0], row[1:1 + len(COLUMNS)], prev)
            cr.execute("UPDATE network_egress_log SET prev_hash = %s, row_hash = %s "
                       "WHERE audit_ledger_id = %s AND chain_seq = %s",
                       [prev.hex(), digest.hex(), rec.id, row[0]])
            prev = digest
        cr.execute("UPDATE network_audit_ledger SET last_hash = %s WHERE id = %s", [prev.hex(), rec.id])
        cr.execute("ALTER TABLE network_egress_log ENABLE TRIGGER network_egress_log_guard")
        self.env.invalidate_all()
        [result] = rec._verify_pg()
        self.assertFalse(result["valid"])
        self.assertEqual((result["reason"], result["seq"]), ("head_mismatch", rec.head_seq))
        # erasing the copies of the head kept in PostgreSQL does not help: the file has it
        cr.execute("UPDATE network_audit_ledger SET head_checkpoint = NULL WHERE id = %s", [rec.id])
        cr.execute("DELETE FROM ir_config_parameter WHERE key = %s", [HEAD_PARAM + rec.ledger_uuid])
        self.env.invalidate_all()
        self.env.registry.clear_cache()  # get_param's cache
        self.assertFalse(self.env["ir.config_parameter"].sudo().get_param(HEAD_PARAM + rec.ledger_uuid))
        [result] = rec._verify_pg()
        self.assertEqual(result["reason"], "head_mismatch")

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_nul_character_stops_the_ingest_cleanly(self):
        self.write_ledger("host-nul", [make_event(1), make_event(2, url_path="/a\0b"), make_event(3)])
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("host_id", "=", "host-nul")])
        self.assertEqual((rec.ingest_state, rec.break_seq, rec.break_reason, rec.last_seq),
                         ("broken", 3, "unstorable_text", 2))
        [result] = rec._verify_pg()
        self.assertTrue(result["valid"], result)
