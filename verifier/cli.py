"""netaudit-verify: check a copied ledger offline. Exit 0 valid, 1 tampered, 2 unusable input."""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_VALID, EXIT_TAMPERED, EXIT_UNUSABLE = 0, 1, 2


def _read_text_arg(value: str, what: str) -> str:
    """An argument that is either a file path or the text itself."""
    from verifier.verify import VerifyInputError

    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise VerifyInputError(f"{value}: cannot read {what}: {exc}") from None
    if os.path.isdir(value):
        raise VerifyInputError(f"{value}: is a directory, expected a {what} file")
    return value


class PrintVersion(argparse.Action):
    """--version: `<prog> <version>` on stdout, the installed package's version (pyproject.toml's,
    as pip shows it); netaudit's --version is this one too (helper 39, L6d). Looked up only when
    asked: importing importlib.metadata costs ~30 ms, which every `netaudit run` would pay."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{parser.prog} {version('mit-network-audit')}")
        except PackageNotFoundError:  # the verifier/ folder copied on its own, or a tree never installed
            print(f"{parser.prog} unknown (mit-network-audit is not installed)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netaudit-verify",
        description="Verify a MIT Network Audit ledger: recompute the hash chain, check signed heads "
                    "and prune anchors, name the first tampered row. Works on a private copy; the "
                    "ledger file is never modified.",
        epilog="exit status: 0 valid, 1 tampered, 2 unusable input")
    p.add_argument("ledger", help="the ledger file (its -wal beside it is read too)")
    p.add_argument("--pubkey", metavar="KEY",
                   help="trusted public key: 'ed25519:<base64>' or a file holding it (default: the key "
                        "stored in the ledger, which cannot catch a rewrite by someone holding the file)")
    p.add_argument("--head", metavar="CHECKPOINT", action="append", default=[],
                   help="a signed head kept outside the ledger: a checkpoint file, a heads file with many, "
                        "or the text itself; catches truncation and rollback; may be repeated")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--version", action=PrintVersion)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("netaudit-verify: interrupted", file=sys.stderr)
        return EXIT_UNUSABLE


def _run(args) -> int:
    from verifier.format import FormatError, parse_checkpoints
    from verifier.verify import VerifyInputError, verify_ledger

    def fail(msg: str) -> int:
        if args.json:
            print(json.dumps({"valid": False, "rows": 0, "first_bad_seq": None, "reason": "unusable_input",
                              "head_seq": None, "message": msg}))
        print(f"netaudit-verify: error: {msg}", file=sys.stderr)
        return EXIT_UNUSABLE

    progress = None
    if not (args.quiet or args.json) and sys.stderr.isatty():
        def progress(n: int) -> None:
            print(f"\rverified {n} rows...", end="", file=sys.stderr, flush=True)
    try:
        pubkey = _read_text_arg(args.pubkey, "public key") if args.pubkey else None
        heads = []
        for h in args.head:
            heads += parse_checkpoints(_read_text_arg(h, "checkpoint"), skip_torn=True)
        if pubkey is not None:
            from verifier.format import public_key_from_text
            public_key_from_text(pubkey)
        verdict = verify_ledger(args.ledger, pubkey=pubkey, heads=heads, progress=progress)
    except (VerifyInputError, FormatError) as exc:
        return fail(str(exc))
    except Exception as exc:  # never a traceback at an auditor; the message says what broke
        return fail(f"{args.ledger}: cannot verify: {exc.__class__.__name__}: {exc}")
    finally:
        if progress:
            print("\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(verdict.as_json()))
    else:
        status = "VALID" if verdict.valid else "TAMPERED"
        print(f"{status}: {args.ledger}: {verdict.message}")
        if not verdict.valid:
            print(f"first bad row: {verdict.first_bad_seq} ({verdict.reason})")
        for w in verdict.warnings:
            print(f"warning: {w}")
    return EXIT_VALID if verdict.valid else EXIT_TAMPERED


if __name__ == "__main__":
    sys.exit(main())
