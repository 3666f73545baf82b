"""The ledger's one error family; the CLI turns each into a one-line message and exit code 2."""


class LedgerError(Exception):
    """Base of every error the ledger reports to its callers."""


class KeyMaterialError(LedgerError):
    """Key material is missing, unreadable, corrupt, has unsafe permissions, or does not match meta."""


class NotALedgerError(LedgerError):
    """The file is not a ledger, or one of a format version this code does not know."""
