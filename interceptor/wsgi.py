"""Ingress: a WSGI middleware that records each inbound request as a `direction=ingress` event.

Same rules as egress: path and query keys without values, header names without values, the
request body hashed as the application reads it (never buffered), status and response size once
the response has been iterated. The application's own result and exceptions pass through.
"""
from __future__ import annotations

from .capture import GUARD, STATE, Record, emit, fail
from .event import INGRESS
from .redact import query_names

_SPECIAL_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def _header_names(environ) -> list[str]:
    names = []
    for key in environ:
        if key.startswith("HTTP_"):
            names.append(key[5:].replace("_", "-").title())
        elif key in _SPECIAL_HEADERS and environ[key]:
            names.append(_SPECIAL_HEADERS[key])
    return names


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class _HashingInput:
    """wsgi.input that hashes what the application reads, as it reads it."""

    def __init__(self, stream, rec: Record):
        self._stream = stream
        self._rec = rec

    def _seen(self, data):
        if data:
            try:
                self._rec.hash_payload(data if isinstance(data, (bytes, bytearray)) else bytes(data))
            except Exception as exc:
                GUARD.fault("capture", exc, self._rec.ts)
        return data

    def read(self, *args):
        return self._seen(self._stream.read(*args))

    def readline(self, *args):
        return self._seen(self._stream.readline(*args))

    def readlines(self, *args):
        lines = self._stream.readlines(*args)
        for line in lines:
            self._seen(line)
        return lines

    def __iter__(self):
        for line in self._stream:
            yield self._seen(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _ClosingIterable:
    """The response body: counts bytes as the server iterates it; emits the event on close()."""

    def __init__(self, result, rec: Record, sink):
        self._result = result
        self._rec = rec
        self._sink = sink

    def __iter__(self):
        rec = self._rec
        for chunk in self._result:
            try:
                rec.resp_bytes += len(chunk)
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
            yield chunk

    def close(self):
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            emit(self._rec, self._sink)


class AuditMiddleware:
    """`app = AuditMiddleware(app)`: record every request the WSGI app serves."""

    def __init__(self, app, sink=None, module: str = ""):
        self.app = app
        self.sink = sink           # None: the installed interceptor's sink
        self.module = module       # who serves (e.g. "odoo"); ingress has no calling frame

    def _begin(self, environ) -> Record:
        scheme = environ.get("wsgi.url_scheme", "http")
        rec = Record("http", scheme, environ.get("REQUEST_METHOD", ""),
                     environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""), _int(environ.get("SERVER_PORT")))
        rec.direction = INGRESS
        rec.url_path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        if query:
            rec.query_keys = query_names(query)
        rec.header_names = _header_names(environ)
        rec.src_ip = environ.get("REMOTE_ADDR", "")
        rec.src_port = _int(environ.get("REMOTE_PORT"))
        rec.dst_ip = environ.get("SERVER_ADDR", "")
        rec.module = self.module
        return rec

    def __call__(self, environ, start_response):
        if self.sink is None and STATE.sink is None:
            return self.app(environ, start_response)
        rec = None
        try:
            rec = self._begin(environ)
            if "wsgi.input" in environ:
                environ["wsgi.input"] = _HashingInput(environ["wsgi.input"], rec)
        except Exception as exc:
            GUARD.fault("capture", exc)
            rec = None
        if rec is None:
            return self.app(environ, start_response)

        def recording_start_response(status, headers, exc_info=None):
            try:
                rec.status = str(status).split(" ", 1)[0]
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
            return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

        try:
            result = self.app(environ, recording_start_response)
        except BaseException as exc:
            fail(rec, exc, self.sink)
            raise
        return _ClosingIterable(result, rec, self.sink)
