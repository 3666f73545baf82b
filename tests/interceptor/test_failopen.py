"""Fail-open: faults injected at each step never touch the audited call, and every miss comes
back as a `gap` row in the chain once writing works again."""
from __future__ import annotations

import http.client
import os
import threading
import urllib.request

import apsw
import pytest

import interceptor
from interceptor import GUARD, MemoryWriter, Sink
from interceptor_fixtures import captured, ledger_sink, servers  # noqa: F401  (fixtures)
from interceptor_servers import HOST, free_port
from verifier.verify import verify_ledger



def _get(servers, path="/"):
    c = http.client.HTTPConnection(HOST, servers.http)
    c.request("GET", path)
    body = c.getresponse().read()
    c.close()
    return body


def _gaps(led):
    out = []
    for r in led.rows():
        if r["channel"] == "audit" and r["method"] == "gap":
            out.append(dict(p.split("=", 1) for p in r["url_path"].split(";")))
    return out


def _valid(path):
    verdict = verify_ledger(path)
    assert verdict.valid, verdict


class Boom(RuntimeError):
    pass


def _raise(*a, **k):
    raise Boom("injected")


def test_attribution_fault(ledger_sink, servers):
    sink, writer, path, _ = ledger_sink()
    before = GUARD.faults
    previous = interceptor.use_attribution(_raise)
    try:
        assert _get(servers, "/a") == b"ok:/a"
        assert urllib.request.urlopen(servers.url("/b")).status == 200
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection(HOST, free_port()).request("GET", "/")
    finally:
        interceptor.use_attribution(previous)
    assert GUARD.faults - before >= 3
    _get(servers, "/after")
    assert sink.flush(5)
    gaps = _gaps(writer.ledger)
    assert sum(int(g["dropped"]) for g in gaps) >= 3 and "Boom" in gaps[0]["reason"]
    assert [r["url_path"] for r in writer.ledger.rows() if r["channel"] == "http"] == ["/after"]
    _valid(path)


def test_redaction_fault(ledger_sink, servers, monkeypatch):
    from interceptor import http_wrappers

    sink, writer, path, _ = ledger_sink()
    monkeypatch.setattr(http_wrappers, "split_url", _raise)
    assert urllib.request.urlopen(servers.url("/x?secret=1")).status == 200
    monkeypatch.undo()
    assert sink.flush(5)
    assert _gaps(writer.ledger)[0]["dropped"] == "1"
    _valid(path)


def test_sink_that_raises(servers):
    class BadSink:
        def submit(self, rec):
            raise Boom("sink down")

        def miss(self, ts, reason):
            raise Boom("cannot even count")

    before = GUARD.faults
    previous = interceptor.use_sink(BadSink())
    try:
        assert _get(servers, "/s") == b"ok:/s"
    finally:
        interceptor.use_sink(previous)
    assert GUARD.faults == before + 1 and GUARD.by_step["record"] >= 1


def test_full_queue_drops_then_writes_a_gap(servers):
    release = threading.Event()

    class SlowWriter(MemoryWriter):
        def write_batch(self, events):
            release.wait(10)
            super().write_batch(events)

    w = SlowWriter()
    sink = Sink(w, maxsize=2, batch_size=1, linger_s=0)
    previous = interceptor.use_sink(sink)
    try:
        for i in range(8):
            assert _get(servers, f"/q{i}") == f"ok:/q{i}".encode()
    finally:
        interceptor.use_sink(previous)
    release.set()
    assert sink.flush(5)
    assert len(w.events) + sum(g[0] for g in w.gaps) == 8
    assert w.gaps and w.gaps[0][3] == "QueueFull" and w.gaps[0][1] <= w.gaps[0][2]


def test_ledger_in_an_unusable_folder_then_repaired(ledger_sink, servers, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the ledger folder should be")
    sink, writer, path, _ = ledger_sink(path=blocker / "ledger.sqlite")
    for i in range(3):
        assert _get(servers, f"/m{i}") == f"ok:/m{i}".encode()
    sink.flush(0.5)
    assert sink.pending_gap >= 3 and sink.write_faults >= 1
    blocker.unlink()
    blocker.mkdir()
    _get(servers, "/repaired")
    assert sink.flush(5)
    gaps = _gaps(writer.ledger)
    assert int(gaps[0]["dropped"]) == 3
    gap_row = next(r for r in writer.ledger.rows() if r["method"] == "gap")
    assert int(gaps[0]["until"]) >= gap_row["ts"]  # the row's ts is t1, the first miss
    assert [r["url_path"] for r in writer.ledger.rows() if r["channel"] == "http"] == ["/repaired"]
    _valid(path)


def test_locked_database_then_released(ledger_sink, servers, tmp_path):
    sink, writer, path, _ = ledger_sink(busy_timeout_ms=50)
    _get(servers, "/first")
    assert sink.flush(5)
    locker = apsw.Connection(path)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(4):
            assert _get(servers, f"/l{i}") == f"ok:/l{i}".encode()
        sink.flush(0.5)
        assert sink.write_faults >= 1 and sink.pending_gap == 4
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    _get(servers, "/after")
    assert sink.flush(5)
    gaps = _gaps(writer.ledger)
    assert gaps[0]["dropped"] == "4" and "Busy" in gaps[0]["reason"]
    paths = [r["url_path"] for r in writer.ledger.rows() if r["channel"] == "http"]
    assert paths == ["/first", "/after"]
    _valid(path)
    from ledger.report import summarize

    assert summarize(writer.ledger).dropped == 4


def test_memory_stays_bounded_with_a_stalled_writer(servers):
    release = threading.Event()

    class Stalled(MemoryWriter):
        def write_batch(self, events):
            release.wait(10)

    sink = Sink(Stalled(), maxsize=50, linger_s=0)
    for i in range(2000):
        from interceptor.capture import Record

        sink.submit(Record("http", "http", "GET", "h", 80))
    assert sink.pending <= 50 and sink.dropped_total >= 1900
    release.set()
    sink.close(5)


def test_an_emit_inside_the_sinks_own_lock_neither_blocks_nor_is_lost():
    """socket_bytes emits a connection from __del__, which the garbage collector may run on any
    thread at any allocation, also while that thread holds the sink's lock (the writer reading
    the gap counters). That emit, a miss here (the queue is full), must not wait on its own thread."""
    from interceptor.capture import Record, emit

    sink = Sink(MemoryWriter(), maxsize=0, linger_s=0)  # every submit is a miss, and miss() locks
    done = threading.Event()

    def locked_section():
        with sink._lock:
            emit(Record("socket", "tcp", "connect", "gc.example", 1), sink)
            done.set()

    t = threading.Thread(target=locked_section, daemon=True)
    t.start()
    t.join(2)
    try:
        assert done.is_set(), "the emit blocked on the lock its own thread holds"
        assert sink.dropped_total == 1
        assert sink.flush(5) and sink.writer.gaps[0][0] == 1
    finally:
        sink.close(1)
