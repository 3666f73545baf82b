"""Several processes x threads append to one ledger at once: no gap, no duplicate, exact count."""
from __future__ import annotations

import multiprocessing as mp
import threading

from conftest import make_event
from ledger import Ledger
from verifier.verify import verify_ledger

PROCS, THREADS, BATCHES, BATCH = 4, 2, 25, 8


def _worker(path: str, key_dir: str, proc: int) -> None:
    def thread(t: int) -> None:
        led = Ledger.open(path, key_dir=key_dir)  # one connection per thread, as workers would
        for b in range(BATCHES):
            led.append_many(make_event(i, pid=proc, module=f"p{proc}t{t}") for i in range(BATCH))
        led.close()

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_processes_and_threads_appending_at_once(home):
    path, key_dir = str(home / "c.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(path, key_dir, p)) for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = Ledger.open(path, key_dir=key_dir)
    expected = 1 + PROCS * THREADS * BATCHES * BATCH
    seqs = [r[0] for r in led.con.execute("SELECT chain_seq FROM egress_log ORDER BY chain_seq")]
    assert seqs == list(range(1, expected + 1))
    per_writer = dict(led.con.execute("SELECT module, count(*) FROM egress_log WHERE channel='http' GROUP BY module"))
    assert per_writer == {f"p{p}t{t}": BATCHES * BATCH for p in range(PROCS) for t in range(THREADS)}
    led.sign_head()
    assert verify_ledger(path, led.public_key_text, led.keys.read_heads()).valid
    led.close()


def test_threads_sharing_one_ledger_object(new_ledger):
    led = new_ledger(0)
    threads = [threading.Thread(target=lambda: [led.append_many([make_event(i)]) for i in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert led.count() == 1 + 200
    assert verify_ledger(led.path).valid
