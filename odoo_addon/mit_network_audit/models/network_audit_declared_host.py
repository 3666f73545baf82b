# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""network.audit.declared_host: hosts a module may talk to, declared by an admin or a manifest.

A module's manifest declares hosts with the key "network_audit_hosts": ["api.example.com",
"*.example.org"]; an Audit Officer adds more here. Egress only to declared hosts is `declared`.
"""
import fnmatch

from odoo import api, fields, models
from odoo.modules.module import get_manifest

MANIFEST_KEY = "network_audit_hosts"


class NetworkAuditDeclaredHost(models.Model):
    _name = "network.audit.declared_host"
    _description = "Network Audit Declared Host"
    _order = "module, host"
    _rec_name = "host"

    module = fields.Char(required=True, index=True,
                         help="Technical name of the Odoo module (or Python package).")
    host = fields.Char(
        required=True,
        help="Host name the module may talk to; '*' wildcards allowed, e.g. *.example.com.")
    note = fields.Char(help="Why this module needs this host.")

    _sql_constraints = [
        ("module_host_unique", "unique(module, host)", "This host is already declared for the module."),
    ]

    @api.model
    def declared_hosts(self, module):
        """Patterns declared for `module`: the admin's rows plus its manifest's declaration."""
        patterns = set(self.sudo().search([("module", "=", module)]).mapped("host"))
        manifest = get_manifest(module) if module else {}
        patterns.update(manifest.get(MANIFEST_KEY, ()) if manifest else ())
        return patterns

    @api.model
    def is_declared(self, host, patterns):
        host = (host or "").lower()
        return any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns)
