# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Forensic capture: while a forensic session is on, hand HTTP bodies to the encrypted store.

The interceptor's body tap (interceptor/forensic.py) is process-wide and off by default; with
no tap set the audited calls pay one attribute check. This module sets it in a process only
while at least one of that process's databases has a forensic session in force, and clears it
when none has.

How every worker notices: `network.audit.forensic.session._forensic_until()` is an ormcache'd
lookup of the session's expiry. Turning a session on or off clears the registry caches, which
Odoo signals to every other worker at commit; each worker checks the signal at the start of
each request, and `refresh(env)` runs right after (ir.http._pre_dispatch), so a warm check
is a dict lookup; before each cron job (ir.cron._callback) it reads the session table instead,
one indexed query. Expiry needs no signal: the tap compares
the cached expiry with the clock on every call, and the next refresh clears the tap.

How bodies are stored: the tap runs on the audited thread, in the middle of someone else's
transaction (which may still roll back, or hold locks). It therefore never touches that
transaction's cursor: it opens a fresh cursor on the database named when the request began
(the tap's context), stores the bodies with `network.audit.forensic.body.store()` as superuser,
and commits at once. That insert takes no lock an audited transaction could hold (the session
row is only ever updated on non-key columns), so it cannot wait on its caller. An in-process
queue drained by a cron would not do: in prefork mode the cron runs in another process. The
store re-checks the session in the database, so a stale cache can never store a body outside
a session. Fail-open: a store that fails is logged and counted, the audited call goes on.
"""
import logging
import threading
import time

from .router import current_dbname


def _pass_on(exc: BaseException) -> None:
    """Re-raise an exception the worker's signal handler raised (its CPU time limit), which a
    fail-open `except` here must not swallow (interceptor.guard)."""
    try:
        from interceptor.guard import pass_on
    except Exception:
        return
    pass_on(exc)

_logger = logging.getLogger(__name__)

_UNTIL = {}                 # dbname -> epoch seconds until which its forensic session is on
_LOCK = threading.Lock()
STATS = {"stored": 0, "skipped": 0, "failed": 0, "last_error": ""}


def _interceptor_forensic():
    try:
        from interceptor import forensic
    except ImportError:  # an older core without the body tap: forensic capture stays off
        return None
    return forensic


def refresh(env, cached=True) -> bool:
    """Learn whether forensic mode is on in env's database and set or clear the tap. Never raises.

    Requests use the ormcache (Odoo has applied other workers' cache signals by then); a cron job
    reads the session table (ir.cron._callback applies the signals only after our hook runs)."""
    try:
        sessions = env["network.audit.forensic.session"].sudo()
        until = sessions._forensic_until() if cached else sessions._forensic_until_uncached()
        with _LOCK:
            if until > time.time():
                _UNTIL[env.cr.dbname] = until
            else:
                _UNTIL.pop(env.cr.dbname, None)
            return _apply()
    except Exception as exc:  # fail-open: a broken refresh must not break the request or the cron
        _pass_on(exc)  # but a signal handler's exception (the worker's CPU limit) is the request's
        _logger.debug("forensic refresh failed", exc_info=True)
        return False


def _apply() -> bool:
    forensic = _interceptor_forensic()
    if forensic is None:
        return False
    now = time.time()
    on = any(until > now for until in _UNTIL.values())
    current = forensic.body_tap()
    if on and current is not body_tap:
        forensic.set_body_tap(body_tap, context=current_dbname)
        _logger.info("mit_network_audit: forensic body capture on")
    elif not on and current is body_tap:
        forensic.set_body_tap(None)
        _logger.info("mit_network_audit: forensic body capture off")
    return on


def active(dbname: str) -> bool:
    return _UNTIL.get(dbname, 0) > time.time()


def body_tap(meta, request_body, response_body) -> None:
    """The interceptor's tap: store the bodies of one call in its database, in a fresh cursor."""
    dbname = meta.get("context")
    if not dbname or not active(dbname) or not (request_body or response_body):
        STATS["skipped"] += 1
        return
    try:
        store(dbname, meta, request_body, response_body)
    except Exception as exc:  # fail-open
        _pass_on(exc)  # but a signal handler's exception (the worker's CPU limit) is the request's
        STATS["failed"] += 1
        STATS["last_error"] = f"{type(exc).__name__}: {exc}"
        _logger.warning("mit_network_audit: a forensic body could not be stored (%s)",
                        STATS["last_error"])


def store(dbname, meta, request_body, response_body) -> int:
    """Store one call's bodies in `dbname` in its own transaction; returns how many were kept."""
    from odoo import SUPERUSER_ID, api
    from odoo.modules.registry import Registry

    try:
        registry = Registry.registries[dbname]
    except KeyError:  # not loaded in this process: nothing to store into
        STATS["skipped"] += 1
        return 0
    kept = 0
    with registry.cursor() as cr:
        env = api.Environment(cr, SUPERUSER_ID, {})
        Body = env["network.audit.forensic.body"]
        for direction, body in (("request", request_body), ("response", response_body)):
            if body and Body.store(body, module=meta.get("module") or "",
                                   host=meta.get("host") or "", direction=direction):
                kept += 1
    STATS["stored"] += kept
    return kept


def reset() -> None:
    """Forget every database's state and clear the tap (tests, uninstall)."""
    with _LOCK:
        _UNTIL.clear()
        _apply()
