"""The claim: while a wrapper runs the audited call, the layers below it stay silent (one call, one
event), and nothing else does. Real programs, real local servers, real threads and asyncio.

The claim lives in a context variable (a greenlet's waiting claim hid other greenlets' calls when it
was a thread's: tests/interceptor/test_gevent.py). Review 23 (H1): a context copied while a claim
was held kept it set for good. A request body's generator runs inside the claimed endheaders; there
asyncio.run_coroutine_threadsafe copies the context into the task it starts, which then sent and
connected unrecorded for its whole life. A copy run on another thread while the claim is still held
must not be silenced either (a thread that inherits its starter's context: CPython 3.14t's default).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = r"""
import asyncio, contextvars, http.server, json, socket, threading, time, urllib.request
import interceptor
from interceptor import MemoryWriter, Sink
from interceptor.capture import claimed

w = MemoryWriter()
interceptor.install(sink=Sink(w, linger_s=0))

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
port = srv.server_address[1]
threading.Thread(target=srv.serve_forever, daemon=True).start()
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()

def dgram(p):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"p", ("127.0.0.1", p)); u.close()

seen = {}
async def report(i):
    for later in (0, 0.3):                   # at once, and long after the POST's claim ended
        await asyncio.sleep(later)
        seen[(i, later)] = claimed()
        dgram(4000 + 10 * i + int(later * 10))
        r, wr = await asyncio.open_connection("127.0.0.1", port); wr.close()

futures = []
def body():
    futures.append(asyncio.run_coroutine_threadsafe(report(0), loop))  # copies this (claimed) context
    ctx = contextvars.copy_context()       # a copy run on another thread while the claim is held
    t = threading.Thread(target=ctx.run, args=(dgram, 5000)); t.start(); t.join()
    yield b"chunk"

urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/up", data=body(), method="POST",
                                              headers={"Content-Length": "5"})).read()
asyncio.run_coroutine_threadsafe(report(1), loop).result(5)   # the same, outside any claimed call
futures[0].result(5)
interceptor.flush(5)
print(json.dumps({"seen": sorted(str(k) + "=" + str(v) for k, v in seen.items()),
                  "events": sorted([e.channel, e.method, e.dst_port == port or e.dst_port] for e in w.events
                                   if e.channel != "dns")}))
"""


def test_a_context_copied_inside_a_claimed_call_is_not_claimed():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["seen"] == ["(0, 0)=False", "(0, 0.3)=False", "(1, 0)=False", "(1, 0.3)=False"]
    connect = ["socket", "connect", True]
    assert out["events"] == sorted([
        ["http", "POST", True],                                   # the call itself: one event
        ["socket", "sendto", 5000],                               # another thread, the claim still held
        ["socket", "sendto", 4000], ["socket", "sendto", 4003], connect, connect,   # the copied task
        ["socket", "sendto", 4010], ["socket", "sendto", 4013], connect, connect,   # the control
    ])


INTERRUPTED = r"""
import json, socket, sys
import interceptor
from interceptor import MemoryWriter, Sink
from interceptor.capture import claim, claimed

w = MemoryWriter()
sink = Sink(w, linger_s=0)
interceptor.install(sink=sink)

class Boom(Exception):  # what a program's signal handler raises (Ctrl-C caught, Odoo's time limit)
    pass

fired = []
def tracer(frame, event, arg):  # raises Boom as claim() returns, once: right after the claim is set
    if frame.f_code is not claim.__code__:
        return None
    def local(frame, event, arg):
        if event == "return" and not fired:
            fired.append(True)
            raise Boom()
        return local
    return local

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sys.settrace(tracer)
try:
    u.sendto(b"x", ("127.0.0.1", 4000))
    outcome = "sent"
except Boom:
    outcome = "Boom"
sys.settrace(None)
after = claimed()
u.sendto(b"y", ("127.0.0.1", 4001))
sink.flush(5)
print(json.dumps({"fired": fired, "outcome": outcome, "claimed_after": after,
                  "events": [[e.dst_port, e.error] for e in w.events]}))
"""


def test_an_exception_landing_right_after_the_claim_is_set_does_not_leave_it_set():
    """Review 26, H1: an exception a signal handler raises can land between any two calls. With a
    claim()/release() pair, one landing after the set and before the caller's `try` left the claim
    set for good, and every later call on that thread went unrecorded (reproduced with a SIGALRM
    storm: stuck within 6 datagrams). Here the exception is raised, deterministically, as claim()
    returns; the claim is set inside the caller's `try` now, and its `finally` ends it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", INTERRUPTED], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["fired"] == [True] and out["outcome"] == "Boom"   # the caller gets the exception
    assert out["claimed_after"] is False
    assert out["events"] == [[4000, "Boom"], [4001, ""]]          # the next call is recorded


def test_a_claim_inside_a_claim_leaves_the_outer_one_standing():
    """A call that claims while this thread's claim is held (the relay's send, a nested wrapper)
    does not end the outer claim when it ends. (holds_claim: whether this thread holds one; the
    test's own frames are the program's, which claimed() would not take as claimed.)"""
    from interceptor.capture import claim, holds_claim

    outer = [None]
    try:
        claim(outer)
        assert holds_claim()
        inner = [None]
        try:
            claim(inner)
            assert holds_claim()
        finally:
            inner[0] = None
        assert holds_claim(), "the inner claim's end ended the outer one"
    finally:
        outer[0] = None
    assert not holds_claim()


INTERRUPTED_START = r"""
import dis, json, sys, time
from interceptor import native
from interceptor.sink import MemoryWriter, Sink

class Boom(BaseException):  # what a signal handler raises
    pass

start = native.Thread.start.__code__
# right after _start_new_thread returned: the writer thread runs, and start() is interrupted
at = [i.offset for i in dis.get_instructions(start) if i.opname == "STORE_ATTR" and i.argval == "ident"][0]
fired = []
def tracer(frame, event, arg):
    if frame.f_code is not start:
        return None
    frame.f_trace_opcodes = True
    def local(frame, event, arg):
        if event == "opcode" and frame.f_lasti == at and not fired:
            fired.append(True)
            raise Boom()
        return local
    return local

def writers():
    n = 0
    for f in sys._current_frames().values():
        while f is not None:
            if f.f_code is Sink._run.__code__:
                n += 1
                break
            f = f.f_back
    return n

w = MemoryWriter()
sink = Sink(w, linger_s=0)
sys.settrace(tracer)
try:
    sink._start()
except Boom:
    pass
sys.settrace(None)
sink._start()          # what the next submit does, _thread having been undone
time.sleep(1.2)        # past the writers' idle wait: each looks at _thread again
print(json.dumps({"fired": fired, "writers": writers()}))
"""


def test_an_interrupted_writer_start_leaves_one_writer():
    """Review 27: Sink._start undoes a writer whose start an exception interrupted (a writer that
    never ran queued every event for good), but the thread may have started just before: the next
    submit then started a second writer. The first now gives way (or takes the place back)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", INTERRUPTED_START], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"fired": [True], "writers": 1}
