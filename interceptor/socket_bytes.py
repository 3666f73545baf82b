"""Byte counts of raw sockets: one event per connection, with the bytes sent and received.

A raw connection (one no protocol wrapper claimed, see capture.claimed) is not emitted at connect.
`track(sock, rec)` switches the socket object's class to `CountingSocket`, a subclass of
socket.socket that adds no slot (so `sock.__class__ = CountingSocket` is allowed), and keeps the
connection's Record in `_OPEN` under hash(sock). Each send/recv method calls the C method it
overrides exactly once, then adds the returned size to the record (`req_bytes`, `resp_bytes`);
the record is emitted once, when the socket really closes (close(), or the last makefile() file
closes), is detached, or is garbage-collected, and at interpreter exit for a socket still open
(`flush_open`, registered after the sink's own exit flush, so it runs before it). Duration is
connect to close. Only raw sockets pay: http.client and the other protocol wrappers connect
under their claim, so their sockets are never switched.

Decisions:
- dup() shares the connection's record; it is emitted when the last of the two closes.
- makefile() needs nothing more: socket.SocketIO calls recv_into/send on this object.
- ssl: `SSLContext.wrap_socket` (the standard library's ssl.wrap_socket too, which calls it) of a
  counted socket moves its record to the
  new SSLSocket, switched to CountingSSLSocket (same layout as ssl.SSLSocket): still one event,
  protocol "tls", counting application bytes (plaintext, not the TLS records' overhead) until
  the SSLSocket closes; a failed handshake ends it with the error (one of an SSLSocket that
  connects itself, after its TCP connect, is its error when it closes). An SSLSocket that connects
  itself is counted the same way. A socket of another class (a subclass of either, a custom
  `sslsocket_class`) keeps an immediate connect event with no sizes. asyncio's TLS runs over
  its raw socket: there the counts are the bytes on the wire, TLS records included.
- UDP: a connected datagram socket is one event like TCP (send/recv counted). A datagram sent to
  an explicit address (sendto, sendmsg with an address) stays its own event, one per datagram
  with its size (socket_hooks' wrappers), because each one may go to another host; on a connected
  TCP socket the address is ignored by the kernel, so its bytes count for the connection.
- Non-blocking: a connect that returns "in progress" is tracked too (asyncio's sockets), with
  status "in_progress" until its outcome is known: the caller's own read of SO_ERROR (how asyncio
  and selector loops learn it) settles it, an error as the errno's name (ECONNREFUSED...), success
  as status "" with the addresses, and so does a second connect/connect_ex on the same socket (a
  polling program: the same attempt, not a new event); one still open at close is settled then
  (bytes moved, or a peer: connected; else SO_ERROR's error, or ENOTCONN with status
  "in_progress": closed before it connected). A detached one, or one still open at exit, is
  connected if it has a peer or moved bytes, and keeps "in_progress" otherwise (its SO_ERROR is
  not ours to read there: reading clears it, and the program may still ask). A send or recv that
  raises counts nothing; so does a sendall interrupted by a timeout (its partial count is
  unknown), except on gevent's class, whose sendall sends through its counted send.
- fork: a child forgets the parent's open connections (the parent emits them); a child's own are
  flushed at its exit, a multiprocessing child's from its exit finalizers.
- Fail-open: a fault while counting is swallowed and counted by GUARD; results and exceptions
  are the C methods' own. The class is named like the one it stands in for (repr(), pickling
  errors), and multiprocessing's reducer for socket.socket is registered for it; only
  `type(sock) is socket.socket` tells the difference.
- gevent: its socket class wraps a real socket (`_sock`) instead of being socket.socket, and
  sends and receives in Python on top of it; its own counting subclass (`_counting_gevent_class`,
  made at the first connection of that class; gevent is never imported here) counts there, once.
  As with CountingSocket, only `type(sock)` tells it from gevent's class. A non-blocking connect is
  settled as above (a second connect, the program's read of SO_ERROR, close). gevent's SSLSocket
  gets one too (`_counting_gevent_ssl_class`): TLS started on a counted connection through an
  SSLContext keeps it one event, "tls", counting the application bytes, as for the standard
  library's. gevent's own ssl.wrap_socket (deprecated, gone in Python 3.12) and an SSLSocket built
  directly on a counted socket never call SSLContext.wrap_socket: the detach ends the event there,
  as "tcp", and the TLS bytes are not counted. sendto/sendmsg on its connected streams reach
  `_sock` directly: one with an address is an event of its own (socket_hooks' wrappers), one
  without is not counted.
  Sockets of gevent patched after install are of a class nothing of ours wraps: recorded at
  connect, without sizes.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import weakref

from . import native
from .capture import GUARD, at_exit, claim, claimed, emit, fail, flush_at_multiprocessing_exit, peer
from .guard import pass_on

# The Python class whose methods (C ones from _socket.socket) we call: the standard library's,
# also where gevent put its own class in its place (interceptor.native).
_ss = native.original(socket, "socket")
_send, _sendall, _sendto, _sendmsg = _ss.send, _ss.sendall, _ss.sendto, _ss.sendmsg
_recv, _recv_into, _recvfrom, _recvfrom_into = _ss.recv, _ss.recv_into, _ss.recvfrom, _ss.recvfrom_into
_recvmsg, _recvmsg_into = _ss.recvmsg, _ss.recvmsg_into
_getsockopt = _ss.getsockopt
_finalize = _ss.__del__
_SOL_SOCKET, _SO_ERROR = socket.SOL_SOCKET, socket.SO_ERROR
IN_PROGRESS = "in_progress"

# hash(counted socket) -> its connection's Record (dup()s share one). A socket's hash is its
# identity (socket defines no __hash__), unique among live objects like id(), but id() raises a
# PEP 578 audit event on every call, which would run every audit hook of the process per send.
_OPEN: dict = {}


def _nbytes(data) -> int:
    if type(data) is bytes or type(data) is bytearray:
        return len(data)
    with memoryview(data) as view:
        return view.nbytes


def _add(sock, sent: int, received: int) -> None:
    try:
        rec = _OPEN.get(hash(sock))
        if rec is not None:
            rec.req_bytes += sent
            rec.resp_bytes += received
    except Exception as exc:
        GUARD.fault("capture", exc)


def _handshake(base):
    """do_handshake for a counting SSLSocket class. An SSLSocket that connects itself is tracked by
    its TCP connect, and its handshake comes after: one that fails is the connection's error (the
    caller gets the exception as it was). One a non-blocking socket must retry (SSLWant*) is not."""

    # the originals and the exception classes bound now: it may run at shutdown (see _ending)
    def do_handshake(self, *args, _do_handshake=base.do_handshake,
                     _retry=(ssl.SSLWantReadError, ssl.SSLWantWriteError), **kwargs):
        try:
            return _do_handshake(self, *args, **kwargs)
        except _retry:
            raise
        except Exception as exc:
            try:
                rec = _OPEN.get(hash(self))
                if rec is not None and not rec.error:
                    rec.error = type(exc).__name__
            except Exception as fault:
                GUARD.fault("capture", fault)
            raise

    return do_handshake


def _share(sock, dup) -> None:
    """dup() of a counted socket: the two share the connection's record, emitted when both ended."""
    try:
        rec = _OPEN.get(hash(sock))
        if rec is not None:
            rec.netaudit_sockets += 1
            _OPEN[hash(dup)] = rec
    except Exception as exc:
        GUARD.fault("capture", exc)


def _ending(base, finalize=_finalize):
    """detach, _real_close and __del__ for a counting subclass of `base`: each ends the connection's
    record (emits its event), then runs base's own (`finalize`: base's __del__, None where it has
    none). They run during interpreter shutdown too, when this module's globals may already be gone:
    the originals are bound as defaults, and a missing _end is skipped."""

    def detach(self, _detach=base.detach, _pass_on=pass_on):
        try:
            _end(self)
        except Exception as exc:
            _pass_on(exc)  # the program's signal handler's exception goes on; ours is swallowed
        return _detach(self)

    def _real_close(self, _close=base._real_close, _pass_on=pass_on):
        try:
            _end(self, closing=True)
        except Exception as exc:
            try:
                _pass_on(exc)
            except BaseException:
                try:
                    _close(self)  # closed all the same; the program's exception is the one it gets
                except Exception:
                    pass
                raise
            _close(self)
            return
        _close(self)

    def __del__(self, _finalize=finalize):
        try:
            _end(self, closing=True)
        except Exception:
            pass
        if _finalize is not None:
            _finalize(self)

    return detach, _real_close, __del__


def __reduce_ex__(self, protocol):
    """Pickling a counted socket. multiprocessing pickles a socket by its exact class (ForkingPickler's
    reducers), given the counting classes once it is imported (_register_reducers, at the next
    connection). A socket counted before that import reaches this method instead: from
    multiprocessing's own pickler (its `dump`/`dumps` the calling frame), it gets the reducer of
    the class it stands in for, as the program's socket would; any other pickling (pickle, copy)
    fails as for the program's class. Never raises but as the program's class would."""
    original = _UNCOUNTED.get(type(self))
    reduction = sys.modules.get("multiprocessing.reduction")
    if original is not None and reduction is not None:
        reducer = None
        try:
            reducer = reduction.ForkingPickler._extra_reducers.get(original)
            if reducer is not None:
                _register_reducers()  # the next ForkingPickler finds the counting classes itself
                if sys._getframe(1).f_globals.get("__name__") != reduction.__name__:
                    reducer = None
        except Exception as exc:
            reducer = None
            GUARD.fault("capture", exc)
        if reducer is not None:
            return reducer(self)  # multiprocessing's own: what it raises, it raises without us too
    return (original or _ss).__reduce_ex__(self, protocol)


class CountingSocket(socket.socket):
    """socket.socket that counts the bytes it moves into its connection's record."""

    __slots__ = ()

    def send(self, *args, **kwargs):
        n = _send(self, *args, **kwargs)
        _add(self, n, 0)
        return n

    def sendall(self, *args, **kwargs):
        result = _sendall(self, *args, **kwargs)  # None, or it raised: then the count is unknown
        rec = _OPEN.get(hash(self))
        if rec is not None:
            try:
                data = args[0] if args else kwargs["data"]
                rec.req_bytes += len(data) if type(data) is bytes else _nbytes(data)
            except Exception as exc:
                GUARD.fault("capture", exc)
        return result

    def sendto(self, *args, **kwargs):
        rec = _OPEN.get(hash(self))
        if rec is None or rec.protocol != "tcp" or claimed():
            # a datagram to an address: its own event, by socket_hooks' wrapper (socket.socket's
            # sendto once installed; looked up now, not saved at import)
            return _ss.sendto(self, *args, **kwargs)
        claim_held = [None]  # the kernel ignores the address of a connected stream: one connection
        try:
            claim(claim_held)
            n = _sendto(self, *args, **kwargs)
        finally:
            claim_held[0] = None
        _add(self, n, 0)
        return n

    def sendmsg(self, *args, **kwargs):
        rec = _OPEN.get(hash(self))
        addressed = (len(args) > 3 and args[3] is not None) or kwargs.get("address") is not None
        if rec is None or (addressed and rec.protocol != "tcp") or claimed():
            return _ss.sendmsg(self, *args, **kwargs)  # as sendto: a datagram's own event
        claim_held = [None]
        try:
            claim(claim_held)
            n = _sendmsg(self, *args, **kwargs)
        finally:
            claim_held[0] = None
        _add(self, n, 0)
        return n

    def recv(self, *args, **kwargs):
        data = _recv(self, *args, **kwargs)
        _add(self, 0, len(data))
        return data

    def recv_into(self, *args, **kwargs):
        n = _recv_into(self, *args, **kwargs)
        _add(self, 0, n)
        return n

    def recvfrom(self, *args, **kwargs):
        result = _recvfrom(self, *args, **kwargs)
        _add(self, 0, len(result[0]))
        return result

    def recvfrom_into(self, *args, **kwargs):
        result = _recvfrom_into(self, *args, **kwargs)
        _add(self, 0, result[0])
        return result

    def recvmsg(self, *args, **kwargs):
        result = _recvmsg(self, *args, **kwargs)
        _add(self, 0, len(result[0]))
        return result

    def recvmsg_into(self, *args, **kwargs):
        result = _recvmsg_into(self, *args, **kwargs)
        _add(self, 0, result[0])
        return result

    def getsockopt(self, *args, **kwargs):
        result = _getsockopt(self, *args, **kwargs)
        if args[:2] == (_SOL_SOCKET, _SO_ERROR) and len(args) == 2:  # how a loop learns a connect's outcome
            _settle(self, result)
        return result

    def sendfile(self, file, offset=0, count=None):
        # os.sendfile bypasses send(); the fallback path calls send(), counted already: take the
        # total the call returns instead of adding both.
        rec = _OPEN.get(hash(self))
        before = rec.req_bytes if rec is not None else 0
        total = _ss.sendfile(self, file, offset, count)
        try:
            if rec is not None:
                rec.req_bytes = before + total
        except Exception as exc:
            GUARD.fault("capture", exc)
        return total

    def dup(self):
        sock = _ss.dup(self)  # built as self.__class__: a CountingSocket without a record yet
        _share(self, sock)
        return sock

    detach, _real_close, __del__ = _ending(_ss)
    __reduce_ex__ = __reduce_ex__


def _counting_gevent_class(base):
    """The counting subclass of gevent's socket class (made at its first tracked connection).

    gevent's socket wraps a real one (`_sock`) and implements send, recv... in Python on top of
    it, its sendall and sendfile by calling its own send: its send and recv methods count here,
    and so a sendall cut short by a timeout counts what it did send. Not counted: sendto and
    sendmsg on a connected stream (they reach `_sock` directly; see the module docstring)."""
    names = ("send", "recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into", "dup")
    o = {name: getattr(base, name, None) for name in names}

    class CountingGeventSocket(base):
        __slots__ = ()

        def send(self, *args, _send=o["send"], **kwargs):  # sendall and sendfile send through it
            n = _send(self, *args, **kwargs)
            _add(self, n, 0)
            return n

        def recv(self, *args, _recv=o["recv"], **kwargs):
            data = _recv(self, *args, **kwargs)
            _add(self, 0, len(data))
            return data

        def recv_into(self, *args, _recv_into=o["recv_into"], **kwargs):
            n = _recv_into(self, *args, **kwargs)
            _add(self, 0, n)
            return n

        def recvfrom(self, *args, _recvfrom=o["recvfrom"], **kwargs):
            result = _recvfrom(self, *args, **kwargs)
            _add(self, 0, len(result[0]))
            return result

        def recvfrom_into(self, *args, _recvfrom_into=o["recvfrom_into"], **kwargs):
            result = _recvfrom_into(self, *args, **kwargs)
            _add(self, 0, result[0])
            return result

        if o["recvmsg"] is not None:
            def recvmsg(self, *args, _recvmsg=o["recvmsg"], **kwargs):
                result = _recvmsg(self, *args, **kwargs)
                _add(self, 0, len(result[0]))
                return result

        if o["recvmsg_into"] is not None:
            def recvmsg_into(self, *args, _recvmsg_into=o["recvmsg_into"], **kwargs):
                result = _recvmsg_into(self, *args, **kwargs)
                _add(self, 0, result[0])
                return result

        def getsockopt(self, *args, _getsockopt=base.getsockopt, **kwargs):
            result = _getsockopt(self, *args, **kwargs)
            if args[:2] == (_SOL_SOCKET, _SO_ERROR) and len(args) == 2:  # a loop learns a connect's outcome
                _settle(self, result)
            return result

        def dup(self, _dup=o["dup"]):
            sock = _dup(self)  # built as self.__class__, without a record yet
            _share(self, sock)
            return sock

        detach, _real_close, __del__ = _ending(base, getattr(base, "__del__", None))
        __reduce_ex__ = __reduce_ex__

    return _named_as(CountingGeventSocket, base)


def _counting_gevent_ssl_class(base):
    """The counting subclass of gevent's SSLSocket (made at the first one a counted connection or
    a connect of its own produces). With TLS up, its recv and recv_into read through its read,
    its send writes to the TLS object itself, its sendall sends through its send: read, write and
    send count (the plaintext), recv and recv_into only before TLS is up or after unwrap()."""
    o = {name: getattr(base, name) for name in ("read", "write", "send", "recv", "recv_into")}

    class CountingGeventSSLSocket(base):
        __slots__ = ()

        def read(self, *args, _read=o["read"], **kwargs):
            result = _read(self, *args, **kwargs)
            _add(self, 0, result if type(result) is int else len(result))
            return result

        def write(self, *args, _write=o["write"], **kwargs):
            n = _write(self, *args, **kwargs)
            _add(self, n, 0)
            return n

        def send(self, *args, _send=o["send"], **kwargs):
            n = _send(self, *args, **kwargs)
            _add(self, n, 0)
            return n

        def recv(self, *args, _recv=o["recv"], **kwargs):
            plain = self._sslobj is None
            data = _recv(self, *args, **kwargs)
            if plain:
                _add(self, 0, len(data))
            return data

        def recv_into(self, *args, _recv_into=o["recv_into"], **kwargs):
            plain = self._sslobj is None
            n = _recv_into(self, *args, **kwargs)
            if plain:
                _add(self, 0, n)
            return n

        do_handshake = _handshake(base)
        detach, _real_close, __del__ = _ending(base, getattr(base, "__del__", None))
        __reduce_ex__ = __reduce_ex__

    return _named_as(CountingGeventSSLSocket, base)


def _counting_class(cls):
    """The counting class for a socket of class `cls`, or None: socket.socket's, ssl.SSLSocket's,
    or gevent's socket class's or SSLSocket's (made on first use: gevent is never imported here)."""
    global _reducers_registered
    counting = _COUNTING.get(cls)
    if counting is None:
        if cls is getattr(sys.modules.get("gevent._socket3"), "socket", None):
            counting = _counting_gevent_class(cls)
        elif cls is getattr(sys.modules.get("gevent.ssl"), "SSLSocket", None):
            counting = _counting_gevent_ssl_class(cls)
            _TLS_COUNTED.add(counting)
        else:
            return None
        _COUNTING[cls] = counting
        _COUNTED.add(counting)
        _UNCOUNTED[counting] = cls
        _reducers_registered = False  # multiprocessing's reducer for gevent's class: for this one too
    return counting


def _named_as(counting, base):
    """repr() and error messages keep naming the class the program created."""
    counting.__module__ = base.__module__
    counting.__qualname__ = counting.__name__ = base.__name__
    return counting


_named_as(CountingSocket, _ss)

try:
    import ssl
except ImportError:  # a Python built without ssl
    ssl = None


if ssl is not None:
    _SSLSocket = native.original(ssl, "SSLSocket")
    _ssl_send, _ssl_sendall, _ssl_recv, _ssl_recv_into = (
        _SSLSocket.send, _SSLSocket.sendall, _SSLSocket.recv, _SSLSocket.recv_into)
    _ssl_read, _ssl_write = _SSLSocket.read, _SSLSocket.write

    class CountingSSLSocket(_SSLSocket):
        """ssl.SSLSocket that counts the application bytes (plaintext) it moves.

        With TLS up, send/write and read are the only paths to the SSL object (sendall loops on
        send; recv and recv_into call read), so those count; before the handshake or after
        unwrap() they fall back to the plain socket's C methods, counted here too."""

        __slots__ = ()

        def send(self, *args, **kwargs):
            n = _ssl_send(self, *args, **kwargs)
            _add(self, n, 0)
            return n

        def write(self, *args, **kwargs):
            n = _ssl_write(self, *args, **kwargs)
            _add(self, n, 0)
            return n

        def read(self, *args, **kwargs):
            result = _ssl_read(self, *args, **kwargs)
            _add(self, 0, result if type(result) is int else len(result))
            return result

        def sendall(self, *args, **kwargs):
            plain = self._sslobj is None
            result = _ssl_sendall(self, *args, **kwargs)
            if plain:
                try:
                    _add(self, _nbytes(args[0] if args else kwargs["data"]), 0)
                except Exception as exc:
                    GUARD.fault("capture", exc)
            return result

        def recv(self, *args, **kwargs):
            plain = self._sslobj is None
            data = _ssl_recv(self, *args, **kwargs)
            if plain:
                _add(self, 0, len(data))
            return data

        def recv_into(self, *args, **kwargs):
            plain = self._sslobj is None
            n = _ssl_recv_into(self, *args, **kwargs)
            if plain:
                _add(self, 0, n)
            return n

        do_handshake = _handshake(_SSLSocket)
        detach, _real_close, __del__ = _ending(_SSLSocket)
        __reduce_ex__ = __reduce_ex__

    _named_as(CountingSSLSocket, _SSLSocket)
    _COUNTING = {_ss: CountingSocket, _SSLSocket: CountingSSLSocket}
else:
    _SSLSocket = CountingSSLSocket = None
    _COUNTING = {_ss: CountingSocket}
_COUNTED = set(_COUNTING.values())  # and gevent's, once made (_counting_class)
_UNCOUNTED = {counting: cls for cls, counting in _COUNTING.items()}  # the class a counting one stands in for
_TLS_COUNTED = {CountingSSLSocket} - {None}  # the counting classes of SSLSockets, gevent's once made

_orig_wrap_socket = None  # ssl.SSLContext.wrap_socket, saved at install
MARK = "_netaudit_wrapped"


def ssl_wrap_socket_wrapper(self, sock, *args, **kwargs):
    """Wraps ssl.SSLContext.wrap_socket: a counted raw socket's record moves to its SSLSocket.

    The original detaches the raw socket; its record is taken out first, so the connection stays
    one event, now with protocol "tls", counting the application bytes until the SSLSocket closes.
    A wrap that fails after the detach (a failed handshake) ends the event with the error."""
    if claimed() or type(sock) not in _COUNTED:
        return _orig_wrap_socket(self, sock, *args, **kwargs)
    rec = _OPEN.pop(hash(sock), None)
    if rec is not None:
        rec.protocol = "tls"
    try:
        ssock = _orig_wrap_socket(self, sock, *args, **kwargs)
    except BaseException as exc:
        if rec is not None:
            _wrap_failed(sock, rec, exc)
        raise
    if rec is not None:
        try:
            counting = _counting_class(type(ssock))
            if counting in _TLS_COUNTED:  # an SSLSocket class we count, the standard library's or gevent's
                ssock.__class__ = counting
                rec.netaudit_sock = weakref.ref(ssock)  # the raw socket is detached now
                _OPEN[hash(ssock)] = rec
                return ssock
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
        emit(rec)  # another SSLSocket class (context.sslsocket_class): end the event here
    return ssock


def _wrap_failed(sock, rec, exc) -> None:
    try:
        if sock.fileno() != -1:  # not detached yet (bad arguments): the raw socket still counts
            rec.protocol = "tcp"
            _OPEN[hash(sock)] = rec
            return
    except Exception as fault:
        GUARD.fault("capture", fault, rec.ts)
    fail(rec, exc)


def track(sock, rec) -> bool:
    """Count `sock`'s bytes into `rec` until it closes, when rec is emitted. False when the socket
    cannot be counted (of a class other than socket.socket, ssl.SSLSocket and gevent's two, see
    _counting_class): the caller emits rec now. May raise (guarded by the caller)."""
    cls = type(sock)
    if cls in _COUNTED:
        _end(sock)  # connected again (a datagram socket): the previous peer's event ends here
    else:
        counting = _counting_class(cls)
        if counting is None:
            return False
        sock.__class__ = counting
    if not _reducers_registered:  # after the switch: a class made just now gets its reducer too
        _register_reducers()
    rec.netaudit_sockets = 1
    rec.netaudit_sock = weakref.ref(sock)  # for a connect still in progress at exit (flush_open)
    _OPEN[hash(sock)] = rec
    return True


_reducers_registered = False


def _register_reducers() -> None:
    """multiprocessing pickles a socket by its exact type (ForkingPickler's reducers): give the
    counting classes the reducer of the class they stand in for, once multiprocessing has one."""
    global _reducers_registered
    reduction = sys.modules.get("multiprocessing.reduction")
    if reduction is None:
        return  # looked up again at the next connection (one dict lookup)
    _reducers_registered = True
    try:
        pickler = reduction.ForkingPickler
        for original, counting in _COUNTING.items():
            reducer = pickler._extra_reducers.get(original)
            if reducer is not None:
                pickler.register(counting, reducer)
    except Exception as exc:
        GUARD.fault("capture", exc)


def _end(sock, closing: bool = False) -> None:
    """The socket closes (`closing`), or is detached, or connected again: emit its connection
    once. Never raises but the program's own signal-handler exception (guard.py); a fault
    while settling still emits the event."""
    try:
        rec = _OPEN.pop(hash(sock), None)
        if rec is None:
            return
        rec.netaudit_sockets -= 1
        if rec.netaudit_sockets > 0:
            return
    except Exception as exc:
        GUARD.fault("capture", exc)
        return
    try:
        if rec.status == IN_PROGRESS:
            _settle_at_end(rec, sock, closing)
        elif not rec.src_port:  # a non-blocking connect: its addresses are known only now
            peer(rec, sock)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    emit(rec)


def errno_name(err: int) -> str:
    """A connect's error as the event keeps it: the errno's name (ECONNREFUSED), or its number."""
    return errno.errorcode.get(err, str(err))


def _refused(rec, err: int) -> None:
    """A connect in progress failed: no longer in progress, and the errno's name as the error."""
    rec.status = ""
    rec.error = errno_name(err)


def _settle(sock, so_error) -> None:
    """The program read SO_ERROR of a counted socket: a connect in progress has its outcome."""
    try:
        rec = _OPEN.get(hash(sock))
        if rec is None or rec.status != IN_PROGRESS:
            return
        if so_error:
            _refused(rec, so_error)
        else:
            peer(rec, sock)
            if rec.src_port:  # connected (0 before the handshake ends: still in progress)
                rec.status = ""
    except Exception as exc:
        GUARD.fault("capture", exc)


def _settle_at_end(rec, sock, closing: bool) -> None:
    """A connect still "in progress" when its socket ends (it closes, or is detached) or when the
    interpreter exits with it open (`sock` None: gone by then): what became of it. SO_ERROR is read (reading clears it) only
    at close (`closing`), where the program has let the socket go. A detached descriptor lives on,
    and at exit a forked child holding the socket, a daemon thread or an exit handler that runs
    after ours may still ask: there, a connect that neither connected nor moved data keeps
    "in_progress"."""
    try:
        sock.getpeername()  # None (the socket is gone): AttributeError
        connected = True
    except (OSError, AttributeError) as exc:
        pass_on(exc)
        connected = bool(rec.req_bytes or rec.resp_bytes)  # it moved data, then lost its peer
    if connected:
        rec.status = ""
        if sock is not None:
            peer(rec, sock)
        return
    if not closing:
        return  # the outcome is still the program's to learn; the event says "in_progress"
    try:
        so_error = _getsockopt(sock if isinstance(sock, _ss) else sock._sock, _SOL_SOCKET, _SO_ERROR)  # gevent's: its _sock
    except OSError as exc:
        pass_on(exc)
        so_error = 0  # the descriptor was closed behind the socket's back
    if so_error:
        _refused(rec, so_error)
    else:
        rec.error = "ENOTCONN"  # closed before it connected: the status stays "in_progress"


def counted(sock) -> bool:
    """Is `sock` counted (a connection with an event of its own)?"""
    return type(sock) in _COUNTED


def hand_over(sock, rec, theirs: bool = False) -> None:
    """A protocol wrapper's event takes over the connection `rec` counts on `sock` (an HTTP
    connection's next request, after a connect() made outside any request): a connection that moved
    no bytes is no event of its own (the request's covers it), one that did ends here, with them;
    with `theirs`, the bytes it moved were the request's own (it was counted while the request sent
    on it), and it is no event of its own either way. The socket counts no more (it is of its own
    class again), unless a dup() of it still shares the record. Never raises but the program's own
    signal-handler exception (guard.py)."""
    try:
        if _OPEN.get(hash(sock)) is not rec:
            return  # ended already: closed, detached, or moved to its SSLSocket
        if (not theirs and (rec.req_bytes or rec.resp_bytes)) or rec.status or rec.error or rec.netaudit_sockets > 1:
            _end(sock)  # its event ends here; or a dup() of it counts on, emitted when it ends
        else:
            del _OPEN[hash(sock)]
        original = _UNCOUNTED.get(type(sock))
        if original is not None:
            sock.__class__ = original
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)


def pending_connect(sock):
    """The record of a connect still in progress on this counted socket, or None."""
    rec = _OPEN.get(hash(sock)) if type(sock) in _COUNTED else None
    return rec if rec is not None and rec.status == IN_PROGRESS else None


def connect_again(sock, err: int) -> None:
    """connect/connect_ex called again on a socket whose connect is in progress (a polling
    program): the same attempt, not a new one. `err` is what the call said (0, or its errno)."""
    if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
        return  # still in progress
    _settle(sock, 0 if err == errno.EISCONN else err)


def flush_open() -> None:
    """Emit every counted connection still open (interpreter exit); a connect still in progress
    as connected where the socket has a peer (through the weak reference track() kept to the
    socket that connected, or to its SSLSocket; not to its dup()s) or moved data. Never raises but
    the program's own signal-handler exception (guard.py)."""
    try:
        records = list(_OPEN.values())
        _OPEN.clear()
    except Exception as exc:
        GUARD.fault("record", exc)
        return
    for rec in records:
        if rec.status == IN_PROGRESS:  # a non-blocking connect nobody settled: settle it now
            try:
                ref = getattr(rec, "netaudit_sock", None)
                _settle_at_end(rec, ref() if ref is not None else None, closing=False)
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
        emit(rec)  # dup()s share a record: emit() writes it once


def _forget_in_child() -> None:
    _OPEN.clear()  # the parent emits its connections; the child counts only its own
    flush_at_multiprocessing_exit(flush_open, priority=101)


_installed = False


def install() -> None:
    """Register the exit flush. Called by socket_hooks.install(), after interceptor.sink was
    imported: atexit runs handlers last-registered first, so this one runs before the sink's."""
    global _installed, _orig_wrap_socket
    if not _installed:
        at_exit(flush_open)
        os.register_at_fork(after_in_child=_forget_in_child)
        _installed = True
    if ssl is not None and not getattr(ssl.SSLContext.__dict__.get("wrap_socket"), MARK, False):
        _orig_wrap_socket = ssl.SSLContext.wrap_socket
        setattr(ssl_wrap_socket_wrapper, MARK, True)
        ssl.SSLContext.wrap_socket = ssl_wrap_socket_wrapper
