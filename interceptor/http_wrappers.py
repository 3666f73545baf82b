"""Protocol wrappers for http.client, and so for urllib, urllib3, requests and xmlrpc.client.

One HTTP request is one event, opened in `putrequest` (method, path, query keys, attribution),
filled at `endheaders` (header names only) and by the payload (hashed as it streams through
`endheaders` and `send`), and closed by `getresponse` (status, sizes) or by the first exception;
a request left in flight (put or sent, never answered) is closed as it is by the connection's next
request, its close(), its collection, or the interpreter's exit (`_connection_ends`).

A connect() made before any request sent on the connection (the program's own, urllib3's ahead of
an HTTPS request) is an event of its own ("CONNECT") unless the connection's next request sends on
its socket, to its destination, before any byte moved there (`_connected`, `_ExplicitConnect`).

Header names are read at `endheaders` from the lines http.client buffered for the request
(`HTTPConnection._buffer`, one `b"Name: value"` line per `putheader`), from the first line after
those the original `putrequest` added itself (its Host and Accept-Encoding are not the caller's),
and cut at the colon at once: values are never kept. That spares a wrapper on `putheader`, called
five or six times per requests/urllib3 request. Should http.client stop buffering so (checked once
at install), `putheader` is wrapped instead, keeping each name as it is put.

Each wrapper runs the audited method exactly once, through the original function saved at
install; its result and exception pass through untouched, and every capture step sits in a guard.
The call is claimed (capture.claim) around `endheaders` and `send`, the two that may connect
or write to the socket, so the socket layer below stays silent. `putrequest` and `getresponse` only
format and parse (no socket event below them): they run unclaimed, and the connection's own state
tells the wrappers apart: the record is put on the connection only after the original
`putrequest` returned (so the Host and Accept-Encoding headers it adds are not listed as the
caller's), and `_netaudit_phase` marks the sends `endheaders` makes itself, the first of them the
request's head, whose size counts in `req_bytes` once sent (http_send_wrapper).

Response size (`resp_bytes`): a response with a length (Content-Length; 0 for HEAD, 204, 304) is
recorded at `getresponse`, with that length. A chunked or close-delimited response has no length
until it is read: its `fp` is replaced by a `_BodyCounter` that passes every read through
untouched, keeps nothing, and adds the body bytes the caller consumed (chunk framing is parsed off,
so a chunked body counts its decoded size, as Content-Length would). Its event is held until the
body ends: when the response is read to its end or closed (http.client closes `fp` then; urllib3
and requests too, whether they read through `HTTPResponse.read` or parse the chunks themselves
from `fp`), or at the latest when the counter is garbage-collected, when the connection sends its
next request, or at interpreter exit (`_flush_held`, registered after the sink's own exit flush, so
it runs first; in a multiprocessing child, from its exit finalizers, before the sink's).
Its duration is still the time to the response head, as for every other request.
"""
from __future__ import annotations

import functools
import http.client
import io
import os
import sys
import time
import weakref

from . import forensic as _fx
from . import socket_bytes
from .capture import (GUARD, STATE, Record, at_exit, begin, claim, claimed, destination, emit, fail,
                      flush_at_multiprocessing_exit, peer, unclaimed)
from .guard import pass_on
from .redact import query_names, split_url

MARK = "_netaudit_wrapped"     # set on every function we installed (idempotent install)
# _netaudit_phase: headers being put; inside endheaders: its head not yet sent (HEAD), being sent
# (HEAD_GOING), sent (SENDING); after it
HEADERS, HEAD, HEAD_GOING, SENDING, BODY = 0, 1, 2, 3, 4
IN_ENDHEADERS = (HEAD, HEAD_GOING, SENDING)
# Per-connection state lives in plain attributes with class-level defaults (set in install()),
# never through `conn.__dict__`: materialising an instance's __dict__ turns off CPython 3.11's
# inline attribute cache for that connection and slows every attribute access of http.client.
#   _netaudit_rec    the in-flight Record, or None
#   _netaudit_phase  HEADERS; while the original endheaders runs HEAD, HEAD_GOING as it sends its
#                    head, SENDING once the head went out; BODY after it
#   _netaudit_peer   (weak reference to the socket, src_ip, src_port, dst_ip, dst_port) cached per
#                    socket (weak: no reference of ours keeps a socket the program let go open)
#   _netaudit_fx     forensic.Capture of the in-flight request's bodies, only while a body tap
#                    is set (interceptor/forensic.py); bodies never go on the Record
#   _netaudit_held   the _BodyCounter of the last response without a length, while its event is
#                    held (the next request ends it), or the _ExplicitConnect of a connect() made
#                    before any request sent, until the next request sends (endheaders hands it
#                    over) or the connection ends (_connection_ends)
#   _netaudit_hstart index in `_buffer` of the first header line the caller put
_DEFAULTS = {"_netaudit_rec": None, "_netaudit_phase": HEADERS, "_netaudit_peer": None, "_netaudit_fx": None,
             "_netaudit_held": None, "_netaudit_hstart": 0}
_NAMES_FROM_BUFFER = True  # False: http.client does not buffer header lines as expected; wrap putheader

_orig: dict[str, object] = {}
_https_classes: dict[type, str] = {}
_getframe = sys._getframe
_time_ns = time.time_ns
# The originals, bound once at install (a module global is a cheaper load than _orig[name]).
_putrequest = _putheader = _endheaders = _send = _getresponse = _close = None


def _protocol(conn) -> str:
    cls = type(conn)
    proto = _https_classes.get(cls)
    if proto is None:
        https = getattr(http.client, "HTTPSConnection", None)
        is_tls = (https is not None and isinstance(conn, https)) or getattr(cls, "scheme", "") == "https" \
            or getattr(cls, "default_port", 0) == 443
        proto = _https_classes[cls] = "https" if is_tls else "http"
    return proto


def _end_previous(conn) -> None:
    """A new request on the connection: end what the previous one left open."""
    if conn._netaudit_rec is not None:  # the previous request never got to getresponse: close it as is
        _end_request(conn)
    held = conn._netaudit_held
    if held is not None:
        if type(held) is _ExplicitConnect:
            held.end_body()  # the connection stays counted until this request sends (endheaders)
        else:                # the previous response's body was left unread: its event ends here
            conn._netaudit_held = None
            held.finish()


def _end_request(conn) -> None:
    """The connection's request in flight gets no response (or none that anyone will read): its
    event, as it is."""
    old = conn._netaudit_rec
    conn._netaudit_rec = None
    if _NAMES_FROM_BUFFER and conn._netaudit_phase == HEADERS:
        _take_header_names(conn, old)
    emit(old)
    _forensic_end(conn, False)


def _begin_request(conn, method, url, frame):
    """The request's record, attributed and with its names; not yet on the connection."""
    if conn._netaudit_rec is not None or conn._netaudit_held is not None:
        _end_previous(conn)
    rec = Record("http", _https_classes.get(type(conn)) or _protocol(conn), method,
                 getattr(conn, "_tunnel_host", None) or conn.host, getattr(conn, "_tunnel_port", None) or conn.port)
    attribute = STATE.attribute
    if attribute is not None:
        rec.module, rec.author, rec.call_site, rec.self_egress = attribute(frame)
    path, query = split_url(url)
    rec.url_path = path
    if query:
        rec.query_keys = query_names(query)
    if not _NAMES_FROM_BUFFER:
        rec.header_names = []
    if _fx.TAP is not None:  # forensic mode: the one check on the hot path when it is off
        conn._netaudit_fx = _fx.start(rec)
    return rec


def _take_header_names(conn, rec) -> None:
    """The names of the header lines the caller put, cut at the colon (values never kept)."""
    buffered = conn._buffer
    start = conn._netaudit_hstart
    if len(buffered) > start:
        rec.header_names = [line.partition(b":")[0].decode("latin-1") for line in buffered[start:]]


def _head_size(buffered) -> int:
    """The size of the request head http.client is about to send: its request line and header
    lines joined by CRLF, then a blank line (`_send_output` sends `b"\\r\\n".join(_buffer + [b"", b""])`).
    Taken from the buffer, not from the send that carries it: a subclass may send the body with it
    in one send (botocore's `_send_output`), or the head in pieces (review 44, 2)."""
    return sum(map(len, buffered)) + 2 * (len(buffered) + 1)


def _forensic_end(conn, response_seen) -> None:
    """The request ended without a response to tee: hand its request body to the tap."""
    capture = conn._netaudit_fx
    if capture is not None:
        conn._netaudit_fx = None
        capture.finish(response_seen)


def _abandon(conn, rec, exc) -> None:
    """The audited call raised: close the request's record with the error (the caller re-raises)."""
    conn._netaudit_rec = None
    fail(rec, exc)
    _forensic_end(conn, False)


def http_putrequest_wrapper(self, method, url, skip_host=False, skip_accept_encoding=False):
    """Wraps HTTPConnection.putrequest: opens the request's record."""
    if claimed():
        return _putrequest(self, method, url, skip_host, skip_accept_encoding)
    rec = None
    try:
        rec = _begin_request(self, method, url, _getframe(1))
    except Exception as exc:
        GUARD.fault("capture", exc)
    try:
        result = _putrequest(self, method, url, skip_host, skip_accept_encoding)
    except BaseException as exc:
        if rec is not None:
            _abandon(self, rec, exc)
        raise
    if rec is not None:
        self._netaudit_rec = rec
        self._netaudit_phase = HEADERS
        if _NAMES_FROM_BUFFER:
            try:
                self._netaudit_hstart = len(self._buffer)
            except Exception as exc:
                GUARD.fault("redact", exc, rec.ts)
    return result


def http_putheader_wrapper(self, header, *values):
    """Wraps HTTPConnection.putheader, only if http.client does not buffer header lines as
    expected (see the module docstring): keeps the header's name, never its values."""
    rec = self._netaudit_rec
    if rec is not None:
        try:
            rec.header_names.append(header)
        except Exception as exc:
            GUARD.fault("redact", exc, rec.ts)
    return _putheader(self, header, *values)


_END = object()


def _hashing_reads(body, rec, blocksize):
    """Stream a file-like body to http.client (endheaders' body), each block read, encoded and
    hashed as send() reads a file given to it (_HashingReader)."""
    read = _HashingReader(body, rec, None).read
    while True:
        data = read(blocksize)
        if not data:
            break
        yield data


def _hashing_iteration(chunks, rec):
    """Pass an iterable body's chunks on (`chunks`: its iterator, made once: a body may be
    iterable only once), hashing the bytes-like ones; the iteration runs unclaimed."""
    while True:
        chunk = unclaimed(next, chunks, _END)
        if chunk is _END:
            break
        if isinstance(chunk, (bytes, bytearray)):
            _hash(rec, chunk)
        elif not isinstance(chunk, str):
            _hash_buffer(rec, chunk)
        yield chunk


def _hash_buffer(rec, data) -> bool:
    """Hash `data` if http.client sends it as one buffer (an array, a ctypes array...); False if
    it is no buffer. The view is released at once: a program reusing the buffer (an array it
    resizes between chunks) must not find it still exported (review 30, 3)."""
    try:
        view = memoryview(data)
    except TypeError as exc:
        pass_on(exc)
        return False
    with view:
        _hash(rec, view)
    return True


def _hashing(data, rec, blocksize):
    """A body (endheaders' or send's) as it is passed on: bytes-like hashed now and passed as
    they are; a file or an iterable wrapped so each block is hashed as it is sent."""
    if isinstance(data, (bytes, bytearray)):
        rec.hash_payload(data)
        return data
    if isinstance(data, str):
        rec.hash_payload(data.encode("iso-8859-1", "replace"))
        return data
    if hasattr(data, "read"):
        return _hashing_reads(data, rec, blocksize)
    if _hash_buffer(rec, data):
        return data
    try:
        chunks = iter(data)
    except TypeError as exc:
        pass_on(exc)
        return data  # http.client raises its own TypeError for it: leave it be
    return _hashing_iteration(chunks, rec)


class _HashingReader:
    """A file as http.client reads it: each block hashed as it goes by (and copied to a forensic
    capture), text encoded as http.client would (so http.client sees a binary file), its read run
    unclaimed (capture.unclaimed: the file's code is the program's, its calls are recorded)."""

    __slots__ = ("_fp", "_rec", "_fx", "_text")

    def __init__(self, fp, rec, fx) -> None:
        self._fp = fp
        self._rec = rec
        self._fx = fx
        self._text = isinstance(fp, io.TextIOBase)  # what http.client encodes (_is_textIO)

    def read(self, *args):
        data = unclaimed(self._fp.read, *args)
        if self._text and data:
            data = data.encode("iso-8859-1")  # as http.client does: a text file's bytes fail so too
        elif isinstance(data, str):
            return data  # http.client raises its own TypeError for it, as without us
        if data:
            _hash(self._rec, data)
            if self._fx is not None:
                self._fx.add_request(data)
        return data

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _hashing_body(conn, rec, data):
    """What send() gets for a body that is not bytes, sent after the headers: the same data, hashed
    (and teed to a forensic capture)."""
    fx = conn._netaudit_fx
    if hasattr(data, "read"):
        return _HashingReader(data, rec, fx)
    body = _hashing(data, rec, getattr(conn, "blocksize", 8192))
    if fx is not None:
        if body is data:
            fx.add_request(data)
        else:
            body = fx.tee(body)
    return body


def _hash(rec, data) -> None:
    try:
        rec.hash_payload(data)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)


def http_endheaders_wrapper(self, message_body=None, *, encode_chunked=False):
    """Wraps HTTPConnection.endheaders: sends headers and an optional body (hashed as it streams)."""
    rec = self._netaudit_rec
    if rec is None or claimed():
        return _endheaders(self, message_body, encode_chunked=encode_chunked)
    held = self._netaudit_held
    if held is not None:  # a connect() made before this request sent (_ExplicitConnect)
        _sending(self, held, rec)
    if _NAMES_FROM_BUFFER:
        try:
            _take_header_names(self, rec)
            rec.netaudit_head = _head_size(self._buffer)
        except Exception as exc:
            GUARD.fault("redact", exc, rec.ts)
    body = message_body
    if message_body is not None:
        try:
            body = _hashing(message_body, rec, getattr(self, "blocksize", 8192))
        except Exception as exc:
            body = message_body
            GUARD.fault("capture", exc, rec.ts)
        if self._netaudit_fx is not None:
            try:
                body = _fx.request_body(self._netaudit_fx, message_body, body)
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
    self._netaudit_phase = HEAD  # its first send is the head (http_send_wrapper counts it)
    # the request's destination as putrequest recorded it, for a program's override that connects
    # (capture.claimed); not the connection's attributes, which the program may change (review 33, 1)
    claim_held = [None, rec]
    try:
        claim(claim_held)
        result = _endheaders(self, body, encode_chunked=encode_chunked)
    except BaseException as exc:
        if self._netaudit_phase != SENDING:
            # its head did not go out in full (the connection could not be made, say), nor did any
            # of its body: no bytes out (the body's fingerprint stays: what the program tried to send)
            rec.req_bytes = 0
        _abandon(self, rec, exc)
        raise
    finally:
        claim_held[0] = None
        if rec.netaudit_own is not None:  # connects made inside it: which one the request rides
            _settle_own(self, rec)
    self._netaudit_phase = BODY
    try:
        sock = self.sock
        cached = self._netaudit_peer
        if cached is not None and cached[0]() is sock:  # a kept-alive connection: no syscalls
            _, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port = cached
        elif sock is not None:
            _fill_peer(self, rec)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    return result


def _fill_peer(conn, rec) -> None:
    sock = conn.sock
    if sock is None:
        return
    cached = conn._netaudit_peer
    if cached is None or cached[0]() is not sock:
        peer(rec, sock)
        _register(conn)  # a new socket: its requests are ended at exit (_connection_ends)
        conn._netaudit_peer = (_ref(sock), rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port)
    else:
        _, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port = cached


def http_send_wrapper(self, data):
    """Wraps HTTPConnection.send: payload sent after the headers (urllib3 streams bodies so)."""
    rec = self._netaudit_rec
    if rec is None:
        return _send(self, data)
    phase = self._netaudit_phase
    if phase == HEAD:
        # endheaders' first send: the request's head goes out (`_send_output`). Its size (_head_size,
        # taken in endheaders; where http.client keeps no buffer as expected, this send's) counts
        # in the request's bytes out once the send returned, as a raw socket's event counts every
        # byte: data put in a header or a query value is data sent. None if the send failed,
        # connecting (nothing went out) or part way. Sends made inside it (a proxy tunnel's
        # CONNECT, from the connect it makes) are not the request's.
        self._netaudit_phase = HEAD_GOING
        n = _send(self, data)
        self._netaudit_phase = SENDING
        try:
            rec.req_bytes += rec.netaudit_head or len(data)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
        return n
    if phase == SENDING or phase == HEAD_GOING or claimed():  # endheaders' own sends: claimed
        return _send(self, data)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        # a file or an iterable: send runs its code (read, the iteration), which is the program's
        # and must not be claimed (its own calls are recorded); a connect inside send is claimed
        # by the connect wrapper, and a connection's socket counts its bytes under any claim
        if self._netaudit_phase == BODY:
            try:
                data = _hashing_body(self, rec, data)
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
        try:
            return _send(self, data)
        except BaseException as exc:
            _abandon(self, rec, exc)
            raise
    if self._netaudit_phase == BODY:
        _hash(rec, data)
        if self._netaudit_fx is not None:
            self._netaudit_fx.add_request(data)
    claim_held = [None, rec]  # as in endheaders
    try:
        claim(claim_held)
        return _send(self, data)
    except BaseException as exc:
        _abandon(self, rec, exc)
        raise
    finally:
        claim_held[0] = None


def http_getresponse_wrapper(self):
    """Wraps HTTPConnection.getresponse: closes the record with status and response size."""
    rec = self._netaudit_rec
    if rec is None:
        return _getresponse(self)
    self._netaudit_rec = None
    try:
        response = _getresponse(self)
    except BaseException as exc:
        fail(rec, exc)
        _forensic_end(self, False)
        raise
    held = False
    try:
        rec.status = response.status
        length = response.length
        if length is not None:
            rec.resp_bytes = length
        elif not response.isclosed():  # chunked or close-delimited: count the body as it is read
            rec.duration_ns = max(0, _time_ns() - rec.ts)
            self._netaudit_held = response.fp = _BodyCounter(response.fp, rec, response.chunked)
            held = True
        if not rec.dst_ip:
            _fill_peer(self, rec)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    if not held:
        emit(rec)
    if self._netaudit_fx is not None:
        capture, self._netaudit_fx = self._netaudit_fx, None
        try:
            _fx.attach(capture, response)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
    return response


# ---- the body of a response without a length ------------------------------------------------------

_RAW, _SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(6)   # _BodyCounter states
_MAX_LINE = 4096   # a chunk-size or trailer line longer than this stops the count (http.client: 65536)
_HELD: dict[int, Record] = {}   # id(record) -> record of every held event, for the exit flush


def _submit_held(rec) -> None:
    """Hand a held record to the sink (its duration was set at getresponse). Never raises
    but the program's own signal-handler exception (guard.py)."""
    try:
        if _HELD.pop(id(rec), None) is None or rec.done:
            return
        rec.done = True
        STATE.sink.submit(rec)
    except Exception as exc:
        GUARD.fault("record", exc, rec.ts)


class _BodyCounter:
    """Stands in for HTTPResponse.fp of a chunked or close-delimited response: every read passes
    through unchanged and nothing is kept; the body bytes consumed are added to the record's
    `resp_bytes` (chunk sizes, CRLFs and trailers are framing, not counted). Closing it, or its
    collection, hands the held record to the sink."""

    __slots__ = ("_fp", "_rec", "_state", "_left", "_line")

    def __init__(self, fp, rec, chunked: bool) -> None:
        self._fp = fp
        self._rec = rec
        self._state = _SIZE if chunked else _RAW
        self._left = 0
        self._line = b""
        _HELD[id(rec)] = rec

    def _count(self, data) -> None:
        try:
            rec = self._rec
            if rec is None or not data:
                return
            state = self._state
            if state == _RAW:
                rec.resp_bytes += len(data)
            elif state == _DATA and len(data) <= self._left:
                self._left -= len(data)
                rec.resp_bytes += len(data)
                if not self._left:
                    self._state = _DATA_END
            elif state != _DONE:
                self._parse(bytes(data), rec)
        except Exception as exc:
            self._state = _DONE
            GUARD.fault("capture", exc, self._rec.ts if self._rec is not None else 0)

    def _parse(self, data: bytes, rec) -> None:
        """Chunked framing, however the reads split it: size line, data, CRLF, ..., 0, trailers."""
        i, n = 0, len(data)
        while i < n and self._state != _DONE:
            if self._state == _DATA:
                take = min(self._left, n - i)
                rec.resp_bytes += take
                self._left -= take
                i += take
                if not self._left:
                    self._state = _DATA_END
                continue
            j = data.find(b"\n", i)
            end = n if j < 0 else j + 1
            line = self._line + data[i:end]
            i = end
            if j < 0:
                self._line = line
                if len(line) > _MAX_LINE:
                    self._state = _DONE
                continue
            self._line = b""
            self._end_line(line)

    def _end_line(self, line: bytes) -> None:
        state = self._state
        if state == _DATA_END:
            self._state = _SIZE
        elif state == _SIZE:
            size = int(line.split(b";", 1)[0].strip(), 16)  # a bad size: ValueError ends the count
            if size < 0:
                raise ValueError("negative chunk size")
            self._state, self._left = (_TRAILER, 0) if size == 0 else (_DATA, size)
        elif state == _TRAILER and not line.strip():
            self._state = _DONE

    def read(self, *args):
        data = self._fp.read(*args)
        self._count(data)
        return data

    def read1(self, *args):
        data = self._fp.read1(*args)
        self._count(data)
        return data

    def readline(self, *args):
        data = self._fp.readline(*args)
        self._count(data)
        return data

    def readinto(self, buffer):
        n = self._fp.readinto(buffer)
        if n:
            self._count(memoryview(buffer)[:n])
        return n

    def finish(self) -> None:
        """The body ended (or will not be read any further here): hand the record over, once."""
        rec, self._rec = self._rec, None
        if rec is not None:
            _submit_held(rec)

    def close(self):
        try:
            return self._fp.close()
        finally:
            self.finish()

    def __getattr__(self, name):
        return getattr(self._fp, name)

    def __del__(self):
        try:
            if self._rec is not None:
                self.finish()
        except Exception:
            pass


def _flush_held() -> None:
    """Interpreter exit: hand over every held record with the bytes read so far, and end what the
    open connections left in flight (_connection_ends)."""
    for rec in list(_HELD.values()):
        _submit_held(rec)
    try:
        connections = [ref() for ref in list(_LIVE.values())]
    except Exception as exc:
        GUARD.fault("record", exc)
        return
    for conn in connections:
        if conn is not None:
            _connection_ends(conn)


def _forget_held_in_child() -> None:
    """After fork, in the child: the parent owns the held events; the child's own are flushed at
    its exit, from multiprocessing's exit finalizers too (a multiprocessing child ends with os._exit)."""
    _HELD.clear()
    flush_at_multiprocessing_exit(_flush_held, priority=101)


def _make_connect_wrapper(original):
    def http_connect_wrapper(self, *args, **kwargs):
        """Wraps a HTTPConnection(-subclass).connect: claims the call, so the socket layer stays
        silent; a connect that fails outside any request is an event of its own."""
        if claimed():
            return original(self, *args, **kwargs)
        claim_held = [None, None]
        try:
            # the connection's destination, for a program's override that connects (capture.claimed)
            claim_held[1] = _connect_destination(self)
            claim(claim_held)
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            try:
                rec = begin("http", _protocol(self), "CONNECT", self.host, self.port, _getframe(1))
            except Exception as fault:
                GUARD.fault("capture", fault)
            else:
                fail(rec, exc)
            raise
        finally:
            claim_held[0] = None
        _connected(self, _getframe(1))
        return result

    http_connect_wrapper.__wrapped__ = original
    setattr(http_connect_wrapper, MARK, True)
    return http_connect_wrapper


class _ExplicitConnect:
    """A connection a connect() opened before any request sent on it (the program's own connect(),
    urllib3's ahead of an HTTPS request, a request put step by step): its CONNECT record, held
    until the connection's next request sends (endheaders: `hand_over`), the socket counted as a
    raw one's meanwhile where it can be (socket_bytes.track)."""

    __slots__ = ("_rec", "_sock", "_body", "_dest")

    def __init__(self, rec, sock, body, dest) -> None:
        self._rec = rec
        self._dest = dest  # (host, port) the connection was asked for, as a request on it names them
        # a socket we could not count: a weak reference to it (no reference of ours keeps the
        # program's socket open); a counted one is `rec.netaudit_sock`, which stays current
        # through a TLS wrap (socket_bytes.ssl_wrap_socket_wrapper)
        self._sock = None if sock is None else _ref(sock)
        self._body = body  # the held response body of the connection's previous request

    def __reduce__(self):
        """A copy or a pickle of the connection carries none of it (weak references do not pickle)."""
        return type(None), ()

    def end_body(self) -> None:
        """The connection's next request starts: a body left unread ends here (as without us)."""
        body, self._body = self._body, None
        if body is not None:
            body.finish()

    def _settle(self, rides, theirs: bool = False) -> None:
        """End it, once. `rides(sock)`: does the request take the connection over, riding `sock`
        (the connect's socket, None if gone)? Then the record is dropped, unless bytes moved there
        that were not the request's (`theirs`: they were, it was counted while the request sent):
        socket_bytes.hand_over, its event with them. Else the connection's own event stands: at its
        socket's close where it is counted, now where it is not. A record of another process (a
        forked child's copy of the connection) is the parent's to emit."""
        rec, self._rec = self._rec, None
        if rec is None or rec.done or rec.pid != STATE.pid:
            return
        ref = self._sock if self._sock is not None else getattr(rec, "netaudit_sock", None)
        sock = ref() if ref is not None else None
        if not (sock is not None and rides(sock)):
            if self._sock is not None:
                emit(rec)
        elif self._sock is None:
            socket_bytes.hand_over(sock, rec, theirs)

    def hand_over(self, conn, request) -> None:
        """The connection's next request sends: it takes the connection over if it sends on the
        socket the connect() made and names the same destination (as named, not the record's
        port: peer() put the socket's there, a proxy's for a tunnel: review 36, 1)."""
        self.end_body()
        self._settle(lambda sock: conn.sock is sock and _same_named(self._dest, request))

    def settle_own(self, sock_now) -> None:
        """The request's endheaders, inside which this connection was made, returned (or raised):
        it is the request's own if the request rode it (`sock_now`, the connection's socket now),
        whatever moved on it (the request's bytes); else the program's."""
        self._settle(lambda sock: sock is sock_now, theirs=True)

    def end(self) -> None:
        """The connection closes, is collected, or the process exits with no request sent on it."""
        self.end_body()
        self._settle(lambda sock: False)


def _same_named(dest, rec) -> bool:
    """Does `rec` name the destination `dest` ((host, port), as read from the connection)? Both
    come from the connection's own attributes: compared as they are, type for type (a port given
    as text, "8080", stays text in http.client: review 37, 5), a str host and an int or str port."""
    if dest is None:
        return False
    host, port = dest
    return (type(host) is str and type(rec.host) is str and host == rec.host
            and type(port) in (int, str) and type(port) is type(rec.dst_port) and port == rec.dst_port)


def _settle_own(conn, request) -> None:
    """endheaders returned or raised: of the connects made inside it to its destination (a
    subclass's connect calling its base's, once or more: review 38, 1), the one whose socket the
    connection now has is the request's own; the others are the program's (_connected)."""
    candidates, request.netaudit_own = request.netaudit_own, None
    try:
        sock = conn.sock
        for candidate in candidates:
            candidate.settle_own(sock)
    except Exception as exc:
        GUARD.fault("capture", exc, request.ts)


def _ref(sock):
    """A weak reference to a socket; for a socket-like object that takes none, a callable that
    returns it (a strong reference, as before: review 38, 3)."""
    try:
        return weakref.ref(sock)
    except TypeError as exc:
        pass_on(exc)
        return lambda: sock


def _sending(conn, held, request) -> None:
    """endheaders of the connection's request, before it sends: a connect() made before it is
    handed over (_ExplicitConnect.hand_over)."""
    if type(held) is _ExplicitConnect:
        conn._netaudit_held = None
        try:
            held.hand_over(conn, request)
        except Exception as exc:
            GUARD.fault("capture", exc, request.ts)


def _connected(conn, frame) -> None:
    """connect() succeeded, not as part of a request sending (the program's own connect(),
    urllib3's ahead of an HTTPS request, a request put step by step: putrequest, connect,
    endheaders). The claim kept the socket layer silent, so the connection is recorded here
    ("CONNECT"), and its socket counted as a raw one's until the connection's next request sends
    on it (_ExplicitConnect.hand_over): the request covers the connection, and one that moved no
    bytes by then is no event of its own (one call, one event); one that did, that closes first,
    or that the request does not ride on (the program took its socket away, changed the
    destination), is, with its bytes. Without it a program could open a connection through
    http.client and write on its socket unrecorded. A socket we cannot count (urllib3's TLS in TLS,
    a program's own class) is held the same way, without sizes, and emitted unless a request
    covers it."""
    try:
        host, port = dest = _request_destination(conn)
        request = conn._netaudit_rec
        # inside the request's own endheaders, to the request's destination: the request's own
        # connection (a subclass's connect calling its base's), or another the program makes there
        # (review 37, 3): which one, endheaders settles when it returns (_settle_own: review 38, 1).
        # To elsewhere, or after the request sent (review 36, 2): the program's own, recorded
        own = (request is not None and conn._netaudit_phase in IN_ENDHEADERS and _same_named(dest, request))
        sock = conn.sock
        if sock is not None and socket_bytes.counted(sock):
            return  # a connection recorded on its own already (an override's, to elsewhere)
        rec = begin("http", _protocol(conn), "CONNECT", host, port, frame)
    except Exception as exc:
        GUARD.fault("capture", exc)
        return
    _register(conn)
    if sock is None:
        emit(rec)  # no socket: the connection's event now, without sizes
        return
    try:
        peer(rec, sock)
        if not rec.dst_ip and sock.gettimeout() == 0:
            rec.status = socket_bytes.IN_PROGRESS  # a non-blocking connect: settled as a raw one's
        else:  # the request's addresses too: it need not ask the socket again (review 36, 8)
            conn._netaudit_peer = (_ref(sock), rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port)
        uncounted = None if socket_bytes.track(sock, rec) else sock
        if own:
            request.netaudit_own = [*(request.netaudit_own or ()), _ExplicitConnect(rec, uncounted, None, dest)]
            return
        previous = conn._netaudit_held
        if type(previous) is _ExplicitConnect:
            previous.end()  # a connection no request rides on: its own event
            previous = None
        conn._netaudit_held = _ExplicitConnect(rec, uncounted, previous, dest)
        return
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    emit(rec)  # a fault: the connection's event now, without sizes


def _request_destination(conn):
    """(host, port) a request on the connection names (as _begin_request reads them)."""
    return (getattr(conn, "_tunnel_host", None) or conn.host, getattr(conn, "_tunnel_port", None) or conn.port)


def _connection_ends(conn, closing: bool = False) -> None:
    """The connection closes (`closing`), is collected, or the process exits: a request still in
    flight (put or sent, never answered) is an event as it is, and so is a connect() no request
    took over. Before, such a request was an event only if the connection made another request.
    A record of another process (a forked child's copy of the connection) is the parent's to emit.
    A close while the request's endheaders runs (another thread's) leaves the request to
    endheaders, which ends it with its error (review 36, 3)."""
    try:
        rec = conn._netaudit_rec
        if rec is not None and not (closing and conn._netaudit_phase in IN_ENDHEADERS):
            if rec.pid == STATE.pid:
                _end_request(conn)
            else:
                conn._netaudit_rec = None
        held = conn._netaudit_held
        if type(held) is _ExplicitConnect:
            conn._netaudit_held = None
            held.end()
    except Exception as exc:
        GUARD.fault("capture", exc)


def http_close_wrapper(self):
    """Wraps HTTPConnection.close: ends what the connection left open (_connection_ends). Not
    inside a request's own steps (http.client closes a connection whose tunnel failed, inside
    connect): the request's wrappers end it there, with the error. The connection closes whatever
    lands in our part (a signal handler's exception goes on after it: review 37, 6)."""
    try:
        if not claimed():
            _connection_ends(self, closing=True)
    except BaseException:
        _close(self)
        raise
    return _close(self)


def __getstate__(self):
    """HTTPConnection.__getstate__ (it has none of its own): a copy or a pickle of a connection
    carries none of our per-connection state (review 37, 1 and 2: a copy shared the request in
    flight, and the first of the two to end ended it)."""
    state = getattr(super(http.client.HTTPConnection, self), "__getstate__", None)
    state = dict(self.__dict__) if state is None else state()
    if type(state) is tuple and len(state) == 2 and type(state[0]) is dict:  # a class with __slots__
        return _ours_left_out(state[0]), state[1]
    return _ours_left_out(state) if type(state) is dict else state


def _ours_left_out(state: dict) -> dict:
    if any(type(k) is str and k.startswith("_netaudit_") for k in state):
        return {k: v for k, v in state.items() if not (type(k) is str and k.startswith("_netaudit_"))}
    return state


def __del__(self, _ends=_connection_ends):
    """HTTPConnection.__del__ (it has none of its own): a connection dropped without close(). A
    finalizer: what raises here, a signal handler's exception too, Python could only report as
    unraisable. A subclass's own __del__ is wrapped to do the same first (_wrap_del)."""
    try:
        _ends(self)
    except BaseException:
        pass


_connection_del = __del__  # (the name _wrap_del's own finalizers shadow)


# Connections that had a socket of their own (_fill_peer, _connected): at exit, each one's request
# still in flight is ended (_flush_held). A weak reference to each, keyed by object.__hash__ (the
# identity, unique among live objects: a program's __hash__ or __eq__ never runs, review 36, 4;
# id() would raise an audit event); entries of connections gone are pruned as the dict grows
# (a WeakValueDictionary's entry cost ~2 us a new connection, this one a few hundred ns).
_LIVE: dict = {}
_live_prune_at = 1024
_identity = object.__hash__


def _register(conn) -> None:
    global _live_prune_at
    try:
        _LIVE[_identity(conn)] = weakref.ref(conn)
        if len(_LIVE) > _live_prune_at:
            for key, ref in list(_LIVE.items()):  # a snapshot, made in C: no other thread changes it
                if ref() is None:
                    ref = _LIVE.pop(key, None)
                    if ref is not None and ref() is not None:  # another connection took the key meanwhile
                        _LIVE[key] = ref
            _live_prune_at = max(1024, 2 * len(_LIVE))
    except Exception as exc:
        GUARD.fault("capture", exc)


def _connect_destination(conn):
    """(host, port) a connection connects to, read from its instance dict (no program property
    runs: review 33, 6); None where it is not there as a str and an int."""
    try:
        attrs = object.__getattribute__(conn, "__dict__")
        return destination(attrs.get("host"), attrs.get("port"))
    except Exception as exc:
        pass_on(exc)
        return None


def _wrap_connect(cls) -> None:
    original = cls.__dict__.get("connect")
    if original is not None and not getattr(original, MARK, False):
        cls.connect = _make_connect_wrapper(original)
    _wrap_del(cls)


def _wrap_del(cls) -> None:
    """A subclass's own __del__, or a mixin's it resolves to (ours, on HTTPConnection, runs only if
    it calls its base's): ours first, then that one, once each (review 37, 7; review 38, 4)."""
    if cls is http.client.HTTPConnection:
        return
    original = getattr(cls, "__del__", None)
    if original is None or original is _connection_del or getattr(original, MARK, False):
        return

    def __del__(self, _ends=_connection_ends, _original=original):  # a finalizer, named as one
        try:
            _ends(self)
        except BaseException:
            pass
        _original(self)

    functools.update_wrapper(__del__, original)  # an error it raises names the program's
    setattr(__del__, MARK, True)
    cls.__del__ = __del__


def _subclass_hook(cls, **kwargs):
    """HTTPConnection.__init_subclass__: a subclass defined later (urllib3's) gets its connect (and
    its own __del__) wrapped."""
    super(http.client.HTTPConnection, cls).__init_subclass__(**kwargs)
    try:
        _wrap_connect(cls)
    except Exception as exc:
        GUARD.fault("install", exc)


def _buffers_header_lines(base) -> bool:
    """Does http.client put each header line in `_buffer` through `_output`, sent at endheaders?"""
    try:
        return ("_output" in base.putheader.__code__.co_names
                and "_buffer" in base._output.__code__.co_names
                and "_buffer" in base._send_output.__code__.co_names)
    except AttributeError:
        return False


def install() -> None:
    global _putrequest, _putheader, _endheaders, _send, _getresponse, _close, _NAMES_FROM_BUFFER
    base = http.client.HTTPConnection
    if getattr(base.__dict__.get("putrequest"), MARK, False):
        return
    for name, value in _DEFAULTS.items():
        setattr(base, name, value)
    _NAMES_FROM_BUFFER = _buffers_header_lines(base)
    wrappers = [("putrequest", http_putrequest_wrapper), ("endheaders", http_endheaders_wrapper),
                ("send", http_send_wrapper), ("getresponse", http_getresponse_wrapper),
                ("close", http_close_wrapper)]
    if not _NAMES_FROM_BUFFER:
        wrappers.append(("putheader", http_putheader_wrapper))
    _putheader = base.__dict__["putheader"]
    for name, wrapper in wrappers:
        _orig[name] = base.__dict__[name]
        setattr(wrapper, MARK, True)
        wrapper.__wrapped__ = _orig[name]
        setattr(base, name, wrapper)
    _putrequest, _endheaders = _orig["putrequest"], _orig["endheaders"]
    _send, _getresponse, _close = _orig["send"], _orig["getresponse"], _orig["close"]
    if "__getstate__" not in base.__dict__:
        base.__getstate__ = __getstate__
    if "__del__" not in base.__dict__:  # a connection dropped without close(): _connection_ends
        base.__del__ = _connection_del
    stack = [base]
    while stack:
        cls = stack.pop()
        _wrap_connect(cls)
        stack.extend(cls.__subclasses__())
    base.__init_subclass__ = classmethod(_subclass_hook)
    at_exit(_flush_held)  # after interceptor.sink's: atexit runs it first
    os.register_at_fork(after_in_child=_forget_held_in_child)
