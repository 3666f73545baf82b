"""Capture the metadata of every network call a Python process makes. Standard library only.

    import interceptor
    interceptor.install(sink=interceptor.Sink(writer))   # once per process; again is harmless

Layers (DESIGN.md, "Interceptor"): PEP 578 audit hooks and socket wrappers for every socket
(socket_hooks), protocol wrappers for http.client (http_wrappers: urllib, urllib3, requests,
xmlrpc.client) and for smtplib, imaplib, poplib, ftplib (mail_wrappers), attribution of each call
to a module (attribution), names-only redaction (redact), one fail-open guard (guard), and the
sink with its writer thread (sink), a real OS thread also where gevent patched threading
(native). Ingress: interceptor.wsgi.AuditMiddleware.
"""
from __future__ import annotations

import threading

from .attribution import StackAttribution
from .capture import STATE
from .event import AUDIT, EGRESS, INGRESS, NetEvent
from .guard import GUARD
from . import sink as _sink
from .sink import LazyWriter, MemoryWriter, NullWriter, Sink

__all__ = ["NetEvent", "EGRESS", "INGRESS", "AUDIT", "install", "installed", "current_sink", "use_sink",
           "use_attribution", "flush", "Sink", "LazyWriter", "MemoryWriter", "NullWriter", "StackAttribution", "GUARD",
           "VERSION"]

VERSION = "0.1.0"
_install_lock = threading.Lock()


def _forward_miss(ts: int, reason: str) -> None:
    sink = STATE.sink
    if sink is not None:
        sink.miss(ts, reason)


def install(sink=None, attribution=None) -> bool:
    """Install the interceptor in this process. Returns True the first time, False afterwards.

    `sink` receives records (default: one that discards them); `attribution(frame)` names the
    caller (default: StackAttribution). A second call changes nothing, neither patches twice nor
    replaces the sink: use `use_sink` for that. Nor does a call while another copy of this package
    is installed (under `netaudit run`, the bootstrap's, when the program imports a changed copy
    of ours): that copy records every call already, and this one stays uninstalled.
    """
    with _install_lock:
        if STATE.installed:
            return False
        from . import http_wrappers, mail_wrappers, socket_hooks

        if socket_hooks.installed_elsewhere():
            return False
        STATE.sink = sink if sink is not None else Sink(NullWriter())
        STATE.use_attribution(attribution if attribution is not None else StackAttribution())
        GUARD.on_miss = _forward_miss
        http_wrappers.install()
        mail_wrappers.install()
        socket_hooks.install()
        _sink.wrap_os_exit()
        STATE.installed = True
        return True


def installed() -> bool:
    return STATE.installed


def current_sink():
    return STATE.sink


def use_sink(sink):
    """Send records to another sink from now on; returns the previous one."""
    previous, STATE.sink = STATE.sink, sink
    return previous


def use_attribution(attribution):
    previous = STATE.attribution
    STATE.use_attribution(attribution)
    return previous


def flush(timeout: float = 5.0) -> bool:
    """Wait until the installed sink has handed every queued event to its writer."""
    sink = STATE.sink
    return sink.flush(timeout) if sink is not None else True
