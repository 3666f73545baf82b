# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Forensic capture end to end in the real Odoo process: with forensic mode on, a stock module's
outbound call (mail's publisher warranty notification, pointed at a 127.0.0.1 server) yields
stored, encrypted request and response bodies that an Audit Officer can read and an Audit User
cannot; with it off, nothing is handed out or stored, and the bodies never reach the ledger."""
import datetime
import http.server
import os
import socketserver
import threading
import uuid
from unittest.mock import patch

import interceptor
from interceptor import forensic as tap

from odoo import fields
from odoo.exceptions import AccessError
from odoo.tests import TransactionCase, new_test_user, tagged
from odoo.tools import config

from ..glue import forensic, paths


class _Handler(http.server.BaseHTTPRequestHandler):
    """A stand-in for the publisher warranty server; its answer carries a canary."""

    canary = b""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"{'messages': [], 'note': '" + type(self).canary + b"'}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.HTTPServer):
    server_bind = socketserver.TCPServer.server_bind  # no getfqdn(): no name lookup


@tagged("post_install", "-at_install")
class TestForensicCapture(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.canary = f"CANARYFORENSIC{uuid.uuid4().hex[:12]}"
        handler = type("Handler", (_Handler,), {"canary": cls.canary.encode()})
        cls.server = _Server(("127.0.0.1", 0), handler)
        cls.port = cls.server.server_address[1]
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.addClassCleanup(cls.server.server_close)
        cls.addClassCleanup(cls.server.shutdown)

    def setUp(self):
        super().setUp()
        # The tap stores through a fresh cursor, as in production; in test mode that cursor
        # shares this test's transaction, so the stored rows are visible here and rolled back.
        self.registry.enter_test_mode(self.cr)
        self.addCleanup(self.registry.leave_test_mode)
        self.addCleanup(forensic.reset)
        self.addCleanup(self.registry.clear_cache)
        self.Session = self.env["network.audit.forensic.session"]
        self.Body = self.env["network.audit.forensic.body"]
        self.user = new_test_user(self.env, "fx_user", groups="base.group_user,mit_network_audit.group_user")
        self.officer = new_test_user(self.env, "fx_officer",
                                     groups="base.group_user,mit_network_audit.group_officer")
        forensic.reset()
        self.registry.clear_cache()

    def call_publisher(self):
        url = f"http://127.0.0.1:{self.port}/publisher-warranty/"
        self.env.flush_all()
        with patch.dict(config.options, {"publisher_warranty_url": url}), \
                patch.dict(os.environ, {"NO_PROXY": "*", "no_proxy": "*"}):
            self.assertTrue(self.env["publisher_warranty.contract"].update_notification(cron_mode=False))
        self.env.invalidate_all()

    def ledger_bytes(self):
        self.assertTrue(interceptor.flush(10), "the sink did not drain")
        data = b""
        path = paths.own_ledger_path(self.env.cr.dbname)
        for p in (path, path + "-wal"):
            if os.path.exists(p):
                with open(p, "rb") as f:
                    data += f.read()
        return data

    def test_off_nothing_captured(self):
        self.assertFalse(forensic.refresh(self.env))
        self.assertIsNone(tap.body_tap())
        self.call_publisher()
        self.assertFalse(self.Body.sudo().search([]))
        self.assertNotIn(self.canary.encode(), self.ledger_bytes())

    def test_on_bodies_stored_encrypted_officer_only(self):
        session = self.Session.with_user(self.officer).create({
            "reason": "incident 42",
            "expires_at": fields.Datetime.now() + datetime.timedelta(hours=1)})
        # turning it on set the tap in this worker at once; another worker's next request or
        # cron job does the same through refresh() (ir.http._pre_dispatch, ir.cron._callback)
        self.assertIs(tap.body_tap(), forensic.body_tap)
        self.assertTrue(forensic.refresh(self.env))
        self.call_publisher()
        bodies = self.Body.sudo().search([("session_id", "=", session.id)])
        by_direction = {b.direction: b for b in bodies}
        self.assertEqual(set(by_direction), {"request", "response"}, forensic.STATS)
        request, response = by_direction["request"], by_direction["response"]
        self.assertEqual((request.module, request.host), ("mail", "127.0.0.1"))
        self.assertNotIn(self.canary.encode(), response.ciphertext)
        self.assertIn(self.canary.encode(), response.with_user(self.officer).plaintext())
        self.assertIn(b"arg0=", request.with_user(self.officer).plaintext())
        self.assertEqual(response.size, len(response.with_user(self.officer).plaintext()))
        with self.assertRaises(AccessError):
            response.with_user(self.user).plaintext()
        with self.assertRaises(AccessError):
            response.with_user(self.user).read(["ciphertext"])
        # bodies never reach the ledger
        self.assertNotIn(self.canary.encode(), self.ledger_bytes())

        # turned off: the tap goes, nothing more is stored, the session's bodies are deleted
        session.with_user(self.officer).action_turn_off()
        self.assertIsNone(tap.body_tap())
        self.call_publisher()
        self.assertFalse(self.Body.sudo().search([]))

    def test_expiry_clears_the_tap(self):
        session = self.Session.with_user(self.officer).create({
            "reason": "x", "expires_at": fields.Datetime.now() + datetime.timedelta(hours=1)})
        self.assertIsNotNone(tap.body_tap())
        now = fields.Datetime.now()
        session.sudo().write({"started_at": now - datetime.timedelta(hours=2),
                              "expires_at": now - datetime.timedelta(seconds=1)})
        self.registry.clear_cache()
        # an expired session stores nothing even before any refresh ...
        self.call_publisher()
        self.assertFalse(self.Body.sudo().search([]))
        # ... and the next request or cron job clears the tap
        self.assertFalse(forensic.refresh(self.env))
        self.assertIsNone(tap.body_tap())

    def test_another_worker_notices_at_its_next_cron_job(self):
        self.Session.with_user(self.officer).create({
            "reason": "x", "expires_at": fields.Datetime.now() + datetime.timedelta(hours=1)})
        forensic.reset()  # what a worker that has not yet heard of the session looks like
        self.assertIsNone(tap.body_tap())
        cron = self.env.ref("mit_network_audit.ir_cron_forensic_expire")
        cron._callback(cron.cron_name, cron.ir_actions_server_id.id)
        self.assertIs(tap.body_tap(), forensic.body_tap)
