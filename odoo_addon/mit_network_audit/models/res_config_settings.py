# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Settings → Network Audit: retention, ledger folders, declared hosts, forensic mode."""
from odoo import fields, models


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    netaudit_retention_days = fields.Integer(
        string="Retention (days)", default=365,
        config_parameter="mit_network_audit.retention_days",
        help="Rows older than this are pruned daily, never at or after the newest signed head.")
    netaudit_ledger_folders = fields.Char(
        string="Ledger folders", config_parameter="mit_network_audit.ledger_folders",
        help="Folders whose ledger files (*.sqlite) are ingested, comma separated. Empty: this "
        "database's own ledger folder under Odoo's data_dir. Shipping other hosts' ledgers "
        "there (e.g. rsync) is the operator's job: the addon opens no connection.")
    netaudit_forensic_chip = fields.Char(
        string="Forensic mode", compute="_compute_netaudit_forensic_chip",
        help="Off, or on until T, by whom and why.")

    def _compute_netaudit_forensic_chip(self):
        session = self.env["network.audit.forensic.session"].current()
        chip = (self.env._("on until %(t)s, by %(who)s: %(why)s", t=session.expires_at,
                  who=session.user_id.name, why=session.reason) if session else self.env._("off"))
        for rec in self:
            rec.netaudit_forensic_chip = chip

    def set_values(self):
        if self.netaudit_retention_days < 1:
            self.netaudit_retention_days = 1
        return super().set_values()
