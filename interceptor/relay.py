"""The relay: a child process of `netaudit run` sends its records to the parent, which owns the ledger.

Standard library only, so any Python child is audited without our package or the ledger's
dependencies installed: `netaudit run` copies this package into its bootstrap folder and names a
local datagram socket (AF_UNIX, SOCK_DGRAM, bound by the parent in its private 0700 folder) in
NETAUDIT_RELAY. A path, unlike an inherited file descriptor, survives `close_fds`, so the
grandchildren a child starts are audited too; datagrams are atomic, so many processes send at once.

Wire format (version 2): one JSON object per datagram, at most MAX_DATAGRAM bytes.

    {"v": 2, "kind": "hello",  "pid": P, "ts": NS, "version": "0.1.0"}    first message of a process
    {"v": 2, "kind": "events", "pid": P, "t0": NS, "shapes": [SHAPE, ...], "events": [ROW, ...]}
    {"v": 2, "kind": "gap",    "pid": P, "dropped": N, "t1": NS, "t2": NS, "reason": "..."}
    {"v": 2, "kind": "sync",   "pid": P, "token": N}     "tell me when all I sent is in the ledger"
    {"v": 2, "kind": "bye",    "pid": P}                 the exit's flush is done: all was sent
    {"v": 2, "kind": "unaudited", "pid": P, "ts": NS, "python": "3.9.2", "reason": "..."}

A `sync` is answered once every datagram the receiver got before it is appended (or counted as a
miss): the receiver creates the empty file `synced-P-N` in the socket's folder, which the sender
waits for and removes (`RelayWriter.sync`, which Sink.flush calls: a flush means "in the ledger").
The `unaudited` message comes from `netaudit run`'s bootstrap, not from this module: a process where the
interceptor could not be installed says so, and the parent records it in the chain. A process says
hello when its writer thread starts (at its first event) and bye once its exit's flush is done: a
process gone without its bye (killed by a signal, or ended some other way that skips the flush)
may have taken unsent events with it, and the parent records that too (ledger.relay).

An event is split in two. What a process repeats call after call (host, method, addresses, header
names, module, call site...: SHAPE_FIELDS) is its SHAPE, sent once per datagram however many of its
events use it; a ROW is the index of its shape in the datagram's `shapes`, the fields that change from
call to call (VARYING_FIELDS: time, duration, path, source port, status, error, sizes), then the
hex SHA-256 of the request payload, or "". The time is sent from `t0` (the datagram's first event's
time: a small number, not 19 digits) and the duration in integer nanoseconds, as the record holds
it: JSON writes both faster than the full time and a float. Each datagram carries the shapes its
rows use, so it is read alone: no state crosses datagrams, and a lost or refused one takes nothing
else with it. (Version 1
sent every field of every event: the sender's framing, on the audited process's writer thread, cost
twice as much; bench/bench_relay.py has both.) The child never holds the ledger's secret salt: the
parent turns the digest into the fingerprint, HMAC-SHA256(salt, digest) truncated to 128 bits,
exactly as capture.Record.to_event does in process. No body, no header or query value is ever
sent: shapes and rows are a NetEvent's metadata and a digest, nothing else.

Fail-open: the writer thread sends with a bounded wait (SEND_TIMEOUT_S); a parent that is gone or
a socket that stays full makes the send raise, and interceptor.Sink drops, counts and later writes
a gap row for the miss. The relay's own socket is not network egress: it is AF_UNIX (the socket
hooks record only (host, port) addresses) and it sends under the interceptor's claim (capture.claim).
"""
from __future__ import annotations

import _socket
import dataclasses
import json
import os
import socket
import time
from operator import attrgetter, itemgetter

from . import native
from .capture import _INT_MAX, _INT_MIN, _as_int, claim, fingerprint
from .event import AUDIT, NetEvent
from .redact import clean_path

ENV_RELAY = "NETAUDIT_RELAY"
WIRE_VERSION = 2
MAX_DATAGRAM = 60 * 1024      # fits the default AF_UNIX send buffer (Linux: 208 KiB)
# Rows tried per datagram (a row is ~150 bytes, a shape ~300, once). Each send releases the GIL:
# the writer thread holds it for one datagram's framing at most (0.13 ms for 64 rows of requests
# GETs, 0.50 ms for 256), so an audited thread whose response came in meanwhile waits no longer
# than that. 256 rows a datagram (fewer waits for the GIL on the writer thread) leaned ~4 us worse
# on a loopback requests GET as the caller sees it (session 14, runs 9 and 10, within their
# intervals): not kept.
CHUNK = 64
SEND_TIMEOUT_S = 2.0          # the writer thread waits this long for room in the parent's queue
MAX_TEXT = 8192               # characters of one text field the parent accepts
DIGEST_HEX = 64
EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(NetEvent) if f.name != "fingerprint")
_ALL_FIELDS = tuple(f.name for f in dataclasses.fields(NetEvent))
_FINGERPRINT_AT = _ALL_FIELDS.index("fingerprint")
# What changes from one call to the next (a ROW's fields after its shape index), and what a process
# repeats (a SHAPE's fields): together every NetEvent field but the fingerprint.
VARYING_FIELDS = ("ts", "duration_ms", "url_path", "src_port", "status", "error", "req_bytes", "resp_bytes")
SHAPE_FIELDS = tuple(f for f in EVENT_FIELDS if f not in VARYING_FIELDS)
OVERSIZED = "RelayOversized"


class MalformedDatagram(ValueError):
    """A datagram the parent cannot accept; `reason` names why (for the gap row's count)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- the child's side ---------------------------------------------------------------------------

# Shapes and rows are flat tuples of str, int, bool and tuples of str that this module
# builds: no cycle to look for (check_circular costs ~20% of the encoding), and plain ASCII out.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _dumps(message) -> bytes:
    return _encode(message).encode("ascii")


_SHAPE_AT = itemgetter(*(_ALL_FIELDS.index(f) for f in SHAPE_FIELDS))  # of Record.fields()
_NAME_FIELDS = ("query_keys", "header_names")  # lists on a Record: not hashable as they are
_SHAPE_RAW = attrgetter(*(f for f in SHAPE_FIELDS if f not in _NAME_FIELDS))
_SHAPES_MAX = 4096   # shapes a writer remembers; it starts over when full
_NAMES_TYPES = (list, tuple)
_UNCACHED = {None: (), (): (), "": ()}  # empty names; any other value raises KeyError (or TypeError)


_VARYING_AT = itemgetter(*(_ALL_FIELDS.index(f) for f in VARYING_FIELDS))  # of Record.fields()
_DURATION_IN_VARYING = VARYING_FIELDS.index("duration_ms")


def varying(rec, t0: int = 0) -> tuple:
    """A record's VARYING_FIELDS, cleaned as Record.fields cleans them (a test holds the two equal),
    the time from `t0` and the duration in nanoseconds. Never raises: odd values take
    Record.fields' field-by-field path."""
    error, duration, ts = rec.error, rec.duration_ns, rec.ts
    if type(error) is str and type(duration) is int and type(ts) is int:
        try:
            return (ts - t0, duration, clean_path(rec.url_path or ""), int(rec.src_port or 0),
                    str(rec.status), error, int(rec.req_bytes), int(rec.resp_bytes or 0))
        except Exception:
            pass
    values = list(_VARYING_AT(rec._odd_fields("")))
    values[0] -= t0
    values[_DURATION_IN_VARYING] = _as_int(duration)
    return tuple(values)


def digest_hex(rec) -> str:
    return rec.hasher.digest().hex() if rec.hasher is not None else ""


class Shapes:
    """A writer's memory of the shapes it has seen: cleaned once per distinct shape (Record.fields'
    cleaning, by the record's raw values), not once per event. One per writer thread."""

    def __init__(self) -> None:
        self._cleaned: dict = {}
        self._serial = 0

    def of(self, rec) -> tuple:
        """(the record's cleaned SHAPE_FIELDS, a number no other shape of this writer has). The
        number, not id(shape), tells shapes apart: builtins.id raises an audit event, and so runs
        every audit hook of the process, ours included."""
        q, h = rec.query_keys, rec.header_names
        try:  # names as the wrappers leave them, lists; any other kind is cleaned, not remembered
            key = (_SHAPE_RAW(rec), tuple(q) if type(q) in _NAMES_TYPES else _UNCACHED[q],
                   tuple(h) if type(h) in _NAMES_TYPES else _UNCACHED[h])
            known = self._cleaned.get(key)
        except (KeyError, TypeError):  # that, or a raw value that cannot be hashed
            known = None
            key = None
        if known is None:
            self._serial += 1
            known = (_SHAPE_AT(rec.fields(None)), self._serial)
            if key is not None:
                if len(self._cleaned) >= _SHAPES_MAX:
                    self._cleaned.clear()
                self._cleaned[key] = known
        return known

    def frame(self, records) -> bytes:
        """`"t0":NS,"shapes":[...],"events":[...]}`: the records as one datagram's shapes and ROWs."""
        shapes, rows, index = [], [], {}
        of = self.of
        t0 = _as_int(records[0].ts) if records else 0
        for rec in records:
            shape, serial = of(rec)
            at = index.get(serial)
            if at is None:
                at = index[serial] = len(shapes)
                shapes.append(shape)
            rows.append((at, *varying(rec, t0), digest_hex(rec)))
        return _dumps({"t0": t0, "shapes": shapes, "events": rows})[1:]


class RelayWriter:
    """write_records / write_gap for interceptor.Sink: every record goes to the parent's socket.

    `on_miss(ts, reason, n=, until=)` (the sink's `miss`) counts the tail of a batch that could
    not follow its first datagram; a batch whose first datagram fails raises, and the sink counts
    it whole.
    """

    def __init__(self, path: str, send_timeout: float = SEND_TIMEOUT_S):
        self.path = path
        self.send_timeout = send_timeout
        self.on_miss = None
        self.datagrams = 0        # datagrams sent (counted under _counting: several threads send)
        self._counting = native.Lock()
        self._quiet_at = 0        # `datagrams` when all sent was last known in the ledger (or only a bye since)
        self._bye_at = -1         # `datagrams` when the last bye was sent
        self._sock = None
        self._hello = False
        self._shapes = Shapes()

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._sock = _socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(self.send_timeout)
        claim_held = [None]   # our own channel: no layer of the interceptor records it
        try:
            claim(claim_held)
            self._sock.sendto(data, self.path)
        finally:
            claim_held[0] = None
        with self._counting:
            self.datagrams += 1

    def _say_hello(self) -> None:
        if not self._hello:
            from . import VERSION

            self._send(_dumps({"v": WIRE_VERSION, "kind": "hello", "pid": os.getpid(),
                               "ts": time.time_ns(), "version": VERSION}))
            self._hello = True

    def started(self) -> None:
        """The sink starts its writer thread, at this process's first event (interceptor.sink, on
        the calling thread): say hello now, not with the first batch, a linger later, so that the
        receiver knows this process, and finds out if it is killed before it could send what it
        queued (no `bye`, ledger.relay). Never waits: where the receiver's queue is full, the hello
        goes with the first batch, as before."""
        if not self._hello:
            from . import VERSION

            self._hello = self._send_by(_dumps({"v": WIRE_VERSION, "kind": "hello", "pid": os.getpid(),
                                                "ts": time.time_ns(), "version": VERSION}), time.monotonic())

    def bye(self) -> None:
        """The exit's flush is done (interceptor.sink, at exit, before os._exit or an exec): `bye`,
        after everything this process sent; once, until it sends again (an exec that fails, tried
        on each PATH entry by os.execvp, flushes before each try)."""
        before = self.datagrams
        if not self._hello or self._bye_at == before:
            return
        self._send(_dumps({"v": WIRE_VERSION, "kind": "bye", "pid": os.getpid()}))
        self._bye_at = before + 1
        if self._quiet_at == before:  # a bye needs no answer: what was in the ledger still is all
            self._quiet_at = before + 1  # (another thread's datagram meanwhile makes the count exceed it)

    at_exit = bye

    def bye_now(self) -> bool:
        """`bye` at once, on a socket of its own (interceptor.sink: the exit's flush ran out of time
        waiting for the answer to its sync, all sent)."""
        if not self._hello:
            return False
        return self._send_by(_dumps({"v": WIRE_VERSION, "kind": "bye", "pid": os.getpid()}), time.monotonic() + 0.2)

    def write_records(self, records: list) -> None:
        self._say_hello()
        head = b'{"v":%d,"kind":"events","pid":%d,' % (WIRE_VERSION, os.getpid())
        frame = self._shapes.frame
        sent_any, unsent = False, []
        start, chunk = 0, CHUNK
        while start < len(records):
            # no GIL offer between two datagrams: each send is one (the GIL is released around the
            # system call), and an offer more is one more wait for the GIL (interceptor.sink)
            # `chunk` records per datagram, halved until they fit, and the size that fitted is where
            # the next datagram starts, doubled (up to CHUNK) only where it filled less than half a
            # datagram: else every datagram would frame its rows again at the double (review 44, 3:
            # 1,664 rows framed for 512 sent); a record that alone does not fit, or cannot be framed
            # (never seen: Record.fields takes any value), is a miss alone.
            end = min(len(records), start + chunk)
            while True:
                try:
                    body = frame(records[start:end])
                except Exception as exc:
                    body, fault = None, type(exc).__name__
                else:
                    if len(head) + len(body) <= MAX_DATAGRAM:
                        break
                    fault = OVERSIZED
                if end - start == 1:
                    break
                end = start + (end - start) // 2
            roomy = body is not None and 2 * (len(head) + len(body)) < MAX_DATAGRAM
            chunk = min(CHUNK, 2 * (end - start)) if roomy else end - start
            if body is None or len(head) + len(body) > MAX_DATAGRAM:
                unsent.append((records[start], fault))
                start += 1
                continue
            try:
                self._send(head + body)
            except OSError as exc:
                if not sent_any or self.on_miss is None:
                    raise  # nothing relayed: the sink counts the whole batch, oversized rows included
                self._missed(records[start:], type(exc).__name__)
                break
            sent_any = True
            start = end
        for rec, fault in unsent:  # counted only now, so that a batch raised above is not counted twice
            self._missed([rec], fault)

    def _missed(self, records: list, reason: str) -> None:
        if self.on_miss is None:
            raise OSError(f"{reason}: {len(records)} record(s) not relayed")
        self.on_miss(records[0].ts, reason, n=len(records), until=records[-1].ts)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        self._say_hello()
        self._send(_dumps({"v": WIRE_VERSION, "kind": "gap", "pid": os.getpid(), "dropped": int(dropped),
                           "t1": int(t1_ns), "t2": int(t2_ns), "reason": str(reason)[:256]}))

    def gap_now(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> bool:
        """A gap count sent at once, on a socket of its own, waiting at most a moment for room
        (interceptor.sink: the exit's flush ran out of time while the writer thread holds the
        shared socket)."""
        return self._send_by(_dumps({"v": WIRE_VERSION, "kind": "gap", "pid": os.getpid(), "dropped": int(dropped),
                                     "t1": int(t1_ns), "t2": int(t2_ns), "reason": str(reason)[:256]}),
                             time.monotonic() + 0.2)

    def sync(self, timeout: float = 5.0) -> bool:
        """True once the receiver has appended everything this process sent before the call."""
        # A random token: a forked child, a later process with a reused pid, or a concurrent
        # flush never finds an answer that was not to its own question.
        before = self.datagrams
        if before == self._quiet_at:
            return True  # nothing sent since the last answer (or but a bye): no round trip to make
        token = int.from_bytes(os.urandom(8), "big") >> 2
        pid = os.getpid()
        done = os.path.join(os.path.dirname(self.path), f"synced-{pid}-{token}")
        deadline = time.monotonic() + timeout
        if not self._send_by(_dumps({"v": WIRE_VERSION, "kind": "sync", "pid": pid, "token": token}),
                             min(deadline, time.monotonic() + self.send_timeout)):
            return False  # the receiver's queue stayed full: not sent, so not answered either
        asked_at = before + 1  # the sync itself: a datagram sent meanwhile by the writer is not covered (review 42, L1)
        pause = 0.0002
        while not os.path.exists(done):
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        try:
            os.unlink(done)
        except OSError:
            pass
        self._quiet_at = max(self._quiet_at, asked_at)
        return True

    def _send_by(self, data: bytes, deadline: float) -> bool:
        """Send one datagram, waiting for room in the receiver's queue until `deadline` (monotonic):
        False if there was none by then. A socket of its own, never blocking: the writer thread
        may be sending on the shared one meanwhile, whose timeout is not ours to change. What this
        process sent before the call is in the receiver's queue already, so this datagram comes
        after it whatever socket it leaves from."""
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        pause = 0.0002
        try:
            sock.setblocking(False)
            while True:
                claim_held = [None]  # our own channel, as in _send
                try:
                    claim(claim_held)
                    sock.sendto(data, self.path)
                    break
                except BlockingIOError:  # the queue is full: wait a little, within the deadline
                    pass
                finally:
                    claim_held[0] = None
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.01)
        finally:
            sock.close()
        with self._counting:
            self.datagrams += 1
        return True

    def after_fork(self) -> None:
        """In a forked child: its own socket, and a hello with its own pid."""
        sock = self._sock
        self._sock = None
        self._hello = False
        self._quiet_at = self.datagrams  # the child has sent nothing of its own yet
        self._counting = native.Lock()   # another thread of the parent may have held it at the fork
        if sock is not None:
            sock.close()  # the child's copy of the descriptor; the parent's stays open

    def close(self) -> None:
        sock = self._sock
        self._sock = None
        if sock is not None:
            sock.close()


def install_from_env(environ=os.environ) -> bool:
    """Install the interceptor with a relay sink to the socket named by NETAUDIT_RELAY.

    Used by `netaudit run`'s bootstrap; returns False when the variable is not set.
    """
    path = environ.get(ENV_RELAY)
    if not path:
        return False
    from . import Sink, install

    writer = RelayWriter(path)
    sink = Sink(writer)
    writer.on_miss = sink.miss
    installed = install(sink=sink)
    boot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # netaudit run's bootstrap folder
    if installed and os.path.isfile(os.path.join(boot, "sitecustomize.py")):
        from .socket_hooks import audit_children

        audit_children(_keeps_children_audited(path, boot))
    return installed


def _keeps_children_audited(path: str, boot: str):
    """The audit hook's handler for a subprocess about to start (the `subprocess.Popen` event): an
    environment given as a dict without NETAUDIT_RELAY (a program's `env={"PATH": ...}`) gets it
    back, with the bootstrap first on PYTHONPATH, so the Python child is audited as one that
    inherits the environment is (helper 39, M1: it ran unaudited, without a trace, and a module
    could hide its traffic so). The program's own dict is changed: the audit event passes no copy.
    Left as it is: an environment that names a relay already (a `netaudit run` inside this one),
    one with bytes keys or a PYTHONPATH that is not text, one that is no dict. os.execve and
    os.posix_spawn read the environment before their audit event: too late to change there."""
    def on_child(args) -> None:
        env = args[-1] if args else None
        if type(env) is not dict or ENV_RELAY in env:
            return
        pythonpath = env.get("PYTHONPATH", "")
        if type(pythonpath) is not str or any(type(k) is not str for k in env):
            return
        env[ENV_RELAY] = path
        env["PYTHONPATH"] = os.pathsep.join([boot, *(p for p in pythonpath.split(os.pathsep) if p and p != boot)])
    return on_child


# ---- the parent's side --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Message:
    """One decoded datagram. `events` for "events", with `rejected` naming why each row that failed
    its checks was left out (the others still count); `detail` for the other kinds."""

    kind: str
    pid: int
    events: tuple[NetEvent, ...] = ()
    detail: dict = dataclasses.field(default_factory=dict)
    rejected: tuple[str, ...] = ()


def _int(v) -> int:
    if type(v) is not int or not _INT_MIN <= v <= _INT_MAX:
        raise MalformedDatagram("bad_int")
    return v


def _text(v) -> str:
    if type(v) is not str or len(v) > MAX_TEXT:
        raise MalformedDatagram("bad_text")
    try:
        v.encode("utf-8")  # a lone surrogate would fail in the ledger, and take the batch with it
    except UnicodeEncodeError:
        raise MalformedDatagram("bad_text") from None
    return v


def _names(v) -> tuple[str, ...]:
    if type(v) is not list or len(v) > 1024:
        raise MalformedDatagram("bad_names")
    return tuple(_text(x) for x in v)


def _bool(v) -> bool:
    if type(v) is not bool:
        raise MalformedDatagram("bad_bool")
    return v


# A checker per NetEvent annotation (they are strings: event.py uses `from __future__ import annotations`).
_CHECKS = {"int": _int, "str": _text, "tuple[str, ...]": _names, "bool": _bool}
_CHECK_OF = {f.name: _CHECKS.get(f.type) for f in dataclasses.fields(NetEvent)}
_SHAPE_CHECKS = tuple(_CHECK_OF[f] for f in SHAPE_FIELDS)
_VARYING_CHECKS = tuple(_int if f == "duration_ms" else _CHECK_OF[f] for f in VARYING_FIELDS)  # duration: ns
_SHAPE_CHANNEL_AT = SHAPE_FIELDS.index("channel")
_ROW_LEN = 1 + len(VARYING_FIELDS) + 1   # [shape index, VARYING_FIELDS..., digest]

_DURATION_AT = 1 + VARYING_FIELDS.index("duration_ms")  # in a ROW, in nanoseconds


def _merge_at(name: str) -> int:
    """A NetEvent field's place in `(*shape, *row, fingerprint, duration_ms, ts)`."""
    if name in SHAPE_FIELDS:
        return SHAPE_FIELDS.index(name)
    after_row = ("fingerprint", "duration_ms", "ts")
    if name in after_row:
        return len(SHAPE_FIELDS) + _ROW_LEN + after_row.index(name)
    return len(SHAPE_FIELDS) + 1 + VARYING_FIELDS.index(name)


_MERGE = itemgetter(*(_merge_at(f.name) for f in dataclasses.fields(NetEvent)))  # an event's values in order

# The fast path's view of a ROW: each value's JSON type, then where the ints and texts are.
_TYPES = {"int": int, "str": str, "tuple[str, ...]": list, "bool": bool}
_FIELD_TYPE = {f.name: _TYPES.get(f.type) for f in dataclasses.fields(NetEvent)}
_ROW_TYPES = (int, *(int if f == "duration_ms" else _FIELD_TYPE[f] for f in VARYING_FIELDS), str)
_INTS = itemgetter(*(i for i, t in enumerate(_ROW_TYPES) if t is int))
_TEXTS = itemgetter(*(i for i, t in enumerate(_ROW_TYPES[:-1]) if t is str))


def _shape(value) -> tuple:
    """A SHAPE's values, each checked (names as tuples); raises MalformedDatagram naming the fault."""
    if type(value) is not list or len(value) != len(SHAPE_FIELDS):
        raise MalformedDatagram("bad_shape")
    shape = tuple(check(v) for check, v in zip(_SHAPE_CHECKS, value))
    if shape[_SHAPE_CHANNEL_AT] == AUDIT:
        raise MalformedDatagram("audit_row")  # admin facts are the parent's to write
    return shape


def _shapes(values) -> list:
    """Each SHAPE checked once per datagram: its values, or the MalformedDatagram that refused it
    (which then costs the rows that use it, and only them)."""
    shapes = []
    for value in values:
        try:
            shapes.append(_shape(value))
        except MalformedDatagram as exc:
            shapes.append(exc)
        except Exception as exc:  # a fault of ours in checking it (never seen): its rows are counted
            shapes.append(MalformedDatagram(f"shape_{type(exc).__name__}"))
    return shapes


def _plain(row) -> bool:
    """True when a ROW passes every check of _row_checked, tested in bulk (the rows our own
    RelayWriter sends); False sends it through the field-by-field checks, which name the fault.
    The row is as json.loads gives it: exact str, never a subclass (which str.join would take)."""
    if type(row) is not list or len(row) != _ROW_LEN or tuple(map(type, row)) != _ROW_TYPES:
        return False
    ints = _INTS(row)
    if min(ints) < _INT_MIN or max(ints) > _INT_MAX:
        return False
    texts = _TEXTS(row)
    if max(map(len, texts)) > MAX_TEXT:
        return False
    joined = "".join(texts)
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _row_checked(row) -> list:
    """The field-by-field path: every check on its own, the first failing one names the fault."""
    if type(row) is not list or len(row) != _ROW_LEN:
        raise MalformedDatagram("bad_row")
    return [_int(row[0]), *(check(v) for check, v in zip(_VARYING_CHECKS, row[1:-1])), row[-1]]


def _fields(row, shapes: list, salt: bytes, t0: int = 0, checked=None) -> tuple:
    """A ROW's NetEvent field values in order, checked, without building the NetEvent; its time
    is counted from `t0`. `checked` is the row's values when the field-by-field checks passed."""
    if checked is None:
        checked = row if _plain(row) else _row_checked(row)
    at = checked[0]
    if not 0 <= at < len(shapes):
        raise MalformedDatagram("bad_shape_index")
    shape = shapes[at]
    if type(shape) is not tuple:
        raise MalformedDatagram(shape.reason)
    ts = t0 + checked[1]
    if not _INT_MIN <= ts <= _INT_MAX:
        raise MalformedDatagram("bad_int")
    return _MERGE((*shape, *checked, _fingerprint_of(checked[-1], salt), checked[_DURATION_AT] / 1e6, ts))


def _event(row, shapes: list, salt: bytes, t0: int = 0) -> NetEvent:
    return NetEvent(*_fields(row, shapes, salt, t0))


def _event_checked(row, shapes: list, salt: bytes, t0: int = 0) -> NetEvent:
    """As _event, through the field-by-field checks only (the reference the fast path is tested on)."""
    return NetEvent(*_fields(row, shapes, salt, t0, _row_checked(row)))


def _fingerprint_of(digest, salt: bytes) -> str:
    if digest == "":
        return ""
    if type(digest) is str and len(digest) == DIGEST_HEX:
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raw = b""
        if len(raw) == DIGEST_HEX // 2:  # fromhex skips white space: 64 spaces are no digest
            return fingerprint(salt, raw)
    raise MalformedDatagram("bad_digest")


def decode(datagram: bytes, salt: bytes, fields: bool = False) -> Message:
    """Parse and check one datagram; raises MalformedDatagram (never anything else) when the
    datagram as a whole is unusable. With `fields`, Message.events holds each event's field values
    in NetEvent order, as tuples: the receiver is spared NetEvents it would only take apart again."""
    if len(datagram) > MAX_DATAGRAM:
        raise MalformedDatagram("oversized")
    try:
        msg = json.loads(datagram)
    except (ValueError, RecursionError):
        raise MalformedDatagram("not_json") from None
    if type(msg) is not dict or msg.get("v") != WIRE_VERSION:
        raise MalformedDatagram("bad_version")
    kind, pid = msg.get("kind"), _int(msg.get("pid"))
    try:
        if kind == "events":
            rows, shapes, t0 = msg.get("events"), msg.get("shapes"), _int(msg.get("t0"))
            if type(rows) is not list or type(shapes) is not list:
                raise MalformedDatagram("bad_events")
            shapes = _shapes(shapes)
            events, rejected = [], []
            convert = _fields if fields else _event
            for row in rows:
                try:
                    events.append(convert(row, shapes, salt, t0))
                except MalformedDatagram as exc:  # one bad row does not cost its neighbours
                    rejected.append(exc.reason)
                except Exception as exc:  # nor does a fault of ours in checking it (never seen: counted)
                    rejected.append(f"row_{type(exc).__name__}")
            return Message(kind, pid, tuple(events), rejected=tuple(rejected))
        if kind == "hello":
            return Message(kind, pid, detail={"ts": _int(msg.get("ts")), "version": _text(msg.get("version"))[:64]})
        if kind == "unaudited":  # sent by the bootstrap where this package could not be imported
            return Message(kind, pid, detail={"ts": _int(msg.get("ts")), "python": _text(msg.get("python"))[:64],
                                              "reason": _text(msg.get("reason"))[:256]})
        if kind == "sync":
            return Message(kind, pid, detail={"token": _int(msg.get("token"))})
        if kind == "bye":
            return Message(kind, pid)
        if kind == "gap":
            return Message(kind, pid, detail={"dropped": _int(msg.get("dropped")), "t1": _int(msg.get("t1")),
                                              "t2": _int(msg.get("t2")), "reason": _text(msg.get("reason"))[:256]})
    except (TypeError, KeyError):
        raise MalformedDatagram("bad_fields") from None
    raise MalformedDatagram("bad_kind")
