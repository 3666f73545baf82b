"""The ledger writer: append-only, hash-chained SQLite, Ed25519-signed heads, retention vacuum."""
from ledger.siblings import pin as _pin

_pin()  # our interceptor and verifier, not a namesake on the program's PYTHONPATH (siblings.py)

from ledger.errors import KeyMaterialError, LedgerError, NotALedgerError  # noqa: E402
from ledger.ledger import (  # noqa: E402
    Ledger,
    VacuumResult,
    audit_event,
    default_key_dir,
    default_ledger_path,
    event_values,
    netaudit_home,
)

__all__ = [
    "Ledger", "VacuumResult", "LedgerError", "KeyMaterialError", "NotALedgerError", "audit_event",
    "default_key_dir", "default_ledger_path", "event_values", "netaudit_home",
]
