# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""The real interceptor inside the real Odoo process: post_load installed it, a stock module's
call lands in this database's ledger attributed to that module, and the auditor's own work
makes no call (an injected one raises the alarm)."""
import http.server
import os
import shutil
import socket
import socketserver
import tempfile
import threading
from unittest.mock import patch

import apsw
import interceptor
from ledger import Ledger

from odoo.tests import TransactionCase, tagged
from odoo.tools import config, mute_logger

from ..glue import hooks, paths
from ..glue.router import DatabaseRouter


class _Handler(http.server.BaseHTTPRequestHandler):
    """A stand-in for Odoo's publisher warranty server, on 127.0.0.1."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"{'messages': []}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.HTTPServer):
    server_bind = socketserver.TCPServer.server_bind  # no getfqdn(): no name lookup


@tagged("post_install", "-at_install")
class TestInterceptorInOdoo(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = _Server(("127.0.0.1", 0), _Handler)
        cls.port = cls.server.server_address[1]
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.server.server_close)
        cls.addClassCleanup(cls.server.shutdown)

    def setUp(self):
        super().setUp()
        # this database's own ledger, under Odoo's data_dir
        self.env["ir.config_parameter"].sudo().set_param("mit_network_audit.ledger_folders", "")
        self.Ledger = self.env["network.audit.ledger"]
        self.Log = self.env["network.egress_log"]

    def connect_as(self, dbname):
        """One TCP connect to the test server from a thread working for database `dbname`
        (whose ledger folder goes at cleanup)."""
        self.addCleanup(shutil.rmtree, paths.database_dir(dbname), ignore_errors=True)

        def call():
            threading.current_thread().dbname = dbname
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()

        worker = threading.Thread(target=call)
        worker.start()
        worker.join(10)

    def ingest_own(self):
        self.assertTrue(interceptor.flush(10), "the sink did not drain")
        self.Ledger._ingest_all()
        return self.Ledger.search([("is_own", "=", True)])

    def test_post_load_installed_the_interceptor(self):
        self.assertTrue(hooks.status()["installed"], hooks.status())
        self.assertTrue(interceptor.installed())
        self.assertIsInstance(interceptor.current_sink(), DatabaseRouter)

    def test_a_copy_of_the_interceptor_that_captures_nothing_is_not_reported_installed(self):
        """Under `netaudit run` with another interceptor version than Odoo's, the bootstrap's copy
        records the process and Odoo's copy stays uninstalled: post_load must say so, not report
        a router that will never receive a call (review 16, M3). Mock, said so: the other copy
        cannot be installed inside this test process, so install()/installed() answer as its
        presence makes them answer."""
        from ..glue import router

        saved = dict(hooks._STATE)
        previous = interceptor.current_sink()
        try:
            hooks._STATE.update(installed=False, router=None, error=None)
            with patch.object(interceptor, "install", return_value=False), \
                    patch.object(interceptor, "installed", return_value=False), \
                    patch.object(interceptor, "current_sink", return_value=None), \
                    patch.object(router, "_start_configured") as started, \
                    mute_logger("odoo.addons.mit_network_audit.glue.hooks"):
                hooks.post_load()
            status = hooks.status()
            self.assertFalse(status["installed"], status)
            self.assertIn("another copy of the interceptor", status["error"])
            started.assert_not_called()
        finally:
            hooks._STATE.clear()
            hooks._STATE.update(saved)
            interceptor.use_sink(previous)

    def test_stock_module_call_is_attributed_to_it(self):
        url = f"http://127.0.0.1:{self.port}/publisher-warranty/"
        with patch.dict(config.options, {"publisher_warranty_url": url}), \
                patch.dict(os.environ, {"NO_PROXY": "*", "no_proxy": "*"}):
            self.assertTrue(self.env["publisher_warranty.contract"].update_notification(cron_mode=False))
        own = self.ingest_own()
        row = self.Log.search([("audit_ledger_id", "=", own.id), ("module", "=", "mail"),
                               ("dst_port", "=", self.port)], limit=1)
        self.assertTrue(row, "mail's publisher warranty call was not recorded")
        self.assertEqual((row.channel, row.method, row.host, row.status),
                         ("http", "POST", "127.0.0.1", "200"))
        self.assertEqual(row.url_path, "/publisher-warranty/")
        # mail's manifest has no author key (Odoo defaults it to "Odoo S.A." when loading);
        # the interceptor reads the file literally.
        self.assertIn(row.author, ("", "Odoo S.A."))
        self.assertIn("mail.models.update", row.call_site)
        self.assertFalse(row.self_egress)
        self.assertGreater(row.req_bytes, 0)
        self.assertEqual(len(row.fingerprint), 32)  # salted HMAC, never the payload
        # the first write of this process to this database's ledger says who started capturing
        facts = self.Log.search([("audit_ledger_id", "=", own.id), ("method", "=", "interceptor_installed")])
        self.assertTrue(facts)
        self.assertIn(f"pid={os.getpid()}", facts[-1].url_path)
        self.assertLess(facts[-1].chain_seq, row.chain_seq)

    def test_a_helper_process_appends_unless_the_thread_writer_is_configured(self):
        from ledger.process_writer import ProcessWriter
        from ledger.sink import LedgerWriter

        from ..glue.router import WRITER_OPTION, ledger_sink

        other = "netaudit_writer_probe"  # a database of its own: this test's call is no alarm here
        self.connect_as(other)
        self.assertTrue(interceptor.flush(10))  # appended by the helper: readable now
        writer = interceptor.current_sink().sink_for(other).writer
        self.assertIsInstance(writer, ProcessWriter)
        self.assertEqual(writer.mode, "process", writer.fallback_reason)
        self.assertTrue(os.path.exists(f"/proc/{writer.helper_pid}"))
        with Ledger.open(paths.own_ledger_path(other), readonly=True) as led:
            rows = [r for r in led.rows() if r["channel"] == "socket"]
        self.assertEqual([(r["dst_port"], r["pid"]) for r in rows], [(self.port, os.getpid())])
        with patch.dict(config.options, {WRITER_OPTION: "thread"}):
            sink = ledger_sink("netaudit_writer_probe_thread")
        self.addCleanup(sink.close, 1)
        self.assertIsInstance(sink.writer, LedgerWriter)

    @mute_logger("odoo.addons.mit_network_audit.models.network_audit_ledger")
    def test_tampered_copy_of_the_real_ledger_stops_at_the_bad_row(self):
        url = f"http://127.0.0.1:{self.port}/publisher-warranty/"
        with patch.dict(config.options, {"publisher_warranty_url": url}), \
                patch.dict(os.environ, {"NO_PROXY": "*", "no_proxy": "*"}):
            self.env["publisher_warranty.contract"].update_notification(cron_mode=False)
        self.assertTrue(interceptor.flush(10))
        folder = tempfile.mkdtemp(prefix="netaudit-copy-")
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        copy = os.path.join(folder, "copy.sqlite")
        src = apsw.Connection(paths.own_ledger_path(self.env.cr.dbname), flags=apsw.SQLITE_OPEN_READONLY)
        dst = apsw.Connection(copy)
        with dst.backup("main", src, "main") as backup:
            backup.step()
        src.close()
        bad = dst.execute("SELECT max(chain_seq) FROM egress_log WHERE module = 'mail'").fetchall()[0][0]
        dst.execute("DROP TRIGGER egress_log_no_update")
        dst.execute("UPDATE egress_log SET host = 'elsewhere.example' WHERE chain_seq = ?", (bad,))
        dst.close()
        self.env["ir.config_parameter"].sudo().set_param("mit_network_audit.ledger_folders", folder)
        self.Ledger._ingest_all()
        rec = self.Ledger.search([("path", "=", copy)])
        self.assertEqual((rec.ingest_state, rec.break_seq, rec.break_reason),
                         ("broken", bad, "hash_mismatch"))
        self.assertEqual(rec.last_seq, bad - 1)

    def test_calls_go_to_the_ledger_of_their_database(self):
        """One Odoo process, several databases: the thread's dbname picks the ledger."""
        other = "netaudit_routing_probe"
        self.connect_as(other)
        self.assertTrue(interceptor.flush(10))
        with Ledger.open(paths.own_ledger_path(other), readonly=True) as led:
            rows = [r for r in led.rows() if r["channel"] == "socket"]
        self.assertEqual([(r["method"], r["dst_port"]) for r in rows], [("connect", self.port)])
        own = self.ingest_own()
        self.assertFalse(self.Log.search_count([("audit_ledger_id", "=", own.id),
                                                ("channel", "=", "socket"), ("dst_port", "=", self.port)]))

    def test_zero_self_egress_then_injected_alarm(self):
        # Everything the addon does: ingest, sign, verify, vacuum, report.
        self.ingest_own()
        self.Ledger.sign_own_head()
        self.Ledger.action_verify_all()
        self.Ledger.run_vacuum()
        self.env["network.audit.report"].action_open_report()
        own = self.ingest_own()
        ours = self.Log.search([("audit_ledger_id", "=", own.id), ("channel", "!=", "audit"),
                                "|", ("module", "=", "mit_network_audit"), ("self_egress", "=", True)])
        self.assertFalse(ours, "the auditor made network calls: %s" % ours.mapped("call_site"))
        report = self.env["network.audit.report"].browse(
            self.env["network.audit.report"].action_open_report()["res_id"])
        self.assertEqual(report.self_egress_count, 0)

        # An injected call from the auditor's own code is caught and escalates to Alarm.
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        own = self.ingest_own()
        row = self.Log.search([("audit_ledger_id", "=", own.id), ("self_egress", "=", True)])
        self.assertEqual(len(row), 1)
        self.assertEqual((row.module, row.channel), ("mit_network_audit", "socket"))
        report = self.env["network.audit.report"].browse(
            self.env["network.audit.report"].action_open_report()["res_id"])
        self.assertEqual(report.self_egress_count, 1)
        self.assertEqual(report.verdict, "alarm")
