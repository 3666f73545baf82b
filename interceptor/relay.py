"""The relay: a child process of `netaudit run` sends its records to the parent, which owns the ledger.

Standard library only, so any Python child is audited without our package or the ledger's
dependencies installed: `netaudit run` copies this package into its bootstrap folder and names a
local datagram socket (AF_UNIX, SOCK_DGRAM, bound by the parent in its private 0700 folder) in
NETAUDIT_RELAY. A path, unlike an inherited file descriptor, survives `close_fds`, so the
grandchildren a child starts are audited too; datagrams are atomic, so many processes send at once.

Wire format (version 1): one JSON object per datagram, at most MAX_DATAGRAM bytes.

    {"v": 1, "kind": "hello",  "pid": P, "ts": NS, "version": "0.1.0"}    first message of a process
    {"v": 1, "kind": "events", "pid": P, "events": [ROW, ...]}
    {"v": 1, "kind": "gap",    "pid": P, "dropped": N, "t1": NS, "t2": NS, "reason": "..."}
    {"v": 1, "kind": "sync",   "pid": P, "token": N}     "tell me when all I sent is in the ledger"
    {"v": 1, "kind": "unaudited", "pid": P, "ts": NS, "python": "3.9.2", "reason": "..."}

A `sync` is answered once every datagram the receiver got before it is appended (or counted as a
miss): the receiver creates the empty file `synced-P-N` in the socket's folder, which the sender
waits for and removes (`RelayWriter.sync`, which Sink.flush calls: a flush means "in the ledger").
The `unaudited` message comes from `netaudit run`'s bootstrap, not from this module: a process where the
interceptor could not be installed says so, and the parent records it in the chain.

A ROW is the NetEvent's fields in order (EVENT_FIELDS: every field but `fingerprint`), then the
hex SHA-256 of the request payload, or "". The child never holds the ledger's secret salt: the
parent turns the digest into the fingerprint, HMAC-SHA256(salt, digest) truncated to 128 bits,
exactly as capture.Record.to_event does in process. No body, no header or query value is ever
sent: a ROW is a NetEvent's metadata and a digest, nothing else.

Fail-open: the writer thread sends with a bounded wait (SEND_TIMEOUT_S); a parent that is gone or
a socket that stays full makes the send raise, and interceptor.Sink drops, counts and later writes
a gap row for the miss. The relay's own socket is not network egress: it is AF_UNIX (the socket
hooks record only (host, port) addresses) and it sends under the interceptor's claim (TLS.busy).
"""
from __future__ import annotations

import dataclasses
import hmac
import json
import math
import os
import socket
import time
from operator import attrgetter, itemgetter

from .capture import FINGERPRINT_HEX, TLS
from .event import AUDIT, NetEvent
from .sink import YIELD_EVERY

ENV_RELAY = "NETAUDIT_RELAY"
WIRE_VERSION = 1
MAX_DATAGRAM = 60 * 1024      # fits the default AF_UNIX send buffer (Linux: 208 KiB)
CHUNK = 128                   # rows tried per datagram (a row is ~350 bytes)
SEND_TIMEOUT_S = 2.0          # the writer thread waits this long for room in the parent's queue
MAX_TEXT = 8192               # characters of one text field the parent accepts
DIGEST_HEX = 64
EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(NetEvent) if f.name != "fingerprint")
_FINGERPRINT_AT = [f.name for f in dataclasses.fields(NetEvent)].index("fingerprint")
OVERSIZED = "RelayOversized"

_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 63 - 1   # what SQLite stores


class MalformedDatagram(ValueError):
    """A datagram the parent cannot accept; `reason` names why (for the gap row's count)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fingerprint(salt: bytes, payload_digest: bytes) -> str:
    """The ledger's fingerprint of a payload from its SHA-256 digest (as capture.Record.to_event)."""
    return hmac.digest(salt, payload_digest, "sha256").hex()[:FINGERPRINT_HEX]


# ---- the child's side ---------------------------------------------------------------------------

def encode_record(rec) -> tuple:
    """One record as a ROW (a tuple: JSON writes it as a list): its cleaned NetEvent fields (no
    fingerprint) and its payload digest."""
    fields = rec.fields(None)  # the values a NetEvent would hold, without building one
    return (fields[:_FINGERPRINT_AT] + fields[_FINGERPRINT_AT + 1:]
            + (rec.hasher.digest().hex() if rec.hasher is not None else "",))


# Rows are flat tuples of str, int, float, bool and tuples of str that this module builds: no
# cycle to look for (check_circular costs ~20% of the encoding), and plain ASCII out.
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def _dumps(message) -> bytes:
    return _encode(message).encode("ascii")


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
        self.datagrams = 0        # datagrams sent
        self._sock = None
        self._hello = False

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(self.send_timeout)
        busy, TLS.busy = TLS.busy, True   # our own channel: no layer of the interceptor records it
        try:
            self._sock.sendto(data, self.path)
        finally:
            TLS.busy = busy
        self.datagrams += 1

    def _say_hello(self) -> None:
        if not self._hello:
            from . import VERSION

            self._send(_dumps({"v": WIRE_VERSION, "kind": "hello", "pid": os.getpid(),
                               "ts": time.time_ns(), "version": VERSION}))
            self._hello = True

    def write_records(self, records: list) -> None:
        self._say_hello()
        pid = os.getpid()
        head = b'{"v":%d,"kind":"events","pid":%d,"events":[' % (WIRE_VERSION, pid)
        rows = []
        for i in range(0, len(records), YIELD_EVERY):
            if i:
                time.sleep(0)  # let the audited threads take the GIL, as the sink does
            rows += map(encode_record, records[i:i + YIELD_EVERY])
        sent_any, oversized = False, []
        start, chunk = 0, CHUNK
        while start < len(rows):
            # One json.dumps per datagram, not per row (half the encoding time): `chunk` rows,
            # halved until they fit, and the size that fitted is where the next datagram starts
            # (doubled again up to CHUNK); a row that alone does not fit is a miss.
            end = min(len(rows), start + chunk)
            while True:
                body = _dumps(rows[start:end])
                if len(head) + len(body) <= MAX_DATAGRAM or end - start == 1:
                    break
                end = start + (end - start) // 2
            chunk = min(CHUNK, 2 * (end - start))
            if len(head) + len(body) > MAX_DATAGRAM:
                oversized.append(records[start])
                start += 1
                continue
            try:
                self._send(head + body[1:] + b"}")  # body is "[row,...]": the head opened the list
            except OSError as exc:
                if not sent_any or self.on_miss is None:
                    raise  # nothing relayed: the sink counts the whole batch, oversized rows included
                self._missed(records[start:], type(exc).__name__)
                break
            sent_any = True
            start = end
        for rec in oversized:  # counted only now, so that a batch raised above is not counted twice
            self._missed([rec], OVERSIZED)

    def _missed(self, records: list, reason: str) -> None:
        if self.on_miss is None:
            raise OSError(f"{reason}: {len(records)} record(s) not relayed")
        self.on_miss(records[0].ts, reason, n=len(records), until=records[-1].ts)

    def write_gap(self, dropped: int, t1_ns: int, t2_ns: int, reason: str) -> None:
        self._say_hello()
        self._send(_dumps({"v": WIRE_VERSION, "kind": "gap", "pid": os.getpid(), "dropped": int(dropped),
                           "t1": int(t1_ns), "t2": int(t2_ns), "reason": str(reason)[:256]}))

    def sync(self, timeout: float = 5.0) -> bool:
        """True once the receiver has appended everything this process sent before the call."""
        # A random token: a forked child, a later process with a reused pid, or a concurrent
        # flush never finds an answer that was not to its own question.
        token = int.from_bytes(os.urandom(8), "big") >> 2
        pid = os.getpid()
        done = os.path.join(os.path.dirname(self.path), f"synced-{pid}-{token}")
        deadline = time.monotonic() + timeout
        if not self._send_by(_dumps({"v": WIRE_VERSION, "kind": "sync", "pid": pid, "token": token}),
                             min(deadline, time.monotonic() + self.send_timeout)):
            return False  # the receiver's queue stayed full: not sent, so not answered either
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
        return True

    def _send_by(self, data: bytes, deadline: float) -> bool:
        """Send one datagram, waiting for room in the receiver's queue until `deadline` (monotonic):
        False if there was none by then. A socket of its own, never blocking: the writer thread
        may be sending on the shared one meanwhile, whose timeout is not ours to change. What this
        process sent before the call is in the receiver's queue already, so this datagram comes
        after it whatever socket it leaves from."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        pause = 0.0002
        try:
            sock.setblocking(False)
            while True:
                busy, TLS.busy = TLS.busy, True  # our own channel, as in _send
                try:
                    sock.sendto(data, self.path)
                    break
                except BlockingIOError:  # the queue is full: wait a little, within the deadline
                    pass
                finally:
                    TLS.busy = busy
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.01)
        finally:
            sock.close()
        self.datagrams += 1
        return True

    def after_fork(self) -> None:
        """In a forked child: its own socket, and a hello with its own pid."""
        sock = self._sock
        self._sock = None
        self._hello = False
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
    return install(sink=sink)


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


def _float(v) -> float:
    if type(v) not in (int, float):
        raise MalformedDatagram("bad_float")
    try:
        v = float(v)  # JSON may carry an int of thousands of digits: beyond a float
    except OverflowError:
        raise MalformedDatagram("bad_float") from None
    if not math.isfinite(v):
        raise MalformedDatagram("bad_float")
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
_CHECKS = {"int": _int, "float": _float, "str": _text, "tuple[str, ...]": _names, "bool": _bool}
_FIELD_CHECKS = tuple(_CHECKS[f.type] for f in dataclasses.fields(NetEvent) if f.name != "fingerprint")


# The fast path's view of a ROW: each field's JSON type, then where the ints, texts and names are.
_TYPES = {"int": int, "float": float, "str": str, "tuple[str, ...]": list, "bool": bool}
_ROW_TYPES = tuple(_TYPES[f.type] for f in dataclasses.fields(NetEvent) if f.name != "fingerprint") + (str,)
_INTS = itemgetter(*(i for i, t in enumerate(_ROW_TYPES[:-1]) if t is int))
_TEXTS = itemgetter(*(i for i, t in enumerate(_ROW_TYPES[:-1]) if t is str))
_NAMES_AT = tuple(i for i, t in enumerate(_ROW_TYPES) if t is list)
(_FLOAT_AT,) = (i for i, t in enumerate(_ROW_TYPES) if t is float)
_CHANNEL_AT = EVENT_FIELDS.index("channel")
_FIELDS_OF = attrgetter(*(f.name for f in dataclasses.fields(NetEvent)))


def _plain(row) -> bool:
    """True when a ROW passes every check of _FIELD_CHECKS, tested in bulk (the rows our own
    RelayWriter sends); False sends it through the field-by-field checks, which name the fault.
    The row is as json.loads gives it: exact str, never a subclass (which str.join would take)."""
    if type(row) is not list or len(row) != len(_ROW_TYPES) or tuple(map(type, row)) != _ROW_TYPES:
        return False
    ints = _INTS(row)
    if min(ints) < _INT_MIN or max(ints) > _INT_MAX or not math.isfinite(row[_FLOAT_AT]):
        return False
    texts = [*_TEXTS(row)]
    for at in _NAMES_AT:
        names = row[at]
        if len(names) > 1024:
            return False
        texts += names
    try:
        joined = "".join(texts)  # and a name that is not a str raises here
    except TypeError:
        return False
    if max(map(len, texts)) > MAX_TEXT:
        return False
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _event(row, salt: bytes) -> NetEvent:
    fields = _fields(row, salt)
    return NetEvent(*fields) if type(fields) is tuple else fields


def _fields(row, salt: bytes) -> tuple:
    """A ROW's NetEvent field values in order, checked, without building the NetEvent."""
    if _plain(row):
        values = row[:-1]
        for at in _NAMES_AT:
            values[at] = tuple(values[at])
        if values[_CHANNEL_AT] == AUDIT:
            raise MalformedDatagram("audit_row")  # admin facts are the parent's to write
        values.insert(_FINGERPRINT_AT, _fingerprint_of(row[-1], salt))
        return tuple(values)
    return _FIELDS_OF(_event_checked(row, salt))


def _event_checked(row, salt: bytes) -> NetEvent:
    """The field-by-field path: every check on its own, the first failing one names the fault."""
    if type(row) is not list or len(row) != len(EVENT_FIELDS) + 1:
        raise MalformedDatagram("bad_row")
    values = dict(zip(EVENT_FIELDS, (check(v) for check, v in zip(_FIELD_CHECKS, row))))
    if values["channel"] == AUDIT:
        raise MalformedDatagram("audit_row")  # admin facts are the parent's to write
    return NetEvent(fingerprint=_fingerprint_of(row[-1], salt), **values)


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
            rows = msg.get("events")
            if type(rows) is not list:
                raise MalformedDatagram("bad_events")
            events, rejected = [], []
            convert = _fields if fields else _event
            for row in rows:
                try:
                    events.append(convert(row, salt))
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
        if kind == "gap":
            return Message(kind, pid, detail={"dropped": _int(msg.get("dropped")), "t1": _int(msg.get("t1")),
                                              "t2": _int(msg.get("t2")), "reason": _text(msg.get("reason"))[:256]})
    except (TypeError, KeyError):
        raise MalformedDatagram("bad_fields") from None
    raise MalformedDatagram("bad_kind")
