# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Per request and per cron job: set or clear the forensic body tap (glue/forensic.py)."""
from odoo import models
from odoo.http import request

from ..glue import forensic


class IrHttp(models.AbstractModel):
    _inherit = "ir.http"

    @classmethod
    def _pre_dispatch(cls, rule, args):
        result = super()._pre_dispatch(rule, args)
        forensic.refresh(request.env)  # an ormcache hit; never raises
        return result


class IrCron(models.Model):
    _inherit = "ir.cron"

    def _callback(self, cron_name, server_action_id):
        forensic.refresh(self.env, cached=False)  # one query per job; never raises
        return super()._callback(cron_name, server_action_id)
