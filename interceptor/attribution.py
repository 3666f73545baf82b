"""Attribution: which module made a call, by walking the stack outward from the audited call.

Frames of the interceptor's capture code, of the standard library and of third-party libraries
are skipped. The first remaining frame names the caller:
- `odoo.addons.<name>...` gives module `<name>` and the `author` of that addon's `__manifest__.py`,
  read once with `ast.literal_eval` and cached (the addon is never imported);
- our own packages (interceptor, under whatever name it was imported, ledger, verifier,
  mit_network_audit) give `self_egress=True`;
- anything else gives the user's top-level package (a script run as `__main__`, or as `__mp_main__` in a
  spawned multiprocessing child: its file's stem; `python -m pkg`: `pkg`).
`call_site` is "module.path:line:function" of that frame.

Frames are classified by their module's `__name__` (from `f_globals`, which costs no audit event,
unlike `f_code`), and each module is classified once. The attributed frame's call_site is cached
by the code's first line and the instruction offset, then by code object (compared by identity;
the cache holds it), so a repeated call pays one `f_code` read and a dict lookup. Not by
`id(code)`: builtins.id raises an audit event, which runs every audit hook of the process, ours
included; code objects that share a key (rare: two on one line) are told apart by identity.
"""
from __future__ import annotations

import ast
import os
import site
import sys
import sysconfig

from .guard import pass_on
from .redact import utf8_safe

# This package's own name, read at import: "interceptor", or the private name `netaudit run` gives
# its copy (ledger/run.py), where a program's own `interceptor` is not ours.
PACKAGE = __name__.rpartition(".")[0]
# The interceptor modules whose frames sit between the caller and the audited library.
CAPTURE_MODULES = frozenset({PACKAGE, *(f"{PACKAGE}.{m}" for m in (
    "capture", "http_wrappers", "mail_wrappers", "socket_hooks", "socket_bytes", "wsgi", "guard"))})
OUR_PACKAGES = frozenset({PACKAGE, "ledger", "verifier", "mit_network_audit"})
ODOO_ADDONS = "odoo.addons."
UNATTRIBUTED = ("", "", "", False)
MAIN_NAMES = ("__main__", "__mp_main__")  # the program's main module; the second in a spawned child

_SKIP = None
_SITES_MAX = 4096    # call-site keys cached; the cache starts over when full
_LASTI_BITS = 32     # key: the code's first line above the instruction offset
_PER_KEY = 10        # code objects kept under one key (the oldest go first)


def library_prefixes() -> tuple[str, ...]:
    """Folders whose code is the standard library or an installed third-party library."""
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(os.path.realpath(p))
    try:
        paths.update(os.path.realpath(p) for p in site.getsitepackages())
    except Exception as exc:  # some embedded interpreters lack it
        pass_on(exc)  # a signal handler's exception is the program's (found by the signal storm test)
    paths.add(os.path.realpath(os.path.dirname(os.__file__)))
    return tuple(sorted(p.rstrip(os.sep) + os.sep for p in paths))


def _beside_ours(parts: list[str], file) -> bool:
    """True when module `parts` (ledger..., verifier..., mit_network_audit...) is ours, not a
    program's namesake ("ledger" is a common name): its top-level folder sits beside our ledger
    and verifier, as they are installed together. Once per module (the caller caches)."""
    if not isinstance(file, str) or file.startswith("<"):
        return True  # no file to tell by (frozen, or built in): the name decides, as before
    root = os.path.realpath(file)
    for _ in range(len(parts) + (os.path.basename(root) == "__init__.py")):
        root = os.path.dirname(root)
    return (os.path.isfile(os.path.join(root, "ledger", "ledger.py"))
            and os.path.isfile(os.path.join(root, "verifier", "format.py")))


# Odoo's own default for a manifest without 'author' (odoo/modules/module.py, _DEFAULT_MANIFEST):
# the stock addons (mail, base, ...) rely on it, so their rows name "Odoo S.A." as Odoo does.
ODOO_DEFAULT_AUTHOR = "Odoo S.A."


def read_author(manifest_path: str) -> str:
    """The `author` of an Odoo manifest, parsed as a literal; Odoo's default when the manifest
    has none; "" when the manifest is unreadable."""
    try:
        with open(manifest_path, encoding="utf-8") as f:
            data = ast.literal_eval(f.read())
    except (OSError, ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        pass_on(exc)
        return ""
    author = data.get("author", ODOO_DEFAULT_AUTHOR) if isinstance(data, dict) else ""
    if isinstance(author, (list, tuple)):
        author = ", ".join(str(a) for a in author)
    return str(author)[:256]


# ---- what a claim covers: library frames only ----------------------------------------------------

LIBRARY, OURS, PROGRAM, LOGGING = 0, 1, 2, 3   # a frame's kind for claim_covers
_KINDS: dict[str, int] = {}         # module name -> kind, each classified once
_KINDS_MAX = 65536
_classifier: StackAttribution | None = None


def claim_covers(f) -> int:
    """Does a claim held on this thread cover frame `f` (the code about to be silenced)? OURS if
    it does; PROGRAM if not; LOGGING if not, because a log handler runs the code (then not even a
    connection to the claimed call's own destination is the call's: capture.claimed).

    Covered when every frame from `f` outward to the nearest frame of the interceptor is library code
    (the standard library, a third-party library, Odoo's framework). The nearest interceptor frame
    is the wrapper whose call runs that code (it claimed, or it found itself claimed the same way),
    or code of ours the wrapper runs (a body's reader: its program code runs unclaimed anyway). A
    frame of the program's own code first (a subclass's override of a wrapped client's method, a
    log handler a library calls, by the attribution's rules; ledger, verifier and the addon count
    as program here, as they do for self-egress; so does the standard library's `logging`, whose
    handlers send the program's log records) means what runs below it is the program's: not
    covered, recorded. No interceptor frame at all (the claim belongs to another stack of this
    thread: a greenlet's): not covered (PROGRAM). Frames are told by their module's `__name__`, read from
    `f_globals` (no audit event, unlike `f_code`), each module classified once. Raises on a fault
    (the caller counts it)."""
    kinds = _KINDS
    while f is not None:
        g = f.f_globals
        name = g.get("__name__")
        kind = kinds.get(name) if type(name) is str else LIBRARY  # exec'd globals: skipped, as attribution does
        if kind is None:
            kind = _kind(name, g)
        if kind:
            return kind
        f = f.f_back
    return PROGRAM


def _kind(name: str, g) -> int:
    global _classifier
    if name == PACKAGE or name.startswith(PACKAGE + "."):
        kind = OURS
    elif name == "logging" or name.startswith("logging."):
        # a log record is the program's, whoever logs it: a handler's traffic (DatagramHandler,
        # SocketHandler, SMTPHandler, HTTPHandler...) is never the claimed call's own, even where
        # a library logs inside the call and the standard library's handler sends it, and even to
        # the call's own destination (review 37, 4)
        kind = LOGGING
    else:
        if _classifier is None:
            _classifier = StackAttribution()
        kind = LIBRARY if _classifier._classify(name, g) is _SKIP else PROGRAM
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[name] = kind
    return kind


class StackAttribution:
    """The default attribution: `attribution(frame) -> (module, author, call_site, self_egress)`."""

    def __init__(self, library_dirs: tuple[str, ...] | None = None):
        self._libs = library_prefixes() if library_dirs is None else library_dirs
        self._modules: dict[str | None, tuple | None] = {}
        self._authors: dict[str, str] = {}
        self._sites: dict[int, tuple] = {}   # key -> ((code, label, site), ...)

    def __call__(self, frame) -> tuple[str, str, str, bool]:
        # The common walk: every module on the stack already classified. Per frame, one attribute
        # and two subscripts, nothing else (13 bytecodes: this loop runs for every frame between
        # the caller and the audited call, 9 of them for a requests GET).
        modules = self._modules
        f = frame
        try:
            while (info := modules[f.f_globals["__name__"]]) is None:  # None: _SKIP
                f = f.f_back
        except (KeyError, TypeError, AttributeError) as exc:  # a module not seen yet, or the stack's end
            pass_on(exc)
            if f is None:
                return UNATTRIBUTED
            f, info = self._walk(f)
            if f is None:
                return UNATTRIBUTED
        # call_site, cached per code object and instruction offset: the same call is made again
        # and again, and this spares the line-table scan and the formatting
        code = f.f_code
        key = (code.co_firstlineno << _LASTI_BITS) ^ f.f_lasti
        entry = self._sites.get(key)
        if entry is not None:  # the code objects whose call sites under this key are known
            label = info[2]
            for known, known_label, site in entry:
                if known is code and known_label is label:
                    return info[0], info[1], site, info[3]
        return info[0], info[1], self._call_site(f, code, key, info[2]), info[3]

    def _walk(self, f) -> tuple:
        """(frame, info) of the first frame to attribute from f outward, classifying the modules
        seen for the first time; (None, None) at the stack's end."""
        modules = self._modules
        while f is not None:
            g = f.f_globals
            try:
                info = modules[g["__name__"]]
            except (KeyError, TypeError) as exc:
                pass_on(exc)
                info = self._module(g)
            if info is not _SKIP:
                return f, info
            f = f.f_back
        return None, None

    def _module(self, g) -> tuple | None:
        """Classify a module seen for the first time, once. Globals without a str `__name__`
        (exec'd code, a name replaced by an object) are skipped, as built-in code is."""
        name = g.get("__name__")
        if not isinstance(name, str):
            return _SKIP
        info = self._classify(name, g)
        if info is not _SKIP:
            info = (utf8_safe(info[0]), utf8_safe(info[1]), utf8_safe(info[2]), info[3])
        self._modules[name] = info
        return info

    def _call_site(self, f, code, key: int, label: str) -> str:
        """"label:line:function" of frame f, computed once per code object and instruction offset."""
        site = f"{label}:{f.f_lineno}:{utf8_safe(code.co_name)}"
        sites = self._sites
        if len(sites) >= _SITES_MAX:
            sites.clear()
        kept = sites.get(key, ())[-(_PER_KEY - 1):]
        sites[key] = (*kept, (code, label, site))  # holds the code object: compared by identity
        return site

    # ---- classifying a module, once -------------------------------------------------------------

    def _classify(self, name, g) -> tuple | None:
        if not isinstance(name, str) or name in CAPTURE_MODULES:
            return _SKIP
        parts = name.split(".")
        top = parts[0]
        if name.startswith(ODOO_ADDONS) and len(parts) >= 3:
            addon = parts[2]
            if addon in OUR_PACKAGES:
                return (addon, "", name, True)
            return (addon, self._author(addon, g.get("__file__")), name, False)
        if top == "odoo":
            return _SKIP  # the framework itself: keep walking to the addon that asked
        file = g.get("__file__")
        if file is not None and not isinstance(file, str):  # a pathlib.Path, say (review 30)
            try:
                file = os.fspath(file)
            except TypeError:
                file = None
            if not isinstance(file, str):
                file = None
        if top in OUR_PACKAGES and (top in (PACKAGE, "mit_network_audit") or _beside_ours(parts, file)):
            return (top, "", name, True)
        main = name in MAIN_NAMES
        if not file:
            if main:  # interactive or -c
                return ("__main__", "", "__main__", False)
            return _SKIP  # built-in or frozen
        if file.startswith("<"):
            return ("__main__", "", "__main__", False) if main else _SKIP
        if self._is_library(file):
            return _SKIP
        if main:
            # `python -m pkg` runs pkg/__main__.py: its package names it, as any other of its
            # modules; a script (no spec) is named by its file's stem. The same main module in a
            # multiprocessing child started by spawn or forkserver is `__mp_main__`: named as in
            # the parent, where it was one module under two names (helper 39, L3)
            try:
                spec_name = getattr(g.get("__spec__"), "name", None)
            except Exception as exc:  # a program's own object there: named by the file, as before
                pass_on(exc)
                spec_name = None
            if isinstance(spec_name, str) and spec_name and spec_name.split(".")[0] not in MAIN_NAMES:
                spec_top = spec_name.split(".")[0]
                ours = spec_top in OUR_PACKAGES and (spec_top in (PACKAGE, "mit_network_audit")
                                                     or _beside_ours(spec_name.split("."), file))
                return (spec_top, "", spec_name, ours)  # `python -m ledger.x`: ours, as when imported (review 41, L5)
            stem = os.path.splitext(os.path.basename(file))[0]
            return (stem, "", stem, False)
        return (top, "", name, False)

    def _is_library(self, file: str) -> bool:
        path = os.path.realpath(file)
        if f"{os.sep}site-packages{os.sep}" in path or f"{os.sep}dist-packages{os.sep}" in path:
            return True
        return path.startswith(self._libs)

    def _author(self, addon: str, file: str | None) -> str:
        author = self._authors.get(addon)
        if author is None:
            author = ""
            d = os.path.dirname(os.path.abspath(file)) if file else ""
            for _ in range(12):
                if not d:
                    break
                if os.path.basename(d) == addon and os.path.isfile(os.path.join(d, "__manifest__.py")):
                    author = read_author(os.path.join(d, "__manifest__.py"))
                    break
                parent = os.path.dirname(d)
                if parent == d:
                    break
                d = parent
            self._authors[addon] = author
        return author
