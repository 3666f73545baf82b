# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Ingest throughput: a 100,000-row ledger into PostgreSQL, against the ORM's plain create()
one row at a time. Not part of the default run (tag -standard); run it with
    ODOO_TEST_TAGS=netaudit_bench/mit_network_audit tools/test_odoo.sh ODOO_SRC
"""
import logging
import os
import time

from odoo.tests import tagged

from ..models.network_egress_log import privileged_writer
from .common import LedgerCase, make_event

_logger = logging.getLogger(__name__)

ROWS = int(os.environ.get("NETAUDIT_BENCH_ROWS", "100000"))
ORM_ROWS = int(os.environ.get("NETAUDIT_BENCH_ORM_ROWS", "5000"))
TARGET = 10_000  # rows per second


@tagged("-standard", "-at_install", "post_install", "netaudit_bench")
class TestIngestBenchmark(LedgerCase):
    def test_ingest_rows_per_second(self):
        t0 = time.perf_counter()
        self.write_ledger("bench", (make_event(i) for i in range(ROWS - 1)))
        written = time.perf_counter() - t0

        t0 = time.perf_counter()
        added = sum(self.Ledger._ingest_all().values())
        self.env.flush_all()
        ingest = time.perf_counter() - t0
        self.assertEqual(added, ROWS)
        ingest_rate = added / ingest

        ledger = self.Ledger.search([("host_id", "=", "bench")])
        t0 = time.perf_counter()
        [verdict] = ledger._verify_pg()
        verify = time.perf_counter() - t0
        self.assertTrue(verdict["valid"], verdict)

        rows = self.Log.search([("audit_ledger_id", "=", ledger.id)], limit=ORM_ROWS, order="chain_seq")
        fields_ = [f for f in rows._fields if f not in
                   ("id", "display_name", "create_uid", "create_date", "write_uid", "write_date")]
        values = [{f: r[f] if not hasattr(r[f], "id") else r[f].id for f in fields_} for r in rows]
        other = self.Ledger.sudo().create({"ledger_uuid": "bench-orm", "host_id": "bench-orm",
                                           "public_key": "-"})
        t0 = time.perf_counter()
        with privileged_writer("ingest"):
            for vals in values:
                vals["audit_ledger_id"] = other.id
                self.Log.sudo().create(vals)
        self.env.flush_all()
        orm = time.perf_counter() - t0
        orm_rate = len(values) / orm

        _logger.info(
            "benchmark: ledger of %d rows written in %.2fs; ingest %.2fs = %d rows/s; "
            "Verify chain %.2fs = %d rows/s; ORM create() one by one: %d rows in %.2fs = %d rows/s "
            "(ingest is %.0fx faster)",
            ROWS, written, ingest, ingest_rate, verify, ROWS / verify, len(values), orm, orm_rate,
            ingest_rate / orm_rate)
        self.assertGreaterEqual(ingest_rate, TARGET)
