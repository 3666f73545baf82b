"""The socket layer: every connection and datagram a Python process makes, raw sockets included.

- `socket.socket.connect` / `connect_ex` and `socket.create_connection` are wrapped, so a raw
  connection is one event with its outcome: a refused connection is emitted at once, an open one
  when it closes, with the bytes it sent and received (socket_bytes); a non-blocking connect
  is "in_progress" until the caller reads SO_ERROR (asyncio and selector loops do) or the socket
  closes, and then carries its outcome: connected, or the errno's name (socket_bytes);
- `sendto` / `sendmsg` to an explicit address (UDP) are wrapped too: one event per datagram, with
  the bytes the kernel took, or the error;
- a PEP 578 audit hook catches what bypasses those (a `_socket.socket` used directly, whose
  datagrams then carry no size; name lookups through `getaddrinfo` and friends). Where gevent
  patched socket before install, its default resolver runs lookups on a thread of its pool, out
  of the caller's sight: gevent's resolvers' lookup methods are wrapped instead (_gevent_lookup).
  Where gevent patches later (a gevent program under `netaudit run`), lookups stay the audit
  hook's: recorded where they run, without their caller.
Both stay silent while a protocol wrapper holds the claim (capture.claimed()): a
connection that a protocol wrapper describes is not recorded a second time here. Only IPv4 and
IPv6 sockets are network egress: AF_UNIX, AF_NETLINK, AF_PACKET... are not recorded. A call that
fails on its arguments before anything is sent (TypeError, ValueError, OverflowError) is no event;
a datagram "to an address" on a connected stream goes to the peer, and is recorded so.
"""
from __future__ import annotations

import _socket
import errno
import socket
import sys

from . import native, socket_bytes
from .guard import pass_on
from .capture import GUARD, STATE, begin, claim, claimed, emit, fail, holds_claim, peer, unclaimed

MARK = "_netaudit_wrapped"
_orig: dict[str, object] = {}
_hook_added = False


def _protocol(sock) -> str:
    if type(sock).__name__ == "SSLSocket":
        return "tls"
    try:
        kind = sock.type
    except Exception:
        return "tcp"
    return "udp" if kind == socket.SOCK_DGRAM else "tcp"


def _begin_socket(sock, address, method, frame):
    rec = begin("socket", _protocol(sock), method, str(address[0]), address[1], frame)
    rec.dst_ip = _ip_literal(address[0])
    return rec


def _ip_literal(host) -> str:
    if not isinstance(host, str):
        return ""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except (OSError, ValueError) as exc:
            pass_on(exc)
    return ""


def _inet(address) -> bool:
    """An (host, port, ...) address: AF_UNIX paths and other families are not network egress."""
    return type(address) is tuple and len(address) >= 2 and isinstance(address[1], int)


_FAMILY = _socket.socket.family.__get__  # the C getters: socket.family's enum conversion costs 0.5 us
_TYPE = _socket.socket.type.__get__
_IP = frozenset({socket.AF_INET, socket.AF_INET6})


def _egress(sock, address) -> bool:
    """A (host, port, ...) address on an IPv4/IPv6 socket: network egress (AF_NETLINK, AF_PACKET,
    Bluetooth... addresses are tuples too)."""
    if not _inet(address):
        return False
    try:
        return _FAMILY(sock) in _IP
    except TypeError as exc:  # not a _socket.socket: gevent's class wraps one
        pass_on(exc)
    try:
        return sock.family in _IP
    except Exception:
        return True  # no family to tell by: the address decides, as before


def _kind(sock) -> int:
    try:
        return _TYPE(sock)
    except TypeError as exc:  # not a _socket.socket: gevent's class wraps one
        pass_on(exc)
        return sock.type


def _finish_connect(rec, sock, connected: bool = True) -> None:
    """The connection is up (or in progress): count its bytes until it closes, or emit it now."""
    try:
        if connected:
            peer(rec, sock)
        if socket_bytes.track(sock, rec):
            return
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    emit(rec)


def _finish_connect_failed(rec, sock) -> None:
    try:
        peer(rec, sock)
    except Exception as exc:
        GUARD.fault("capture", exc, rec.ts)
    emit(rec)


def _try_begin_connect(sock, address, frame):
    """The connect's record, or None when capture faulted (counted by the guard)."""
    try:
        return _begin_socket(sock, address, "connect", frame)
    except Exception as exc:
        GUARD.fault("capture", exc)
        return None


def _connect_again(self, original: str, address):
    """connect/connect_ex on a socket whose connect is in progress: that attempt's outcome."""
    claim_held = [None]
    try:
        claim(claim_held)
        result = _orig[original](self, address)
    except OSError as exc:
        if exc.errno and not isinstance(exc, BlockingIOError):
            socket_bytes.connect_again(self, exc.errno)
        raise
    finally:
        claim_held[0] = None
    socket_bytes.connect_again(self, result or 0)
    return result


def socket_connect_wrapper(self, address):
    """Wraps socket.socket.connect: one event per connection attempt, with its outcome."""
    if claimed(2, address) or not _egress(self, address):
        return _orig["connect"](self, address)
    if socket_bytes.pending_connect(self) is not None:
        return _connect_again(self, "connect", address)
    rec = _try_begin_connect(self, address, sys._getframe(1))
    claim_held = [None]
    try:
        claim(claim_held)
        result = _orig["connect"](self, address)
    except BaseException as exc:
        if rec is not None:
            if isinstance(exc, BlockingIOError):
                rec.status = socket_bytes.IN_PROGRESS  # a non-blocking connect: not a failure
                _finish_connect(rec, self, connected=False)
            else:
                fail(rec, exc)
        raise
    finally:
        claim_held[0] = None
    if rec is not None:
        _finish_connect(rec, self)
    return result


def socket_connect_ex_wrapper(self, address):
    """Wraps socket.socket.connect_ex: like connect, the error is the returned errno's name."""
    if claimed(2, address) or not _egress(self, address):
        return _orig["connect_ex"](self, address)
    if socket_bytes.pending_connect(self) is not None:
        return _connect_again(self, "connect_ex", address)
    rec = _try_begin_connect(self, address, sys._getframe(1))
    claim_held = [None]
    try:
        claim(claim_held)
        result = _orig["connect_ex"](self, address)
    except BaseException as exc:
        if rec is not None:
            fail(rec, exc)
        raise
    finally:
        claim_held[0] = None
    if rec is not None:
        connected = not result
        try:
            if result in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                rec.status = socket_bytes.IN_PROGRESS
            elif result:
                rec.error = socket_bytes.errno_name(result)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
        if rec.error:
            _finish_connect_failed(rec, self)
        else:
            _finish_connect(rec, self, connected)
    return result


def _call(fn, address, args, kwargs):
    return fn(address, *args, **kwargs)


def socket_create_connection_wrapper(address, *args, **kwargs):
    """Wraps socket.create_connection: name lookup plus connect, one event for the host asked. An
    address it does not record itself (a port given as a str) runs unclaimed: its lookup and
    connect are recorded below, as they are outside any claim (inside a claim this frame of ours
    covered them: review 34)."""
    if claimed(2, address):
        return _orig["create_connection"](address, *args, **kwargs)
    if not _inet(address):
        return unclaimed(_call, _orig["create_connection"], address, args, kwargs)
    rec = None
    try:
        rec = begin("socket", "tcp", "connect", str(address[0]), address[1], sys._getframe(1))
        rec.dst_ip = _ip_literal(address[0])
    except Exception as exc:
        GUARD.fault("capture", exc)
    claim_held = [None]
    try:
        claim(claim_held)
        sock = _orig["create_connection"](address, *args, **kwargs)
    except BaseException as exc:
        if rec is not None:
            fail(rec, exc)
        raise
    finally:
        claim_held[0] = None
    if rec is not None:
        _finish_connect(rec, sock)
    return sock


_ARGUMENT_ERRORS = (TypeError, ValueError, OverflowError)  # refused before anything is sent


_COUNTING_GLOBALS = vars(socket_bytes)  # CountingSocket's methods' globals


def _datagram_claimed() -> bool:
    """claimed(), from _datagram: checked from the sendto/sendmsg wrapper's caller, or from its
    caller where that is a counted socket's method passing the datagram on."""
    try:
        counted = sys._getframe(3).f_globals is _COUNTING_GLOBALS
    except Exception as exc:
        GUARD.fault("claim", exc)
        return False
    return claimed(5 if counted else 4)


def _datagram(self, original: str, args, address):
    """One datagram to an explicit address: one event, with the bytes the kernel took. Called by
    the sendto/sendmsg wrappers: the claim is checked from their caller, or from its caller where
    that is a counted socket's method passing the datagram on (review 33, 2)."""
    if (holds_claim() and _datagram_claimed()) or not _egress(self, address):
        return _orig[original](self, *args)
    rec = None
    try:
        if _kind(self) == socket.SOCK_STREAM:  # a connected stream: the kernel ignores the address
            try:
                address = self.getpeername()
            except OSError as exc:
                pass_on(exc)
        rec = _begin_socket(self, address, "sendto", sys._getframe(2))
    except Exception as exc:
        GUARD.fault("capture", exc)
    claim_held = [None]
    try:
        claim(claim_held)
        n = _orig[original](self, *args)
    except BaseException as exc:
        if rec is not None and not isinstance(exc, _ARGUMENT_ERRORS):
            fail(rec, exc)
        raise
    finally:
        claim_held[0] = None
    if rec is not None:
        rec.req_bytes = n
        emit(rec)
    return n


def socket_sendto_wrapper(self, *args, **kwargs):
    """Wraps socket.socket.sendto(data[, flags], address)."""
    if kwargs:  # the C method takes none: its own TypeError
        return _orig["sendto"](self, *args, **kwargs)
    return _datagram(self, "sendto", args, args[-1] if len(args) in (2, 3) else None)


def socket_sendmsg_wrapper(self, *args, **kwargs):
    """Wraps socket.socket.sendmsg(buffers[, ancdata[, flags[, address]]]): with an address only."""
    if len(args) != 4 or kwargs:
        return _orig["sendmsg"](self, *args, **kwargs)
    return _datagram(self, "sendmsg", args, args[3])


# ---- the audit hook: whatever bypasses the wrappers above ----------------------------------------

def _on_connect(args) -> None:
    sock, address = args
    if _egress(sock, address):
        emit(_begin_socket(sock, address, "connect", sys._getframe(2)))


def _on_sendto(args) -> None:
    sock, address = args
    if _egress(sock, address):
        emit(_begin_socket(sock, address, "sendto", sys._getframe(2)))


# A lookup's target parameter, by method: its name where given as a keyword (gevent's resolver
# methods take keywords; the C functions take none).
_TARGET_PARAM = {"getaddrinfo": "host", "gethostbyname": "hostname", "gethostbyname_ex": "hostname",
                 "gethostbyaddr": "ip_address", "getnameinfo": "sockaddr"}


def _lookup_target(method: str, args, kwargs=None) -> tuple[str, int]:
    """(host, port) of a name lookup's arguments."""
    kwargs = kwargs or {}
    host = args[0] if args else kwargs.get(_TARGET_PARAM.get(method, "host"), "")
    if method == "getaddrinfo":
        if isinstance(host, bytes):
            host = host.decode("idna", "replace")
        port = args[1] if len(args) > 1 else kwargs.get("port", 0)
        port = port if isinstance(port, int) else int(port) if isinstance(port, str) and port.isdigit() else 0
        return host or "", port
    if isinstance(host, tuple):  # getnameinfo's sockaddr
        host = host[0]
    return str(host), 0


def _by_gevent(frame) -> bool:
    """A lookup gevent's resolver makes (on a thread of its pool, or its own C calls)."""
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("gevent.")


def _on_lookup(method):
    def handler(args) -> None:
        frame = sys._getframe(2)
        # gevent's: recorded where it was asked for (_gevent_lookup) when every resolver gevent
        # has loaded is wrapped; else here, without its caller (never lost, at worst twice)
        if _by_gevent(frame) and _gevent_resolvers_wrapped():
            return
        emit(begin("dns", "dns", method, *_lookup_target(method, args), frame))
    return handler


def _gevent_lookup(method: str, lookup, static: bool):
    """Wraps a lookup method of a gevent resolver (through which every lookup of a gevent-patched
    process goes: socket.getaddrinfo, getfqdn, gevent's own create_connection...). Its thread
    resolver runs the C lookup on a thread of its pool, whose audit event shows neither the caller
    nor the caller's claim (the connection the lookup is for): recorded here instead, on the
    caller's greenlet, as the audit hook records a lookup elsewhere. Arguments the lookup refuses
    before asking (TypeError, ValueError) are no event, as for a C lookup. `static`: the class
    holds a staticmethod (gevent's blocking resolver: the C functions themselves)."""
    skip = 0 if static else 1  # the resolver instance

    def wrapper(*args, **kwargs):
        if claimed() or not STATE.enabled:
            return lookup(*args, **kwargs)
        rec = None
        try:
            rec = begin("dns", "dns", _AUDITED_AS[method], *_lookup_target(method, args[skip:], kwargs),
                        sys._getframe(1))
        except Exception as exc:
            GUARD.fault("capture", exc)
        claim_held = [None]
        try:
            claim(claim_held)
            result = lookup(*args, **kwargs)
        except BaseException as exc:
            if rec is not None and not isinstance(exc, _ARGUMENT_ERRORS):
                fail(rec, exc)
            raise
        finally:
            claim_held[0] = None
        if rec is not None:
            emit(rec)
        return result

    wrapper.__name__ = wrapper.__qualname__ = getattr(lookup, "__name__", method)
    wrapper.__wrapped__ = lookup
    setattr(wrapper, MARK, True)
    return staticmethod(wrapper) if static else wrapper


# The resolver's lookups, by the method their C audit event names (gethostbyname_ex raises
# gethostbyname's).
_AUDITED_AS = {"getaddrinfo": "getaddrinfo", "gethostbyname": "gethostbyname",
               "gethostbyname_ex": "gethostbyname", "gethostbyaddr": "gethostbyaddr",
               "getnameinfo": "getnameinfo"}
# gevent's resolvers (gevent.config.resolver names one of them): each one gevent has loaded at
# install is wrapped, as a program may switch between them
_GEVENT_RESOLVERS = ("gevent.resolver.thread", "gevent.resolver.blocking", "gevent.resolver.ares",
                     "gevent.resolver.dnspython")


def _gevent_resolver_classes() -> list:
    """The gevent resolver classes gevent has loaded, and the one its hubs are configured with."""
    classes = [getattr(sys.modules.get(m), "Resolver", None) for m in _GEVENT_RESOLVERS]
    config = sys.modules.get("gevent._config")
    if config is not None:
        classes.append(config.config.resolver)  # the class (gevent imports it)
    return [c for c in classes if isinstance(c, type)]


def _wrap_gevent_resolvers() -> None:
    """Wrap the lookups of every gevent resolver class gevent has loaded (install, where gevent
    patched first; a wrapper's claim is its greenlet's, capture.claim). Never later: a
    lookup already under way in an unwrapped one would be skipped by the audit hook and lost."""
    try:
        for resolver in _gevent_resolver_classes():
            for name in _AUDITED_AS:
                raw = next((k.__dict__[name] for k in resolver.__mro__ if name in k.__dict__), None)
                static = isinstance(raw, staticmethod)
                lookup = raw.__func__ if static else raw
                if lookup is not None and callable(lookup) and not getattr(lookup, MARK, False):
                    setattr(resolver, name, _gevent_lookup(name, lookup, static))
    except Exception as exc:  # a class that takes no new attribute: the audit hook records its
        GUARD.fault("capture", exc)  # lookups, where they run (_gevent_resolvers_wrapped is False)


def _gevent_resolvers_wrapped() -> bool:
    """Some resolver class gevent has loaded, and every one, has its lookups wrapped (none is
    where gevent patched after install; one chosen and loaded later is not: their lookups stay
    the audit hook's)."""
    try:
        classes = _gevent_resolver_classes()
        return bool(classes) and all(getattr(getattr(c, name, None), MARK, False) or not hasattr(c, name)
                                     for c in classes for name in _AUDITED_AS)
    except Exception:
        return False


_HANDLERS = {
    "socket.connect": _on_connect,
    "socket.sendto": _on_sendto,
    "socket.sendmsg": _on_sendto,
    "socket.getaddrinfo": _on_lookup("getaddrinfo"),
    "socket.gethostbyname": _on_lookup("gethostbyname"),
    "socket.gethostbyaddr": _on_lookup("gethostbyaddr"),
    "socket.getnameinfo": _on_lookup("getnameinfo"),
}


def _destination(event, args):
    """(host, port) a connect or a lookup event is for (see capture.claimed's `dest`); None else."""
    if event == "socket.connect" and len(args) > 1:
        return args[1]
    if event == "socket.getaddrinfo" and len(args) > 1:
        return args[0], args[1]
    return None


# A process about to start: its environment (interceptor.relay, under `netaudit run`), whatever
# claim is held (a library's call that starts a process still starts the program's process).
# subprocess's only: os.exec and os.posix_spawn raise theirs once the environment is read.
_CHILD_EVENTS = frozenset({"subprocess.Popen"})


def audit_children(handler) -> None:
    """Have `handler(args)` see every process start's audit event (its environment is args[-1])."""
    for event in _CHILD_EVENTS:
        _HANDLERS[event] = handler


def audit_hook(event, args):
    """PEP 578 hook. Called for every audit event of the process, so the common exit is first.
    It must never raise an exception of ours: one would abort the audited operation (the program's
    own signal-handler exception goes on, guard.py, as it would have without us)."""
    handler = _HANDLERS.get(event)
    if handler is None or (event not in _CHILD_EVENTS and claimed(2, _destination(event, args),
                                                                  event == "socket.getaddrinfo")) \
            or not STATE.enabled:
        return
    try:
        handler(args)
    except Exception as exc:
        GUARD.fault("capture", exc)


def installed_elsewhere() -> bool:
    """Another copy of this package (`netaudit run` loads one under a private name) has installed
    its wrappers in this process: they already see every call, and a second set would record each
    call twice."""
    connect = socket.socket.__dict__.get("connect")
    return bool(getattr(connect, MARK, False)) and connect is not socket_connect_wrapper


def install() -> None:
    global _hook_added
    cls = socket.socket
    if not getattr(cls.__dict__.get("connect"), MARK, False):
        for name, wrapper in (("connect", socket_connect_wrapper), ("connect_ex", socket_connect_ex_wrapper),
                              ("sendto", socket_sendto_wrapper), ("sendmsg", socket_sendmsg_wrapper)):
            _orig[name] = getattr(cls, name)
            setattr(wrapper, MARK, True)
            setattr(cls, name, wrapper)
    if not getattr(socket.create_connection, MARK, False):
        _orig["create_connection"] = socket.create_connection
        setattr(socket_create_connection_wrapper, MARK, True)
        socket.create_connection = socket_create_connection_wrapper
    if native.patched("socket"):
        _wrap_gevent_resolvers()
    socket_bytes.install()
    if not _hook_added:
        sys.addaudithook(audit_hook)
        _hook_added = True
