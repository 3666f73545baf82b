"""Interceptor benchmarks, side by side in one run (issue 3).

1. Per-call cost of kept-alive loopback GETs to a server in another process, three ways:
   bare, with our interceptor (ledger sink, real writer thread), and with OpenTelemetry's
   requests/urllib3 instrumentation exporting to an in-memory exporter. Clients: a
   requests.Session GET, a urllib3 PoolManager GET, a plain http.client GET (OpenTelemetry has
   no http.client instrumentation). Each (client, mode) runs in a fresh process, REPS times,
   interleaved; the figure is the median of the per-round means. Two wall clocks: the round's
   calls as the caller sees them, with the background work (writer thread, writer process,
   OpenTelemetry's exporter) running alongside; and the round until that work is done too.
2. Events per second the writer sustains into a ledger from 8 producing threads, without dropping.
3. Memory with a stalled ledger (locked by another connection): the queue stays bounded and the
   misses are counted.
Run: make bench  (or: .venv/bin/python -m bench interceptor). Needs the `bench` extra for the
OpenTelemetry column: pip install -e '.[bench]'. BENCH_CALLS overrides calls per round,
BENCH_REPS the processes per cell (3), BENCH_CLIENTS the clients (requests,urllib3,http.client).
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def _env_count(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise SystemExit(f"bench: {name} must be a whole number above 0, not {value!r}")
    return count


CALLS = _env_count("BENCH_CALLS", 1000)
ROUNDS = 11
WARMUP = 300
REPS = _env_count("BENCH_REPS", 3)  # processes per cell: more, for a tighter interval
CLIENTS = tuple(os.environ.get("BENCH_CLIENTS", "requests,urllib3,http.client").split(","))
MODES = ("bare", "ours", "proc", "otel")
HEADS = {"ours": "ours: added", "proc": "ours, writer process: added", "otel": "OpenTelemetry: added"}

SERVER = r"""
# A minimal keep-alive HTTP/1.1 server (one thread, selectors): it reads each request's head and
# answers a canned 200, so the client's own cost dominates the figures.
import os, selectors, socket
BODY = b'{"ok": true, "items": [1, 2, 3]}'
REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
sel = selectors.DefaultSelector()
srv = socket.create_server(("127.0.0.1", 0))
srv.setblocking(False)
sel.register(srv, selectors.EVENT_READ)
print(srv.getsockname()[1], flush=True)
buf = {}
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is srv:
            c, _ = srv.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            buf[c] = b""
            continue
        try:
            data = s.recv(65536)
        except ConnectionError:
            data = b""
        if not data:
            sel.unregister(s); s.close(); buf.pop(s, None)
            continue
        b = buf[s] + data
        while b"\r\n\r\n" in b:
            _, _, b = b.partition(b"\r\n\r\n")
            s.sendall(REPLY)
        buf[s] = b
"""


# ---- worker: one (client, mode) in its own process ---------------------------------------------

def _client(kind: str, port: int):
    url = f"http://127.0.0.1:{port}/api/items?page=1&token=t"
    if kind == "requests":
        import requests

        s = requests.Session()
        return lambda: s.get(url).content
    if kind == "urllib3":
        import urllib3

        pool = urllib3.PoolManager()
        return lambda: pool.request("GET", url).data
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port)

    def get():
        conn.request("GET", "/api/items?page=1&token=t")
        return conn.getresponse().read()
    return get


def _setup(mode: str, kind: str, tmp: str):
    if mode == "ours":
        import interceptor
        from ledger.sink import LedgerWriter

        sink = interceptor.Sink(LedgerWriter(os.path.join(tmp, "bench.sqlite"), os.path.join(tmp, "keys")))
        interceptor.install(sink=sink)
        return sink
    if mode == "proc":
        import interceptor
        from ledger.process_writer import ProcessWriter

        sink = interceptor.Sink(ProcessWriter(os.path.join(tmp, "bench.sqlite"), os.path.join(tmp, "keys")).start())
        interceptor.install(sink=sink)
        return sink
    if mode == "otel":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
        trace.set_tracer_provider(provider)
        if kind == "requests":
            from opentelemetry.instrumentation.requests import RequestsInstrumentor

            instrumentor = RequestsInstrumentor()
        elif kind == "urllib3":
            from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

            instrumentor = URLLib3Instrumentor()
        else:
            raise SystemExit("no OpenTelemetry instrumentation for plain http.client")
        instrumentor.instrument()
        return provider, instrumentor
    return None


def _toggle(mode: str, handle, on: bool) -> None:
    """Switch the instrumentation on or off between rounds, in the same process.

    Ours: put the http.client wrappers back or the originals (the audit hook stays: it cannot be
    removed, and costs under a microsecond per audit event). OpenTelemetry: instrument/uninstrument.
    """
    if mode in ("ours", "proc"):
        import http.client

        from interceptor import http_wrappers as hw

        for name, original in hw._orig.items():  # the methods install() wrapped
            setattr(http.client.HTTPConnection, name, getattr(hw, f"http_{name}_wrapper") if on else original)
    elif mode == "otel":
        instrumentor = handle[1]
        if on:
            instrumentor.instrument()
        else:
            instrumentor.uninstrument()


def _flush(mode: str, handle) -> None:
    if mode == "ours":
        handle.flush(30)            # our writer thread: records converted and in the ledger
    elif mode == "proc":
        handle.flush(30)            # our writer thread sent every record, the helper appended them
    elif mode == "otel":
        handle[0].force_flush()     # the batch span processor: spans exported


def _ledger_rows(path: str, key_dir: str) -> int:
    from ledger.ledger import Ledger

    with Ledger.open(path, key_dir=key_dir, readonly=True) as led:
        return led.count()


def _helper_cpu_ns(handle) -> int:
    """CPU time of the writer process's threads so far (the 'proc' mode's other process)."""
    pid = getattr(getattr(handle, "writer", None), "helper_pid", 0)
    if not pid:
        return 0
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def worker(kind: str, mode: str, port: int) -> None:
    """Alternate bare and instrumented rounds in one process; print each round's mean."""
    with tempfile.TemporaryDirectory() as tmp:
        handle = _setup(mode, kind, tmp)
        get = _client(kind, port)
        for _ in range(WARMUP):
            get()
        rounds = {"bare": [], mode: []}
        steady = {"bare": [], mode: []}
        cpu = {"bare": [], mode: []}
        caller = {"bare": [], mode: []}
        for r in range(2 * ROUNDS):
            on = r % 2 == 1
            _toggle(mode, handle, on)
            if mode == "otel" and kind == "requests":
                get = _client(kind, port)  # a new Session picks up (or drops) the instrumented adapter
                get()
            t0, c0, th0 = time.perf_counter_ns(), time.process_time_ns(), time.thread_time_ns()
            h0 = _helper_cpu_ns(handle) if mode == "proc" else 0
            for _ in range(CALLS):
                get()
            th1, t1 = time.thread_time_ns(), time.perf_counter_ns()
            if on:  # the round pays for its own background work too, not the bare round after it
                _flush(mode, handle)
            key = "bare" if not on else mode
            caller[key].append((th1 - th0) / CALLS / 1000)
            steady[key].append((t1 - t0) / CALLS / 1000)
            rounds[key].append((time.perf_counter_ns() - t0) / CALLS / 1000)
            helper = _helper_cpu_ns(handle) - h0 if mode == "proc" else 0  # its CPU counts too
            cpu[key].append((time.process_time_ns() - c0 + helper) / CALLS / 1000)
        extra = {}
        if mode == "ours":
            sink = handle
            sink.flush(30)
            extra = {"rows": sink.writer.ledger.count(), "dropped": sink.dropped_total}
        elif mode == "proc":
            sink = handle
            sink.close(30)  # the helper drains and exits
            extra = {"rows": _ledger_rows(sink.writer.path, sink.writer.key_dir), "dropped": sink.dropped_total,
                     "writer_mode": sink.writer.mode}
        print(json.dumps({"steady": steady, "wall": rounds, "cpu": cpu, "caller": caller, **extra}))


# ---- per-call table ---------------------------------------------------------------------------

def _otel_available() -> bool:
    try:
        import opentelemetry.instrumentation.requests  # noqa: F401
        import opentelemetry.instrumentation.urllib3  # noqa: F401
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


def _importable(kind: str) -> bool:
    try:
        __import__(kind)
    except ImportError:
        return False
    return True


def per_call_table() -> None:
    clients = [k for k in CLIENTS if _importable(k)]
    if len(clients) < len(CLIENTS):
        print(f"(skipped, not installed: {', '.join(sorted(set(CLIENTS) - set(clients)))}; "
              f"pip install -e '.[bench]')")
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    otel = _otel_available()
    steady: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    caller: dict[tuple[str, str], list[float]] = {}
    checks = {}
    per_process: dict[tuple[str, str, str], list[list[float]]] = {}  # (table, kind, mode) -> each process's
    try:
        port = int(server.stdout.readline())
        for _rep in range(REPS):
            for kind in clients:
                for mode in ("ours", "proc", "otel"):
                    if mode == "otel" and (kind == "http.client" or not otel):
                        continue
                    out = subprocess.run([sys.executable, "-m", "bench.bench_interceptor", "--worker", kind, mode,
                                          str(port)], capture_output=True, text=True, timeout=600)
                    if out.returncode:
                        raise SystemExit(f"worker {kind}/{mode} failed:\n{out.stderr}")
                    data = json.loads(out.stdout.strip().splitlines()[-1])
                    for table, key in ((steady, "steady"), (wall, "wall"), (cpu, "cpu"), (caller, "caller")):
                        bare, inst = data[key]["bare"], data[key][mode]
                        table.setdefault((kind, "bare", mode), []).extend(bare)
                        table.setdefault((kind, mode), []).extend(i - b for b, i in zip(bare, inst))
                        per_process.setdefault((key, kind, mode), []).append([i - b for b, i in zip(bare, inst)])
                    if mode in ("ours", "proc"):
                        checks[(kind, mode)] = (data["rows"], data["dropped"], data.get("writer_mode", ""))
    finally:
        server.terminate()
        server.wait()
    print(f"per-call cost of a kept-alive loopback GET to a server in another process. Each process "
          f"alternates bare and instrumented rounds ({ROUNDS} + {ROUNDS} rounds x {CALLS} calls, {REPS} processes "
          f"per cell); 'added' is the median over rounds of (instrumented round - the bare round before it). "
          f"After each instrumented round the background work is finished (our writer has written every event "
          f"to the ledger; with the writer process, that process has appended every event; OpenTelemetry's "
          f"batch processor has exported every span) before the next round starts. 'as the caller sees it': "
          f"the round's calls alone, while that work runs alongside (and slows them where it competes for the "
          f"GIL or a core); 'all background work awaited': the round's clock stops only once that work is "
          f"done, so it is counted in full, even the part a spare core would overlap. 'ours': the ledger "
          f"written by a thread of the audited process (ledger.sink.LedgerWriter); 'ours, writer process': by "
          f"a helper process (ledger.process_writer.ProcessWriter), the audited process only relays each "
          f"record.")
    for title, table in (("wall clock per call as the caller sees it (background work alongside)", steady),
                         ("wall clock per call, all background work awaited in the round", wall),
                         ("CPU per call (all threads, and the writer process's too)", cpu),
                         ("CPU of the calling thread only (the hot path: capture, no writer work)", caller)):
        print(f"\n{title}")
        head = f"{'client':<13}{'bare us':>9}" + "".join(f"{HEADS[m]:>30}" for m in ("ours", "proc", "otel"))
        print(head)
        print("-" * len(head))
        for kind in clients:
            bare = statistics.median(table[(kind, "bare", "ours")])
            line = f"{kind:<13}{bare:>9.1f}"
            for mode in ("ours", "proc", "otel"):
                if (kind, mode) not in table:
                    line += f"{'n/a (no instrumentation)':>30}"
                    continue
                added = statistics.median(table[(kind, mode)])
                line += f"{added:>+21.1f} us {added / bare * 100:>+5.1f}%"
            print(line)
    print(f"\nbootstrap intervals (2.5th-97.5th percentile) of the added medians above: the {REPS} processes "
          f"resampled, then their rounds. With {REPS} processes a cell they understate the spread between "
          f"processes (a simulation puts their coverage near 70%, not 95%): a floor on the uncertainty.")
    for title, key in (("as the caller sees it", "steady"), ("calling thread only", "caller")):
        for kind in clients:
            bare = statistics.median(steady[(kind, "bare", "ours")] if key == "steady" else caller[(kind, "bare", "ours")])
            for mode in ("ours", "proc"):
                lo, hi = _interval(per_process[(key, kind, mode)])
                print(f"  {title:<22}{kind:<13}{HEADS[mode]:<30}[{lo:+.1f}, {hi:+.1f}] us = "
                      f"[{lo / bare * 100:+.1f}%, {hi / bare * 100:+.1f}%]")
    print("\nledger rows written by the instrumented processes (audit facts included): "
          + ", ".join(f"{k}/{'ours' if m == 'ours' else 'writer process'}: {r} rows, {d} dropped"
                      f"{'' if wm in ('', 'process') else ' (fell back: ' + wm + ')'}"
                      for (k, m), (r, d, wm) in checks.items()))
    if not otel:
        print("(OpenTelemetry not installed: pip install -e '.[bench]' for that column)")


def _interval(processes: list[list[float]], draws: int = 2000) -> tuple[float, float]:
    """2.5th-97.5th percentile of the median added cost over bootstrap draws: processes resampled,
    then the rounds of each (the rounds of one process share its layout and its luck, so
    resampling rounds alone would claim more certainty than there is). With few processes it
    still understates the spread (review 21: ~70% coverage with 3). Seeded."""
    rng = random.Random(20261205)
    medians = sorted(
        statistics.median([x for p in rng.choices(processes, k=len(processes)) for x in rng.choices(p, k=len(p))])
        for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


# ---- writer throughput and stalled-ledger memory ------------------------------------------------

def _record(i: int):
    from interceptor.capture import Record

    r = Record("http", "https", "POST", "api.example.com", 443)
    r.url_path = f"/v1/orders/{i}"
    r.query_keys = ["page", "token"]
    r.header_names = ["Host", "Content-Type", "Authorization"]
    r.status, r.resp_bytes, r.dst_ip, r.src_ip, r.src_port = 201, 2048, "127.0.0.1", "127.0.0.1", 40000
    r.hash_payload(b'{"order": %d}' % i)
    r.module, r.call_site = "sale", "odoo.addons.sale.models.sale_order:812:_push"
    r.duration_ns = 12_500_000
    return r


def writer_throughput(total: int = 200_000, threads: int = 8, process: bool = False) -> None:
    from interceptor import Sink
    from ledger.process_writer import ProcessWriter
    from ledger.sink import LedgerWriter

    with tempfile.TemporaryDirectory() as tmp:
        path, keys = os.path.join(tmp, "w.sqlite"), os.path.join(tmp, "keys")
        if process:
            sink = Sink(ProcessWriter(path, keys).start())  # started (and the ledger made) before timing
        else:
            sink = Sink(LedgerWriter(path, keys))
            sink.writer.ledger  # open (and create keys) before timing
        per = total // threads
        high = sink.maxsize * 3 // 4

        def produce(offset):
            for i in range(offset, offset + per):
                while sink.pending > high:  # producers slower than the writer never drop
                    time.sleep(0.0005)
                sink.submit(_record(i))

        t0 = time.perf_counter()
        _in_threads(produce, threads, per)
        sink.flush(120)  # for the writer process too: every event appended by the helper
        dt = time.perf_counter() - t0
        sink.close(120)
        rows = _ledger_rows(path, keys)
        print(f"writer{' process' if process else ''}: {per * threads} events from {threads} threads into a "
              f"ledger in {dt:.2f} s = {per * threads / dt:,.0f} events/s sustained, dropped "
              f"{sink.dropped_total}, ledger rows {rows}")


def _in_threads(produce, threads: int, per: int) -> None:
    """Run produce(offset) on `threads` threads at once, offsets 0, per, 2*per...; wait for all."""
    ts = [threading.Thread(target=produce, args=(k * per,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stalled_memory(total: int = 1_000_000, threads: int = 8) -> None:
    import apsw

    from interceptor import Sink
    from ledger.sink import LedgerWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sqlite")
        sink = Sink(LedgerWriter(path, os.path.join(tmp, "keys")))
        sink.writer.ledger
        locker = apsw.Connection(path)
        locker.execute("BEGIN EXCLUSIVE")  # every write now waits for the busy timeout, then fails
        before = _rss_mb()
        per = total // threads

        def produce(offset):
            for i in range(offset, offset + per):
                sink.submit(_record(i))

        t0 = time.perf_counter()
        _in_threads(produce, threads, per)
        dt = time.perf_counter() - t0
        after = _rss_mb()
        print(f"stalled ledger: {per * threads:,} events submitted in {dt:.1f} s; queue held {sink.pending} "
              f"(max {sink.maxsize}), dropped {sink.dropped_total:,}; RSS {before:.0f} MB -> {after:.0f} MB "
              f"(+{after - before:.1f} MB)")
        locker.execute("ROLLBACK")
        locker.close()
        sink.flush(30)
        gaps = [r for r in sink.writer.ledger.rows() if r["method"] == "gap"]
        print(f"after the lock was released: gap rows {len(gaps)}, dropped recorded "
              f"{sum(int(dict(p.split('=', 1) for p in g['url_path'].split(';'))['dropped']) for g in gaps):,}")
        sink.close()


_FORK_PROGRAM = r"""
import json, os, socket, statistics, sys, time
if sys.argv[1] == "ours":
    import interceptor
    from interceptor import NullWriter, Sink
    interceptor.install(sink=Sink(NullWriter()))
cost = {"idle writer": [], "event just queued": []}
for i in range(int(sys.argv[2])):
    kind = "event just queued" if i % 2 else "idle writer"
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"p", ("127.0.0.1", 9)); u.close()
    if kind == "idle writer":
        time.sleep(0.003)       # the writer has written it and waits for the next event
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.waitpid(pid, 0)
    cost[kind].append((t1 - t0) / 1000)
print(json.dumps({k: statistics.median(v) for k, v in cost.items()}))
"""


def fork_cost(forks: int = 400) -> None:
    """What os.fork costs the forking thread, bare and with the interceptor, whose sink stops its
    writer thread before a fork (so the child inherits no lock of ours and Python 3.12+ sees no
    thread to warn of), each in a process of its own, after a datagram (an event) each time."""
    if not hasattr(os, "fork"):
        return
    results = {}
    for mode in ("bare", "ours"):
        out = subprocess.run([sys.executable, "-c", _FORK_PROGRAM, mode, str(forks)], capture_output=True,
                             text=True, timeout=600, env=dict(os.environ, PYTHONPATH=os.getcwd()))
        results[mode] = json.loads(out.stdout) if out.returncode == 0 else None
    if None in results.values():
        print("fork cost: could not run")
        return
    for kind in results["bare"]:
        b, o = results["bare"][kind], results["ours"][kind]
        print(f"os.fork, {kind}: bare {b:.0f} us, with the interceptor {o:.0f} us (+{o - b:.0f} us; "
              f"median of {forks // 2})")


# A program timing a new connection's GET on its thread, in alternating rounds of 200 in one
# process: `use(True)` puts in place what is measured, `use(False)` what it is measured against.
_ALTERNATING_PROGRAM = r"""
import json, statistics, subprocess, sys, time
sys.path.insert(0, ".")
import http.client
import interceptor
from interceptor import NullWriter, Sink, capture, http_wrappers
from bench.bench_interceptor import SERVER

srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
port = int(srv.stdout.readline())
interceptor.install(sink=Sink(NullWriter()))
rounds = int(sys.argv[1])
%s
cost = {True: [], False: []}
for _ in range(200):
    get()
for r in range(2 * rounds):
    measured = r %% 2 == 1
    use(measured)
    t0 = time.thread_time_ns()
    for _ in range(200):
        get()
    cost[measured].append((time.thread_time_ns() - t0) / 200 / 1000)
srv.kill()
print(json.dumps({"measured": statistics.median(cost[True]), "against": statistics.median(cost[False])}))
"""


def _alternating(setup: str, rounds: int, what: str, call: str, against: str, measured: str) -> None:
    """Run _ALTERNATING_PROGRAM with `setup` (defining get() and use(measured)) and print its two
    medians (us): "<call>: <against> X us, <measured> Y us (+D us; ...)"."""
    out = subprocess.run([sys.executable, "-c", _ALTERNATING_PROGRAM % setup, str(rounds)], capture_output=True,
                         text=True, timeout=600, cwd=os.getcwd())
    if out.returncode != 0:
        print(f"{what}: could not run")
        return
    r = json.loads(out.stdout)
    print(f"{call}: {against} {r['against']:.1f} us, {measured} {r['measured']:.1f} us "
          f"({r['measured'] - r['against']:+.1f} us; median of {rounds} rounds of 200)")


_CLAIM_WALK_SETUP = """
walk = capture._claim_covers

def get():  # a new connection each time: a lookup of "localhost", a connect, then the request
    c = http.client.HTTPConnection("localhost", port)
    c.request("GET", "/api/items?page=1")
    c.getresponse().read()
    c.close()

def use(measured):  # against the rule before: a held claim covered all
    capture._claim_covers = walk if measured else (lambda f: True)
"""


def claim_walk_cost(rounds: int = 15) -> None:
    """What a new connection's http.client GET costs its thread with the claim's walk
    (capture.claimed: a claim covers library frames only) against the rule before it (a held claim
    covered everything below it), alternating rounds in one process. A kept-alive request makes
    no walk: only a new connection's connect, lookup and socket steps check the claim."""
    _alternating(_CLAIM_WALK_SETUP, rounds, "claim walk cost", "new-connection http.client GET, calling thread",
                 "claim covers all", "library frames only (the walk)")


_EXPLICIT_CONNECT_SETUP = """
connected = http_wrappers._connected

def get():  # connect() first, as urllib3 does for HTTPS, then the request on that connection
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.connect()
    c.request("GET", "/api/items?page=1")
    c.getresponse().read()
    c.close()

def use(measured):  # against nothing recorded for the connect
    http_wrappers._connected = connected if measured else (lambda conn, frame: None)
"""


def explicit_connect_cost(rounds: int = 15) -> None:
    """What recording a connect() made outside any request costs a new connection's GET on its
    thread (http_wrappers._connected: a CONNECT record and its socket counted until the request,
    which takes it over), against before it (nothing recorded), alternating rounds in one process.
    urllib3 connects every new HTTPS connection so; a kept-alive request pays nothing for it."""
    _alternating(_EXPLICIT_CONNECT_SETUP, rounds, "explicit connect cost",
                 "connect() then GET on a new http.client connection, calling thread", "not recorded",
                 "counted until the request")


_WRITER_WAKES = r"""
# requests GETs on an in-memory socket (no server, no network wait): the audited thread runs Python
# all along, the case where the writer thread's each wake costs it a forced GIL switch
import io, json, os, socket, statistics, sys, tempfile, time
from bench import bench_interceptor as b
import requests, urllib3.connection
BODY = b'{"ok": true}'
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
idle, _ = socket.socketpair()  # a descriptor never readable: urllib3 finds the connection alive
class InMemory:
    def sendall(self, data): pass
    def makefile(self, *a, **k): return io.BytesIO(REPLY)
    def fileno(self): return idle.fileno()
    def settimeout(self, t): pass
    def gettimeout(self): return None
    def setsockopt(self, *a): pass
    def getsockname(self): return ("127.0.0.1", 40000)
    def getpeername(self): return ("127.0.0.1", 8080)
    def close(self): pass
urllib3.connection.HTTPConnection._new_conn = lambda self: InMemory()
sink = b._setup("proc", "requests", tempfile.mkdtemp())
s = requests.Session()
get = lambda: s.get("http://127.0.0.1:8080/api/items?page=1").content
for _ in range(300):
    get()
def writer_stats():
    tid = sink._thread.native_id
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        cpu = int(f.read().split()[0])
    with open(f"/proc/self/task/{tid}/status") as f:
        wakes = next(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt_switches"))
    return cpu, wakes
calls, rounds = 2000, int(sys.argv[1])
bare, added = [], []  # per round: the bare round's CPU per GET; each captured round's over the bare one before it
cpu = wakes = events = 0
for r in range(2 * rounds):
    on = r % 2 == 1
    b._toggle("proc", sink, on)
    c0, w0 = writer_stats()
    t0 = time.thread_time_ns()
    for _ in range(calls):
        get()
    t1 = time.thread_time_ns()
    if on:
        sink.flush(30)
        c1, w1 = writer_stats()
        cpu, wakes, events = cpu + c1 - c0, wakes + w1 - w0, events + calls
    per = (t1 - t0) / calls / 1000
    if on:
        added.append(per - bare[-1])
    else:
        bare.append(per)
print(json.dumps({"bare": statistics.median(bare), "added": statistics.median(added),
                  "writer_cpu_us": cpu / events / 1000, "writer_wakes": wakes / events}))
sink.close(30)
"""


def writer_wakes(rounds: int = 11) -> None:
    """The writer thread's cost in the audited process where the audited thread never waits on
    the network (requests GETs on an in-memory socket, writer process): the calling thread's CPU
    per GET with and without capture (alternating rounds), and the writer thread's CPU and
    voluntary context switches (its wakes, each one a wait for the GIL) per event."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())  # as the other benchmarks: run from the checkout
    out = subprocess.run([sys.executable, "-c", _WRITER_WAKES, str(rounds)], capture_output=True,
                         text=True, env=env, timeout=900)
    if out.returncode:
        print(f"writer wakes: failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"writer wakes (requests GET on an in-memory socket, writer process, {rounds} + {rounds} "
          f"rounds of 2000): calling thread {r['bare']:.1f} us bare, {r['added']:+.1f} us captured "
          f"(median over rounds of a captured round's CPU per GET minus the bare round's before it); writer thread {r['writer_cpu_us']:.2f} us CPU and {r['writer_wakes']:.2f} wakes "
          f"an event")


def main() -> None:
    per_call_table()
    print()
    writer_throughput()
    writer_throughput(process=True)
    stalled_memory()
    fork_cost()
    claim_walk_cost()
    explicit_connect_cost()
    writer_wakes()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
