"""Shared capture state and the record the wrappers fill on the caller's thread.

A `Record` holds raw, already-redacted metadata (names only, never values) plus a running
SHA-256 of the request payload, fed block by block as the payload is sent (never buffered). The
writer thread turns it into a `NetEvent`'s values (`Record.fields`); the fingerprint is

    fingerprint = HMAC-SHA256(salt, SHA-256(payload)), first 128 bits, hex

so the ledger's secret salt is needed only on the writer thread (where the ledger is opened,
lazily) and the audited thread pays for one streaming SHA-256, nothing more. Without the salt a
fingerprint cannot be checked against a guessed payload, as with a plain HMAC of the payload.
In a child of `netaudit run` the writer thread sends the plain SHA-256 to the parent, which holds
the salt (interceptor.relay): that digest crosses the run's private local socket, never the ledger.

The claim (`claim()`, `claimed()`) is the suppress context: while a wrapper runs the
audited call, every layer below it (a nested wrapper, the socket hooks) stays silent, so one call
is one event. It is a context variable, not a thread-local: a thread, a greenlet and an asyncio task
each have a context of their own, so a wrapper waiting inside a gevent-patched socket (the hub runs
other greenlets meanwhile, on the same thread) hides nothing of theirs, whether gevent patched
before or after the interceptor was installed. (A `threading.local` made before the patch stays a
thread's: it hid every other greenlet's calls while one waited in a claimed call.) The claim is
also the claiming thread's only, and ends for every copy of the context with the call (claim()).
The program's own code that a claimed call runs (a body's generator or file, an FTP callback) runs
with the claim suspended (`unclaimed`): its calls are the program's, and are recorded.
"""
from __future__ import annotations

import atexit
import contextvars
import functools
import hmac
import os
import sys
import time
import types
from hashlib import sha256

from .event import EGRESS, NetEvent
from .guard import GUARD, pass_on
from .attribution import LOGGING as _LOGGING, OURS as _OURS, claim_covers as _claim_covers
from .native import get_ident as _ident
from .redact import clean_host, clean_name, clean_names, clean_path, utf8_safe

FINGERPRINT_HEX = 32  # 128 bits
_getframe = sys._getframe

_CLAIM = contextvars.ContextVar("netaudit_claim", default=None)
_get, _set = _CLAIM.get, _CLAIM.set


def claimed(depth: int = 2, dest=None, lookup: bool = False) -> bool:
    """True while a wrapper runs the audited call in this context, on this thread, and the code
    asking runs in that call's libraries only, or makes that call's own connection.

    The claim covers the libraries the audited call runs through, not the program's own code that
    the call reaches: a subclass's override of a wrapped client's method (`_send_output`,
    `connect`, smtplib's `ehlo`), a log handler a library logs through. A program frame between
    here and the claiming wrapper (attribution.claim_covers) makes what runs below it unclaimed:
    recorded. Under a claim that covered everything, such code could hide any traffic by
    subclassing a client class. One exception: a connection to the claimed call's own destination
    (`dest`, the (host, port) a socket-level step is about to connect or look up, equal to the one
    the claiming wrapper set in its claim), made by a program's override of how the client
    connects (Odoo's mail addon replaces `IMAP4._create_socket`; an HTTPConnection subclass's
    `connect` creates its socket itself): that is the call's connection, not another one. A
    connection matches once per claim (a second one there from the program's code is recorded),
    a lookup of it whenever (it reaches a resolver, not the host). Only a str host and an int
    port are compared (review 33, 1: a program's object with its own `__eq__` matched anything).
    Not for a log handler's code (the standard library's `logging` in between): its traffic is
    never the call's own (review 37, 4).

    The walk starts at the frame `depth` levels up: by default the caller of the function that
    calls this (a wrapper, or the audit hook, whose caller is the code that made the audited C
    call); a helper of a wrapper passes 3. It runs only under a claim (a new connection's connect
    and lookup, smtplib's steps inside sendmail), never on a kept-alive request's path. A fault in
    it is counted and leaves the step unclaimed: recorded twice at worst, never hidden (review 33,
    4)."""
    held = _get()
    if held is None or held[0] is None or held[0] != _ident():  # an ended claim: no id call
        return False
    try:
        kind = _claim_covers(_getframe(depth))
        if kind == _OURS:
            return True
        want = held[1] if len(held) > 1 else None
        if want is None or kind == _LOGGING or type(dest) is not tuple or len(dest) < 2:
            return False
        if type(want) is Record:  # an HTTP request's: its destination read only here, off the hot path
            want = destination(want.host, want.dst_port)
        if want is None or destination(dest[0], dest[1]) != want:
            return False
        if not lookup:
            held[1] = None  # once: the call has one connection; a second one there is recorded
        return True
    except Exception as exc:
        GUARD.fault("claim", exc)
        return False


def destination(host, port):
    """A claim's destination (see claimed()): (host, port) when they are a str and an int, else None."""
    return (host, port) if type(host) is str and type(port) is int else None


def holds_claim() -> bool:
    """This thread holds a claim in this context (whatever code runs below it: see claimed())."""
    held = _get()
    return held is not None and held[0] is not None and held[0] == _ident()


def claim(held: list) -> None:
    """Claim the call about to run: the layers below it stay silent until the caller empties
    `held`, a list it made before its `try`, [None] or [None, (host, port)] for a call that
    connects to host:port (see claimed()), or [None, record] where the record's host and port
    are that destination:

        held = [None]
        try:
            claim(held)
            ...the audited call...
        finally:
            held[0] = None   # first: a plain store, which nothing can interrupt

    The claim is that list, [the OS thread's id], set in the context variable. A context copied
    while it is held (asyncio's call_soon_threadsafe from a request body's generator, a thread
    that inherits its starter's context) shares it: claimed only on the thread that claimed, and
    emptied for every copy at the end, where a plain True stayed set in a copy for its life and
    silenced its calls (review 23, H1). Nothing is reset: the context keeps the emptied list,
    which claims nothing. A call made while this thread's claim is held does not claim again (the
    outer claim stands). Review 26, H1: an exception a signal handler raises can land between any
    two calls; with the claim set inside the caller's `try` and ended by a store in its `finally`,
    none can leave it set (a claim()/release() pair left it set for good when one landed between
    the set and the `try`, or at release()'s entry)."""
    current = _get()
    me = _ident()
    if current is not None and current[0] == me:
        return
    held[0] = me
    _set(held)


def unclaimed(fn, *args):
    """`fn(*args)`: the program's own code, called from inside a claimed call (a request body's
    generator, iterable or file being sent, an FTP callback), run with this thread's claim
    suspended. Its calls are the program's and are recorded: under the claim, everything a body
    generator did (a raw connection, a datagram, another HTTP request) went unrecorded, a way to
    hide any traffic. The claim is back when it returns or raises. Should a signal handler's
    exception land between two steps here, the claim stays ended: the rest of the outer call is
    recorded twice at worst, never hidden. Suspended whenever this thread holds a claim, whatever
    code called this (review 33, 2: with claimed(), a program frame above made it run `fn` with the
    claim held, and this frame of ours then covered `fn`'s calls)."""
    if not holds_claim():
        return fn(*args)
    held = _get()
    me = held[0]
    held[0] = None
    try:
        return fn(*args)
    finally:
        held[0] = me
        _set(held)   # a wrapper inside fn claimed with its own list (this one was empty then)


class State:
    """What install() set up; one per process."""

    __slots__ = ("sink", "attribution", "attribute", "pid", "installed", "enabled")

    def __init__(self) -> None:
        self.sink = None
        self.attribution = None   # what install()/use_attribution() were given
        self.attribute = None     # the same, as the hot path calls it (see use_attribution)
        self.pid = os.getpid()
        self.installed = False
        self.enabled = True

    def use_attribution(self, attribution) -> None:
        """Set the attribution. An object whose class defines `__call__` as a plain method
        (StackAttribution) is called through that method, bound: calling the object itself goes
        through the type's call slot, which looks the method up and builds an argument tuple on
        every call. Anything else (a function, a partial, a static `__call__`) is called as is."""
        method = None
        for klass in type(attribution).__mro__:  # the class's own, as calling the object finds it
            if "__call__" in klass.__dict__:
                method = klass.__dict__["__call__"]
                break
        fast = types.MethodType(method, attribution) if isinstance(method, types.FunctionType) else attribution
        self.attribution, self.attribute = attribution, fast


STATE = State()


def _after_fork_in_child() -> None:
    STATE.pid = os.getpid()
    _set(None)


os.register_at_fork(after_in_child=_after_fork_in_child)


class Record:
    """One call's metadata while it is in flight (caller's thread) and queued (writer's).

    Only what every call has is set per instance; the rest falls back to the class defaults below,
    so starting a record costs a handful of stores on the audited thread.
    """

    duration_ns = 0      # wall time of the call; the NetEvent's duration_ms is this / 1e6
    direction = EGRESS
    url_path = ""
    query_keys = ()
    src_ip = ""
    src_port = 0
    dst_ip = ""
    status = ""
    error = ""
    req_bytes = 0
    resp_bytes = 0
    header_names = None
    hasher = None
    module = ""
    author = ""
    call_site = ""
    self_egress = False
    done = False
    netaudit_own = None  # an HTTP request's: connects made inside its endheaders (http_wrappers._connected)
    netaudit_head = 0    # an HTTP request's: its head's size, counted once sent (http_wrappers.http_send_wrapper)

    def __init__(self, channel: str, protocol: str, method: str, host: str, port: int) -> None:
        self.ts = time.time_ns()
        self.channel = channel
        self.protocol = protocol
        self.method = method
        self.host = host
        self.dst_port = port or 0
        self.pid = STATE.pid

    def hash_payload(self, data) -> None:
        """Feed payload bytes to the running digest as they are sent (never kept)."""
        h = self.hasher
        if h is None:
            h = self.hasher = sha256()
        h.update(data)
        self.req_bytes += data.nbytes if type(data) is memoryview else len(data)

    def to_event(self, salt: bytes | None) -> NetEvent:
        """Writer thread: the final NetEvent. The salt turns the payload digest into the fingerprint."""
        return NetEvent(*self.fields(salt))

    def fields(self, salt: bytes | None) -> tuple:
        """Writer thread: the NetEvent's field values, in field order, without building the NetEvent
        (a frozen dataclass costs microseconds to build; the ledger writer needs only the values).
        Never raises: a record with odd values (a port given as "http", a custom attribution's
        None) takes the field-by-field path, which makes each value one the ledger can store."""
        fp = fingerprint(salt, self.hasher.digest()) if self.hasher is not None and salt else ""
        error, module, author, call_site = self.error, self.module, self.author, self.call_site
        if (type(error) is str and type(module) is str and type(author) is str and type(call_site) is str
                and type(self.pid) is int and type(self.ts) is int and type(self.duration_ns) is int):
            src_ip, dst_ip = self.src_ip, self.dst_ip
            try:
                return (
                    self.ts, self.duration_ns / 1e6, self.direction, self.channel, self.protocol,
                    _cleaned("m", self.method), _cleaned("h", self.host or ""), clean_path(self.url_path or ""),
                    _cleaned("q", tuple(self.query_keys)) if self.query_keys else (),
                    src_ip if isinstance(src_ip, str) else "", int(self.src_port or 0),
                    dst_ip if isinstance(dst_ip, str) else "", int(self.dst_port or 0), str(self.status), error,
                    int(self.req_bytes), int(self.resp_bytes or 0),
                    _cleaned("n", tuple(self.header_names)) if self.header_names else (),
                    fp, module, author, call_site, self.pid, bool(self.self_egress))
            except Exception:
                pass
        return self._odd_fields(fp)

    def _odd_fields(self, fp: str) -> tuple:
        """fields() for a record with a value of an unexpected type: each value made storable,
        and equal to what the fast path gives wherever the fast path's conversion succeeds (the
        relay takes some fields from each path: the rows must not depend on which)."""
        return (
            _as_int(self.ts), _as_int(self.duration_ns) / 1e6, _as_text(self.direction), _as_text(self.channel),
            _as_text(self.protocol), _safe(clean_name, self.method), _safe(clean_host, self.host or ""),
            _safe(clean_path, self.url_path or ""), _as_names(self.query_keys, unquote=True),
            self.src_ip if isinstance(self.src_ip, str) else "", _as_int(self.src_port),
            self.dst_ip if isinstance(self.dst_ip, str) else "", _as_int(self.dst_port), _safe(str, self.status),
            _as_text(self.error), _as_int(self.req_bytes), _as_int(self.resp_bytes), _as_names(self.header_names),
            fp, _as_text(self.module), _as_text(self.author), _as_text(self.call_site), _as_int(self.pid),
            _safe(bool, self.self_egress, False))


_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 63 - 1   # what SQLite stores


def fingerprint(salt: bytes, payload_digest: bytes) -> str:
    """The ledger's fingerprint of a payload from its SHA-256 digest (the relay's parent computes
    it the same way from the digest a child sends)."""
    return hmac.digest(salt, payload_digest, "sha256").hex()[:FINGERPRINT_HEX]


def _as_int(value) -> int:
    """int(value or 0), within what the ledger stores; 0 where that fails (a port given as a
    service name: "http")."""
    try:
        value = int(value or 0)
    except Exception:
        return 0
    return min(max(value, _INT_MIN), _INT_MAX)


def _safe(convert, value, default=""):
    """convert(value), made storable text; `default` (or the type's name) where it fails."""
    try:
        value = convert(value)
    except Exception:
        return default if default != "" else utf8_safe(type(value).__name__)
    return utf8_safe(value) if type(value) is str else value


def _as_text(value) -> str:
    """A text field a wrapper or a custom attribution left as another type: None is ""."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return _safe(str, value)


def _as_names(value, unquote: bool = False) -> tuple[str, ...]:
    """As the fast path's clean_names(tuple(value)); () where that fails (not iterable)."""
    if not value:
        return ()
    try:
        return clean_names(tuple(value), unquote=unquote)
    except Exception:
        return ()


# Writer thread only: cleaned names by raw value. A process sends the same header names, query
# keys, methods and hosts again and again, so cleaning each distinct one once saves most of the work.
_CLEAN_CACHE: dict = {}
_CLEAN_CACHE_MAX = 4096
_CLEANERS = {
    "m": clean_name,
    "h": clean_host,
    "q": lambda names: clean_names(names, unquote=True),
    "n": clean_names,
}


def _cleaned(kind: str, raw):
    key = (kind, raw)
    value = _CLEAN_CACHE.get(key)
    if value is None:
        value = _CLEANERS[kind](raw)
        if len(_CLEAN_CACHE) >= _CLEAN_CACHE_MAX:
            _CLEAN_CACHE.clear()
        _CLEAN_CACHE[key] = value
    return value


def begin(channel: str, protocol: str, method: str, host: str, port: int, frame) -> Record:
    """Start a record and attribute it to the frame's caller. Raises on fault: callers guard it."""
    rec = Record(channel, protocol, method, host, port)
    attribute = STATE.attribute
    if attribute is not None:
        rec.module, rec.author, rec.call_site, rec.self_egress = attribute(frame)
    return rec


def emit(rec: Record, sink=None) -> None:
    """Close the record's timing and hand it to the sink (default: the installed one). Never raises
    but the program's own signal-handler exception (guard.py)."""
    try:
        if rec.done:
            return
        rec.done = True
        rec.duration_ns = max(0, time.time_ns() - rec.ts)
        (sink or STATE.sink).submit(rec)
    except Exception as exc:
        GUARD.fault("record", exc, rec.ts)


def fail(rec: Record, exc: BaseException, sink=None) -> None:
    """The audited call raised: note its exception class and emit. Never raises but the
    program's own signal-handler exception (guard.py)."""
    try:
        if not rec.done:
            rec.error = type(exc).__name__
            status = getattr(exc, "smtp_code", None) or getattr(exc, "code", None)
            if isinstance(status, int) and not rec.status:
                rec.status = str(status)
    except Exception as fault:
        GUARD.fault("capture", fault, rec.ts)
    emit(rec, sink)


def peer(rec: Record, sock) -> None:
    """Fill addresses from a connected socket (two cheap syscalls; callers cache per socket)."""
    try:
        dst = sock.getpeername()
        src = sock.getsockname()
    except (OSError, AttributeError) as exc:
        pass_on(exc)  # a signal handler's TimeoutError is the program's (guard.py)
        return
    if isinstance(dst, tuple):
        rec.dst_ip, rec.dst_port = dst[0], dst[1]
    if isinstance(src, tuple):
        rec.src_ip, rec.src_port = src[0], src[1]


def missed(step: str, exc: BaseException) -> None:
    GUARD.fault(step, exc)


EXIT_FLUSHES: list = []   # what runs at exit, in registration order (atexit runs the last first)


def at_exit(flush) -> None:
    """Run `flush` at interpreter exit, and before os._exit, which skips atexit (interceptor.sink:
    _exit)."""
    atexit.register(flush)
    EXIT_FLUSHES.append(flush)


def flush_at_multiprocessing_exit(flush, priority: int) -> None:
    """In a forked child: have `flush` run from multiprocessing's exit finalizers, since a
    multiprocessing child ends with os._exit, past atexit. multiprocessing clears the finalizers a
    child inherits, then runs its after-fork hooks, so the finalizer is registered from one of those
    (only if the program uses multiprocessing at all). A higher priority runs first: the held and
    open records (101) before the sink's own flush (100)."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    try:
        mp_util.register_after_fork(flush, functools.partial(_finalize_at_exit, priority=priority))
    except Exception as exc:
        GUARD.fault("install", exc)


def _finalize_at_exit(flush, priority: int) -> None:
    import multiprocessing.util as mp_util

    mp_util.Finalize(None, flush, exitpriority=priority)
