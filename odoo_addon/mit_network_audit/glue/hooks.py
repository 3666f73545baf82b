# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""post_load: install the interceptor once per process, before any worker serves a request.

Loaded as a server-wide module (--load=base,web,mit_network_audit), Odoo calls post_load()
when it imports the addon, in the master process, so every forked worker inherits the
interceptor (the core's sink re-arms its writer thread after fork). Fail-open: whatever goes
wrong here is logged and Odoo starts anyway.
"""
import logging

_logger = logging.getLogger(__name__)

_STATE = {"installed": False, "router": None, "error": None}


def post_load() -> None:
    if _STATE["installed"]:
        return
    try:
        from . import router

        _STATE["router"] = router.install()
        _STATE["installed"] = True
    except Exception as exc:  # fail-open: the auditor must never stop Odoo from starting
        _STATE["error"] = f"{type(exc).__name__}: {exc}"
        _logger.warning("mit_network_audit: interceptor not installed (%s)", _STATE["error"])


def status() -> dict:
    """{'installed': bool, 'router': DatabaseRouter or None, 'error': str or None}."""
    return dict(_STATE)


def uninstall_hook(env):
    """The egress log's table goes with the module; its guard function must go too.

    The ledger files and keys under data_dir stay: they are evidence, not module data.
    """
    env.cr.execute("DROP FUNCTION IF EXISTS network_egress_log_guard() CASCADE")
