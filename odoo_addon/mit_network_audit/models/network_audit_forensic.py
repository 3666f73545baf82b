# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Forensic mode: a time-boxed, officer-only window in which captured bodies are kept, encrypted.

Bodies never enter NetEvent, the ledger or network.egress_log: they go to
network.audit.forensic.body, encrypted with a key derived from the database's secret, readable
by Audit Officers only, and deleted when the session ends or expires. Every start and stop is a
chain row (forensic_on / forensic_off) and shows on the Trust Report.
"""
import base64
import datetime
import hashlib
import logging

from odoo import api, fields, models, tools
from odoo.exceptions import AccessError, ValidationError

from ..glue import forensic as forensic_glue

_logger = logging.getLogger(__name__)

try:
    from cryptography.fernet import Fernet
except ImportError:  # declared in external_dependencies
    _logger.debug("cryptography is not installed")

MAX_HOURS = 24


class NetworkAuditForensicSession(models.Model):
    _name = "network.audit.forensic.session"
    _description = "Network Audit Forensic Session"
    _order = "started_at desc, id desc"
    _rec_name = "reason"

    reason = fields.Char(required=True, help="Why bodies must be kept (mandatory, on the report).")
    user_id = fields.Many2one(
        "res.users", string="Turned on by", required=True, readonly=True,
        default=lambda self: self.env.user, ondelete="restrict",
        help="The Audit Officer who turned forensic mode on.")
    started_at = fields.Datetime(required=True, readonly=True, default=fields.Datetime.now,
                                 help="When forensic mode was turned on.")
    expires_at = fields.Datetime(
        required=True, default=lambda self: fields.Datetime.now() + datetime.timedelta(hours=1),
        help="Forensic mode turns itself off at this time (at most 24 hours after the start).")
    ended_at = fields.Datetime(readonly=True, help="When forensic mode was turned off.")
    active_session = fields.Boolean(
        string="On", compute="_compute_active_session", search="_search_active_session",
        help="Forensic mode is on: started, not ended, not expired.")
    body_ids = fields.One2many("network.audit.forensic.body", "session_id", string="Bodies",
                               help="Bodies captured during this session (encrypted).")

    @api.depends("ended_at", "expires_at")
    def _compute_active_session(self):
        now = fields.Datetime.now()
        for rec in self:
            rec.active_session = not rec.ended_at and rec.expires_at > now

    def _search_active_session(self, operator, value):
        on = [("ended_at", "=", False), ("expires_at", ">", fields.Datetime.now())]
        positive = (operator == "=") == bool(value)
        return on if positive else ["|", ("ended_at", "!=", False),
                                    ("expires_at", "<=", fields.Datetime.now())]

    @api.constrains("expires_at", "started_at")
    def _check_expiry(self):
        for rec in self:
            if rec.ended_at:
                continue
            if rec.expires_at <= rec.started_at:
                raise ValidationError(self.env._("The expiry must be after the start."))
            if rec.expires_at - rec.started_at > datetime.timedelta(hours=MAX_HOURS):
                raise ValidationError(self.env._("Forensic mode lasts at most %s hours.", MAX_HOURS))

    def _check_officer(self):
        if not self.env.user.has_group("mit_network_audit.group_officer"):
            raise AccessError(self.env._("Only an Audit Officer can turn forensic mode on or off."))

    @api.model_create_multi
    def create(self, vals_list):
        self._check_officer()
        if self.sudo().search_count([("active_session", "=", True)]):
            raise ValidationError(self.env._("Forensic mode is already on."))
        for vals in vals_list:
            if not (vals.get("reason") or "").strip():
                raise ValidationError(self.env._("A reason is mandatory to turn forensic mode on."))
            vals["user_id"] = self.env.uid  # never someone else's name
        sessions = super().create(vals_list)
        for rec in sessions:
            self.env["network.audit.ledger"]._append_fact(
                "forensic_on", by=rec.user_id.login, until=rec.expires_at.isoformat(),
                reason=rec.reason)
        self._forensic_changed()
        return sessions

    def write(self, vals):
        if set(vals) - {"ended_at"} and not self.env.su:
            raise AccessError(self.env._("A forensic session cannot be edited; turn it off instead."))
        return super().write(vals)

    def action_turn_off(self):
        self._check_officer()
        self.sudo()._end("turned_off")

    def _end(self, why):
        for rec in self.filtered(lambda r: not r.ended_at):
            rec.body_ids.sudo().unlink()
            rec.ended_at = fields.Datetime.now()
            self.env["network.audit.ledger"]._append_fact(
                "forensic_off", by=self.env.user.login, why=why, session=rec.id)
        self._forensic_changed()

    @api.model
    def _cron_expire(self):
        """End expired sessions and delete their bodies."""
        expired = self.sudo().search([("ended_at", "=", False),
                                      ("expires_at", "<=", fields.Datetime.now())])
        expired._end("expired")
        return expired

    @api.model
    @tools.ormcache()
    def _forensic_until(self):
        """Epoch seconds until which forensic mode is on (0.0: off). Cached per worker; a
        session start or stop clears the caches of every worker (glue/forensic.py)."""
        return self._forensic_until_uncached()

    @api.model
    def _forensic_until_uncached(self):
        session = self.current()
        if not session:
            return 0.0
        return session.expires_at.replace(tzinfo=datetime.timezone.utc).timestamp()

    def _forensic_changed(self):
        """A session started or stopped: every worker re-reads the state, this one right now."""
        self.env.registry.clear_cache()
        forensic_glue.refresh(self.env)

    @api.model
    def current(self):
        """The session in force, or an empty recordset."""
        return self.sudo().search([("active_session", "=", True)], limit=1)


class NetworkAuditForensicBody(models.Model):
    _name = "network.audit.forensic.body"
    _description = "Network Audit Forensic Body (encrypted)"
    _order = "id desc"

    session_id = fields.Many2one("network.audit.forensic.session", required=True, index=True,
                                 ondelete="cascade", readonly=True,
                                 help="The forensic session that captured this body.")
    ts = fields.Datetime(string="Time", readonly=True, help="When the body was captured.")
    module = fields.Char(readonly=True, help="Module that made the call.")
    host = fields.Char(readonly=True, help="Host of the call.")
    direction = fields.Char(readonly=True, help="request or response.")
    size = fields.Integer(readonly=True, help="Size of the plaintext body in bytes.")
    ciphertext = fields.Binary(attachment=False, readonly=True,
                               help="The body, encrypted (Fernet) with the database's key.")

    @api.model
    def _fernet(self):
        secret = self.env["ir.config_parameter"].sudo().get_param("database.secret")
        key = hashlib.sha256(b"mit_network_audit/forensic\0" + secret.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(key))

    @api.model
    def store(self, body, *, module="", host="", direction="request"):
        """Keep one body while forensic mode is on; a no-op (returns False) otherwise."""
        session = self.env["network.audit.forensic.session"].current()
        if not session:
            return False
        token = self._fernet().encrypt(bytes(body))
        return self.sudo().create({
            "session_id": session.id, "ts": fields.Datetime.now(), "module": module,
            "host": host, "direction": direction, "size": len(body),
            "ciphertext": base64.b64encode(token)})

    def plaintext(self):
        """Decrypt one body (Audit Officers only)."""
        self.ensure_one()
        if not self.env.user.has_group("mit_network_audit.group_officer"):
            raise AccessError(self.env._("Only an Audit Officer can read forensic bodies."))
        return self._fernet().decrypt(base64.b64decode(self.sudo().ciphertext))

    def action_show_plaintext(self):
        """The Decrypt button: the body, as text, in a sticky notification (first 4 KiB)."""
        text = self.plaintext()[:4096].decode("utf-8", "replace")
        return {"type": "ir.actions.client", "tag": "display_notification",
                "params": {"title": self.env._("Body %(id)s (%(size)s bytes)", id=self.id,
                                               size=self.size),
                           "message": text, "sticky": True, "type": "warning"}}
