"""Ledger benchmarks, side by side in one run.

1. Appends per second at batch sizes 1, 100, 1000: our chained, trigger-guarded append_many
   against a plain apsw executemany of the same rows into a table without chain or triggers.
2. Verifying a 1,000,000-row ledger (netaudit-verify's code path) against `sha256sum` of the
   same file.
Run: make bench  (or: .venv/bin/python -m bench ledger). BENCH_ROWS overrides the 1,000,000.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import apsw

from interceptor.event import NetEvent
from ledger import Ledger, event_values
from verifier.format import COLUMNS
from verifier.verify import verify_ledger


def sample(i: int) -> NetEvent:
    return NetEvent(
        ts=1_764_806_400_000_000_000 + i * 1000, duration_ms=12.5, direction="egress", channel="http",
        protocol="https", method="POST", host="api.example.com", url_path=f"/v1/orders/{i}",
        query_keys=("page", "token"), src_ip="10.0.0.2", src_port=40000 + i % 20000, dst_ip="93.184.216.34",
        dst_port=443, status="201", req_bytes=512, resp_bytes=2048,
        header_names=("Host", "Content-Type", "Authorization"), fingerprint="8f14e45fceea167a5a36dedd4bea2543",
        module="sale", author="Odoo S.A.", call_site="odoo/addons/sale/models/sale_order.py:812:_push", pid=4242)


def plain_table(path: str) -> apsw.Connection:
    con = apsw.Connection(path)
    con.execute("PRAGMA journal_mode=WAL").fetchall()
    con.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(f"{n} {t} NOT NULL" for n, t in COLUMNS)
    con.execute(f"CREATE TABLE egress_log (chain_seq INTEGER PRIMARY KEY, {cols}) STRICT")
    return con


def bench_appends(tmp: str, total: int = 100_000) -> list[tuple]:
    events = [sample(i) for i in range(total)]
    results = []
    for batch in (1, 100, 1000):
        n = min(total, 5_000) if batch == 1 else total
        # plain: the same rows, one transaction per batch, no hashing, no triggers
        con = plain_table(os.path.join(tmp, f"plain{batch}.sqlite"))
        sql = f"INSERT INTO egress_log VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            rows = [(start + j + 1, *event_values(e)) for j, e in enumerate(events[start:start + batch])]
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, rows)
            con.execute("COMMIT")
        plain = n / (time.perf_counter() - t0)
        con.close()
        led = Ledger.open(os.path.join(tmp, f"chain{batch}.sqlite"), key_dir=os.path.join(tmp, "keys"))
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            led.append_many(events[start:start + batch])
        chained = n / (time.perf_counter() - t0)
        led.close()
        results.append((batch, plain, chained))
    return results


def bench_verify(tmp: str, rows: int) -> tuple[float, float, float, int]:
    path = os.path.join(tmp, "big.sqlite")
    led = Ledger.open(path, key_dir=os.path.join(tmp, "keys"))
    batch = [sample(i) for i in range(1000)]
    for _ in range(rows // 1000):
        led.append_many(batch)
    led.sign_head()
    led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pub, heads = led.public_key_text, led.keys.read_heads()
    led.close()
    size = os.path.getsize(path)
    subprocess.run(["sha256sum", path], capture_output=True, check=True)  # warm the page cache
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", path], capture_output=True, check=True)
    sha = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = verify_ledger(path, pub, heads)
    ours = time.perf_counter() - t0
    assert v.valid, v.message
    t0 = time.perf_counter()
    subprocess.run(["cp", path, os.path.join(tmp, "copy.sqlite")], check=True)
    cp = time.perf_counter() - t0
    return sha, ours, cp, size


def main() -> None:
    rows = int(os.environ.get("BENCH_ROWS", "1000000"))
    tmp = tempfile.mkdtemp(prefix="netaudit-bench-")
    try:
        print(f"{'batch':>6} {'plain rows/s':>14} {'chained rows/s':>15} {'ratio':>7}")
        for batch, plain, chained in bench_appends(tmp):
            print(f"{batch:>6} {plain:>14,.0f} {chained:>15,.0f} {chained / plain:>7.0%}")
        sha, ours, cp, size = bench_verify(tmp, rows)
        print(f"\nverify {rows:,} rows ({size / 1e6:.0f} MB): netaudit-verify {ours:.2f} s, "
              f"sha256sum {sha:.2f} s, ratio {ours / sha:.1f}x (of which private copy {cp:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
