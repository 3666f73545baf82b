# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""network.egress_log: the ledgers' rows in PostgreSQL, read-only, re-verifiable in place.

Rows arrive only through the ingest (network.audit.ledger), by bulk INSERT, and leave only
through the retention vacuum. The ORM refuses create/write/unlink everywhere else, sudo()
included; a PostgreSQL trigger refuses raw UPDATE, DELETE and TRUNCATE unless the vacuum set
its transaction-local flag.
"""
import contextlib
import contextvars

from odoo import api, fields, models
from odoo.exceptions import AccessError
from odoo.tools import sql

# Which privileged writer is running in this context (None, "ingest" or "vacuum"). A context
# variable, not an Odoo context key: an RPC caller can put any key in the context, but cannot
# set this.
_WRITER = contextvars.ContextVar("mit_network_audit_writer", default=None)

# The PostgreSQL setting the retention vacuum turns on, for its own transaction only.
VACUUM_SETTING = "mit_network_audit.vacuum"


@contextlib.contextmanager
def privileged_writer(kind):
    """Run the body as the ingest ("ingest") or the retention vacuum ("vacuum")."""
    token = _WRITER.set(kind)
    try:
        yield
    finally:
        _WRITER.reset(token)


class BigInteger(fields.Integer):
    """An int8 column: nanosecond timestamps and byte counts overflow Odoo's int4 Integer."""

    column_type = ("int8", "int8")


class NetworkEgressLog(models.Model):
    _name = "network.egress_log"
    _description = "Network Audit Event"
    _order = "event_time desc, id desc"
    _rec_name = "host"

    # ---- chain position ---------------------------------------------------------------------
    audit_ledger_id = fields.Many2one(
        "network.audit.ledger", string="Ledger", required=True, ondelete="restrict",
        readonly=True, help="The ledger (one per Odoo host and database) this row was ingested from.")
    ledger_host = fields.Char(
        string="Odoo host", readonly=True,
        help="The host whose interceptor wrote the ledger this row comes from.")
    chain_seq = BigInteger(
        string="Chain position", required=True, readonly=True,
        help="Position of the row in its ledger's hash chain: 1, 2, 3, ... without gaps.")
    prev_hash = fields.Char(
        string="Previous hash", readonly=True,
        help="Hex SHA-256 row_hash of the previous row (zeros for the first row).")
    row_hash = fields.Char(
        string="Row hash", readonly=True,
        help="Hex SHA-256 of the previous hash and this row's canonical encoding.")
    event_time = fields.Datetime(
        string="Time", index=True, readonly=True, help="Start of the call (UTC), from ts.")

    # ---- the NetEvent columns, same names and order as verifier.format.COLUMNS ------------------
    ts = BigInteger(string="Timestamp (ns)", readonly=True,
                    help="Start of the call, nanoseconds since the epoch, UTC, exactly as chained.")
    duration_ms = fields.Float(string="Duration (ms)", readonly=True, help="Wall time of the call.")
    direction = fields.Char(readonly=True, help="egress (outbound) or ingress (inbound).")
    channel = fields.Char(
        readonly=True,
        help="http, smtp, imap, pop3, ftp, socket, dns, or audit for the auditor's own facts.")
    protocol = fields.Char(readonly=True, help="https, http, smtp, smtps, tcp, udp, ...")
    method = fields.Char(readonly=True, help="GET, MAIL, connect, ...; for audit rows the fact name.")
    host = fields.Char(readonly=True, help="Host name as the caller asked for it.")
    url_path = fields.Char(
        string="Path", readonly=True,
        help="URL path without query; for audit rows the fact's detail (k=v;k=v).")
    query_keys = fields.Char(readonly=True, help="Query parameter names, never their values.")
    src_ip = fields.Char(string="Source IP", readonly=True, help="Local address of the socket.")
    src_port = fields.Integer(string="Source port", readonly=True, help="Local port of the socket.")
    dst_ip = fields.Char(string="Destination IP", readonly=True, help="Remote address of the socket.")
    dst_port = fields.Integer(string="Destination port", readonly=True, help="Remote port.")
    status = fields.Char(readonly=True, help="HTTP status, SMTP reply code, or empty.")
    error = fields.Char(readonly=True, help="Exception class name when the audited call failed.")
    req_bytes = BigInteger(string="Bytes out", readonly=True, help="Request bytes sent.")
    resp_bytes = BigInteger(string="Bytes in", readonly=True, help="Response bytes received.")
    header_names = fields.Char(readonly=True, help="Request header names, never their values.")
    fingerprint = fields.Char(
        readonly=True, help="Salted HMAC-SHA256 of the request payload, 128 bits, hex.")
    module = fields.Char(readonly=True,
                         help="Odoo module (or top-level package) that made the call.")
    author = fields.Char(readonly=True, help="That module's author, from its manifest.")
    call_site = fields.Char(readonly=True, help="path:line:function of the attributed frame.")
    pid = fields.Integer(string="PID", readonly=True, help="Process id of the Odoo worker.")
    self_egress = fields.Boolean(
        string="Self-egress", readonly=True,
        help="The auditor's own code made this call: always an alarm.")

    # Indexes are few on purpose (the ingest writes every one of them): this constraint's, the
    # time, and those of init() for the Trust Report's queries.
    _sql_constraints = [
        ("ledger_seq_unique", "unique(audit_ledger_id, chain_seq)",
         "A ledger row is ingested once."),
    ]

    @api.depends("module", "host", "channel", "method", "chain_seq")
    def _compute_display_name(self):
        for row in self:
            if row.channel == "audit":
                row.display_name = f"#{row.chain_seq} {row.method}"
            else:
                row.display_name = f"#{row.chain_seq} {row.module or '?'} → {row.host or row.dst_ip}"

    # ---- read-only, even under sudo --------------------------------------------------------------

    @api.model_create_multi
    def create(self, vals_list):
        if _WRITER.get() != "ingest":
            raise AccessError(self.env._("The egress log is written only by the ingest of a verified ledger."))
        return super().create(vals_list)

    # Evidence is never changed: no super() call, by design.
    def write(self, vals):  # pylint: disable=method-required-super
        raise AccessError(self.env._("Egress log rows are evidence: they cannot be changed."))

    @api.ondelete(at_uninstall=False)
    def _unlink_only_by_vacuum(self):
        if _WRITER.get() != "vacuum":
            raise AccessError(self.env._("Egress log rows are deleted only by the retention vacuum."))

    def unlink(self):
        if _WRITER.get() != "vacuum":
            return super().unlink()  # refused by _unlink_only_by_vacuum
        self.env.cr.execute("SELECT set_config(%s, 'on', true)", [VACUUM_SETTING])
        try:
            return super().unlink()
        finally:
            self.env.cr.execute("SELECT set_config(%s, 'off', true)", [VACUUM_SETTING])

    def copy(self, default=None):  # pylint: disable=method-required-super
        raise AccessError(self.env._("Egress log rows cannot be copied."))

    def _auto_init(self):
        # Schema upgrades may UPDATE existing rows (new columns with defaults): the guard is
        # dropped here and put back by init() in the same transaction.
        if sql.table_exists(self.env.cr, self._table):
            self.env.cr.execute(
                "DROP TRIGGER IF EXISTS network_egress_log_guard ON network_egress_log;"
                "DROP TRIGGER IF EXISTS network_egress_log_guard_truncate ON network_egress_log")
        return super()._auto_init()

    def init(self):
        cr = self.env.cr
        cr.execute("""
            CREATE OR REPLACE FUNCTION network_egress_log_guard() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE'
                   AND current_setting('mit_network_audit.vacuum', true) = 'on' THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'network_egress_log is append-only: % rejected', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$;
            DROP TRIGGER IF EXISTS network_egress_log_guard ON network_egress_log;
            DROP TRIGGER IF EXISTS network_egress_log_guard_truncate ON network_egress_log;
            CREATE TRIGGER network_egress_log_guard
                BEFORE UPDATE OR DELETE ON network_egress_log
                FOR EACH ROW EXECUTE FUNCTION network_egress_log_guard();
            CREATE TRIGGER network_egress_log_guard_truncate
                BEFORE TRUNCATE ON network_egress_log
                FOR EACH STATEMENT EXECUTE FUNCTION network_egress_log_guard();
            CREATE INDEX IF NOT EXISTS network_egress_log_module_time
                ON network_egress_log (module, event_time);
            CREATE INDEX IF NOT EXISTS network_egress_log_host_time
                ON network_egress_log (host, event_time);
            CREATE INDEX IF NOT EXISTS network_egress_log_self_egress
                ON network_egress_log (id) WHERE self_egress;
            CREATE INDEX IF NOT EXISTS network_egress_log_audit_facts
                ON network_egress_log (method, event_time) WHERE channel = 'audit';
        """)

    # ---- actions -----------------------------------------------------------------------------

    def action_verify_chain(self):
        """List header button: re-verify every host's chain (officers only)."""
        return self.env["network.audit.ledger"].action_verify_all()
