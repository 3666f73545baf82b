# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Ingress: inbound RPC/JSON/webhook requests to Odoo controllers, as direction=ingress events.

Odoo's WSGI application is wrapped with the interceptor's AuditMiddleware; once Odoo has routed
a request, the controller's module (the addon that defines the endpoint) is put on the record.
The web client's own traffic is not recorded: static files and assets are never wrapped, and
requests routed to `web` or `bus` controllers (session, assets, the web client's RPC, its
websocket) are marked and dropped by the router.
"""
import functools
import logging
import re
import threading

_logger = logging.getLogger(__name__)

MARK = "_mit_network_audit_ingress"
SKIP = "\0skip"  # module value of a record the router must drop
WEB_CLIENT_MODULES = frozenset({"web", "bus", "web_editor", "html_editor", "web_tour"})
_STATIC = re.compile(r"^/(?:[\w.-]+/static/|web/assets/|web/image|web/content|favicon\.ico)")
_CURRENT = threading.local()


def controller_module(rule) -> str:
    """The addon that defines the routed endpoint ("" when it is not an addon's)."""
    endpoint = getattr(rule, "endpoint", None)
    func = getattr(endpoint, "original_endpoint", endpoint)
    name = getattr(func, "__module__", "") or ""
    parts = name.split(".")
    if name.startswith("odoo.addons.") and len(parts) >= 3:
        return parts[2]
    return "odoo" if parts[0] == "odoo" else parts[0]


def _tag(rule):
    rec = getattr(_CURRENT, "rec", None)
    if rec is None:
        return
    module = controller_module(rule)
    rec.module = SKIP if module in WEB_CLIENT_MODULES else module


def install() -> bool:
    """Wrap odoo.http.Application and learn each request's controller. Idempotent."""
    from odoo import http

    from interceptor.wsgi import AuditMiddleware

    if getattr(http.Application.__call__, MARK, False):
        return False

    class OdooIngress(AuditMiddleware):
        def _begin(self, environ):
            rec = super()._begin(environ)
            _CURRENT.rec = rec
            return rec

    original_call = http.Application.__call__
    original_set = http.Request._set_request_dispatcher

    @functools.wraps(original_call)
    def __call__(self, environ, start_response):
        if _STATIC.match(environ.get("PATH_INFO", "")):
            return original_call(self, environ, start_response)
        _CURRENT.rec = None
        try:
            return OdooIngress(functools.partial(original_call, self), module="odoo")(
                environ, start_response)
        finally:
            _CURRENT.rec = None

    @functools.wraps(original_set)
    def _set_request_dispatcher(self, rule):
        result = original_set(self, rule)
        try:
            _tag(rule)
        except Exception:  # fail-open: the request goes on, recorded as module "odoo"
            _logger.debug("ingress attribution failed", exc_info=True)
        return result

    setattr(__call__, MARK, True)
    http.Application.__call__ = __call__
    http.Request._set_request_dispatcher = _set_request_dispatcher
    return True
