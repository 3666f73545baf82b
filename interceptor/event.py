"""NetEvent: the metadata of one network call, and nothing else.

There is no body field and none may be added (DESIGN.md, "no bodies, by structure").
Names (header names, query keys) are kept; their values never are.
"""
from __future__ import annotations

from dataclasses import dataclass

EGRESS = "egress"
INGRESS = "ingress"
AUDIT = "audit"  # channel of the auditor's own admin facts (gap, head_signed, ...)


@dataclass(frozen=True, slots=True)
class NetEvent:
    """One call's metadata. Field order is the ledger's column order (verifier/format.py)."""

    ts: int                          # start of the call, UTC, nanoseconds since the epoch
    duration_ms: float               # wall time of the call
    direction: str                   # "egress" | "ingress"
    channel: str                     # http, smtp, imap, pop3, ftp, socket, dns, audit
    protocol: str                    # https, http, smtp, smtps, tcp, udp, ...
    method: str = ""                 # GET, MAIL, connect, ...; for audit rows: the fact name
    host: str = ""                   # host name as the caller asked for it
    url_path: str = ""               # path only, no query; for audit rows: "k=v;k=v" detail
    query_keys: tuple[str, ...] = ()  # query parameter names, never their values
    src_ip: str = ""
    src_port: int = 0
    dst_ip: str = ""
    dst_port: int = 0
    status: str = ""                 # HTTP status, SMTP reply code, or ""
    error: str = ""                  # exception class name when the audited call failed
    req_bytes: int = 0
    resp_bytes: int = 0
    header_names: tuple[str, ...] = ()  # request header names, never their values
    fingerprint: str = ""            # salted HMAC-SHA256 of the request payload, 128 bits, hex
    module: str = ""                 # Odoo module or top-level package that made the call
    author: str = ""                 # that module's author (from its __manifest__.py)
    call_site: str = ""              # "path:line:function" of the attributed frame
    pid: int = 0
    self_egress: bool = False        # the auditor's own packages made this call: an alarm
