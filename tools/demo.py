"""make demo: the main job end to end, on the embedded default location.

1. append a few hundred sample events through the real writer (ledger under NETAUDIT_HOME, or the
   platform data dir);
2. sign the head (stored in the ledger and in the heads file beside the key);
3. verify the ledger with the public key and the outside heads, as an auditor would;
4. tamper a copy (one row's host changed, triggers dropped, as someone holding the file would)
   and show the verifier naming the tampered row.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from interceptor.event import NetEvent
from ledger import Ledger, default_ledger_path

HOSTS = ["api.stripe.example", "smtp.mail.example", "geo.ip.example", "partner-autocomplete.example"]
MODULES = [("payment_stripe", "Odoo S.A."), ("mail", "Odoo S.A."), ("base_geolocalize", "Odoo S.A."),
           ("partner_autocomplete", "Odoo S.A.")]


def sample_events(n: int) -> list[NetEvent]:
    now = time.time_ns()
    out = []
    for i in range(n):
        k = i % len(HOSTS)
        out.append(NetEvent(
            ts=now - (n - i) * 1_000_000_000, duration_ms=5.0 + i % 40, direction="egress",
            channel="smtp" if k == 1 else "http", protocol="smtps" if k == 1 else "https",
            method="MAIL" if k == 1 else ("POST" if i % 3 else "GET"), host=HOSTS[k], url_path="" if k == 1 else f"/v1/r{i % 9}",
            query_keys=() if k == 1 else ("id",), dst_port=465 if k == 1 else 443, status="250" if k == 1 else "200",
            req_bytes=200 + i, resp_bytes=900 + 3 * i, module=MODULES[k][0], author=MODULES[k][1],
            call_site=f"odoo/addons/{MODULES[k][0]}/models/x.py:{100 + k}:_call", pid=os.getpid()))
    return out


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def verify(*args: str) -> int:
    cmd = [sys.executable, "-m", "verifier", *args]
    print("$ netaudit-verify " + " ".join(args), flush=True)
    return subprocess.run(cmd).returncode


def main() -> int:
    path = default_ledger_path()
    step(f"appending 300 sample events to {path}")
    with Ledger.open(path) as led:
        last = led.append_many(sample_events(300))
        print(f"ledger {led.ledger_id}: last chain_seq {last}")
        step("signing the head (kept in the ledger and in the heads file beside the key)")
        print(led.sign_head(), end="")
        pub = os.path.join(led.keys.folder, "pubkey")
        heads = led.keys.heads_path
    step("verifying, as an offline auditor would, with the public key and the outside heads")
    if verify(path, "--pubkey", pub, "--head", heads) != 0:
        print("demo: the fresh ledger did not verify", file=sys.stderr)
        return 1
    step("tampering with a copy: row 42's host rewritten, triggers dropped first")
    tmp = tempfile.mkdtemp(prefix="netaudit-demo-")
    try:
        copy = os.path.join(tmp, "tampered.sqlite")
        with Ledger.open(path) as led:
            led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(path, copy)
        con = sqlite3.connect(copy, isolation_level=None)
        try:
            con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = 42")
        except sqlite3.Error as exc:
            print(f"plain sqlite3 UPDATE refused: {exc}")
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = 42")
        con.close()
        code = verify(copy, "--pubkey", pub, "--head", heads)
        print(f"(exit {code}: 1 means tampered)")
        if code != 1:
            return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step("report")
    subprocess.run([sys.executable, "-m", "ledger.cli", "report", "--ledger", path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
