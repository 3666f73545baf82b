"""Protocol wrappers for smtplib, imaplib, poplib and ftplib: one event per command the caller made.

Each wrapped method is a call the user makes (`SMTP.sendmail`, `IMAP4._simple_command` behind
`login`/`select`/`fetch`, `POP3._shortcmd`/`_longcmd` behind `user`/`pass_`/`retr`, `FTP.login`,
`FTP.retrbinary`...). Wrapped methods called from inside another wrapped method stay silent (the
claim, capture.claim), so `send_message -> sendmail` or `retrlines -> sendcmd` is one event. Only the
command word is kept ("PASS", never the password); message text is only hashed, as it is sent.
"""
from __future__ import annotations

import functools
import sys
import types

from .capture import GUARD, begin, claim, claimed, destination, emit, fail, peer, unclaimed

MARK = "_netaudit_wrapped"
PEER = "_netaudit_peer"


def _arg(args, kwargs, index, name, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _code(value) -> str:
    """A reply's status word: SMTP/FTP 3-digit code, IMAP "OK"/"NO", POP3 "+OK"/"-ERR"."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:8]).decode("latin-1")
    if isinstance(value, str):
        word = value.split(" ", 1)[0].strip()
        return word[:8] if (word.isdigit() or word in ("+OK", "-ERR", "OK", "NO", "BAD")) else ""
    return ""


def _fill_peer(obj, rec) -> None:
    sock = getattr(obj, "sock", None)
    if sock is None:
        return
    cached = getattr(obj, PEER, None)
    if cached is None or cached[0] is not sock:
        peer(rec, sock)
        setattr(obj, PEER, (sock, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port))
    else:
        _, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port = cached


class Spec:
    """How one wrapped method becomes an event: channel, protocol, verb, payload, reply."""

    def __init__(self, channel, protocol, method, host=None, start=None, finish=None, when=None):
        self.channel = channel
        self.when = when              # callable(args, kwargs) -> bool: record, or only claim
        self.protocol = protocol      # callable(self) -> str
        self.method = method          # callable(args, kwargs) -> str
        self.host = host              # callable(self, args, kwargs) -> (host, port)
        self.start = start            # callable(rec, self, args, kwargs) -> (args, kwargs)
        self.finish = finish          # callable(rec, self, result)

    def begin(self, obj, args, kwargs, frame):
        if self.when is not None and not self.when(args, kwargs):
            return None, args, kwargs
        host, port = self.host(obj, args, kwargs) if self.host else (getattr(obj, "host", ""), getattr(obj, "port", 0))
        rec = begin(self.channel, self.protocol(obj), self.method(args, kwargs), host or "", port or 0, frame)
        if self.start is not None:
            args, kwargs = self.start(rec, obj, args, kwargs)
        return rec, args, kwargs

    def end(self, obj, rec, result) -> None:
        if self.finish is not None:
            self.finish(rec, obj, result)
        _fill_peer(obj, rec)


def _make_wrapper(original, spec: Spec):
    def protocol_call_wrapper(self, *args, **kwargs):
        """Runs the wrapped protocol method once, claimed, and records it as one event."""
        if claimed():
            return original(self, *args, **kwargs)
        rec = None
        claim_held = [None, None]
        try:
            rec, args, kwargs = spec.begin(self, args, kwargs, sys._getframe(1))
            if rec is not None:  # the call's destination (capture.claimed); smtplib's port 0 is its default
                claim_held[1] = destination(rec.host, rec.dst_port or getattr(type(self), "default_port", 0))
        except Exception as exc:
            GUARD.fault("capture", exc)
        try:
            claim(claim_held)
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            if rec is not None:
                fail(rec, exc)
            raise
        finally:
            claim_held[0] = None
        if rec is not None:
            try:
                spec.end(self, rec, result)
            except Exception as exc:
                GUARD.fault("capture", exc, rec.ts)
            emit(rec)
        return result

    setattr(protocol_call_wrapper, MARK, True)
    protocol_call_wrapper.__wrapped__ = original
    protocol_call_wrapper.__name__ = getattr(original, "__name__", "protocol_call_wrapper")
    return protocol_call_wrapper


def _wrap(cls, name: str, spec: Spec) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, MARK, False):
        return
    setattr(cls, name, _make_wrapper(original, spec))


def _const(word):
    return lambda args, kwargs: word


def _verb_of(index, name):
    from .redact import verb
    return lambda args, kwargs: verb(_arg(args, kwargs, index, name, ""))


def _reply_code(rec, obj, result) -> None:
    if isinstance(result, tuple) and result:
        rec.status = _code(result[0])
    else:
        rec.status = _code(result)


# The program's callbacks and files run unclaimed (capture.unclaimed): the calls they make are the
# program's own, and are recorded; under the claim of the FTP command that calls them, they were not.

def _hashing_callback(rec, callback):
    def hashing(buf):
        try:
            rec.hash_payload(buf)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
        if callback is not None:
            unclaimed(callback, buf)
    return hashing


def _counting_callback(rec, callback):
    def counting(data):
        try:
            rec.resp_bytes += len(data)
        except Exception as exc:
            GUARD.fault("capture", exc, rec.ts)
        unclaimed(callback, data)
    return counting


class _UnclaimedFile:
    """The file an FTP upload reads: its read and readline run unclaimed."""

    __slots__ = ("_fp",)

    def __init__(self, fp) -> None:
        self._fp = fp

    def read(self, *args):
        return unclaimed(self._fp.read, *args)

    def readline(self, *args):
        return unclaimed(self._fp.readline, *args)

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _replace_arg(args, kwargs, index, name, value):
    if len(args) > index:
        args = args[:index] + (value,) + args[index + 1:]
    else:
        kwargs = dict(kwargs, **{name: value})
    return args, kwargs


# ---- smtplib ---------------------------------------------------------------------------------

def _smtp_protocol(obj) -> str:
    import smtplib
    if isinstance(obj, getattr(smtplib, "SMTP_SSL", ())):
        return "smtps"
    if getattr(obj, "_netaudit_starttls", False):
        return "smtp+starttls"
    return "lmtp" if isinstance(obj, smtplib.LMTP) else "smtp"


def _smtp_connect_host(obj, args, kwargs):
    host = _arg(args, kwargs, 0, "host", "localhost") or "localhost"
    port = _arg(args, kwargs, 1, "port", 0) or 0
    if not port and isinstance(host, str) and host.count(":") == 1:
        host, _, p = host.partition(":")
        port = int(p) if p.isdigit() else 0
    return host, port


def _smtp_init_finish(rec, obj, result) -> None:
    rec.status = "220"  # SMTP.__init__ raises SMTPConnectError on any other greeting


def _smtp_host(obj, args, kwargs):
    return getattr(obj, "_host", ""), 0


def _smtp_mail_start(rec, obj, args, kwargs):
    msg = _arg(args, kwargs, 2, "msg", b"")
    if isinstance(msg, str):
        msg = msg.encode("utf-8", "replace")
    if isinstance(msg, (bytes, bytearray, memoryview)):
        rec.hash_payload(msg)
    return args, kwargs


def _smtp_mail_finish(rec, obj, result) -> None:
    rec.status = "250"


def _smtp_data_start(rec, obj, args, kwargs):
    """SMTP.data(msg), called by the program itself: the message is the payload (hashed, sized)."""
    msg = _arg(args, kwargs, 0, "msg", b"")
    if isinstance(msg, str):
        msg = msg.encode("ascii", "replace")  # what smtplib sends (_fix_eols, then ascii)
    if isinstance(msg, (bytes, bytearray, memoryview)):
        rec.hash_payload(msg)
    return args, kwargs


def _smtp_starttls_finish(rec, obj, result) -> None:
    _reply_code(rec, obj, result)
    obj._netaudit_starttls = True


def install_smtplib() -> None:
    import smtplib
    cls = smtplib.SMTP
    # SMTP(host) connects and then looks up the local name (getfqdn): one call, one CONNECT event.
    _wrap(cls, "__init__", Spec("smtp", _smtp_protocol, _const("CONNECT"), _smtp_connect_host,
                                finish=_smtp_init_finish, when=lambda a, kw: bool(_arg(a, kw, 0, "host", ""))))
    _wrap(cls, "connect", Spec("smtp", _smtp_protocol, _const("CONNECT"), _smtp_connect_host, finish=_reply_code))
    _wrap(cls, "login", Spec("smtp", _smtp_protocol, _const("AUTH"), _smtp_host, finish=_reply_code))
    _wrap(cls, "starttls", Spec("smtp", _smtp_protocol, _const("STARTTLS"), _smtp_host, finish=_smtp_starttls_finish))
    _wrap(cls, "sendmail", Spec("smtp", _smtp_protocol, _const("MAIL"), _smtp_host,
                                start=_smtp_mail_start, finish=_smtp_mail_finish))
    # A transaction the program drives itself (sendmail's own, under its claim, stay silent): an
    # envelope and a message sent so left only the CONNECT event (review 29).
    _wrap(cls, "mail", Spec("smtp", _smtp_protocol, _const("MAIL"), _smtp_host, finish=_reply_code))
    _wrap(cls, "rcpt", Spec("smtp", _smtp_protocol, _const("RCPT"), _smtp_host, finish=_reply_code))
    _wrap(cls, "data", Spec("smtp", _smtp_protocol, _const("DATA"), _smtp_host, start=_smtp_data_start,
                            finish=_reply_code))


# ---- imaplib ---------------------------------------------------------------------------------

def _imap_protocol(obj) -> str:
    import imaplib
    return "imaps" if isinstance(obj, getattr(imaplib, "IMAP4_SSL", ())) else "imap"


def _imap_open_host(obj, args, kwargs):
    return _arg(args, kwargs, 0, "host", "") or "localhost", _arg(args, kwargs, 1, "port", 0)


def _imap_command(args, kwargs):
    from .redact import verb
    return verb(args[0] if args else kwargs.get("name", ""))


def _imap_start(rec, obj, args, kwargs):
    """AUTHENTICATE's authobject (imaplib keeps it callable in `literal`) is the program's code: it
    runs unclaimed (it may fetch a fresh token: a call of its own)."""
    literal = getattr(obj, "literal", None)
    if type(literal) is types.MethodType:  # how imaplib tells a callback from data
        obj.literal = types.MethodType(unclaimed, literal)
    return args, kwargs


def _imap_finish(rec, obj, result) -> None:
    if isinstance(result, tuple) and len(result) == 2:
        rec.status = _code(result[0])
        n = 0
        for item in result[1] or ():
            if isinstance(item, (bytes, bytearray)):
                n += len(item)
            elif isinstance(item, tuple):
                n += sum(len(x) for x in item if isinstance(x, (bytes, bytearray)))
        rec.resp_bytes = n


def install_imaplib() -> None:
    import imaplib
    cls = imaplib.IMAP4
    _wrap(cls, "open", Spec("imap", _imap_protocol, _const("CONNECT"), _imap_open_host))
    _wrap(cls, "_simple_command", Spec("imap", _imap_protocol, _imap_command, start=_imap_start,
                                       finish=_imap_finish))


# ---- poplib ----------------------------------------------------------------------------------

def _pop_protocol(obj) -> str:
    import poplib
    return "pop3s" if isinstance(obj, getattr(poplib, "POP3_SSL", ())) else "pop3"


def _pop_init_host(obj, args, kwargs):
    return _arg(args, kwargs, 0, "host", ""), _arg(args, kwargs, 1, "port", 110)


def _pop_init_finish(rec, obj, result) -> None:
    rec.status = _code(getattr(obj, "welcome", b""))


def _pop_finish(rec, obj, result) -> None:
    if isinstance(result, tuple):  # _longcmd: (resp, lines, octets)
        rec.status = _code(result[0])
        if len(result) > 2 and isinstance(result[2], int):
            rec.resp_bytes = result[2]
    else:
        rec.status = _code(result)


def install_poplib() -> None:
    import poplib
    cls = poplib.POP3
    _wrap(cls, "__init__", Spec("pop3", _pop_protocol, _const("CONNECT"), _pop_init_host, finish=_pop_init_finish))
    _wrap(cls, "_shortcmd", Spec("pop3", _pop_protocol, _verb_of(0, "line"), finish=_pop_finish))
    _wrap(cls, "_longcmd", Spec("pop3", _pop_protocol, _verb_of(0, "line"), finish=_pop_finish))


# ---- ftplib ----------------------------------------------------------------------------------

def _ftp_protocol(obj) -> str:
    import ftplib
    return "ftps" if isinstance(obj, getattr(ftplib, "FTP_TLS", ())) else "ftp"


def _ftp_connect_host(obj, args, kwargs):
    return _arg(args, kwargs, 0, "host", "") or getattr(obj, "host", ""), _arg(args, kwargs, 1, "port", 0) or 21


def _ftp_connect_finish(rec, obj, result) -> None:
    rec.status = _code(result)


def _ftp_retr_start(rec, obj, args, kwargs):
    callback = _arg(args, kwargs, 1, "callback")
    if callback is None:
        return args, kwargs
    return _replace_arg(args, kwargs, 1, "callback", _counting_callback(rec, callback))


def _ftp_retrlines_start(rec, obj, args, kwargs):
    callback = _arg(args, kwargs, 1, "callback")
    if callback is None:  # ftplib's own print_line
        return args, kwargs
    return _replace_arg(args, kwargs, 1, "callback", functools.partial(unclaimed, callback))


def _ftp_stor_start(index):
    def start(rec, obj, args, kwargs):
        callback = _arg(args, kwargs, index, "callback")
        args, kwargs = _replace_arg(args, kwargs, index, "callback", _hashing_callback(rec, callback))
        fp = _arg(args, kwargs, 1, "fp")
        if fp is not None:
            args, kwargs = _replace_arg(args, kwargs, 1, "fp", _UnclaimedFile(fp))
        return args, kwargs
    return start


def install_ftplib() -> None:
    import ftplib
    cls = ftplib.FTP
    _wrap(cls, "connect", Spec("ftp", _ftp_protocol, _const("CONNECT"), _ftp_connect_host, finish=_ftp_connect_finish))
    _wrap(cls, "login", Spec("ftp", _ftp_protocol, _const("LOGIN"), finish=_reply_code))
    _wrap(cls, "sendcmd", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), finish=_reply_code))
    _wrap(cls, "voidcmd", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), finish=_reply_code))
    _wrap(cls, "retrbinary", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), start=_ftp_retr_start, finish=_reply_code))
    _wrap(cls, "retrlines", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), start=_ftp_retrlines_start,
                                 finish=_reply_code))
    _wrap(cls, "storbinary", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), start=_ftp_stor_start(3), finish=_reply_code))
    _wrap(cls, "storlines", Spec("ftp", _ftp_protocol, _verb_of(0, "cmd"), start=_ftp_stor_start(2), finish=_reply_code))
    if hasattr(ftplib, "FTP_TLS"):
        _wrap(ftplib.FTP_TLS, "login", Spec("ftp", _ftp_protocol, _const("LOGIN"), finish=_reply_code))


def install() -> None:
    for step in (install_smtplib, install_imaplib, install_poplib, install_ftplib):
        try:
            step()
        except Exception as exc:  # a missing or unusual library must not stop the others
            GUARD.fault("install", exc)
