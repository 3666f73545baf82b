# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Shared fixtures: real ledgers written with the core ledger package in a temporary folder."""
import os
import shutil
import tempfile
import time

import apsw

from ledger import Ledger

from interceptor.event import NetEvent
from odoo.tests import TransactionCase


def make_event(i, module="sale", host="api.example.com", **kw):
    values = dict(ts=time.time_ns() - (1000 - i) * 10**6, duration_ms=1.5, direction="egress",
                  channel="http", protocol="https", method="GET", host=host,
                  url_path=f"/v1/items/{i}", query_keys=("page",), dst_ip="203.0.113.7",
                  dst_port=443, status="200", req_bytes=100 + i, resp_bytes=1000 + i,
                  header_names=("Accept",), module=module, author="Odoo S.A.",
                  call_site=f"odoo/addons/{module}/models/x.py:{i}:call", pid=os.getpid())
    values.update(kw)
    return NetEvent(**values)


class LedgerCase(TransactionCase):
    """A TransactionCase whose ingest reads a private folder of real ledger files."""

    def setUp(self):
        super().setUp()
        self.folder = tempfile.mkdtemp(prefix="netaudit-odoo-test-")
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.env["ir.config_parameter"].sudo().set_param(
            "mit_network_audit.ledger_folders", os.path.join(self.folder, "ledgers"))
        self.Ledger = self.env["network.audit.ledger"]
        self.Log = self.env["network.egress_log"]

    def write_ledger(self, host, events, sign=False, clock=time.time_ns):
        """A real ledger file for `host` in the ingest folder; returns (path, checkpoint text)."""
        path = os.path.join(self.folder, "ledgers", f"{host}.sqlite")
        with Ledger.open(path, key_dir=os.path.join(self.folder, "keys", host), host_id=host,
                         clock=clock) as led:
            led.append_many(events)
            head = led.sign_head() if sign else None
        return path, head

    @staticmethod
    def tamper(path, sql, *args):
        """What someone with write access to the file does: drop the guard, change a row."""
        con = apsw.Connection(path)
        con.execute("DROP TRIGGER IF EXISTS egress_log_no_update")
        con.execute("DROP TRIGGER IF EXISTS egress_log_delete_gate")
        con.execute(sql, args)
        con.close()
