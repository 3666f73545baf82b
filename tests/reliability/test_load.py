"""Load: several processes (as Odoo's workers are) with several threads each, at full speed for a
fixed time. The chain verifies, chain_seq has no gap or duplicate, every event reached the ledger
or a gap row, and no `database is locked` (or any other error) reached the audited code.

Two levels: the ledger alone (append_many from every thread, each with its own connection), and
real http.client calls to a local server through the interceptor with a ledger sink. The second
runs each process twice, bare then audited, at the same time as the others, so the p99 of an
audited call can be set beside the p99 of the same call without the auditor.
"""
from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time

from conftest import make_event
from ledger import Ledger
from verifier.verify import verify_ledger

from .conftest import scaled
from .servers import HTTPServerProcess

PROCS, THREADS = 3, 3
SECONDS = scaled(3.0, 30.0)


def _ledger_worker(path: str, key_dir: str, proc: int, seconds: float, out) -> None:
    counts, errors = {}, []

    def thread(t: int) -> None:
        rng = random.Random(proc * 100 + t)
        led = Ledger.open(path, key_dir=key_dir)
        n, deadline = 0, time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                k = rng.randint(1, 10)
                led.append_many(make_event(n + i, module=f"p{proc}t{t}") for i in range(k))
                n += k
        except Exception as exc:  # noqa: BLE001 - every error is a failure of the test, reported
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            counts[f"p{proc}t{t}"] = n
            led.close()

    ts = [threading.Thread(target=thread, args=(t,)) for t in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((counts, errors))


def test_ledger_under_load(home, figures):
    path, key_dir = str(home / "load.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ledger_worker, args=(path, key_dir, p, SECONDS, out)) for p in range(PROCS)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get(timeout=SECONDS + 120) for _ in procs]
    for p in procs:
        p.join(60)
    elapsed = time.monotonic() - t0
    counts = {k: v for c, _ in results for k, v in c.items()}
    errors = [e for _, errs in results for e in errs]
    assert not errors, errors
    with Ledger.open(path, key_dir=key_dir) as led:
        seqs = [r[0] for r in led.con.execute("SELECT chain_seq FROM egress_log ORDER BY chain_seq")]
        per = dict(led.con.execute("SELECT module, count(*) FROM egress_log WHERE channel='http' GROUP BY module"))
        led.sign_head()
        v = verify_ledger(path, led.public_key_text, led.keys.read_heads())
    assert seqs == list(range(1, len(seqs) + 1)), "chain_seq has a gap or a duplicate"
    assert per == counts, "an append that returned is missing from the ledger"
    assert v.valid, v.message
    total = sum(counts.values())
    figures.load[f"ledger: {PROCS} procs x {THREADS} threads"] = f"{total / SECONDS:,.0f} events/s sustained ({total:,} in {SECONDS:g} s; wall {elapsed:.1f} s)"


# ---- through the interceptor ----------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def _http_worker(path: str, key_dir: str, port: int, proc: int, seconds: float, barrier, out) -> None:
    import http.client

    def run(tag: str) -> tuple[int, int, list[float], list[str]]:
        lat, errors, tried, ok = [], [], [0], [0]

        def thread(t: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            deadline, i = time.monotonic() + seconds, 0
            while time.monotonic() < deadline:
                url = f"/{tag}/p{proc}t{t}/{i}"
                t1 = time.perf_counter()
                try:
                    tried[0] += 1
                    conn.request("GET", url)
                    resp = conn.getresponse()
                    body = resp.read()
                    ok[0] += resp.status == 200 and body == b"ok:" + url.encode()[:40]
                except Exception as exc:  # noqa: BLE001 - reported, fails the test
                    errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                lat.append(time.perf_counter() - t1)
                i += 1
            conn.close()

        ts = [threading.Thread(target=thread, args=(t,)) for t in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return tried[0], ok[0], lat, errors

    barrier.wait()
    bare = run("bare")
    import interceptor
    from ledger.sink import LedgerWriter

    sink = interceptor.Sink(LedgerWriter(path, key_dir))
    interceptor.install(sink=sink)
    barrier.wait()
    audited = run("audited")
    flushed = sink.flush(60)
    out.put(dict(bare=bare, audited=audited, flushed=flushed, written=sink.written, dropped=sink.dropped_total))


def test_audited_calls_under_load(home, figures):
    path, key_dir = str(home / "load.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    server = HTTPServerProcess()
    try:
        ctx = mp.get_context("spawn")
        out, barrier = ctx.Queue(), ctx.Barrier(PROCS)
        procs = [ctx.Process(target=_http_worker, args=(path, key_dir, server.port, p, SECONDS, barrier, out))
                 for p in range(PROCS)]
        for p in procs:
            p.start()
        results = [out.get(timeout=2 * SECONDS + 180) for _ in procs]
        for p in procs:
            p.join(60)
    finally:
        server.close()
    errors = [e for r in results for e in r["bare"][3] + r["audited"][3]]
    assert not errors, errors[:5]
    tried = sum(r["audited"][0] for r in results)
    ok = sum(r["audited"][1] for r in results)
    assert ok == tried, "an audited call did not answer as it would without the auditor"
    assert all(r["flushed"] for r in results)
    with Ledger.open(path, key_dir=key_dir) as led:
        seqs = [r[0] for r in led.con.execute("SELECT chain_seq FROM egress_log ORDER BY chain_seq")]
        recorded = led.con.execute("SELECT count(*) FROM egress_log WHERE channel='http' "
                                   "AND url_path GLOB '/audited/*'").fetchall()[0][0]
        bare_rows = led.con.execute("SELECT count(*) FROM egress_log WHERE url_path GLOB '/bare/*'").fetchall()[0][0]
        gaps = sum(int(dict(p.split("=", 1) for p in d.split(";"))["dropped"]) for (d,) in led.con.execute(
            "SELECT url_path FROM egress_log WHERE channel='audit' AND method='gap'"))
        v = verify_ledger(path)
    assert seqs == list(range(1, len(seqs) + 1))
    assert bare_rows == 0
    assert recorded + gaps == tried, f"{recorded} recorded + {gaps} in gaps != {tried} tried"
    assert v.valid, v.message
    bare_lat = [x for r in results for x in r["bare"][2]]
    aud_lat = [x for r in results for x in r["audited"][2]]
    b99, a99 = _pct(bare_lat, 0.99) * 1e3, _pct(aud_lat, 0.99) * 1e3
    b50, a50 = _pct(bare_lat, 0.50) * 1e3, _pct(aud_lat, 0.50) * 1e3
    figures.fault("load (no fault)", tried, ok, recorded, gaps)
    figures.load[f"audited http: {PROCS} procs x {THREADS} threads"] = (
        f"{tried / SECONDS:,.0f} calls/s audited vs {sum(r['bare'][0] for r in results) / SECONDS:,.0f} bare")
    figures.load["audited call p50 / p99"] = f"{a50:.2f} / {a99:.2f} ms (bare {b50:.2f} / {b99:.2f} ms)"
    figures.load["p99 added by the interceptor"] = f"{a99 - b99:+.2f} ms (p50 {a50 - b50:+.2f} ms)"
