"""The ledger writer: append-only, hash-chained SQLite, Ed25519-signed heads, retention vacuum.

The names below are imported on first use (PEP 562), so that importing a submodule
(`ledger.process_writer`, as the Odoo addon does in the audited process) imports no more than it
needs. netaudit's own command line pins our `interceptor` and `verifier` first (ledger/siblings.py);
a program that merely imports the ledger keeps whatever its own path gives it.
"""
from __future__ import annotations

_FROM_LEDGER = frozenset({"Ledger", "VacuumResult", "audit_event", "default_key_dir", "default_ledger_path",
                          "event_values", "netaudit_home"})
_FROM_ERRORS = frozenset({"LedgerError", "KeyMaterialError", "NotALedgerError"})
__all__ = sorted(_FROM_LEDGER | _FROM_ERRORS)


def __getattr__(name: str):
    if name in _FROM_LEDGER:
        import ledger.ledger as module
    elif name in _FROM_ERRORS:
        import ledger.errors as module
    else:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
