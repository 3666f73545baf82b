# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""network.audit.ledger: one row per ledger file (per Odoo host), with its ingest cursor.

The crons live here: ingest (incremental, each new row checked to link to the last one
ingested, stopping at the first break), head signing, retention vacuum. Verify chain re-checks
the rows stored in PostgreSQL with the core verifier's ChainChecker: the addon holds no hashing
logic of its own.
"""
import datetime
import io
import logging
import os
import time
from contextlib import closing

import psycopg2

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError
from odoo.tools import mute_logger

from ..glue import paths
from .network_egress_log import VACUUM_SETTING, BigInteger, privileged_writer

_logger = logging.getLogger(__name__)

try:
    import apsw

    from ledger import Ledger, LedgerError
    from verifier.format import (
        ANCHOR_ORIGIN,
        COLUMNS,
        COLUMN_NAMES,
        GENESIS_HASH,
        INT,
        REAL,
        Checkpoint,
        FormatError,
        check_signature,
        public_key_from_text,
    )
    from verifier.verify import ChainChecker, Failure, check_heads
except ImportError:  # declared in external_dependencies: Odoo refuses to install without them
    _logger.debug("mit-network-audit core packages are not installed")

BATCH = 5000
HEAD_PARAM = "mit_network_audit.head."  # + ledger uuid: the newest signed head, outside the ledger
NS = 10**9


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value):
    """A text value in PostgreSQL's COPY text format."""
    return value.translate(_COPY_ESCAPES)


def _copy_ts(ns):
    """Nanoseconds since the epoch as a UTC timestamp literal (microsecond precision)."""
    seconds, ns_rest = divmod(ns, NS)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ns_rest // 1000:06d}"


def _ns_to_datetime(ns):
    return datetime.datetime.fromtimestamp(ns / NS, datetime.UTC).replace(tzinfo=None) if ns else False


class NetworkAuditLedger(models.Model):
    _name = "network.audit.ledger"
    _description = "Network Audit Ledger (one per Odoo host)"
    _order = "host_id, id"
    _rec_name = "host_id"

    ledger_uuid = fields.Char(
        string="Ledger id", required=True, readonly=True, index=True,
        help="The ledger's uuid, from its meta table; part of every row hash.")
    host_id = fields.Char(string="Odoo host", readonly=True, help="Host id from the ledger's meta.")
    path = fields.Char(string="File", readonly=True, help="Where the ledger file was last read.")
    public_key = fields.Char(
        readonly=True,
        help="Ed25519 public key from the ledger's meta, pinned at first ingest: a later change "
        "of key is reported as foreign_key.")
    key_id = fields.Char(string="Key id", readonly=True, help="First 8 bytes of SHA-256 of the key.")
    is_own = fields.Boolean(
        string="This host", readonly=True,
        help="Written by this Odoo host for this database (the only ledgers it can sign).")

    # ingest cursor
    last_seq = BigInteger(string="Last row ingested", readonly=True,
                          help="chain_seq of the last row ingested into PostgreSQL.")
    last_hash = fields.Char(string="Last hash ingested", readonly=True,
                            help="row_hash (hex) of the last row ingested.")
    start_seq = BigInteger(
        string="Chain starts after", readonly=True,
        help="Rows up to here were pruned (signed prune anchor, or the PostgreSQL vacuum).")
    start_hash = fields.Char(readonly=True, help="row_hash (hex) of the row the chain resumes after.")
    start_anchor = fields.Text(
        readonly=True,
        help="The signed prune anchor (checkpoint text) naming the row the chain resumes after: "
        "Verify chain checks its signature, so the prune point cannot be moved unnoticed.")
    last_ingest = fields.Datetime(readonly=True, help="When the ingest last read this ledger.")
    ingest_state = fields.Selection(
        [("ok", "Linked"), ("broken", "Broken"), ("missing", "File missing")],
        default="ok", required=True, readonly=True,
        help="Broken: the ingest found a row that does not link to the last one ingested and "
        "stopped there.")
    break_seq = BigInteger(string="Broken at row", readonly=True,
                           help="First row the ingest refused.")
    break_reason = fields.Char(readonly=True, help="Why (hash_mismatch, broken_link, ...).")

    # Verify chain over the PostgreSQL rows
    verify_state = fields.Selection(
        [("unverified", "Not verified"), ("valid", "Verified"), ("tampered", "Tampered")],
        default="unverified", required=True, readonly=True,
        help="Result of the last Verify chain over this ledger's rows in PostgreSQL.")
    verified_at = fields.Datetime(readonly=True, help="When Verify chain last ran.")
    verify_seq = BigInteger(string="First bad row", readonly=True,
                            help="First tampered row found by Verify chain.")
    verify_reason = fields.Char(readonly=True, help="Reason of the verdict (hash_mismatch, ...).")
    verify_message = fields.Char(readonly=True, help="The verifier's message.")

    # signed head
    head_seq = BigInteger(string="Signed head", readonly=True, help="Row of the newest signed head.")
    head_signed_at = fields.Datetime(readonly=True, help="When the newest head was signed.")
    head_checkpoint = fields.Text(readonly=True, help="The newest signed head, as checkpoint text.")

    egress_count = fields.Integer(
        string="Rows", compute="_compute_egress_count",
        help="Rows of this ledger currently in PostgreSQL.")

    _sql_constraints = [
        ("ledger_uuid_unique", "unique(ledger_uuid)", "One record per ledger."),
    ]

    def _compute_egress_count(self):
        counts = dict(self.env["network.egress_log"]._read_group(
            [("audit_ledger_id", "in", self.ids)], ["audit_ledger_id"], ["__count"]))
        for rec in self:
            rec.egress_count = counts.get(rec, 0)

    # ---- helpers -----------------------------------------------------------------------------

    @api.model
    def _check_officer(self):
        if not (self.env.su or self.env.user.has_group("mit_network_audit.group_officer")):
            raise AccessError(self.env._("Only an Audit Officer can do this."))

    @api.model
    def _folders(self):
        text = self.env["ir.config_parameter"].sudo().get_param("mit_network_audit.ledger_folders")
        return paths.parse_folders(text, self.env.cr.dbname)

    @api.model
    def _open_own(self):
        """This host's ledger for this database, as a writer (creates it and its keys)."""
        db = self.env.cr.dbname
        return Ledger.open(paths.own_ledger_path(db), key_dir=paths.key_dir(db),
                           host_id=paths.host_id())

    @api.model
    def _append_fact(self, fact, **detail):
        """Record an admin fact (forensic_on, pg_vacuum, ...) as a chain row of this host."""
        with closing(self._open_own()) as led:
            return led.append_audit(fact, **detail)

    def _record_for(self, led, path):
        rec = self.sudo().search([("ledger_uuid", "=", led.ledger_id)], limit=1)
        own = path == paths.own_ledger_path(self.env.cr.dbname)
        if not rec:
            rec = self.sudo().create({
                "ledger_uuid": led.ledger_id, "host_id": led.meta.get("host_id", ""),
                "public_key": led.meta["public_key"], "key_id": led.meta.get("key_id", ""),
                "path": path, "is_own": own})
        elif rec.path != path or rec.is_own != own:
            rec.write({"path": path, "is_own": own})
        return rec

    def _break(self, seq, reason, message):
        self.ensure_one()
        _logger.warning("ledger %s (%s): ingest stopped at row %s: %s",
                        self.host_id, self.ledger_uuid, seq, message)
        self.write({"ingest_state": "broken", "break_seq": seq, "break_reason": reason})

    # ---- ingest --------------------------------------------------------------------------------

    @api.model
    def _cron_ingest(self):
        self._ingest_all()

    @api.model
    def _ingest_all(self):
        """Ingest every ledger file in the configured folders. Returns {ledger uuid: rows added}."""
        done = {}
        seen = set()
        for path in paths.ledger_files(self._folders()):
            try:
                led = Ledger.open(path, readonly=True)
            except LedgerError as exc:
                _logger.warning("ledger %s: not ingested: %s", path, exc)
                continue
            with closing(led):
                try:
                    # one ledger's failure (a file shipped half-way, a corrupt page) leaves the
                    # others' ingest, and this one's cursor, as they were
                    with self.env.cr.savepoint():
                        rec = self._record_for(led, path)
                        seen.add(rec.id)
                        done[led.ledger_id] = rec._ingest(led)
                except (apsw.Error, LedgerError, FormatError, psycopg2.Error) as exc:
                    self.env.invalidate_all()
                    _logger.warning("ledger %s: ingest failed: %s: %s", path, type(exc).__name__, exc)
        missing = self.sudo().search([("id", "not in", list(seen)), ("ingest_state", "=", "ok")])
        missing.write({"ingest_state": "missing"})
        return done

    def _ingest(self, led):
        """Append the ledger's new rows to PostgreSQL, each checked to link to the previous one."""
        self.ensure_one()
        rec = self.sudo()
        if not rec._lock_cursor():
            _logger.info("ledger %s: another ingest is running, skipped", rec.host_id)
            return 0
        if rec.public_key != led.meta["public_key"]:
            rec._break(rec.last_seq + 1, "foreign_key",
                       "the ledger's public key is not the one pinned at first ingest")
            return 0
        if not rec.last_seq:
            rec._start_from_anchor(led)
        checker = ChainChecker(rec.ledger_uuid, rec.last_seq or rec.start_seq,
                               bytes.fromhex(rec.last_hash or rec.start_hash or GENESIS_HASH.hex()))
        added, failure = 0, None
        while True:
            rows = [tuple(r.values()) for r in led.rows(after_seq=checker.last_seq, limit=BATCH)]
            if not rows:
                break
            failure = checker.feed_many(rows)
            good = [r for r in rows if r[0] <= checker.last_seq]
            lines = rec._copy_lines(good)
            bad = next((i for i, line in enumerate(lines) if "\0" in line), None)
            if bad is not None:  # PostgreSQL text cannot hold NUL: stop before that row
                seq = good[bad][0]
                good, lines = good[:bad], lines[:bad]
                failure = Failure(seq, "unstorable_text",
                                  f"row {seq} holds a NUL character PostgreSQL cannot store")
            if good:
                rec._insert_lines(lines)
                added += len(good)
                rec.write({"last_seq": good[-1][0], "last_hash": good[-1][-1].hex()})
            if failure:
                rec._break(failure.seq, failure.reason, failure.message)
                break
        vals = {"last_ingest": fields.Datetime.now()}
        if not failure:
            vals.update(ingest_state="ok", break_seq=0, break_reason=False)
        rec.write(vals)
        rec._pull_head(led)
        return added

    def _lock_cursor(self):
        """Take this ledger's cursor row for the transaction; False when another ingest has it."""
        self.env.flush_all()
        try:
            with mute_logger("odoo.sql_db"), self.env.cr.savepoint():
                self.env.cr.execute(
                    "SELECT id FROM network_audit_ledger WHERE id = %s FOR UPDATE NOWAIT", [self.id])
        except (psycopg2.errors.LockNotAvailable, psycopg2.errors.SerializationFailure):
            return False
        self.invalidate_recordset()  # the cursor as the previous ingest committed it
        return True

    def _start_from_anchor(self, led):
        """A ledger already pruned before its first ingest resumes at its newest prune anchor."""
        cp = led.prune_anchor()
        if cp is None:
            return
        if not check_signature(cp, public_key_from_text(self.public_key)):
            self._break(cp.seq + 1, "bad_signature", "the prune anchor does not verify")
            return
        self.write({"start_seq": cp.seq, "start_hash": cp.row_hash.hex(),
                    "start_anchor": cp.to_text()})

    def _pull_head(self, led):
        """Keep the ledger's newest signed head (already signature-checked) on the record."""
        cp = led.head()
        if cp is None or cp.seq == self.head_seq:
            return
        if check_signature(cp, public_key_from_text(self.public_key)):
            self._store_head(cp)

    def _store_head(self, cp):
        self.write({"head_seq": cp.seq, "head_signed_at": _ns_to_datetime(cp.signed_at),
                    "head_checkpoint": cp.to_text()})
        self.env["ir.config_parameter"].sudo().set_param(HEAD_PARAM + self.ledger_uuid, cp.to_text())

    def _copy_lines(self, rows):
        """Ledger rows (chain_seq, *COLUMNS, prev_hash, row_hash) as lines of COPY text."""
        now = _copy_ts(time.time_ns())
        head = f"{self.id}\t{_copy_text(self.host_id or '')}\t1\t1\t{now}\t{now}\t"
        tabs = len(COLUMN_NAMES)  # separators between chain_seq and the columns
        lines = []
        for row in rows:
            values = row[:-2]
            body = "\t".join(map(str, values))
            # the common case: no value holds a tab, newline or backslash, nothing to escape
            if body.count("\t") != tabs or "\\" in body or "\n" in body or "\r" in body:
                body = "\t".join(_copy_text(v) if type(v) is str else str(v) for v in values)
            lines.append(f"{head}{_copy_ts(row[1])}\t{row[-2].hex()}\t{row[-1].hex()}\t{body}\n")
        return lines

    def _insert_lines(self, lines):
        """Bulk insert with COPY."""
        self.env.flush_all()
        columns = ", ".join(("audit_ledger_id", "ledger_host", "create_uid", "write_uid",
                             "create_date", "write_date", "event_time", "prev_hash", "row_hash",
                             "chain_seq", *COLUMN_NAMES))
        # self_egress is 0/1 in the ledger; PostgreSQL's boolean input accepts both.
        self.env.cr._obj.copy_expert(f"COPY network_egress_log ({columns}) FROM STDIN",
                                     io.StringIO("".join(lines)))
        self.env["network.egress_log"].invalidate_model()

    # ---- Verify chain --------------------------------------------------------------------------

    def action_verify_chain(self):
        self._check_officer()
        results = self.sudo()._verify_pg()
        return self._notify(results)

    @api.model
    def _cron_verify(self):
        """Daily: the Trust Report's Chain chip is never older than a day."""
        self._ingest_all()
        self.search([])._verify_pg()  # pylint: disable=no-search-all

    @api.model
    def action_verify_all(self):
        self._check_officer()
        self.sudo()._ingest_all()
        # every ledger: there is one per Odoo host, a handful
        results = self.sudo().search([])._verify_pg()  # pylint: disable=no-search-all
        return self._notify(results)

    @api.model
    def _notify(self, results):
        bad = [r for r in results if not r["valid"]]
        if not results:
            message, kind = self.env._("No ledger ingested yet: nothing to verify."), "warning"
        elif bad:
            parts = []
            for r in bad:
                parts.append(self.env._("host %(host)s row %(seq)s: %(reason)s",
                                        host=r["host"], seq=r["seq"], reason=r["message"]))
            message, kind = "; ".join(parts), "danger"
        else:
            message = self.env._("Chain verified: %(n)s ledger(s), %(rows)s rows.",
                        n=len(results), rows=sum(r["rows"] for r in results))
            kind = "success"
        return {"type": "ir.actions.client", "tag": "display_notification",
                "params": {"title": self.env._("Verify chain"), "message": message, "type": kind,
                           "sticky": bool(bad), "next": {"type": "ir.actions.act_window_close"}}}

    def _pg_rows(self):
        """This ledger's rows in PostgreSQL, in chain order, as ChainChecker tuples."""
        cols = ", ".join(
            "self_egress::int" if n == "self_egress"
            else (f"coalesce({n}, '')" if kind not in (INT, REAL) else f"coalesce({n}, 0)")
            for n, kind in COLUMNS)
        last = -1
        while True:
            self.env.cr.execute(f"""
                SELECT chain_seq, {cols}, prev_hash, row_hash FROM network_egress_log
                WHERE audit_ledger_id = %s AND chain_seq > %s ORDER BY chain_seq LIMIT %s
            """, [self.id, last, 20000])
            batch = self.env.cr.fetchall()
            if not batch:
                return
            for row in batch:
                yield (row[0], *row[1:2], float(row[2]), *row[3:-2],
                       bytes.fromhex(row[-2] or ""), bytes.fromhex(row[-1] or ""))
            last = batch[-1][0]

    def _known_heads(self):
        """Every signed head we can find for this ledger: on the record, in
        ir.config_parameter, and the newest one in the ledger file itself when it is at hand
        (so erasing the copies kept in PostgreSQL does not silence the check)."""
        self.ensure_one()
        texts = {self.head_checkpoint,
                 self.env["ir.config_parameter"].sudo().get_param(HEAD_PARAM + self.ledger_uuid)}
        heads = []
        for text in filter(None, texts):
            try:
                heads.append(Checkpoint.from_text(text))
            except FormatError as exc:
                _logger.warning("ledger %s: a stored head is unreadable: %s", self.host_id, exc)
        if self.path and os.path.isfile(self.path):
            try:
                with closing(Ledger.open(self.path, readonly=True)) as led:
                    head = led.head() if led.ledger_id == self.ledger_uuid else None
            except (apsw.Error, LedgerError) as exc:
                _logger.warning("ledger %s: file unreadable for its heads: %s", self.host_id, exc)
                head = None
            if head is not None:
                heads.append(head)
        return heads

    def _check_start(self):
        """Where the chain resumes after pruning must be a signed prune anchor naming that row."""
        if not self.start_seq:
            return None
        try:
            cp = Checkpoint.from_text(self.start_anchor or "")
        except FormatError:
            cp = None
        if (cp is None or cp.origin != ANCHOR_ORIGIN or cp.ledger_id != self.ledger_uuid
                or not check_signature(cp, public_key_from_text(self.public_key))):
            return Failure(self.start_seq + 1, "bad_signature",
                           self.env._("the prune point (row %s) has no valid signed prune anchor",
                                      self.start_seq))
        if cp.seq != self.start_seq or cp.row_hash.hex() != self.start_hash:
            return Failure(self.start_seq + 1, "broken_link",
                           self.env._("the prune point (row %(seq)s) is not the one its signed "
                                      "anchor names (row %(anchor)s)", seq=self.start_seq,
                                      anchor=cp.seq))
        return None

    def _verify_pg(self):
        """Re-verify each ledger's PostgreSQL rows and its signed head; store and return verdicts."""
        self.env.flush_all()
        results = []
        for rec in self:
            start_hash = bytes.fromhex(rec.start_hash or GENESIS_HASH.hex())
            heads = rec._known_heads()
            # Heads beyond the last row ingested are checked by the next ingest, not here.
            heads = [h for h in heads if rec.start_seq < h.seq <= rec.last_seq]
            checker = ChainChecker(rec.ledger_uuid, rec.start_seq, start_hash,
                                   want={h.seq for h in heads})
            failure = rec._check_start() or checker.feed_many(rec._pg_rows())
            if not failure and checker.last_seq != rec.last_seq:
                failure = Failure(checker.last_seq + 1, "truncation", self.env._(
                    "rows %(a)s..%(b)s were ingested but are gone from PostgreSQL",
                    a=checker.last_seq + 1, b=rec.last_seq))
            if not failure and heads:
                failure, _newest = check_heads(
                    heads, public_key_from_text(rec.public_key), checker, rec.start_seq,
                    start_hash, {(h.seq, h.row_hash) for h in heads})
            vals = {"verified_at": fields.Datetime.now()}
            if failure:
                vals.update(verify_state="tampered", verify_seq=failure.seq,
                            verify_reason=failure.reason, verify_message=failure.message)
            else:
                vals.update(verify_state="valid", verify_seq=0, verify_reason=False,
                            verify_message=self.env._("%s rows verified", checker.rows))
            rec.write(vals)
            results.append({"host": rec.host_id, "ledger": rec.ledger_uuid, "valid": not failure,
                            "rows": checker.rows, "seq": failure and failure.seq,
                            "reason": failure and failure.reason,
                            "message": failure and failure.message})
        return results

    # ---- signed heads ----------------------------------------------------------------------------

    @api.model
    def _cron_sign_head(self):
        self.sign_own_head()

    @api.model
    def sign_own_head(self):
        """Sign this host's ledger head; keep the checkpoint in ir.config_parameter too."""
        with closing(self._open_own()) as led:
            text = led.sign_head()
            rec = self._record_for(led, led.path)
        rec._store_head(Checkpoint.from_text(text))
        return text

    # ---- retention vacuum ------------------------------------------------------------------------

    @api.model
    def _retention_days(self):
        value = self.env["ir.config_parameter"].sudo().get_param(
            "mit_network_audit.retention_days", "365")
        try:
            return max(int(value), 1)
        except ValueError:
            return 365

    @api.model
    def _cron_vacuum(self):
        self.run_vacuum()

    @api.model
    def run_vacuum(self, retention_days=None, now_ns=None):
        """Prune rows older than the retention window, in this host's ledger and in PostgreSQL,
        never at or after a signed head. Returns {ledger uuid: rows deleted in PostgreSQL}."""
        days = self._retention_days() if retention_days is None else retention_days
        now_ns = now_ns or time.time_ns()
        self._ingest_all()  # never prune a ledger row PostgreSQL has not got yet
        with closing(self._open_own()) as led:
            result = led.vacuum(days, now_ns=now_ns)
        _logger.info("retention vacuum of this host's ledger: %s", result.message)
        deleted = {}
        for rec in self.sudo().search([]):  # pylint: disable=no-search-all
            deleted[rec.ledger_uuid] = rec._vacuum_pg(now_ns - int(days * 86400 * NS))
        if any(deleted.values()):
            self._append_fact("pg_vacuum", retention_days=days, deleted=sum(deleted.values()))
        return deleted

    def _vacuum_pg(self, cutoff_ns):
        """Delete this ledger's PostgreSQL rows through the file's newest signed prune anchor,
        when that anchor is older than the retention window and below the signed head; the
        anchor becomes where Verify chain resumes."""
        self.ensure_one()
        if not (self.head_seq and self.path and os.path.isfile(self.path)):
            return 0
        with closing(Ledger.open(self.path, readonly=True)) as led:
            anchor = led.prune_anchor()
        if anchor is None or anchor.seq <= self.start_seq or anchor.seq >= self.head_seq:
            return 0
        cr = self.env.cr
        cr.execute("""
            SELECT row_hash, ts >= %s FROM network_egress_log
            WHERE audit_ledger_id = %s AND chain_seq = %s
        """, [cutoff_ns, self.id, anchor.seq])
        found = cr.fetchone()
        if (not found or found[1] or found[0] != anchor.row_hash.hex()
                or not check_signature(anchor, public_key_from_text(self.public_key))):
            _logger.warning("ledger %s: prune anchor at row %s does not match PostgreSQL; "
                            "nothing pruned", self.host_id, anchor.seq)
            return 0
        self.env.flush_all()
        with privileged_writer("vacuum"):
            cr.execute("SELECT set_config(%s, 'on', true)", [VACUUM_SETTING])
            cr.execute("DELETE FROM network_egress_log WHERE audit_ledger_id = %s "
                       "AND chain_seq <= %s", [self.id, anchor.seq])
            count = cr.rowcount
            cr.execute("SELECT set_config(%s, 'off', true)", [VACUUM_SETTING])
        self.env["network.egress_log"].invalidate_model()
        self.write({"start_seq": anchor.seq, "start_hash": anchor.row_hash.hex(),
                    "start_anchor": anchor.to_text()})
        return count

    @api.ondelete(at_uninstall=False)
    def _unlink_except_ingested(self):
        if self.env["network.egress_log"].sudo().search_count(
                [("audit_ledger_id", "in", self.ids)], limit=1):
            raise UserError(self.env._("A ledger whose rows are in the egress log cannot be deleted."))
