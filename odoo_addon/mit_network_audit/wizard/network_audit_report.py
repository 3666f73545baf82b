# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""The Trust Report: an overall verdict, the chips, and one verdict per module.

Module verdicts: quiet (no egress), declared (only to declared hosts), undeclared (egress
elsewhere), alarm (self-egress, or a broken or tampered chain of the ledger it was read from).
Overall: Alarm when any alarm (self-egress > 0 included); Review when anything is undeclared,
events were dropped, or no signed head is recent; Trusted otherwise.
"""
import datetime
import re

from odoo import api, fields, models

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
        now = fields.Datetime.now()

        broken = ledgers.filtered(lambda r: r.ingest_state == "broken" or r.verify_state == "tampered")
        if broken:
            b = broken[0]
            seq = b.verify_seq if b.verify_state == "tampered" else b.break_seq
            reason = b.verify_reason if b.verify_state == "tampered" else b.break_reason
            chain = self.env._("broken at host %(host)s row %(seq)s (%(reason)s)",
                      host=b.host_id, seq=seq, reason=reason)
        elif ledgers and all(r.verify_state == "valid" for r in ledgers):
            chain = self.env._("verified at %s", min(ledgers.mapped("verified_at")))
        else:
            chain = self.env._("not verified yet")

        signed = ledgers.filtered("head_signed_at")
        if signed:
            newest = max(signed, key=lambda r: r.head_signed_at)
            age = now - newest.head_signed_at
            head = self.env._("row %(seq)s, %(hours)s h ago", seq=newest.head_seq,
                     hours=int(age.total_seconds() // 3600))
            head_ok = age <= HEAD_MAX_AGE
        else:
            head, head_ok = self.env._("never signed"), False

        cr = env.cr
        cr.execute("SELECT count(*) FROM network_egress_log WHERE self_egress")
        self_egress = cr.fetchone()[0]
        cr.execute("SELECT url_path FROM network_egress_log WHERE channel = 'audit' AND method = 'gap'")
        dropped = 0
        for (detail,) in cr.fetchall():
            match = _DROPPED.search(detail or "")
            dropped += int(match.group(1)) if match else 1

        session = env["network.audit.forensic.session"].current()
        if session:
            forensic = self.env._("on until %(t)s, by %(who)s: %(why)s", t=session.expires_at,
                         who=session.user_id.name, why=session.reason)
        else:
            forensic = self.env._("off")

        last_ingest = max(ledgers.filtered("last_ingest").mapped("last_ingest"), default=False)
        hosts = self.env._("%(n)s ledger(s), last ingest %(t)s", n=len(ledgers),
                  t=last_ingest or self.env._("never"))

        lines = self._module_lines(broken)
        alarm = bool(self_egress or broken or any(v["verdict"] == "alarm" for v in lines))
        review = (not head_ok or dropped or not ledgers
                  or any(v["verdict"] == "undeclared" for v in lines))
        self.line_ids.unlink()
        self.write({
            "verdict": "alarm" if alarm else ("review" if review else "trusted"),
            "generated_at": now, "chain_chip": chain, "chain_ok": bool(ledgers) and not broken,
            "head_chip": head, "head_ok": head_ok, "self_egress_count": self_egress,
            "dropped_count": dropped, "forensic_chip": forensic, "forensic_on": bool(session),
            "hosts_chip": hosts, "line_ids": [fields.Command.create(v) for v in lines],
        })

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
