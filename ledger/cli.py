"""netaudit: the ledger's command line. A thin shell: it calls the library and turns its errors
into one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ledger.siblings import pin

pin()  # netaudit's own process: our interceptor and verifier, not a namesake on the program's PYTHONPATH


def _ledger_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger", metavar="PATH",
                   help="ledger file (default: $NETAUDIT_HOME/ledgers/<host>.sqlite, or the platform data dir)")
    p.add_argument("--key-dir", metavar="DIR", help="key folder (default: keys/ beside the default ledger folder)")


def build_parser() -> argparse.ArgumentParser:
    from verifier.cli import PrintVersion

    p = argparse.ArgumentParser(prog="netaudit", description="MIT Network Audit: record, sign and report outbound calls.")
    p.add_argument("--version", action=PrintVersion)  # the verifier's: one version, said the same way (helper 39, L6d)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("sign-head", help="sign the ledger's current last row; print the checkpoint")
    _ledger_arg(s)
    s = sub.add_parser("head", help="print the newest signed head (checkpoint text)")
    _ledger_arg(s)
    s = sub.add_parser("pubkey", help="print the ledger's public key, for auditors")
    _ledger_arg(s)
    s = sub.add_parser("vacuum", help="delete rows older than the retention window, below the signed head")
    _ledger_arg(s)
    s.add_argument("--retention-days", type=float, required=True, metavar="N")
    s = sub.add_parser("report", help="summary per module: calls, hosts, bytes, errors, self-egress")
    _ledger_arg(s)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("run", help="run a Python program with the interceptor installed: netaudit run -- python app.py")
    _ledger_arg(s)
    s.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command to run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ledger.errors import LedgerError

    try:
        return COMMANDS[args.command](args)
    except LedgerError as exc:
        print(f"netaudit: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("netaudit: interrupted", file=sys.stderr)
    except Exception as exc:  # the library's errors are named; anything else still gets one line
        import apsw

        # SQLite's own errors while reading (a malformed file) name the ledger, as every other
        # ledger error does: "ledger: database disk image is malformed" did not say which (helper 39, L6b)
        kind = _ledger_shown(args) if isinstance(exc, apsw.Error) else exc.__class__.__name__
        print(f"netaudit: error: {kind}: {exc}", file=sys.stderr)
    return 2


def _ledger_shown(args) -> str:
    from ledger.ledger import default_ledger_path

    return args.ledger or default_ledger_path()


def _open(args, readonly: bool = False, create: bool = False):
    from ledger.ledger import Ledger

    return Ledger.open(args.ledger, key_dir=args.key_dir, create=create, readonly=readonly)


def cmd_sign_head(args) -> int:
    with _open(args) as led:
        sys.stdout.write(led.sign_head())
    return 0


def cmd_head(args) -> int:
    from ledger.errors import LedgerError

    with _open(args, readonly=True) as led:
        cp = led.head()
        if cp is None:
            raise LedgerError(f"{led.path}: no signed head yet (run: netaudit sign-head)")
        sys.stdout.write(cp.to_text())
    return 0


def cmd_pubkey(args) -> int:
    with _open(args, readonly=True) as led:
        print(led.public_key_text)
    return 0


def cmd_vacuum(args) -> int:
    with _open(args) as led:
        result = led.vacuum(args.retention_days)
    print(result.message)
    return 0


def cmd_report(args) -> int:
    from ledger.report import format_report, summarize

    with _open(args, readonly=True) as led:
        summary = summarize(led)
        if args.json:
            print(json.dumps({
                "ledger": led.path, "rows": summary.rows, "self_egress": summary.self_egress,
                "dropped": summary.dropped, "audit_facts": summary.audit_facts,
                "modules": [{"module": m.module, "calls": m.calls, "hosts": sorted(m.hosts),
                             "bytes_out": m.bytes_out, "bytes_in": m.bytes_in, "errors": m.errors,
                             "self_egress": m.self_egress} for m in summary.modules.values()]}))
        else:
            print(format_report(summary, led.path))
    return 0


def cmd_run(args) -> int:
    from ledger.errors import LedgerError

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise LedgerError("nothing to run: use `netaudit run -- python app.py ARGS`")
    from ledger.run import run

    return run(argv, ledger_path=args.ledger, key_dir=args.key_dir)


COMMANDS = {"sign-head": cmd_sign_head, "head": cmd_head, "pubkey": cmd_pubkey, "vacuum": cmd_vacuum,
            "report": cmd_report, "run": cmd_run}

if __name__ == "__main__":
    sys.exit(main())
