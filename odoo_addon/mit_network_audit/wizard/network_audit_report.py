# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""The Trust Report: an overall verdict, the chips, and one verdict per module.

Module verdicts: quiet (no egress), declared (only to declared hosts), undeclared (egress
elsewhere), alarm (self-egress, or a broken or tampered chain of the ledger it was read from).
Overall: Alarm when any alarm (self-egress > 0 included); Review when anything is undeclared,
events were dropped, no signed head is recent, or this process does not capture; Trusted
otherwise.
"""
import datetime
import os
import re

from odoo import api, fields, models

from ..glue import hooks

SELF_MODULE = "mit_network_audit"
HEAD_MAX_AGE = datetime.timedelta(hours=48)
VERDICTS = [("quiet", "quiet"), ("declared", "declared"), ("undeclared", "undeclared"),
            ("alarm", "alarm")]
_DROPPED = re.compile(r"(?:^|;)(?:dropped|count|n)=(\d+)")


class NetworkAuditReport(models.TransientModel):
    _name = "network.audit.report"
    _description = "Network Audit Trust Report"

    verdict = fields.Selection(
        [("trusted", "Trusted"), ("review", "Review"), ("alarm", "Alarm")], readonly=True,
        help="Alarm: self-egress, broken chain, bad signature or truncation. Review: undeclared "
        "egress, dropped events or no recent signed head. Trusted otherwise.")
    generated_at = fields.Datetime(readonly=True, help="When this report was computed.")
    chain_chip = fields.Char(string="Chain", readonly=True,
                             help="Verified at time T, or broken at host H row N.")
    chain_ok = fields.Boolean(readonly=True, help="Every ledger verified and linked.")
    head_chip = fields.Char(string="Signed head", readonly=True,
                            help="Newest signed head: its row and age.")
    head_ok = fields.Boolean(readonly=True, help="A head was signed within 48 hours.")
    self_egress_count = fields.Integer(string="Self-egress", readonly=True,
                                       help="Calls made by the auditor itself: must read 0.")
    dropped_count = fields.Integer(string="Dropped events", readonly=True,
                                   help="Events the auditor failed to record (gap rows).")
    forensic_chip = fields.Char(string="Forensic mode", readonly=True,
                                help="Off, or on until T, by whom and why.")
    forensic_on = fields.Boolean(readonly=True, help="Forensic mode is on.")
    capture_chip = fields.Char(string="Capture", readonly=True,
                               help="Whether this Odoo process records calls (post_load ran).")
    capture_ok = fields.Boolean(readonly=True, help="The interceptor is installed here.")
    hosts_chip = fields.Char(string="Hosts", readonly=True,
                             help="Ledgers found and the last ingest.")
    line_ids = fields.One2many("network.audit.report.line", "report_id", string="Modules",
                               readonly=True, help="One line per module with its verdict.")

    @api.model
    def action_open_report(self):
        report = self.create({})
        report.compute_report()
        return {
            "type": "ir.actions.act_window", "res_model": self._name, "res_id": report.id,
            "view_mode": "form", "target": "current", "name": self.env._("Trust Report"),
        }

    def action_refresh(self):
        self.compute_report()

    def action_verify_chain(self):
        self.env["network.audit.ledger"].action_verify_all()
        self.compute_report()

    def compute_report(self):
        """Fill the chips and module lines from PostgreSQL (as superuser: the report is read-only
        and covers every row, whatever the reader's record rules)."""
        self.ensure_one()
        env = self.sudo().env
        ledgers = env["network.audit.ledger"].search([])  # pylint: disable=no-search-all
        broken = ledgers.filtered(lambda r: r.ingest_state == "broken" or r.verify_state == "tampered")
        head, head_ok = self._head_chip(ledgers)
        capture, capture_ok = self._capture_chip()
        self_egress, dropped = self._counts()
        forensic, forensic_on = self._forensic_chip()
        lines = self._module_lines(broken)
        alarm = bool(self_egress or broken or any(v["verdict"] == "alarm" for v in lines))
        review = (not head_ok or dropped or not ledgers or not capture_ok
                  or any(v["verdict"] == "undeclared" for v in lines))
        self.line_ids.unlink()
        self.write({
            "verdict": "alarm" if alarm else ("review" if review else "trusted"),
            "generated_at": fields.Datetime.now(), "chain_chip": self._chain_chip(ledgers, broken),
            "chain_ok": bool(ledgers) and not broken, "head_chip": head, "head_ok": head_ok,
            "capture_chip": capture, "capture_ok": capture_ok,
            "self_egress_count": self_egress, "dropped_count": dropped,
            "forensic_chip": forensic, "forensic_on": forensic_on,
            "hosts_chip": self._hosts_chip(ledgers),
            "line_ids": [fields.Command.create(v) for v in lines],
        })

    def _chain_chip(self, ledgers, broken):
        if broken:
            b = broken[0]
            tampered = b.verify_state == "tampered"
            return self.env._("broken at host %(host)s row %(seq)s (%(reason)s)", host=b.host_id,
                              seq=b.verify_seq if tampered else b.break_seq,
                              reason=b.verify_reason if tampered else b.break_reason)
        if ledgers and all(r.verify_state == "valid" for r in ledgers):
            return self.env._("verified at %s", min(ledgers.mapped("verified_at")))
        return self.env._("not verified yet")

    def _head_chip(self, ledgers):
        signed = ledgers.filtered("head_signed_at")
        if not signed:
            return self.env._("never signed"), False
        newest = max(signed, key=lambda r: r.head_signed_at)
        age = fields.Datetime.now() - newest.head_signed_at
        return (self.env._("row %(seq)s, %(hours)s h ago", seq=newest.head_seq,
                           hours=int(age.total_seconds() // 3600)), age <= HEAD_MAX_AGE)

    def _capture_chip(self):
        """Whether this Odoo process captures (post_load installed the interceptor)."""
        state = hooks.status()
        if state["installed"]:
            return self.env._("on in this process (pid %s)", os.getpid()), True
        return self.env._("OFF in this process: %s", state["error"] or "post_load did not run"), False

    def _counts(self):
        """(self-egress calls, dropped events): the two numbers that must read 0."""
        cr = self.env.cr
        cr.execute("SELECT count(*) FROM network_egress_log WHERE self_egress")
        self_egress = cr.fetchone()[0]
        cr.execute("SELECT url_path FROM network_egress_log WHERE channel = 'audit' AND method = 'gap'")
        dropped = 0
        for (detail,) in cr.fetchall():
            match = _DROPPED.search(detail or "")
            dropped += int(match.group(1)) if match else 1
        return self_egress, dropped

    def _forensic_chip(self):
        """Off or on (until when, by whom, why), and how often it was switched (chain rows)."""
        cr = self.env.cr
        cr.execute("SELECT count(*) FROM network_egress_log WHERE channel = 'audit' "
                   "AND method = 'forensic_on' AND event_time > now() - interval '90 days'")
        history = self.env._("%s time(s) on in 90 days", cr.fetchone()[0])
        session = self.env["network.audit.forensic.session"].current()
        if not session:
            return self.env._("off (%s)", history), False
        return self.env._("on until %(t)s, by %(who)s: %(why)s (%(history)s)", t=session.expires_at,
                          who=session.user_id.name, why=session.reason, history=history), True

    def _hosts_chip(self, ledgers):
        last_ingest = max(ledgers.filtered("last_ingest").mapped("last_ingest"), default=False)
        text = self.env._("%(n)s ledger(s), last ingest %(t)s", n=len(ledgers),
                          t=last_ingest or self.env._("never"))
        missing = len(ledgers.filtered(lambda r: r.ingest_state == "missing"))
        if missing:
            text += self.env._(", %s file(s) missing", missing)
        return text

    def _module_lines(self, broken_ledgers):
        cr = self.env.cr
        cr.execute("""
            SELECT module, count(*), array_agg(DISTINCT host), sum(req_bytes), sum(resp_bytes),
                   max(event_time), count(*) FILTER (WHERE self_egress),
                   bool_or(audit_ledger_id = ANY(%s))
            FROM network_egress_log
            WHERE channel != 'audit' AND direction = 'egress'
            GROUP BY module ORDER BY module
        """, [broken_ledgers.ids])
        declared = self.env["network.audit.declared_host"]
        lines = []
        for module, calls, hosts, out, in_, last, self_calls, on_broken in cr.fetchall():
            hosts = sorted(h for h in hosts if h)
            patterns = declared.declared_hosts(module)
            undeclared = [h for h in hosts if not declared.is_declared(h, patterns)]
            if self_calls or on_broken or module == SELF_MODULE:
                verdict = "alarm"
            elif undeclared:
                verdict = "undeclared"
            else:
                verdict = "declared"
            lines.append({
                "module": module or "", "verdict": verdict, "calls": calls,
                "hosts": ", ".join(hosts), "undeclared_hosts": ", ".join(undeclared),
                "bytes_out": out or 0, "bytes_in": in_ or 0, "last_call": last})
        talked = {line["module"] for line in lines}
        installed = self.env["ir.module.module"].search([("state", "=", "installed")])
        lines += [{"module": name, "verdict": "quiet", "calls": 0}
                  for name in sorted(installed.mapped("name")) if name not in talked]
        return lines


class NetworkAuditReportLine(models.TransientModel):
    _name = "network.audit.report.line"
    _description = "Network Audit Trust Report: one module"
    _order = "verdict_rank desc, calls desc, module"

    report_id = fields.Many2one("network.audit.report", required=True, ondelete="cascade",
                                help="The report this line belongs to.")
    module = fields.Char(readonly=True, help="Odoo module (or Python package) that made calls.")
    verdict = fields.Selection(VERDICTS, readonly=True,
                               help="quiet, declared, undeclared or alarm.")
    verdict_rank = fields.Integer(compute="_compute_verdict_rank", store=True,
                                  help="Sort key: alarms first.")
    calls = fields.Integer(readonly=True, help="Number of outbound calls.")
    hosts = fields.Char(readonly=True, help="Hosts it talked to.")
    undeclared_hosts = fields.Char(readonly=True, help="Hosts not declared for the module.")
    bytes_out = fields.Float(string="Bytes out", readonly=True, digits=(16, 0),
                             help="Request bytes sent.")
    bytes_in = fields.Float(string="Bytes in", readonly=True, digits=(16, 0),
                            help="Response bytes received.")
    last_call = fields.Datetime(readonly=True, help="Time of the latest call.")

    @api.depends("verdict")
    def _compute_verdict_rank(self):
        rank = {"alarm": 3, "undeclared": 2, "declared": 1, "quiet": 0}
        for line in self:
            line.verdict_rank = rank.get(line.verdict, 0)

    def action_open_events(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "mit_network_audit.action_network_egress_log")
        action["domain"] = [("module", "=", self.module)]
        action["context"] = {}
        action["name"] = self.env._("Egress of %s", self.module)
        return action
