"""The ledger writer: append-only, hash-chained SQLite, Ed25519-signed heads, retention vacuum."""
from ledger.errors import KeyMaterialError, LedgerError, NotALedgerError
from ledger.ledger import (
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
