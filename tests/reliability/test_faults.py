"""Faults in SQLite's real I/O (the apsw VFS shim in faultvfs.py), and in the ledger's folder.

Ledger alone: a failed append raises a LedgerError or an apsw error, loses nothing already
committed, and once the fault clears the same Ledger verifies and appends from the right seq.
Through the interceptor: real http.client calls to a local server all succeed under every fault,
the queue stays bounded, and every call is either a row or counted in a `gap` row once the fault
clears: recorded + gaps == tried (the figures table prints these per fault kind).
"""
from __future__ import annotations

import http.client
import os
import shutil

import apsw
import pytest

import interceptor
from conftest import make_event
from interceptor import NullWriter, Sink
from ledger import Ledger
from ledger.errors import LedgerError
from ledger.process_writer import ProcessWriter
from ledger.sink import LedgerWriter
from verifier.verify import verify_ledger

from .conftest import scaled
from .faultvfs import KINDS, FaultVFS
from .servers import HTTPServerProcess

CALLS = scaled(20, 400)      # audited calls under each fault
SUSTAINED = scaled(2_000, 20_000)  # calls under a fault that lasts, against a small queue
BUSY_MS = 200                # the lock fault waits this long before SQLITE_BUSY


@pytest.fixture
def vfs():
    v = FaultVFS()
    yield v
    v.close()


@pytest.fixture(scope="module")
def server():
    s = HTTPServerProcess()
    yield s
    s.close()


# ---- the ledger alone ----------------------------------------------------------------------

def _poke(led: Ledger, kind: str, other: Ledger) -> None:
    """The operation that meets the fault: an append, after another connection wrote (so pages
    must be read again), or a checkpoint (where WAL mode fsyncs)."""
    if kind == "fsync":
        led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    led.append_many(make_event(100 + i) for i in range(5))


@pytest.mark.parametrize("kind", KINDS)
def test_ledger_under_fault_loses_nothing_and_resumes(home, vfs, kind):
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    led = Ledger.open(path, key_dir=key_dir)
    led.con.setbusytimeout(BUSY_MS)
    other = Ledger.open(path, key_dir=key_dir)
    led.append_many(make_event(i) for i in range(20))
    led.sign_head()
    committed = list(led.rows())
    other.append(make_event(50))  # led's cached pages are stale now: the next append reads
    committed += list(other.rows(after_seq=committed[-1]["chain_seq"]))
    vfs.arm(kind, path=path)
    try:
        _poke(led, kind, other)
        raised = None
    except (LedgerError, apsw.Error) as exc:
        raised = exc
    hits = vfs.hits
    vfs.clear()
    assert hits, f"the {kind} fault never fired: the test does not test it"
    assert kind == "fsync" or raised is not None, f"{kind}: the append succeeded under the fault"
    after = list(led.rows())
    assert after[:len(committed)] == committed, f"{kind}: committed rows changed"
    assert len(after) in (len(committed), len(committed) + 5), f"{kind}: half an append landed"
    seq, digest = led.last()
    assert led.append(make_event(200)) == seq + 1
    led.sign_head()
    v = verify_ledger(path, led.public_key_text, led.keys.read_heads())
    assert v.valid, f"{kind}: {v.message}"
    other.close()
    led.close()


def test_ledger_open_under_read_fault_raises_a_ledger_error(home, vfs):
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    vfs.arm("eio_read")
    with pytest.raises(LedgerError):
        Ledger.open(path, key_dir=key_dir)
    vfs.clear()
    with Ledger.open(path, key_dir=key_dir) as led:
        assert led.count() == 1


def test_real_lock_held_by_another_connection(home):
    """Not the shim: a real writer holding the lock longer than the busy timeout."""
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    led = Ledger.open(path, key_dir=key_dir)
    led.con.setbusytimeout(BUSY_MS)
    holder = apsw.Connection(path)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(apsw.BusyError):
        led.append(make_event(1))
    holder.execute("ROLLBACK")
    holder.close()
    assert led.append(make_event(2)) == 2
    assert verify_ledger(path).valid
    led.close()


# ---- through the interceptor ----------------------------------------------------------------

class Audited:
    """The interceptor installed in this process, with a ledger sink for one test."""

    def __init__(self, path: str, key_dir: str, maxsize: int = 10_000, writer: str = "thread"):
        interceptor.install(sink=Sink(NullWriter()))
        if writer == "process":  # the ledger appended by a helper process (ledger.process_writer)
            self.writer = ProcessWriter(path, key_dir).start()
            assert self.writer.mode == "process", self.writer.fallback_reason
        else:
            self.writer = LedgerWriter(path, key_dir, busy_timeout_ms=BUSY_MS)
        self.sink = Sink(self.writer, maxsize=maxsize, linger_s=0)
        self.previous = interceptor.use_sink(self.sink)
        self.path = path
        self.peak = 0

    def calls(self, server, tag: str, n: int) -> int:
        """n GETs on one kept-alive connection; returns how many answered exactly as expected."""
        ok = 0
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for i in range(n):
            conn.request("GET", f"/f/{tag}/{i}?q=1")
            resp = conn.getresponse()
            ok += resp.status == 200 and resp.read() == f"ok:/f/{tag}/{i}?q=1".encode()[:43]
            self.peak = max(self.peak, self.sink.pending)
        conn.close()
        return ok

    def close(self) -> None:
        interceptor.use_sink(self.previous)
        self.sink.close(5)


def _count(path: str, key_dir: str, tag: str) -> tuple[int, int]:
    """(rows recorded for calls tagged `tag`, events counted in gap rows)."""
    with Ledger.open(path, key_dir=key_dir) as led:
        recorded = led.con.execute("SELECT count(*) FROM egress_log WHERE channel='http' AND url_path GLOB ?",
                                   (f"/f/{tag}/*",)).fetchall()[0][0]
        gaps = 0
        for (detail,) in led.con.execute("SELECT url_path FROM egress_log WHERE channel='audit' AND method='gap'"):
            gaps += int(dict(p.split("=", 1) for p in detail.split(";"))["dropped"])
    return recorded, gaps


@pytest.mark.parametrize("kind", KINDS)
def test_audited_calls_under_fault(home, vfs, server, kind, figures):
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    audited = Audited(path, key_dir, maxsize=CALLS // 2)
    try:
        ok = audited.calls(server, kind, 5)
        assert audited.sink.flush(5)
        with Ledger.open(path, key_dir=key_dir) as other:  # the writer's cached pages go stale
            other.append(make_event(1, module="other"))
        if kind == "fsync":  # WAL + synchronous=NORMAL fsyncs only at checkpoints: make every commit one
            audited.writer.ledger.con.execute("PRAGMA wal_autocheckpoint=1").fetchall()
        vfs.arm(kind, path=path)
        ok += audited.calls(server, kind, CALLS)
        audited.sink.flush(1)                   # the writer meets the fault
        hits = vfs.hits
        vfs.clear()
        ok += audited.calls(server, kind, 5)
        assert audited.sink.flush(10), f"{kind}: the sink did not drain after the fault cleared"
    finally:
        audited.close()
    tried = CALLS + 10
    recorded, gaps = _count(path, key_dir, kind)
    figures.fault(kind, tried, ok, recorded, gaps)
    assert ok == tried, f"{kind}: audited calls failed under the fault"
    assert audited.peak <= CALLS // 2, f"{kind}: the queue grew past its bound"
    assert recorded + gaps == tried, f"{kind}: {recorded} recorded + {gaps} in gaps != {tried} tried"
    assert hits, f"{kind}: the fault never fired"
    assert verify_ledger(path).valid


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_memory_stays_bounded_under_a_lasting_fault(home, vfs, server, figures):
    """Disk full for thousands of calls: the queue never passes its bound, memory does not grow
    with the calls, and after the fault every call is a row or in a gap row."""
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    audited = Audited(path, key_dir, maxsize=200)
    try:
        ok = audited.calls(server, "sustained", 5)
        assert audited.sink.flush(5)
        vfs.arm("full")
        ok += audited.calls(server, "sustained", 200)  # warm up allocator and caches
        rss0 = _rss_kb()
        ok += audited.calls(server, "sustained", SUSTAINED)
        grown = _rss_kb() - rss0
        vfs.clear()
        ok += audited.calls(server, "sustained", 5)
        assert audited.sink.flush(10)
    finally:
        audited.close()
    tried = SUSTAINED + 210
    recorded, gaps = _count(path, key_dir, "sustained")
    figures.fault(f"full, lasting ({SUSTAINED} calls)", tried, ok, recorded, gaps)
    figures.load["RSS growth over a lasting fault"] = f"{grown} KiB over {SUSTAINED} calls (queue bound 200, peak {audited.peak})"
    assert ok == tried
    assert audited.peak <= 200
    assert grown < 16 * 1024, f"memory grew by {grown} KiB under the fault"
    assert recorded + gaps == tried, f"{recorded} recorded + {gaps} in gaps != {tried} tried"


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_audited_calls_with_the_ledger_folder_deleted(home, server, figures, writer):
    """The ledger's folder is removed under the running writer, then made again: the calls made
    after the deletion must land in the ledger at the path, or in a gap row there. With the
    writer process, its receiver notices the file is gone and opens the path again."""
    folder = home / "ledgers"
    path, key_dir = str(folder / "l.sqlite"), str(home / "keys")
    Ledger.open(path, key_dir=key_dir).close()
    audited = Audited(path, key_dir, writer=writer)
    try:
        ok = audited.calls(server, "deleted", 5)
        assert audited.sink.flush(5)
        shutil.rmtree(folder)
        ok += audited.calls(server, "deleted", CALLS)
        audited.sink.flush(1)
        folder.mkdir()
        ok += audited.calls(server, "deleted", 5)
        audited.sink.flush(10)
    finally:
        audited.close()
    tried = CALLS + 5  # the 5 calls before the deletion went with the folder
    recorded, gaps = _count(path, key_dir, "deleted") if os.path.exists(path) else (0, 0)
    figures.fault(f"ledger folder deleted ({writer} writer)", tried, ok - 5, recorded, gaps)
    assert ok == tried + 5
    assert recorded + gaps == tried, f"{recorded} recorded + {gaps} in gaps != {tried} tried"


def test_audited_calls_with_the_ledger_file_corrupted(home, server, figures):
    """Pages of the ledger are overwritten under the running writer: calls go on, misses are counted."""
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    with Ledger.open(path, key_dir=key_dir) as led:
        led.append_many(make_event(i) for i in range(300))
    audited = Audited(path, key_dir)
    try:
        ok = audited.calls(server, "corrupt", 5)
        assert audited.sink.flush(5)
        audited.writer.ledger.con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        with open(path, "r+b") as f:
            f.seek(4096)
            f.write(os.urandom(4096 * 8))
        ok += audited.calls(server, "corrupt", CALLS)
        audited.sink.flush(2)
    finally:
        audited.close()
    tried = CALLS + 5
    counted = audited.sink.written + audited.sink.dropped_total
    figures.fault("ledger file corrupted (sink)", tried, ok, audited.sink.written, audited.sink.dropped_total)
    assert ok == tried
    assert counted >= tried  # each call is written or counted (a gap row cannot be written here)
    assert not verify_ledger(path).valid if _readable(path) else True


def _readable(path: str) -> bool:
    try:
        verify_ledger(path)
        return True
    except Exception:
        return False


def test_regression_commit_that_landed_is_not_reported_failed(home, vfs):
    """An fsync failure in the checkpoint that runs right after a commit came back as the
    COMMIT's error, though the rows were durable in the WAL: the ledger raised for a write that
    happened, and the sink counted those events as dropped as well as recorded (and wrote the same
    gap row again at every retry)."""
    path, key_dir = str(home / "l.sqlite"), str(home / "keys")
    led = Ledger.open(path, key_dir=key_dir)
    led.append(make_event(1))
    led.con.execute("PRAGMA wal_autocheckpoint=1").fetchall()  # from now on every commit checkpoints
    vfs.arm("fsync")
    outcomes = []
    for i in range(3):
        try:
            outcomes.append(("ok", led.append(make_event(10 + i))))
        except apsw.Error:
            outcomes.append(("raised", led.last()[0]))
    assert vfs.hits
    vfs.clear()
    # an append that raised left nothing behind; one that returned is there
    assert led.count() == 2 + sum(o[0] == "ok" for o in outcomes), outcomes
    assert verify_ledger(path).valid
    led.close()
