"""Forensic body tap: hands HTTP bodies to one callback, never to the sink or the ledger.

    from interceptor import forensic
    forensic.set_body_tap(callback, context=None, max_bytes=65536)   # None turns it off

While a tap is set, each http.client request (so urllib, urllib3, requests, xmlrpc.client) calls
`callback(meta, request_body, response_body)` once, when the response ends (read to its end, or
closed by the caller, or collected), or with `response_body=None` when the call fails before a
response. `meta` is a small dict of the event's identifying fields (ts, channel, protocol,
method, host, port, url_path, module, pid), `request_bytes` / `response_bytes` (the real sizes),
`request_truncated` / `response_truncated`, and `context`: what `context()` returned on the
audited thread when the request began (e.g. Odoo's database name).

Bodies are kept up to `max_bytes` each. The request body is what was sent; the response body is
what the caller actually read, as it came off the connection (chunked framing and any
Content-Encoding are not undone); the caller's reads are passed through untouched, nothing is
read on its behalf. The bodies live on the connection and the response, never on the Record, so
they never reach NetEvent, the sink's queue or the ledger.

With no tap set, the wrappers pay one module attribute check per request (`forensic.TAP is not
None`) and one class-default attribute check per send; nothing is copied or buffered. The tap runs
on the audited thread (or, for an abandoned response, wherever it is garbage collected), fail-open:
a tap that raises is counted here (`faults`, `last_fault`) and the audited call goes on unchanged.
A tap fault is not a missed event (the event itself was recorded), so it writes no gap row.
"""
from __future__ import annotations

import types

from .guard import pass_on

MAX_BODY = 64 * 1024

TAP = None          # (callback, context, max_bytes) or None: the wrappers' one check
faults = 0          # taps (or context functions) that raised
last_fault = ""


def set_body_tap(callback, *, context=None, max_bytes: int = MAX_BODY):
    """Set (or, with None, clear) the process's body tap; returns the previous callback."""
    global TAP
    previous = TAP[0] if TAP is not None else None
    TAP = None if callback is None else (callback, context, max(0, int(max_bytes)))
    return previous


def body_tap():
    """The callback in force, or None."""
    tap = TAP
    return tap[0] if tap is not None else None


def _fault(exc: BaseException) -> None:
    """Count a fault of the tap; an exception the program's signal handler raised goes on to the
    program (guard.pass_on), counted too."""
    global faults, last_fault
    try:
        faults += 1
        last_fault = type(exc).__name__
    except Exception:
        pass
    pass_on(exc)


class Capture:
    """One request's bodies while it is in flight (kept on the connection, then the response)."""

    __slots__ = ("callback", "limit", "meta", "req", "resp", "req_n", "resp_n", "done")

    def __init__(self, rec, tap) -> None:
        self.callback, context, self.limit = tap
        self.meta = {"ts": rec.ts, "channel": rec.channel, "protocol": rec.protocol,
                     "method": rec.method, "host": rec.host, "port": rec.dst_port,
                     "url_path": rec.url_path, "module": rec.module, "pid": rec.pid,
                     "context": None}
        if context is not None:
            try:
                self.meta["context"] = context()
            except Exception as exc:
                _fault(exc)
        self.req = bytearray()
        self.resp = None
        self.req_n = 0
        self.resp_n = 0
        self.done = False

    def add_request(self, data) -> None:
        try:
            if isinstance(data, str):
                data = data.encode("iso-8859-1", "replace")  # what http.client sends
            n = len(data)
            room = self.limit - len(self.req)
            if room > 0:
                self.req += bytes(memoryview(data)[:room]) if n > room else data
            self.req_n += n
        except Exception as exc:
            _fault(exc)

    def add_response(self, data) -> None:
        try:
            if not data:
                return
            if self.resp is None:
                self.resp = bytearray()
            n = len(data)
            room = self.limit - len(self.resp)
            if room > 0:
                self.resp += bytes(memoryview(data)[:room]) if n > room else data
            self.resp_n += n
        except Exception as exc:
            _fault(exc)

    def tee(self, chunks):
        """A streamed request body: yield each chunk unchanged, keeping a copy up to the bound."""
        for chunk in chunks:
            if isinstance(chunk, (bytes, bytearray, memoryview, str)):
                self.add_request(chunk)
            yield chunk

    def finish(self, response_seen: bool = True) -> None:
        """Hand the bodies to the tap, once. Never raises but the program's own signal-handler
        exception (guard.py)."""
        if self.done:
            return
        self.done = True
        try:
            meta = self.meta
            meta["request_bytes"] = self.req_n
            meta["response_bytes"] = self.resp_n
            meta["request_truncated"] = self.req_n > len(self.req)
            meta["response_truncated"] = self.resp is not None and self.resp_n > len(self.resp)
            resp = (bytes(self.resp) if self.resp is not None else b"") if response_seen else None
            self.callback(meta, bytes(self.req), resp)
        except Exception as exc:
            _fault(exc)
        finally:
            self.req = self.resp = None


class _TeeReader:
    """Stands in for HTTPResponse.fp while a tap is set: every read passes through unchanged and
    what the caller read is copied (up to the bound); closing it hands the bodies to the tap."""

    def __init__(self, fp, capture: Capture) -> None:
        self._fp = fp
        self._capture = capture

    def read(self, *args):
        data = self._fp.read(*args)
        self._capture.add_response(data)
        return data

    def read1(self, *args):
        data = self._fp.read1(*args)
        self._capture.add_response(data)
        return data

    def readline(self, *args):
        data = self._fp.readline(*args)
        self._capture.add_response(data)
        return data

    def readinto(self, buffer):
        n = self._fp.readinto(buffer)
        if n:
            self._capture.add_response(memoryview(buffer)[:n])
        return n

    def close(self):
        try:
            return self._fp.close()
        finally:
            self._capture.finish()

    def __getattr__(self, name):
        return getattr(self._fp, name)

    def __del__(self):
        capture = self.__dict__.get("_capture")
        if capture is not None and not capture.done:
            capture.finish()


def start(rec):
    """putrequest, with a tap set: a Capture for this request (None if the tap went away or failed)."""
    tap = TAP
    if tap is None:
        return None
    try:
        return Capture(rec, tap)
    except Exception as exc:
        _fault(exc)
        return None


def request_body(capture: Capture, message_body, body):
    """endheaders: copy an in-memory body; tee a streamed one (`body`, the hashing generator)."""
    if isinstance(message_body, (bytes, bytearray, memoryview, str)):
        capture.add_request(message_body)
        return body
    if isinstance(body, types.GeneratorType):
        return capture.tee(body)
    return body


def attach(capture: Capture, response) -> None:
    """getresponse: tee the response's reads; a response with no body to read ends at once."""
    fp = getattr(response, "fp", None)
    if fp is None:
        capture.finish()
        return
    response.fp = _TeeReader(fp, capture)
