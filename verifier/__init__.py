"""The standalone checker of MIT Network Audit ledgers: the format's definition and its verifier.

Imports nothing of the project's other packages: copy this folder, install apsw and
cryptography, and `python -m verifier LEDGER --pubkey KEY --head CHECKPOINT` checks a ledger.
"""
from verifier.format import FORMAT_VERSION, Checkpoint, FormatError
from verifier.verify import ChainChecker, Verdict, VerifyInputError, verify_ledger

__all__ = ["FORMAT_VERSION", "Checkpoint", "FormatError", "ChainChecker", "Verdict", "VerifyInputError", "verify_ledger"]
