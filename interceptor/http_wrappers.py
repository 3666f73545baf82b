"""Protocol wrappers for http.client, and so for urllib, urllib3, requests and xmlrpc.client.

One HTTP request is one event, opened in `putrequest` (method, path, query keys, attribution),
filled by `putheader` (names only) and the payload (hashed as it streams through `endheaders`
and `send`), and closed by `getresponse` (status, sizes) or by the first exception.

Each wrapper runs the audited method exactly once, through the original function saved at
install, with the thread claimed (capture.TLS.busy) so the socket layer below stays silent; its
result and exception pass through untouched. Every capture step sits in a guard.
"""
from __future__ import annotations

import http.client
import sys

from interceptor import forensic as _fx
from interceptor.capture import GUARD, TLS, begin, emit, fail, peer
from interceptor.redact import query_names, split_url

MARK = "_netaudit_wrapped"     # set on every function we installed (idempotent install)
BODY = 2                       # value of _netaudit_phase once the headers are sent
# Per-connection state lives in plain attributes with class-level defaults (set in install()),
# never through `conn.__dict__`: materialising an instance's __dict__ turns off CPython 3.11's
# inline attribute cache for that connection and slows every attribute access of http.client.
#   _netaudit_rec    the in-flight Record, or None
#   _netaudit_phase  0 while headers are being sent, BODY after endheaders
#   _netaudit_peer   (socket, src_ip, src_port, dst_ip, dst_port) cached per socket
#   _netaudit_fx     forensic.Capture of the in-flight request's bodies, only while a body tap
#                    is set (interceptor/forensic.py); bodies never go on the Record
_DEFAULTS = {"_netaudit_rec": None, "_netaudit_phase": 0, "_netaudit_peer": None, "_netaudit_fx": None}

_orig: dict[str, object] = {}
_https_classes: dict[type, str] = {}


def _protocol(conn) -> str:
    cls = type(conn)
    proto = _https_classes.get(cls)
    if proto is None:
        https = getattr(http.client, "HTTPSConnection", None)
        is_tls = (https is not None and isinstance(conn, https)) or getattr(cls, "scheme", "") == "https" \
            or getattr(cls, "default_port", 0) == 443
        proto = _https_classes[cls] = "https" if is_tls else "http"
    return proto


def _begin_request(conn, method, url, frame):
    old = conn._netaudit_rec
    if old is not None:      # the previous request never got to getresponse: close it as is
        conn._netaudit_rec = None
        emit(old)
        _forensic_end(conn, False)
    host = getattr(conn, "_tunnel_host", None) or conn.host
    port = getattr(conn, "_tunnel_port", None) or conn.port
    rec = begin("http", _protocol(conn), method, host, port, frame)
    path, query = split_url(url)
    rec.url_path = path
    if query:
        rec.query_keys = query_names(query)
    rec.header_names = []
    conn._netaudit_rec = rec
    conn._netaudit_phase = 0
    if _fx.TAP is not None:  # forensic mode: the one check on the hot path when it is off
        conn._netaudit_fx = _fx.start(rec)
    return rec


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
    if TLS.busy:
        return _orig["putrequest"](self, method, url, skip_host, skip_accept_encoding)
    rec = None
    try:
        rec = _begin_request(self, method, url, sys._getframe(1))
    except Exception as exc:
        GUARD.fault("capture", exc)
    TLS.busy = True
    try:
        return _orig["putrequest"](self, method, url, skip_host, skip_accept_encoding)
    except BaseException as exc:
        if rec is not None:
            _abandon(self, rec, exc)
        raise
    finally:
        TLS.busy = False


def http_putheader_wrapper(self, header, *values):
    """Wraps HTTPConnection.putheader: keeps the header's name, never its values."""
    rec = self._netaudit_rec
    if rec is not None and not TLS.busy:
        try:
            rec.header_names.append(header)
        except Exception as exc:
            GUARD.fault("redact", exc, rec.ts)
    return _orig["putheader"](self, header, *values)


def _hashing_chunks(body, rec, blocksize):
    """Stream a file-like or iterable body to http.client, hashing each block as it goes by."""
    if hasattr(body, "read"):
        while True:
            data = body.read(blocksize)
            if not data:
                break
            if isinstance(data, str):
                data = data.encode("iso-8859-1")  # what http.client does for text files
            _hash(rec, data)
            yield data
    else:
        for chunk in body:
            if isinstance(chunk, (bytes, bytearray, memoryview)):
                _hash(rec, chunk)
            yield chunk


def _hash(rec, data) -> None:
    try:
        rec.hash_payload(data)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)


def _prepare_body(self, rec, message_body):
    """Hash an in-memory body now; wrap a streamed one so it is hashed as it is sent."""
    if message_body is None:
        return message_body
    if isinstance(message_body, (bytes, bytearray, memoryview)):
        rec.hash_payload(message_body)
        return message_body
    if isinstance(message_body, str):
        rec.hash_payload(message_body.encode("iso-8859-1", "replace"))
        return message_body
    if not hasattr(message_body, "read"):
        try:
            iter(message_body)
        except TypeError:
            return message_body  # http.client raises its own TypeError for it: leave it be
    return _hashing_chunks(message_body, rec, getattr(self, "blocksize", 8192))


def http_endheaders_wrapper(self, message_body=None, *, encode_chunked=False):
    """Wraps HTTPConnection.endheaders: sends headers and an optional body (hashed as it streams)."""
    rec = self._netaudit_rec
    if rec is None or TLS.busy:
        return _orig["endheaders"](self, message_body, encode_chunked=encode_chunked)
    body = message_body
    try:
        body = _prepare_body(self, rec, message_body)
    except Exception as exc:
        body = message_body
        GUARD.fault("capture", exc, rec.ts)
    if self._netaudit_fx is not None and message_body is not None:
        try:
            body = _fx.request_body(self._netaudit_fx, message_body, body)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
    TLS.busy = True
    try:
        result = _orig["endheaders"](self, body, encode_chunked=encode_chunked)
    except BaseException as exc:
        _abandon(self, rec, exc)
        raise
    finally:
        TLS.busy = False
    try:
        self._netaudit_phase = BODY
        _fill_peer(self, rec)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    return result


def _fill_peer(conn, rec) -> None:
    sock = conn.sock
    if sock is None:
        return
    cached = conn._netaudit_peer
    if cached is None or cached[0] is not sock:
        peer(rec, sock)
        conn._netaudit_peer = (sock, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port)
    else:
        _, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port = cached


def http_send_wrapper(self, data):
    """Wraps HTTPConnection.send: payload sent after the headers (urllib3 streams bodies so)."""
    rec = self._netaudit_rec
    if rec is None or TLS.busy:
        return _orig["send"](self, data)
    if self._netaudit_phase == BODY and isinstance(data, (bytes, bytearray, memoryview)):
        _hash(rec, data)
        if self._netaudit_fx is not None:
            self._netaudit_fx.add_request(data)
    TLS.busy = True
    try:
        return _orig["send"](self, data)
    except BaseException as exc:
        _abandon(self, rec, exc)
        raise
    finally:
        TLS.busy = False


def http_getresponse_wrapper(self):
    """Wraps HTTPConnection.getresponse: closes the record with status and response size."""
    if TLS.busy:
        return _orig["getresponse"](self)
    rec = self._netaudit_rec
    if rec is None:
        return _orig["getresponse"](self)
    self._netaudit_rec = None
    TLS.busy = True
    try:
        response = _orig["getresponse"](self)
    except BaseException as exc:
        fail(rec, exc)
        _forensic_end(self, False)
        raise
    finally:
        TLS.busy = False
    try:
        rec.status = response.status
        rec.resp_bytes = response.length or 0
        if not rec.dst_ip:
            _fill_peer(self, rec)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    emit(rec)
    if self._netaudit_fx is not None:
        capture, self._netaudit_fx = self._netaudit_fx, None
        try:
            _fx.attach(capture, response)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
    return response


def _make_connect_wrapper(original):
    def http_connect_wrapper(self, *args, **kwargs):
        """Wraps a HTTPConnection(-subclass).connect: claims the thread, so the socket layer stays
        silent; a connect that fails outside any request is an event of its own."""
        if TLS.busy:
            return original(self, *args, **kwargs)
        TLS.busy = True
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            try:
                rec = begin("http", _protocol(self), "CONNECT", self.host, self.port, sys._getframe(1))
            except Exception as fault:
                GUARD.fault("capture", fault)
            else:
                fail(rec, exc)
            raise
        finally:
            TLS.busy = False

    http_connect_wrapper.__wrapped__ = original
    setattr(http_connect_wrapper, MARK, True)
    return http_connect_wrapper


def _wrap_connect(cls) -> None:
    original = cls.__dict__.get("connect")
    if original is not None and not getattr(original, MARK, False):
        cls.connect = _make_connect_wrapper(original)


def _subclass_hook(cls, **kwargs):
    """HTTPConnection.__init_subclass__: a subclass defined later (urllib3's) gets its connect wrapped."""
    super(http.client.HTTPConnection, cls).__init_subclass__(**kwargs)
    try:
        _wrap_connect(cls)
    except Exception as exc:
        GUARD.fault("install", exc)


def install() -> None:
    base = http.client.HTTPConnection
    if getattr(base.__dict__.get("putrequest"), MARK, False):
        return
    for name, value in _DEFAULTS.items():
        setattr(base, name, value)
    for name, wrapper in (("putrequest", http_putrequest_wrapper), ("putheader", http_putheader_wrapper),
                          ("endheaders", http_endheaders_wrapper), ("send", http_send_wrapper),
                          ("getresponse", http_getresponse_wrapper)):
        _orig[name] = base.__dict__[name]
        setattr(wrapper, MARK, True)
        wrapper.__wrapped__ = _orig[name]
        setattr(base, name, wrapper)
    stack = [base]
    while stack:
        cls = stack.pop()
        _wrap_connect(cls)
        stack.extend(cls.__subclasses__())
    base.__init_subclass__ = classmethod(_subclass_hook)
