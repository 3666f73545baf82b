"""`netaudit run` with a Python that has only the standard library: the relay to the parent's ledger.

Real processes, a real throwaway venv without our package, apsw or cryptography, real local
servers, a real ledger checked by the verifier. The relay's fail-open side (parent gone, then
back) and the receiver's side (malformed datagrams) are exercised with real sockets in process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import interceptor
from interceptor import Sink
from interceptor.event import NetEvent
from interceptor.relay import EVENT_FIELDS, MAX_DATAGRAM, SHAPE_FIELDS, VARYING_FIELDS, WIRE_VERSION, RelayWriter
from interceptor_fixtures import http_rows, ledger_sink, line_of, netaudit_run, run_rows, servers  # noqa: F401
from interceptor_servers import head_size
from ledger.ledger import Ledger
from ledger.relay import RelayReceiver
from verifier.verify import verify_ledger

PAYLOAD = b"relay-fingerprint-payload-0123456789"

APP = '''\
import importlib.util, subprocess, sys, urllib.request
missing = [m for m in ("ledger", "apsw", "cryptography") if importlib.util.find_spec(m) is not None]
assert not missing, "this Python must have only the standard library: %%r" %% missing
import _netaudit_interceptor as interceptor  # the bootstrap's private copy (ledger.run.PRIVATE_PACKAGE)
assert interceptor.installed(), "the bootstrap did not install the interceptor"
urllib.request.urlopen("http://127.0.0.1:%(port)d/from-app?k=v", data=%(payload)r).read()  # APP-CALL
subprocess.run([sys.executable, %(grandchild)r], check=True)
sys.exit(5)
'''

GRANDCHILD = '''\
import urllib.request
urllib.request.urlopen("http://127.0.0.1:%(port)d/from-grandchild").read()  # GRANDCHILD-CALL
'''


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A venv with only the standard library: our package, apsw and cryptography are not importable."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import apsw"], capture_output=True, cwd=str(venv),
                           env=dict(os.environ, PYTHONPATH=""))
    assert probe.returncode != 0, "the throwaway venv can import apsw: the test would prove nothing"
    return str(python)


def _wire(events, digests=None) -> dict:
    """An events message's "shapes" and "events" for NetEvents, each with a shape of its own (as
    a sender other than our RelayWriter might frame them); `digests`: each row's payload digest."""
    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    shapes = [[plain(getattr(e, f)) for f in SHAPE_FIELDS] for e in events]
    rows = [[i, *(round(e.duration_ms * 1e6) if f == "duration_ms" else getattr(e, f) for f in VARYING_FIELDS),
             (digests or {}).get(i, "")] for i, e in enumerate(events)]  # the duration in nanoseconds
    return {"t0": 0, "shapes": shapes, "events": rows}


def test_stdlib_only_child_and_grandchild_are_audited(tmp_path, servers, bare_python, ledger_sink):
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(GRANDCHILD % {"port": servers.http})
    app_text = APP % {"port": servers.http, "payload": PAYLOAD, "grandchild": str(grandchild)}
    app = tmp_path / "app.py"
    app.write_text(app_text)

    r = netaudit_run(tmp_path, bare_python, str(app))
    assert r.returncode == 5, r.stderr
    assert "netaudit:" not in r.stderr and "Error" not in r.stderr, r.stderr

    rows = run_rows(tmp_path)
    http = http_rows(tmp_path)
    assert sorted(http) == ["/from-app", "/from-grandchild"]
    app_row, gc_row = http["/from-app"], http["/from-grandchild"]
    assert (app_row["module"], app_row["call_site"]) == ("app", f"app:{line_of(app_text, 'APP-CALL')}:<module>")
    assert (gc_row["module"], gc_row["call_site"]) == (
        "grandchild", f"grandchild:{line_of(GRANDCHILD, 'GRANDCHILD-CALL')}:<module>")
    assert app_row["method"] == "POST" and app_row["query_keys"] == "k" and app_row["status"] == "200"
    # bytes out: the POST's head, as the server read it, and its payload
    assert app_row["req_bytes"] == head_size(servers.http, "/from-app?k=v") + len(PAYLOAD) and app_row["fingerprint"]
    assert app_row["pid"] != gc_row["pid"] and not app_row["self_egress"]
    installed = [x for x in rows if x["method"] == "interceptor_installed"]
    assert {x["pid"] for x in installed} == {app_row["pid"], gc_row["pid"]}
    assert all("via=relay" in x["url_path"] for x in installed)
    # the relay's own socket is not egress: no row for it, no self-egress, nothing dropped
    assert not any("netaudit-run" in x["host"] or "relay" in x["host"] for x in rows)
    assert not any(x["method"] == "gap" for x in rows)
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid

    # the same payload through the in-process path, on the same ledger: the same fingerprint
    sink, writer, _, _ = ledger_sink(tmp_path / "run.sqlite", tmp_path / "keys")
    urllib.request.urlopen(f"http://127.0.0.1:{servers.http}/in-process", data=PAYLOAD).read()
    assert sink.flush(5)
    here = [x for x in writer.ledger.rows() if x["url_path"] == "/in-process"]
    assert len(here) == 1 and here[0]["fingerprint"] == app_row["fingerprint"]
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid


def test_exit_codes_and_signals_propagate(tmp_path, bare_python):
    assert netaudit_run(tmp_path, bare_python, "-c", "import sys; sys.exit(0)").returncode == 0
    assert netaudit_run(tmp_path, bare_python, "-c", "raise SystemExit(42)").returncode == 42
    r = netaudit_run(tmp_path, bare_python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert r.returncode == 128 + 15, r.stderr


def test_chained_sitecustomize_still_runs(tmp_path, bare_python):
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import builtins\nbuiltins.OWN_SITECUSTOMIZE = True\n")
    code = ("import builtins, _netaudit_interceptor as interceptor, sys; "
            "sys.exit(0 if builtins.OWN_SITECUSTOMIZE and interceptor.installed() else 3)")
    r = netaudit_run(tmp_path, bare_python, "-c", code, env=dict(os.environ, PYTHONPATH=str(own)))
    assert r.returncode == 0, r.stderr


def _get(port: int, path: str) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read()


def test_parent_gone_then_back_gives_a_gap_row(tmp_path, servers):
    """Fail-open: with no receiver the calls go on and are counted; once the relay is back, the
    gap row and the next events reach the ledger."""
    path = str(tmp_path / "relay.sock")
    writer = RelayWriter(path, send_timeout=0.5)
    sink = Sink(writer, linger_s=0)
    writer.on_miss = sink.miss
    previous = interceptor.use_sink(sink)
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = None
    try:
        _get(servers.http, "/while-gone-1")
        _get(servers.http, "/while-gone-2")
        assert not sink.flush(0.5)  # the pending gap cannot be written: nobody listens
        assert sink.dropped_total == 2 and sink.write_faults >= 1
        receiver = RelayReceiver(led, path).start()
        _get(servers.http, "/after-recovery")
        assert sink.flush(10)
    finally:
        interceptor.use_sink(previous)
        sink.close(2)
        if receiver is not None:
            receiver.stop()
    rows = list(led.rows())
    led.close()
    gaps = [x for x in rows if x["method"] == "gap"]
    assert len(gaps) == 1 and "dropped=2;" in gaps[0]["url_path"] and gaps[0]["pid"] == os.getpid()
    assert [x["url_path"] for x in rows if x["channel"] == "http"] == ["/after-recovery"]
    assert verify_ledger(str(tmp_path / "l.sqlite")).valid


def test_malformed_datagrams_are_dropped_counted_and_the_rest_recorded(tmp_path, servers):
    path = str(tmp_path / "relay.sock")
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, path).start()
    try:
        # a real record, relayed the ordinary way
        writer = RelayWriter(path)
        sink = Sink(writer, linger_s=0)
        writer.on_miss = sink.miss
        previous = interceptor.use_sink(sink)
        try:
            _get(servers.http, "/good")
            assert sink.flush(10)
        finally:
            interceptor.use_sink(previous)
            sink.close(2)
        # then junk, straight to the socket
        base = {"v": WIRE_VERSION, "kind": "events", "pid": 7}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_DATAGRAM)
            for bad in [
                b"\xff\xfenot json",
                b"[1, 2, 3]",
                json.dumps({"v": 99, "kind": "events", "pid": 7, "events": []}).encode(),
                json.dumps({**base, "shapes": [], "events": [["too", "short"]]}).encode(),
                json.dumps({**base, "kind": "gap", "dropped": "many", "t1": 0, "t2": 0, "reason": ""}).encode(),
                b'{"v":%d,"kind":"hello","pid":7,"ts":1,"version":"\\ud800"}' % WIRE_VERSION,  # a lone surrogate
                json.dumps({**base, "pid": 2 ** 70, "events": []}).encode(),
                b'{"v":%d,"kind":"events","pid":7,"events":[' % WIRE_VERSION + b" " * MAX_DATAGRAM + b"]}",  # oversized
            ]:
                s.sendto(bad, path)
        # a forged admin fact in an events message is refused as well
        fact = NetEvent(ts=1, duration_ms=0.0, direction="egress", channel="audit", protocol="",
                        method="head_signed")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(json.dumps({**base, **_wire([fact])}).encode(), path)
            # one bad row costs only itself, not the good row beside it
            good = NetEvent(ts=time.time_ns(), duration_ms=1.0, direction="egress", channel="http",
                            protocol="http", method="GET", host="127.0.0.1", url_path="/mixed-good", pid=7)
            bad = dataclasses.replace(good, pid=2 ** 70, url_path="/mixed-bad")  # pid beyond SQLite's integers
            s.sendto(json.dumps({**base, **_wire([bad, good])}).encode(), path)
        # and a valid message after all of it is still recorded
        writer = RelayWriter(path)
        writer.write_gap(3, 10, 20, "QueueFull")
        writer.close()
    finally:
        receiver.stop()
    rows = list(led.rows())
    led.close()
    assert sum(receiver.rejected.values()) == 10, receiver.rejected
    assert receiver.rejected["relay_oversized"] == 1 and receiver.rejected["relay_not_json"] == 1
    assert receiver.rejected["relay_audit_row"] == 1 and receiver.rejected["relay_bad_text"] == 1
    gaps = [x for x in rows if x["method"] == "gap"]
    assert any("dropped=3;" in g["url_path"] and "QueueFull" in g["url_path"] for g in gaps)
    relay_drops = sum(int(g["url_path"].split("dropped=")[1].split(";")[0]) for g in gaps
                      if "relay_" in g["url_path"])
    assert relay_drops == 10
    assert [x["url_path"] for x in rows if x["channel"] == "http"] == ["/good", "/mixed-good"]
    assert verify_ledger(str(tmp_path / "l.sqlite")).valid


def test_the_receiver_forgets_senders_whose_process_is_gone(tmp_path, monkeypatch):
    """A writer process serves processes that come and go (Odoo's recycled workers, a build's
    subprocesses): what it keeps per sender stays bounded by the living ones, and a ledger file
    reopened in place of a replaced one repeats the hellos of living senders only. Before, every
    pid ever seen was kept, and each reopened file got a hello for each of them."""
    import ledger.relay as relay_mod
    from interceptor.capture import Record

    monkeypatch.setattr(relay_mod, "SENDERS_KEPT", 8)
    gone = []
    for _ in range(40):  # pids of processes that have exited (and been waited for)
        p = subprocess.Popen(["true"])
        p.wait()
        gone.append(p.pid)
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    path = str(tmp_path / "relay.sock")
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, path).start()

    def sent(*datagrams):
        expected = receiver.datagrams + len(datagrams)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, path)
        deadline = time.monotonic() + 10
        while receiver.datagrams < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert receiver.datagrams == expected

    def hello(pid):
        return json.dumps({"v": WIRE_VERSION, "kind": "hello", "pid": pid, "ts": time.time_ns(),
                           "version": "test"}).encode()

    try:
        # a sender may say any pid: none of these is a process, and none may stop the receiver
        # (review 18, M2: os.kill(2 ** 40, 0) raised, and the rows received with it were lost)
        odd = [2 ** 40, -5, 0, 2 ** 62]
        sent(hello(living.pid), *(hello(pid) for pid in odd + gone))
        assert len(receiver._senders) <= relay_mod.SENDERS_KEPT and living.pid in receiver._senders
        assert not receiver.rejected, receiver.rejected
        writer = RelayWriter(path)  # this process: a living sender with an event
        writer.write_records([Record("http", "http", "GET", "h.example", 80)])
        assert writer.sync(10)
        os.rename(led.path, led.path + ".old")  # e.g. a rotation: the receiver opens the path again
        for _ in range(2):  # the first is a miss (the file was replaced), the second opens the new file
            writer.write_records([Record("http", "http", "GET", "h.example", 80)])
            assert writer.sync(10)
        writer.close()
    finally:
        receiver.stop()
        living.kill()
        living.wait()
    with Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), readonly=True) as new:
        rehellos = [r["pid"] for r in new.rows() if r["method"] == "interceptor_installed"]
    assert sorted(rehellos) == sorted([living.pid, os.getpid()])
    assert receiver.rejected == {"relay_LedgerError": 1}, receiver.rejected  # the row that found the file replaced


def test_a_child_that_cannot_be_audited_is_recorded_as_such(tmp_path, bare_python):
    """The bootstrap where the interceptor fails to import (as on a Python older than 3.11): the
    program still runs, says so on stderr, and the parent's ledger gets an
    interceptor_not_installed row for that process."""
    from ledger.run import BOOTSTRAP, PRIVATE_PACKAGE

    boot = tmp_path / "boot"
    (boot / PRIVATE_PACKAGE).mkdir(parents=True)
    (boot / "sitecustomize.py").write_text(BOOTSTRAP)
    (boot / PRIVATE_PACKAGE / "__init__.py").write_text("raise ImportError('planted: cannot run here')\n")
    path = str(tmp_path / "relay.sock")
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, path).start()
    try:
        r = subprocess.run([bare_python, "-c", "import os, sys; print(os.getpid()); sys.exit(4)"],
                           env=dict(os.environ, PYTHONPATH=str(boot), NETAUDIT_RELAY=path),
                           capture_output=True, text=True, timeout=60)
    finally:
        receiver.stop()
    rows = list(led.rows())
    led.close()
    assert r.returncode == 4 and "netaudit: interceptor not installed" in r.stderr
    facts = [x for x in rows if x["method"] == "interceptor_not_installed"]
    assert len(facts) == 1 and facts[0]["pid"] == int(r.stdout.strip())
    assert "reason=ImportError" in facts[0]["url_path"] and "python=3." in facts[0]["url_path"]
    assert verify_ledger(str(tmp_path / "l.sqlite")).valid


FORKING_APP = '''\
import os, urllib.request
import _netaudit_interceptor as interceptor
pid = os.fork()
urllib.request.urlopen("http://127.0.0.1:%(port)d/" + ("fork-child" if pid == 0 else "fork-parent")).read()
if pid == 0:
    os._exit(0 if interceptor.flush(10) else 1)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_relays_with_its_own_pid(tmp_path, servers, bare_python):
    app = tmp_path / "forker.py"
    app.write_text(FORKING_APP % {"port": servers.http})
    r = netaudit_run(tmp_path, bare_python, str(app))
    assert r.returncode == 0, r.stderr
    rows = run_rows(tmp_path)
    by_path = {x["url_path"]: x["pid"] for x in rows if x["channel"] == "http"}
    assert sorted(by_path) == ["/fork-child", "/fork-parent"]
    installed = {x["pid"] for x in rows if x["method"] == "interceptor_installed"}
    assert installed == set(by_path.values()) and len(installed) == 2
    assert verify_ledger(str(tmp_path / "run.sqlite")).valid


def test_full_socket_misses_are_counted_and_come_back_as_a_gap(tmp_path, servers):
    """The parent is alive but not reading: the queue fills, sends time out, the calls go on; once
    the parent reads again every call is either a row or counted in a gap row."""
    path = str(tmp_path / "relay.sock")
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, path)  # bound, not started: nothing drains the socket yet
    writer = RelayWriter(path, send_timeout=0.1)
    sink = Sink(writer, linger_s=0)
    writer.on_miss = sink.miss
    previous = interceptor.use_sink(sink)
    calls = 0
    try:
        while sink.dropped_total == 0 and calls < 2000:
            _get(servers.http, f"/full-{calls}")
            calls += 1
            sink.flush(0.3)
        assert sink.dropped_total > 0, "the socket never filled"
        receiver.start()
        _get(servers.http, "/after-full")
        calls += 1
        assert sink.flush(10)
    finally:
        interceptor.use_sink(previous)
        sink.close(2)
        receiver.stop()
    rows = list(led.rows())
    led.close()
    http = [x for x in rows if x["channel"] == "http"]
    dropped = sum(int(g["url_path"].split("dropped=")[1].split(";")[0]) for g in rows if g["method"] == "gap")
    assert dropped == sink.dropped_total and dropped > 0
    assert len(http) + dropped == calls and http[-1]["url_path"] == "/after-full"
    assert verify_ledger(str(tmp_path / "l.sqlite")).valid


def test_an_oversized_row_in_a_batch_that_cannot_be_sent_is_counted_once(tmp_path):
    """A record too big for a datagram is a miss; when the batch's first datagram then fails, the
    sink counts the whole batch, so the oversized record must not have been counted already."""
    from interceptor.capture import Record

    writer = RelayWriter(str(tmp_path / "nobody-listens.sock"), send_timeout=0.1)
    writer._hello = True  # past the hello: the events datagram is the first send to fail
    sink = Sink(writer, linger_s=0)
    writer.on_miss = sink.miss
    big, small = Record("socket", "tcp", "connect", "a.example", 1), Record("socket", "tcp", "connect", "b.example", 2)
    big.call_site = "x" * MAX_DATAGRAM
    try:
        assert not sink._write([big, small])
        assert sink.dropped_total == 2 and sink.pending_gap == 2
    finally:
        sink.close(0.5)


def _frame(records, shapes=None) -> bytes:
    """One events datagram, framed as RelayWriter.write_records frames it."""
    from interceptor.relay import Shapes

    return b'{"v":%d,"kind":"events","pid":7,' % WIRE_VERSION + (shapes or Shapes()).frame(records)


def _odd_records() -> list:
    """Records as the wrappers leave them, odd values included: an int status, a None port, a path
    with a space, a lone surrogate in a header name, no payload, names as lists."""
    from interceptor.capture import Record

    a = Record("http", "https", "POST", "user:pw@api.example", 443)
    a.url_path, a.query_keys, a.header_names, a.status = "/a b", ["k", "k2"], ["X-Key"], 201
    a.hash_payload(PAYLOAD)
    b = Record("socket", "tcp", "connect", "db.example", None)
    b.error, b.src_port, b.header_names, b.duration_ns = "ConnectionRefusedError", None, ["Bad\udcff"], 3
    c = Record("smtp", "smtps", "MAIL", "mail.example", 465)
    c.status, c.resp_bytes, c.module, c.author, c.self_egress = "250", None, "sale", "Odoo S.A.", 1
    # values no wrapper sets, but a program or a custom attribution might: each event is still written
    d = Record("http", "http", "GET", "h.example", "http")  # HTTPConnection(host, port="http"), refused
    d.module, d.call_site, d.error, d.pid, d.query_keys, d.req_bytes = None, b"x.py:1:f", 5, 1.0, 5, None
    e = Record("http", "http", b"PUT", ["not", "hashable"], 10 ** 30)
    e.duration_ns, e.status, e.header_names = 1500.7, None, ("A", b"B")
    return [a, b, c, a, d, e, d]


def test_a_framed_record_reads_back_as_the_event_the_in_process_writer_would_write():
    """The sender's split (shape, varying fields, digest) and the receiver's merge give back exactly
    Record.to_event(salt): the relayed ledger row is the one an in-process writer would write."""
    from interceptor.relay import Shapes, decode

    salt, shapes = b"relay-test-salt", Shapes()
    records = _odd_records()
    for _ in range(2):  # the second time from the writer's memory of the shapes
        msg = decode(_frame(records, shapes), salt)
        assert list(msg.events) == [r.to_event(salt) for r in records] and not msg.rejected
        # a shape once per datagram: `a`'s two events share one; `d`'s query keys (not a list) make
        # its shape one that is not remembered, so its two events bring one each
        assert len(json.loads(_frame(records, shapes))["shapes"]) == 6


def test_the_varying_fields_are_cleaned_as_record_fields_cleans_them():
    from interceptor.relay import varying

    for rec in _odd_records():
        event = rec.to_event(None)
        values = list(varying(rec))
        values[VARYING_FIELDS.index("duration_ms")] /= 1e6  # sent in nanoseconds
        assert tuple(values) == tuple(getattr(event, f) for f in VARYING_FIELDS)


def _keeping_writer(tmp_path):
    """A RelayWriter whose datagrams are kept in a list instead of sent: (writer, that list)."""
    sent = []

    class Keep(RelayWriter):
        def _send(self, data):
            sent.append(data)

    return Keep(str(tmp_path / "unused.sock")), sent


def test_a_record_that_cannot_be_framed_costs_only_itself(tmp_path):
    """A fault while framing a later datagram (never seen: Record.fields takes any value, so this
    record's attribute raises) must not make the sink count the whole batch: the datagrams before
    it were sent. Found in review: all 65 were counted, 64 of them also in the ledger."""
    from interceptor.capture import Record
    from interceptor.relay import CHUNK, decode

    class Broken(Record):
        @property
        def url_path(self):
            raise RuntimeError("planted")

    missed = []
    writer, sent = _keeping_writer(tmp_path)
    writer.on_miss = lambda ts, reason, n=1, until=0: missed.append((reason, n))
    records = [Record("http", "http", "GET", "h.example", 80) for _ in range(2 * CHUNK)]
    records[CHUNK + 3] = Broken("http", "http", "GET", "h.example", 80)
    writer.write_records(records)
    events = [e for data in sent[1:] for e in decode(data, b"salt").events]
    assert len(events) == 2 * CHUNK - 1 and missed == [("RuntimeError", 1)]


def test_records_too_big_together_are_split_over_datagrams_in_order(tmp_path):
    from interceptor.capture import Record
    from interceptor.relay import CHUNK, decode

    records = []
    for i in range(CHUNK):
        r = Record("http", "http", "GET", "h.example", 80)
        r.ts, r.call_site = i, f"site{i}:" + "x" * 6000  # a shape of its own, ~6 KB: 10 fit in a datagram
        records.append(r)
    writer, sent = _keeping_writer(tmp_path)
    writer.write_records(records)
    assert len(sent) > 1 + CHUNK // 10 and all(len(d) <= MAX_DATAGRAM for d in sent)
    assert [e.ts for data in sent[1:] for e in decode(data, b"salt").events] == list(range(CHUNK))


def test_rows_are_framed_about_once_when_fewer_than_chunk_fit(tmp_path):
    """Where fewer than CHUNK rows fit a datagram, the next one starts at the size that fitted, not
    at its double again: each datagram would frame its rows twice or more (review 44, 3: 1,280 rows
    framed for 512 sent, 400-character paths, 256 rows a datagram)."""
    from interceptor.capture import Record
    from interceptor.relay import decode

    records = []
    for i in range(512):
        r = Record("http", "http", "GET", "h.example", 80)
        r.ts, r.url_path = i, f"/{i:04d}/" + "p" * 2400  # ~2.5 KB a row: fewer than CHUNK fit a datagram
        records.append(r)
    writer, sent = _keeping_writer(tmp_path)
    framed = []
    frame = writer._shapes.frame
    writer._shapes.frame = lambda rows: (framed.append(len(rows)), frame(rows))[1]
    writer.write_records(records)
    assert [e.ts for data in sent[1:] for e in decode(data, b"salt").events] == list(range(512))
    assert all(len(d) <= MAX_DATAGRAM for d in sent)
    assert sum(framed) < 2 * len(records), framed  # the first datagram halves once


def test_a_shape_that_cannot_be_hashed_is_still_sent():
    from interceptor.capture import Record
    from interceptor.relay import decode

    rec = Record("http", "http", "GET", "h.example", 80)
    rec.src_ip = ["not", "hashable"]  # Record.fields keeps only a str here
    (event,) = decode(_frame([rec]), b"salt").events
    assert event == rec.to_event(b"salt") and event.src_ip == ""


def test_each_datagram_carries_the_shapes_its_rows_use(tmp_path):
    """Many records of two shapes, split over several datagrams: each datagram reads alone."""
    from interceptor.capture import Record
    from interceptor.relay import CHUNK, decode

    records = []
    for i in range(3 * CHUNK):
        r = Record("http", "https", "GET", f"h{i % 2}.example", 443)
        r.ts, r.url_path = 1_764_806_400_000_000_000 + i, f"/item/{i}"
        records.append(r)
    writer, sent = _keeping_writer(tmp_path)
    writer.write_records(records)
    events = []
    for data in sent[1:]:  # after the hello
        assert len(json.loads(data)["shapes"]) == 2
        events += decode(data, b"salt").events
    assert events == [r.to_event(b"salt") for r in records]


def test_a_fault_while_the_receiver_stops_still_comes_back_as_a_gap_row(tmp_path):
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, str(tmp_path / "relay.sock"))
    receive = receiver._receive

    def faulty(wait):
        if not wait:  # the final drain, after stop()
            raise OSError("receive failed while stopping")
        return receive(wait)

    receiver._receive = faulty
    receiver.start()
    receiver.stop()
    rows = list(led.rows())
    led.close()
    gaps = [r for r in rows if r["method"] == "gap"]
    assert len(gaps) == 1 and "reason=relay_OSError" in gaps[0]["url_path"], rows


# ---- the receiver's fast path (bulk checks) against the field-by-field checks -----------------

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from interceptor.relay import MalformedDatagram, _event, _event_checked, _plain, _shapes  # noqa: E402

_ANY = st.one_of(st.integers(), st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, -(2 ** 63) - 1]),
                 st.floats(allow_nan=True), st.text(max_size=20), st.booleans(), st.none(),
                 st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
                 st.lists(st.just("n"), min_size=1023, max_size=1026),                 # about the names' bound
                 st.lists(st.sampled_from(["ok", "bad\ud800", "x" * 8193]), max_size=3),  # surrogates, long names
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
_ROW_LEN = len(VARYING_FIELDS) + 2


_GOOD_T0 = 1_764_806_400_000_000_000


def _good_record(i: int):
    from interceptor.capture import Record

    r = Record("http", "https", "POST", "api.example.com", 443)
    r.ts, r.url_path, r.query_keys, r.header_names = _GOOD_T0, f"/v1/{i}", ["page"], ["Host"]
    r.status, r.resp_bytes, r.dst_ip, r.src_ip, r.src_port = 201, 2048, "127.0.0.1", "127.0.0.1", 40000
    r.hash_payload(b"payload %d" % i)
    r.module, r.call_site, r.duration_ns = "sale", "odoo.addons.sale.models.sale_order:812:_push", 12_500_000
    return r


def _good(i: int) -> tuple[list, list]:
    """A SHAPE and a ROW as our RelayWriter sends them, through JSON as the receiver gets them
    (the datagram's t0 is the record's own time: _outcome adds it back)."""
    msg = json.loads(_frame([_good_record(i)]))
    assert msg["t0"] == _good_record(i).ts
    return msg["shapes"], msg["events"][0]


def _outcome(fn, row, shapes, t0=None):
    try:
        return fn(row, _shapes(shapes), b"salt", _GOOD_T0 if t0 is None else t0)
    except MalformedDatagram as exc:
        return exc.reason


@settings(max_examples=400, deadline=None)
@example(i=1, at=1 + VARYING_FIELDS.index("duration_ms"), value=10 ** 400, surrogate=False, long_text=False,
         through_json=True)  # beyond SQLite's integers (and float() of it would overflow): a refusal
@example(i=1, at=1, value=2 ** 63 - 1, surrogate=False, long_text=False,
         through_json=False)  # a time from t0 that fits, added to t0 beyond SQLite's integers: a refusal
@given(i=st.integers(0, 10 ** 6), at=st.integers(0, _ROW_LEN + len(SHAPE_FIELDS)), value=_ANY,
       surrogate=st.booleans(), long_text=st.booleans(), through_json=st.booleans())
def test_the_fast_path_accepts_only_what_the_field_checks_accept_and_builds_the_same_event(
        i, at, value, surrogate, long_text, through_json):
    """One value of a good ROW (`at` < its length) or of its SHAPE (past it) replaced by anything."""
    shapes, row = _good(i)
    if at < _ROW_LEN:
        row[at] = value
    elif at - _ROW_LEN < len(SHAPE_FIELDS):
        shapes[0][at - _ROW_LEN] = value
    if surrogate:
        shapes[0][SHAPE_FIELDS.index("method")] = "GET\ud800"  # a lone surrogate the ledger could not store
        row[1 + VARYING_FIELDS.index("error")] = "E\ud800"
    if long_text:
        row[1 + VARYING_FIELDS.index("url_path")] = "/" + "p" * 9000
    if through_json:  # as the receiver gets it
        row, shapes = json.loads(json.dumps(row)), json.loads(json.dumps(shapes))
    checked = _outcome(_event_checked, row, shapes)
    assert _outcome(_event, row, shapes) == checked
    if _plain(row):  # the bulk field checks never let through a field the others refuse
        assert isinstance(checked, NetEvent) or checked in ("bad_digest", "bad_shape_index") \
            or (checked == "bad_int" and at == 1) or at >= _ROW_LEN or surrogate  # checked after the row:
        # the digest, the shape index, t0 + the row's time, and the shape
    from interceptor.relay import decode

    datagram = json.dumps({"v": WIRE_VERSION, "kind": "events", "pid": 7, "t0": _GOOD_T0, "shapes": shapes,
                           "events": [row]})
    msg = decode(datagram.encode(), b"salt")  # never raises for a bad row or shape: it names it
    assert list(msg.events) + list(msg.rejected) == [checked]


def test_a_row_no_check_can_read_costs_only_its_datagram_not_the_rows_received_before_it(tmp_path):
    """An int of 400 digits where a float belongs (JSON carries it; float() overflows): that
    datagram is refused and counted, and the good datagrams queued before and after it are all
    appended (the receiver used to drop the whole batch it was collecting, counting one)."""
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, str(tmp_path / "relay.sock"))  # bound, not yet receiving: all queue up
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(7):
            msg = json.loads(_frame([_good_record(i)]))
            if i == 5:
                msg["events"][0][1 + VARYING_FIELDS.index("ts")] = 10 ** 400
            s.sendto(json.dumps(msg).encode(), receiver.path)
    receiver.start()
    receiver.stop()
    recorded = [r["url_path"] for r in led.rows() if r["channel"] == "http"]
    led.close()
    assert recorded == [f"/v1/{i}" for i in (0, 1, 2, 3, 4, 6)]
    assert receiver.rejected == {"relay_bad_int": 1}


def test_rows_our_writer_sends_take_the_fast_path():
    shapes, row = _good(7)
    assert _plain(row) and _outcome(_event, row, shapes) == _outcome(_event_checked, row, shapes)
    assert _outcome(_event, row, shapes) == _good_record(7).to_event(b"salt")


def test_a_digest_of_white_space_is_no_digest():
    """bytes.fromhex skips white space: 64 spaces must not pass as the digest of b""."""
    shapes, row = _good(3)
    row[-1] = " " * 64
    assert _outcome(_event, row, shapes) == _outcome(_event_checked, row, shapes) == "bad_digest"


def test_a_refused_shape_costs_only_the_rows_that_use_it():
    from interceptor.relay import decode

    msg = json.loads(_frame([_good_record(1), _good_record(2)]))
    assert len(msg["shapes"]) == 1
    msg["shapes"].append([*msg["shapes"][0]])
    msg["shapes"][1][SHAPE_FIELDS.index("channel")] = "audit"  # an admin fact: the parent's to write
    msg["events"][1][0] = 1
    msg["events"].append([7, *msg["events"][0][1:]])  # a shape index beyond the list
    out = decode(json.dumps(msg).encode(), b"salt")
    assert [e.url_path for e in out.events] == ["/v1/1"]
    assert sorted(out.rejected) == ["audit_row", "bad_shape_index"]


def _gone_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_bye_read_after_the_look_clears_the_suspect(tmp_path):
    """The receiver finds a sender gone without its bye (ledger.relay._check_exits) only once it
    has drained the socket after seeing the process gone: a bye sent just before the process ended
    may still be queued. Driven step by step here (the receiver thread not started), with pids of
    real processes that have ended."""
    path = str(tmp_path / "relay.sock")
    led = Ledger.open(str(tmp_path / "l.sqlite"), key_dir=str(tmp_path / "keys"), create=True)
    receiver = RelayReceiver(led, path)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def say(kind, pid, **more):
        sender.sendto(json.dumps({"v": WIRE_VERSION, "kind": kind, "pid": pid, **more}).encode(), path)

    flushed, killed = _gone_pid(), _gone_pid()
    try:
        for pid in (flushed, killed):
            say("hello", pid, ts=time.time_ns(), version="test")
        receiver._append(receiver._receive(wait=False))
        say("bye", flushed)            # queued, not read yet, when the receiver looks
        receiver._check_exits(final=True)
        rows = list(led.rows())
    finally:
        sender.close()
        receiver._sock.close()
        led.close()
    unflushed = [x["pid"] for x in rows if x["method"] == "interceptor_exit_unflushed"]
    assert unflushed == [killed]
    assert sorted(x["pid"] for x in rows if x["method"] == "interceptor_installed") == sorted([flushed, killed])
