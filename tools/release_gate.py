#!/usr/bin/env python3
"""Release gate: fail the build unless the shipped artifacts keep the project's build promises.

It opens the built sdist and wheel themselves (not the source tree they came from), or a source
tree with --source, and checks three invariants from DESIGN.md:

- open source, never obfuscated: no compiled Python without its source, no native code, no known
  obfuscator runtime (PyArmor, Cython, Nuitka, PyInstaller), no code built from decoded data, no
  unreadable source (over-long lines, long high-entropy string literals);
- the core has no Odoo imports: interceptor/, ledger/ and verifier/ never import odoo, interceptor/
  imports only the standard library, verifier/ imports nothing else of ours;
- zero self-egress: no call that opens an outbound connection in interceptor/, ledger/, verifier/
  or the addon, except inside the interceptor's wrappers of the audited calls (EGRESS_WRAPPERS);
  a call through a saved original (a dict of originals, a closure or module variable bound to
  one) counts as the call itself.
  A socket made as `socket.socket(socket.AF_UNIX, ...)` (or `_socket.socket(...)`, the C class) is
  a file path, not a network: making it,
  and calling `connect`/`sendto` on a receiver the same file binds to nothing else, is allowed
  (the relay of `netaudit run`, interceptor/relay.py and ledger/relay.py).

It also checks that the artifacts carry the LGPL-3.0 license, that the sdist holds the tests and the
addon, and that the wheel ships exactly the sources of the sdist.

Usage: release_gate.py [ARTIFACT ...] [--source DIR ...] [--json]
Exit 0: every rule passed; 1: a rule failed (each failure names the file and the reason);
2: unusable input (missing file, not a wheel or sdist), with a one-line error.

This file is standard-library only (Python 3.11+) and self-contained, so anyone can read it and
run it on a release they downloaded, without installing the project.
"""
from __future__ import annotations

import argparse
import ast
import base64
import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

# --- The allow-list: the interceptor's wrappers of the audited library calls ------------------
# The only places in our packages where a call that opens a connection may appear: a wrapper that
# stands in for the caller's own `socket.connect`, `HTTPConnection.connect`, `SMTP.connect`, ...
# and runs that call exactly once. One (file, function) pair per wrapper, the function named by its
# qualified name inside the file ("func", "Class.method", "outer.inner"); a call nested anywhere
# inside that function is allowed. Keep this list short and explicit: every entry must match a
# function in the scanned interceptor/, or the gate fails with "stale allow-list entry".
# The wrappers run the audited call through the original they saved at install (a dict of
# originals, a closure variable, a module-level name): the scan follows those (see "Calls through
# a saved original" below), so each wrapper that calls one is listed here, and any other function
# of ours that calls a saved original fails the gate.
EGRESS_WRAPPERS: tuple[tuple[str, str], ...] = (
    ("interceptor/http_wrappers.py", "http_putrequest_wrapper"),
    ("interceptor/http_wrappers.py", "http_putheader_wrapper"),
    ("interceptor/http_wrappers.py", "http_endheaders_wrapper"),
    ("interceptor/http_wrappers.py", "http_send_wrapper"),
    ("interceptor/http_wrappers.py", "http_getresponse_wrapper"),
    ("interceptor/http_wrappers.py", "http_close_wrapper"),      # closes, never connects
    ("interceptor/http_wrappers.py", "_wrap_del.__del__"),       # a subclass's own finalizer, run once
    ("interceptor/http_wrappers.py", "_make_connect_wrapper.http_connect_wrapper"),
    ("interceptor/socket_hooks.py", "socket_connect_wrapper"),
    ("interceptor/socket_hooks.py", "socket_connect_ex_wrapper"),
    ("interceptor/socket_hooks.py", "socket_create_connection_wrapper"),
    ("interceptor/socket_hooks.py", "_connect_again"),           # a connect in progress, asked again
    ("interceptor/socket_hooks.py", "_datagram"),                # sendto / sendmsg to an address
    ("interceptor/socket_hooks.py", "socket_sendto_wrapper"),    # their arguments the C method refuses
    ("interceptor/socket_hooks.py", "socket_sendmsg_wrapper"),   # sendmsg without an address: no event
    ("interceptor/socket_bytes.py", "CountingSocket.sendto"),    # a counted socket's own sendto
    ("interceptor/socket_bytes.py", "CountingSocket.sendmsg"),   # and sendmsg, run once
    ("interceptor/mail_wrappers.py", "_make_wrapper.protocol_call_wrapper"),
)

# --- What is ours -------------------------------------------------------------------------------
CORE_PACKAGES = ("interceptor", "ledger", "verifier")
# The console scripts' entry, a top-level module (it imports the ledger's and the verifier's
# command lines): checked as the ledger is, as a module or a package of that name, and so is any
# other module a wheel ships at its root.
CORE_ENTRY = "_netaudit_entry"
ADDON_DIR = "odoo_addon"
ADDON_PATH = "odoo_addon/mit_network_audit"
OUR_TOP_LEVEL = frozenset({"interceptor", "ledger", "verifier", "odoo_addon", "mit_network_audit",
                           CORE_ENTRY})
ODOO_TOP_LEVEL = "odoo"
# Which of our packages each core package may import (DESIGN.md, "Layout and dependency direction").
ALLOWED_OURS = {
    "interceptor": frozenset(),
    "verifier": frozenset(),
    "ledger": frozenset({"interceptor", "verifier"}),
}
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
# The verifier is the trusted core an offline auditor installs: stdlib + apsw + cryptography.
VERIFIER_THIRD_PARTY = frozenset({"apsw", "cryptography"})

# --- Readability bounds -------------------------------------------------------------------------
MAX_LINE = 500                # characters; obfuscators emit one huge line, people do not
LONG_LITERAL = 200            # characters (or bytes) from which a literal is measured
DENSE_WHITESPACE = 0.05       # below this share of whitespace a long literal is a blob, not text
MAX_ENTROPY = 5.0             # bits per symbol of a blob: hex <= 4.0, base64 ~5.5+, random bytes ~7.5
LINE_CHECKED_SUFFIXES = (".py", ".pyi", ".pyx", ".js", ".mjs", ".xml", ".sh")
NATIVE_SUFFIXES = (".so", ".pyd", ".dll", ".dylib")
COMPILED_SUFFIXES = (".pyc", ".pyo")
NATIVE_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # ELF, Mach-O (fat); PE below
DOC_SUFFIXES = (".md", ".rst", ".txt")
DOC_NAMES = frozenset({"PKG-INFO", "METADATA", "SOURCES.txt", "RECORD"})  # RECORD: a file list

# --- Obfuscator traces --------------------------------------------------------------------------
OBFUSCATOR_PATHS = (  # (regex on a path component, what it is)
    (r"pyarmor_runtime.*|_?pytransform.*|pyarmor", "PyArmor runtime"),
    (r"PYZ-\d+\.pyz|base_library\.zip|pyi_rth_.*|pyiboot\d+_bootstrap.*", "PyInstaller bundle"),
    (r".*\.(build|dist|onefile-build)|__nuitka.*", "Nuitka build output"),
    (r".*\.(pyx|pxd|pxi)", "Cython source (compiles to a native copy of a module)"),
    (r".*\.(pyz|egg|exe)", "bundled executable archive"),
)
OBFUSCATOR_BYTES = (  # searched in every non-Python, non-documentation file
    (b"__pyarmor", "PyArmor runtime"), (b"pyarmor_runtime", "PyArmor runtime"),
    (b"pytransform", "PyArmor runtime"), (b"Generated by Cython", "Cython output"),
    (b"__pyx_", "Cython output"), (b"nuitka", "Nuitka output"), (b"Nuitka", "Nuitka output"),
    (b"_MEIPASS", "PyInstaller bundle"), (b"MEI\x0c\x0b\x0a\x0b\x0e", "PyInstaller bundle"),
)
OBFUSCATOR_NAMES = {  # names, attributes and imports in Python source
    "__pyarmor__": "PyArmor", "__pyarmor_enter__": "PyArmor", "__pyarmor_exit__": "PyArmor",
    "__armor_enter__": "PyArmor", "__armor_exit__": "PyArmor", "__armor_wrap__": "PyArmor",
    "pytransform": "PyArmor", "pyarmor": "PyArmor", "__compiled__": "Nuitka", "nuitka": "Nuitka",
    "_MEIPASS": "PyInstaller", "PyInstaller": "PyInstaller", "Cython": "Cython", "pyximport": "Cython",
}
PYARMOR_HEADER = re.compile(rb"^\s*#\s*pyarmor", re.IGNORECASE | re.MULTILINE)

# --- Code built from data -----------------------------------------------------------------------
CODE_BUILDERS = frozenset({"builtins.exec", "builtins.eval", "builtins.compile"})
DECODERS = frozenset({
    "base64.b64decode", "base64.b32decode", "base64.b32hexdecode", "base64.b16decode",
    "base64.b85decode", "base64.a85decode", "base64.decodebytes", "base64.decodestring",
    "base64.urlsafe_b64decode", "base64.standard_b64decode", "base64.decode",
    "binascii.a2b_base64", "binascii.a2b_hex", "binascii.unhexlify", "binascii.a2b_uu",
    "zlib.decompress", "zlib.decompressobj", "bz2.decompress", "lzma.decompress",
    "gzip.decompress", "marshal.loads", "marshal.load", "codecs.decode", "codecs.getdecoder",
    "pickle.loads", "bytes.fromhex",
})
BANNED_CALLS = {"marshal.loads": "marshal.loads() turns bytes into code objects",
                "marshal.load": "marshal.load() turns bytes into code objects"}

# --- Calls that open an outbound connection (or send a DNS query) ------------------------------
EGRESS_CALLS = frozenset({
    "socket.socket", "socket.create_connection", "socket.fromfd", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr",
    "socket.getnameinfo", "socket.getfqdn", "ssl.get_server_certificate", "ssl.wrap_socket",
    "http.client.HTTPConnection", "http.client.HTTPSConnection",
    "urllib.request.urlopen", "urllib.request.urlretrieve", "urllib.request.build_opener",
    "urllib.request.OpenerDirector", "xmlrpc.client.ServerProxy", "xmlrpc.client.Server",
    "smtplib.SMTP", "smtplib.SMTP_SSL", "smtplib.LMTP", "imaplib.IMAP4", "imaplib.IMAP4_SSL",
    "imaplib.IMAP4_stream", "poplib.POP3", "poplib.POP3_SSL", "ftplib.FTP", "ftplib.FTP_TLS",
    "telnetlib.Telnet", "nntplib.NNTP", "nntplib.NNTP_SSL",
    "asyncio.open_connection", "asyncio.create_connection",
    "requests.get", "requests.post", "requests.put", "requests.patch", "requests.delete",
    "requests.head", "requests.options", "requests.request", "requests.Session",
    "requests.session", "requests.api.request", "requests.sessions.Session",
    "urllib3.PoolManager", "urllib3.ProxyManager", "urllib3.HTTPConnectionPool",
    "urllib3.HTTPSConnectionPool", "urllib3.connection_from_url", "urllib3.request",
    "urllib3.proxy_from_url", "httpx.get", "httpx.post", "httpx.put", "httpx.patch",
    "httpx.delete", "httpx.head", "httpx.options", "httpx.request", "httpx.stream",
    "httpx.Client", "httpx.AsyncClient", "aiohttp.ClientSession", "aiohttp.request",
    "websocket.create_connection", "websocket.WebSocketApp", "websockets.connect",
    "pycurl.Curl", "paramiko.SSHClient", "paramiko.Transport",
    "odoo.addons.iap.tools.iap_tools.iap_jsonrpc",
})
# Method names that open a connection whatever object they are called on ...
EGRESS_METHODS = frozenset({"connect", "connect_ex", "sendto", "sendmsg", "create_connection",
                            "open_connection", "getaddrinfo", "urlopen", "send_email",
                            "iap_jsonrpc"})
# ... unless that object is one of these modules, whose connect() opens a local file.
LOCAL_CONNECT_MODULES = frozenset({"sqlite3", "apsw"})
# The top-level modules of the calls above: `X.connect` on one of them is a network original.
NETWORK_ROOTS = frozenset(name.split(".")[0] for name in EGRESS_CALLS)
PROCESS_CALLS = frozenset({
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
    "subprocess.Popen", "subprocess.getoutput", "subprocess.getstatusoutput", "os.system",
    "os.popen", "os.execv", "os.execvp", "os.execl", "os.execlp", "os.spawnv", "os.spawnvp",
    "asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell",
})
WATCHED_NAMES = EGRESS_CALLS | PROCESS_CALLS | DECODERS | BANNED_CALLS.keys() | {
    "importlib.import_module", "importlib.__import__"}
NETWORK_COMMANDS = frozenset({"curl", "wget", "nc", "ncat", "netcat", "ssh", "scp", "sftp",
                              "rsync", "telnet", "ftp", "socat"})

# --- Licence ------------------------------------------------------------------------------------
LICENSE_MARKERS = (b"GNU LESSER GENERAL PUBLIC LICENSE", b"Version 3")
LICENSE_METADATA = re.compile(
    r"^(License: .*LGPL-?3|License-Expression: LGPL-3\.0|Classifier: .*\(LGPLv3\))", re.M)

# --- Source-tree walking (--source) -------------------------------------------------------------
SKIP_DIRS = re.compile(r"\.git|\.hg|\.svn|\.venv.*|venv|node_modules|dist|build|__pycache__|"
                       r".*\.egg-info|\.pytest_cache|\.hypothesis|\.bench|\.tox|\.mypy_cache|"
                       r"\.ruff_cache")

RULES = (  # (id, one-line description), in report order
    ("compiled-code", "no compiled Python (.pyc/.pyo) and no module without its .py source"),
    ("native-code", "no native extensions (.so/.pyd/.dll/.dylib) and a pure-Python wheel tag"),
    ("obfuscator", "no PyArmor, Cython, Nuitka or PyInstaller runtime, marker or bundle"),
    ("code-from-data", "no exec/eval/compile of decoded data, no marshal.loads, no .pth"),
    ("unreadable-source", f"every .py parses, lines <= {MAX_LINE} chars, "
                          f"no long high-entropy literals"),
    ("core-no-odoo", "interceptor/, ledger/, verifier/ and top-level modules never import odoo"),
    ("layering", "interceptor/ is stdlib-only; verifier/ is stdlib+apsw+cryptography, none of ours"),
    ("no-self-egress", "no outbound connection in our code outside the interceptor's wrappers"),
    ("license", "the artifact carries the LGPL-3.0 licence"),
    ("sdist-contents", "the sdist contains tests/ and the addon odoo_addon/mit_network_audit/"),
    ("wheel-record", "every file of the wheel is listed in its RECORD with its hash"),
    ("wheel-matches-sdist", "every file the wheel installs is in the sdist, byte for byte"),
)
RULE_IDS = tuple(rule for rule, _ in RULES)


class GateError(Exception):
    """Unusable input: the gate cannot open or recognise what it was given."""


@dataclass(frozen=True)
class Finding:
    rule: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Tree:
    """The files of one artifact or source tree, by path relative to the release's root."""

    kind: str                         # "wheel" | "sdist" | "source"
    label: str                        # the artifact's file name or the source directory
    files: dict[str, bytes]
    _ast: dict[str, ast.Module | SyntaxError] = field(default_factory=dict, repr=False)
    _nodes: dict[str, list[ast.AST]] = field(default_factory=dict, repr=False)
    _aliases: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def where(self, path: str, line: int | None = None) -> str:
        """`artifact.whl:member:line` in an archive, `dir/path:line` (a path to open) in a tree."""
        place = f"{self.label}/{path}" if self.kind == "source" else f"{self.label}:{path}"
        return place + (f":{line}" if line else "")

    def python(self) -> Iterator[tuple[str, ast.Module]]:
        """Every .py file that parses, with its AST (parse errors are unreadable-source's)."""
        for path in sorted(self.files):
            if path.endswith(".py"):
                tree = self.parse(path)
                if isinstance(tree, ast.Module):
                    yield path, tree

    def nodes(self, path: str) -> list[ast.AST]:
        """Every node of a parsed file, walked once and kept (the rules walk them many times)."""
        if path not in self._nodes:
            self._nodes[path] = list(ast.walk(self.parse(path)))
        return self._nodes[path]

    def aliases(self, path: str) -> dict[str, str]:
        if path not in self._aliases:
            self._aliases[path] = import_aliases(self.nodes(path), _module_package(path))
        return self._aliases[path]

    def parse(self, path: str) -> ast.Module | SyntaxError:
        if path not in self._ast:
            try:
                self._ast[path] = ast.parse(self.files[path], filename=path)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                self._ast[path] = SyntaxError(str(exc) or type(exc).__name__)
        return self._ast[path]


# === Loading ====================================================================================

def load_artifact(path: str) -> Tree:
    """Open a wheel (.whl) or an sdist (.tar.gz) without extracting it."""
    p = Path(path)
    if not p.is_file():
        raise GateError(f"{path}: " + ("not a file" if p.exists() else "no such file"))
    if p.name.endswith(".whl"):
        return Tree("wheel", p.name, _read_zip(p))
    if p.name.endswith((".tar.gz", ".tgz")):
        return Tree("sdist", p.name, _read_sdist(p))
    raise GateError(f"{path}: not a wheel (.whl) or an sdist (.tar.gz)")


def _read_zip(p: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(p) as zf:
            return {_wheel_path(i.filename): zf.read(i) for i in zf.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise GateError(f"{p.name}: not a readable wheel ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":")


def _wheel_path(name: str) -> str:
    """A wheel's `<dist>.data/purelib/x` installs as `x`: scan it as such."""
    parts = name.split("/")
    if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
        return "/".join(parts[2:])
    return name


def _read_sdist(p: Path) -> dict[str, bytes]:
    files = {}
    try:
        with tarfile.open(p, "r:gz") as tf:
            for m in tf.getmembers():
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                if m.isfile() and rel:
                    files[rel] = tf.extractfile(m).read()
                elif (m.issym() or m.islnk()) and rel:
                    files[rel] = b""  # shown to the path rules; links carry no code of their own
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GateError(f"{p.name}: not a readable sdist ({_first_line(exc)})") from None
    return files


def load_source(directory: str) -> Tree:
    """A source tree, less VCS, virtualenv, build and cache folders."""
    root = Path(directory)
    if not root.is_dir():
        raise GateError(f"{directory}: not a directory")
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not SKIP_DIRS.fullmatch(d))
        for name in filenames:
            full = Path(dirpath, name)
            if full.is_file():
                files[full.relative_to(root).as_posix()] = full.read_bytes()
    return Tree("source", str(root), files)


# === Name resolution shared by the AST rules ====================================================

def import_aliases(nodes: Iterable[ast.AST], package: list[str] | None = None) -> dict[str, str]:
    """Local name -> dotted name it stands for, from every import in the module. `package` (the
    module's package, as path parts) resolves relative imports: `from . import socket_bytes` in
    interceptor/ stands for `interceptor.socket_bytes`, as the absolute import would."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            # as imports_of reads them: above the package root, `from .. import ledger` is `ledger`
            base = (package or [])[: len(package or []) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                if a.name == "*" and module:  # `from socket import *`: kept as "*socket" -> "socket"
                    aliases[f"*{module}"] = module
                elif a.name != "*":
                    aliases[a.asname or a.name] = f"{module}.{a.name}" if module else a.name
    return aliases


def _star_imported(name: str, aliases: dict[str, str]) -> str | None:
    """`create_connection` -> `socket.create_connection` after `from socket import *`, for the
    names the rules look for."""
    for key, module in aliases.items():
        if key.startswith("*") and f"{module}.{name}" in WATCHED_NAMES:
            return f"{module}.{name}"
    return None


def qualified_name(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`z.decompress` -> `zlib.decompress` when `import zlib as z`; None when unknown."""
    if isinstance(node, ast.Name):
        if node.id in aliases:
            return aliases[node.id]
        if node.id in ("exec", "eval", "compile", "__import__", "getattr"):
            return f"builtins.{node.id}"
        if node.id == "__builtins__":
            return "builtins"
        return _star_imported(node.id, aliases) or node.id
    if isinstance(node, ast.Attribute):
        base = qualified_name(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call):
        target = qualified_name(node.func, aliases)
        if target in ("builtins.__import__", "importlib.import_module") and node.args:
            name = _literal_str(node.args[0])  # __import__("socket").create_connection
            return name.split(".")[0] if name and target == "builtins.__import__" else name
        if target == "builtins.getattr" and len(node.args) >= 2:
            base, attr = qualified_name(node.args[0], aliases), _literal_str(node.args[1])
            return f"{base}.{attr}" if base and attr else None  # getattr(socket, "socket")
    return None


def _literal_str(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _module_package(path: str) -> list[str]:
    parts = PurePosixPath(path).with_suffix("").parts
    return list(parts[:-1])


def imports_of(t: Tree, path: str) -> Iterator[tuple[int, str | None]]:
    """(line, dotted module name) for every import; None for an import whose name is computed."""
    aliases = t.aliases(path)
    package = _module_package(path)
    for node in t.nodes(path):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.level and len(base) < 1 and node.module is None:
                for a in node.names:  # `from .. import ledger` above the package root
                    yield node.lineno, a.name
            elif node.module:
                yield node.lineno, ".".join(base + [node.module])
            else:
                for a in node.names:
                    yield node.lineno, ".".join(base + [a.name])
        elif isinstance(node, ast.Call):
            target = qualified_name(node.func, aliases)
            if target in ("builtins.__import__", "importlib.import_module", "importlib.__import__"):
                arg = node.args[0] if node.args else next(
                    (k.value for k in node.keywords if k.arg == "name"), None)
                name = _literal_str(arg) if arg is not None else None
                if name is None and isinstance(arg, ast.JoinedStr) and arg.values:
                    name = _literal_str(arg.values[0])  # f"odoo.{x}" still names odoo
                if name is not None and name.startswith("."):
                    continue  # relative import_module(".x", __package__): same package
                yield node.lineno, name


def function_map(tree: ast.Module) -> tuple[dict[ast.Call, list[str]], set[str]]:
    """Each call -> qualified names of the functions it sits in (innermost last), and every
    function's qualified name ("func", "Class.method", "outer.inner")."""
    calls: dict[ast.Call, list[str]] = {}
    functions: set[str] = set()

    def visit(node: ast.AST, prefix: str, funcs: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{child.name}"
                functions.add(qual)
                visit(child, qual + ".", funcs + [qual])
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", funcs)
            else:
                if isinstance(child, ast.Call):
                    calls[child] = funcs
                visit(child, prefix, funcs)

    visit(tree, "", [])
    return calls, functions


# === Rules ======================================================================================

def check_compiled(t: Tree) -> Iterator[Finding]:
    paths = set(t.files)
    for path in sorted(paths):
        if path.endswith(COMPILED_SUFFIXES):
            yield Finding("compiled-code", t.where(path), "compiled Python in the artifact")
        stem = _module_stem(path)
        if stem and f"{stem}.py" not in paths:
            yield Finding("compiled-code", t.where(path),
                          f"module {stem.replace('/', '.')} ships without its source {stem}.py")
    for pkg in CORE_PACKAGES:
        if t.kind != "source" and any(p.startswith(pkg + "/") for p in paths) \
                and f"{pkg}/__init__.py" not in paths:
            yield Finding("compiled-code", t.where(f"{pkg}/__init__.py"),
                          f"package {pkg} ships without its __init__.py source")


def _module_stem(path: str) -> str | None:
    """`pkg/mod.cpython-311-x86_64-linux-gnu.so` -> `pkg/mod`; None for a file that is not a module."""
    p = PurePosixPath(path)
    if p.suffix not in NATIVE_SUFFIXES + COMPILED_SUFFIXES:
        return None
    parent = p.parent
    if parent.name == "__pycache__":
        parent = parent.parent
    name = p.name.split(".")[0]
    return (parent / name).as_posix() if str(parent) != "." else name


def check_native(t: Tree) -> Iterator[Finding]:
    for path in sorted(t.files):
        data = t.files[path]
        if path.endswith(NATIVE_SUFFIXES) or re.search(r"\.so(\.\d+)*$", path):
            yield Finding("native-code", t.where(path), "native extension in the artifact")
        elif data.startswith(NATIVE_MAGIC) or (data[:2] == b"MZ" and b"PE\0\0" in data[:1024]):
            yield Finding("native-code", t.where(path), "native executable in the artifact")
    if t.kind == "wheel":
        if not t.label.endswith("-none-any.whl"):
            yield Finding("native-code", t.label, "wheel tag is not pure Python (…-none-any)")
        for path, data in t.files.items():
            if path.endswith(".dist-info/WHEEL"):
                text = data.decode("utf-8", "replace")
                if "Root-Is-Purelib: true" not in text:
                    yield Finding("native-code", t.where(path), "wheel is not Root-Is-Purelib")
                for tag in re.findall(r"^Tag: (\S+)", text, re.M):
                    if not tag.endswith("-none-any"):
                        yield Finding("native-code", t.where(path), f"platform tag {tag}")


def check_obfuscator(t: Tree) -> Iterator[Finding]:
    for path in sorted(t.files):
        for part in PurePosixPath(path).parts:
            for pattern, what in OBFUSCATOR_PATHS:
                if re.fullmatch(pattern, part, re.IGNORECASE):
                    yield Finding("obfuscator", t.where(path), f"{what} ({part})")
        data = t.files[path]
        if path.endswith(".py"):
            if PYARMOR_HEADER.search(data[:4096]):
                yield Finding("obfuscator", t.where(path, 1), "PyArmor header comment")
            yield from _obfuscator_names(t, path)
        elif not _is_documentation(path):
            for marker, what in OBFUSCATOR_BYTES:
                if marker in data:
                    yield Finding("obfuscator", t.where(path), f"{what} marker {marker!r}")
                    break


def _is_documentation(path: str) -> bool:
    name = PurePosixPath(path).name
    return name in DOC_NAMES or name.endswith(DOC_SUFFIXES) or name in ("LICENSE", "COPYING")


def _obfuscator_names(t: Tree, path: str) -> Iterator[Finding]:
    if not isinstance(t.parse(path), ast.Module):
        return
    for node in t.nodes(path):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None)
                                                  else [])
            names = [m.split(".")[0] for m in mods] + [a.name for a in node.names]
        for name in names:
            base = name.split(".")[0]
            hit = OBFUSCATOR_NAMES.get(base) or ("PyArmor" if base.startswith("pyarmor_runtime")
                                                 else None)
            if hit:
                yield Finding("obfuscator", t.where(path, node.lineno), f"{hit} trace: {name}")
                break


def check_code_from_data(t: Tree) -> Iterator[Finding]:
    for path in sorted(t.files):
        if path.endswith(".pth"):
            yield Finding("code-from-data", t.where(path),
                          ".pth file: its import lines run at every interpreter start")
    for path, tree in t.python():
        aliases = t.aliases(path)
        calls = [(n, qualified_name(n.func, aliases)) for n in t.nodes(path) if isinstance(n, ast.Call)]
        for node, name in calls:
            if name in BANNED_CALLS:
                yield Finding("code-from-data", t.where(path, node.lineno), BANNED_CALLS[name])
        if not any(name in CODE_BUILDERS for _, name in calls):
            continue  # cheap exit: nothing here builds code
        module_taint = _tainted(list(_own_nodes(tree)), aliases, set())
        for scope in [tree] + [n for n in t.nodes(path)
                               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            yield from _code_from_data_in_scope(t, path, scope, aliases, module_taint)


def _code_from_data_in_scope(t: Tree, path: str, scope: ast.AST, aliases: dict[str, str],
                             module_taint: set[str]) -> Iterator[Finding]:
    """exec/eval/compile of a decoder's output, directly or through a name assigned from one."""
    body = list(_own_nodes(scope))
    tainted = _tainted(body, aliases, set(module_taint))
    for node in body:
        if isinstance(node, ast.Call) and qualified_name(node.func, aliases) in CODE_BUILDERS \
                and any(_is_decoded(a, aliases, tainted)
                        for a in node.args + [k.value for k in node.keywords]):
            yield Finding("code-from-data", t.where(path, node.lineno),
                          f"{qualified_name(node.func, aliases).split('.')[-1]}() of decoded data")


def _tainted(body: list[ast.AST], aliases: dict[str, str], tainted: set[str]) -> set[str]:
    """Names assigned, in this scope, from a decoder's output or from another such name."""
    for _ in range(3):  # a few passes reach names assigned from names assigned from a decoder
        for node in body:
            targets, value = _assignment(node)
            if value is not None and _is_decoded(value, aliases, tainted):
                for target in targets:
                    tainted.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return tainted


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Every node of a scope, not descending into nested function definitions (a lambda's body
    counts as its enclosing scope's)."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield child
        yield from _own_nodes(child)


def _assignment(node: ast.AST) -> tuple[list[ast.expr], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return node.targets, node.value
    if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
        return [node.target], node.value
    return [], None


def _is_decoded(expr: ast.expr, aliases: dict[str, str], tainted: set[str]) -> bool:
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and node.id in tainted:
            return True
        if isinstance(node, ast.Call):
            name = qualified_name(node.func, aliases)
            if name in DECODERS or (isinstance(node.func, ast.Attribute)
                                    and node.func.attr == "fromhex"):
                return True
    return False


def check_unreadable(t: Tree) -> Iterator[Finding]:
    for path in sorted(t.files):
        data = t.files[path]
        if path.endswith(".py") and isinstance(t.parse(path), SyntaxError):
            yield Finding("unreadable-source", t.where(path),
                          f"does not parse as Python: {t.parse(path)}")
        if path.endswith(LINE_CHECKED_SUFFIXES):
            for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if len(line) > MAX_LINE:
                    yield Finding("unreadable-source", t.where(path, lineno),
                                  f"line of {len(line)} characters (bound {MAX_LINE})")
                    break
    for path, _ in t.python():
        for node in t.nodes(path):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) \
                    and len(node.value) >= LONG_LITERAL:
                bits = blob_entropy(node.value)
                if bits is not None and bits > MAX_ENTROPY:
                    yield Finding("unreadable-source", t.where(path, node.lineno),
                                  f"{len(node.value)}-long literal without whitespace of entropy "
                                  f"{bits:.2f} bits per symbol (bound {MAX_ENTROPY})")


_ASCII_WHITESPACE = dict.fromkeys(map(ord, " \t\n\r\x0b\x0c"))


def blob_entropy(value: str | bytes) -> float | None:
    """Shannon entropy (bits per symbol) of a literal's non-whitespace symbols, if it is a blob.

    Text, SQL and code are at least 5% whitespace and are not measured: their character
    entropy overlaps base64's. Encoded payloads (base64, escaped bytes) are nearly free of it.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    dense = text.translate(_ASCII_WHITESPACE)
    if len(text) - len(dense) >= DENSE_WHITESPACE * len(text):
        return None
    counts = Counter(dense)
    n = len(dense)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _core_package(path: str) -> str | None:
    if not path.endswith(".py"):
        return None
    top, sep, _ = path.partition("/")
    if top in CORE_PACKAGES:
        return top
    return "ledger" if not sep or top == CORE_ENTRY else None


def check_core_no_odoo(t: Tree) -> Iterator[Finding]:
    for path, tree in t.python():
        if not _core_package(path):
            continue
        for line, name in imports_of(t, path):
            if name is None:
                yield Finding("core-no-odoo", t.where(path, line),
                              "import with a computed module name: cannot be shown Odoo-free")
            elif name.split(".")[0] == ODOO_TOP_LEVEL:
                yield Finding("core-no-odoo", t.where(path, line), f"imports {name}")


def check_layering(t: Tree) -> Iterator[Finding]:
    for path, tree in t.python():
        pkg = _core_package(path)
        if not pkg:
            continue
        for line, name in imports_of(t, path):
            if name is None:
                continue  # reported by core-no-odoo
            top = name.split(".")[0]
            if top == ODOO_TOP_LEVEL or top == pkg:
                continue
            if top in OUR_TOP_LEVEL and top not in ALLOWED_OURS[pkg]:
                yield Finding("layering", t.where(path, line),
                              f"{pkg} imports {name}: {pkg} may import "
                              f"{', '.join(sorted(ALLOWED_OURS[pkg])) or 'nothing'} of ours")
            elif pkg == "interceptor" and top not in STDLIB and top not in OUR_TOP_LEVEL:
                yield Finding("layering", t.where(path, line),
                              f"interceptor imports {name}, not in the standard library")
            elif pkg == "verifier" and top not in STDLIB | VERIFIER_THIRD_PARTY | OUR_TOP_LEVEL:
                yield Finding("layering", t.where(path, line),
                              f"verifier imports {name}: the verifier uses only the standard "
                              f"library, {', '.join(sorted(VERIFIER_THIRD_PARTY))}")


def _egress_scope(path: str) -> bool:
    if not path.endswith(".py"):
        return False
    if path.startswith(ADDON_DIR + "/"):
        # The addon's tests make real local calls to show capture works; Odoo never loads
        # them in a serving process.
        return "tests" not in PurePosixPath(path).parts
    return _core_package(path) is not None


def unix_socket_call(node: ast.AST, aliases: dict[str, str]) -> bool:
    """`socket.socket(socket.AF_UNIX, ...)` (or the C class it extends, `_socket.socket`, which
    gevent never replaces): a socket on a file path, which cannot reach a network."""
    if not isinstance(node, ast.Call) or qualified_name(node.func, aliases) not in ("socket.socket", "_socket.socket"):
        return False
    family = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "family"), None)
    return family is not None and qualified_name(family, aliases) == "socket.AF_UNIX"


def local_sockets(tree: ast.Module, aliases: dict[str, str]) -> set[tuple[str, str]]:
    """Receivers bound only ever to an AF_UNIX socket (or None) in this file: (function, name) for
    a local name, ("", "self.attr") for an attribute. A parameter, loop, `with`, import or any
    other binding of the same receiver disqualifies it, so only a call on a socket that the file
    itself made local is let through."""
    only_unix: dict[tuple[str, str], bool] = {}

    def bind(target: ast.AST, ok: bool, func: str) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                bind(elt, False, func)
            return
        if isinstance(target, ast.Starred):
            target = target.value
        if isinstance(target, ast.Name):
            key = (func, target.id)
        elif isinstance(target, ast.Attribute):
            key = ("", ast.unparse(target))
        else:
            return
        only_unix[key] = only_unix.get(key, True) and ok

    def value_ok(value: ast.AST | None) -> bool:
        return unix_socket_call(value, aliases) or (isinstance(value, ast.Constant) and value.value is None)

    def visit(node: ast.AST, prefix: str, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                qual = f"{prefix}{getattr(child, 'name', '<lambda>')}"
                a = child.args
                for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                    if arg is not None:
                        only_unix[(qual, arg.arg)] = False
                visit(child, qual + ".", qual)
                continue
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", func)
                continue
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    bind(target, value_ok(child.value), func)
            elif isinstance(child, ast.AnnAssign):
                bind(child.target, child.value is None or value_ok(child.value), func)
            elif isinstance(child, (ast.AugAssign, ast.For, ast.AsyncFor, ast.comprehension)):
                bind(child.target, False, func)
            elif isinstance(child, ast.NamedExpr):
                bind(child.target, value_ok(child.value), func)
            elif isinstance(child, ast.withitem) and child.optional_vars is not None:
                bind(child.optional_vars, False, func)
            elif isinstance(child, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and child.name:
                bind(ast.Name(child.name), False, func)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    bind(ast.Name((alias.asname or alias.name).split(".")[0]), False, func)
            elif isinstance(child, (ast.Global, ast.Nonlocal)):
                for name in child.names:
                    bind(ast.Name(name), False, func)
            visit(child, prefix, func)

    visit(tree, "", "")
    return {key for key, ok in only_unix.items() if ok}


def check_self_egress(t: Tree, wrappers: Iterable[tuple[str, str]] = EGRESS_WRAPPERS
                      ) -> Iterator[Finding]:
    allowed: dict[str, set[str]] = {}
    for file, func in wrappers:
        allowed.setdefault(file, set()).add(func)
    seen_functions: dict[str, set[str]] = {}
    shared = shared_holders(t)
    for path, tree in t.python():
        if not _egress_scope(path):
            continue
        aliases = t.aliases(path)
        local = local_sockets(tree, aliases)
        enclosing, seen_functions[path] = function_map(tree)
        holders = original_holders(tree, aliases, imported_holders(path, tree, shared))
        for call, funcs in enclosing.items():
            if _on_local_socket(call, funcs, aliases, local):
                continue
            reason = _egress_reason(call, aliases) or _original_call_reason(call, aliases, holders)
            if reason and not allowed.get(path, set()).intersection(funcs):
                where = f" in {funcs[-1]}()" if funcs else ""
                yield Finding("no-self-egress", t.where(path, call.lineno), reason + where)
    if any(p.startswith("interceptor/") for p in t.files):
        for file, func in wrappers:
            if func not in seen_functions.get(file, ()):
                yield Finding("no-self-egress", t.where(file),
                              f"stale allow-list entry: no function {func} (EGRESS_WRAPPERS)")


def _on_local_socket(call: ast.Call, funcs: list[str], aliases: dict[str, str],
                     local: set[tuple[str, str]]) -> bool:
    """Making an AF_UNIX socket, or a method call on a receiver bound only to one (local_sockets)."""
    if unix_socket_call(call, aliases):
        return True
    if not isinstance(call.func, ast.Attribute):
        return False
    receiver = call.func.value
    if isinstance(receiver, ast.Name):
        return (funcs[-1] if funcs else "", receiver.id) in local
    return isinstance(receiver, ast.Attribute) and ("", ast.unparse(receiver)) in local


def _egress_reason(call: ast.Call, aliases: dict[str, str]) -> str | None:
    name = qualified_name(call.func, aliases)
    if name in EGRESS_CALLS:
        return f"{name}() opens an outbound connection"
    if name in PROCESS_CALLS and call.args:
        command = _command_name(call.args[0])
        if command in NETWORK_COMMANDS:
            return f"{name}() runs {command}, a network client"
    if isinstance(call.func, ast.Attribute) and call.func.attr in EGRESS_METHODS:
        receiver = qualified_name(call.func.value, aliases)
        if receiver and receiver.split(".")[0] in LOCAL_CONNECT_MODULES:
            return None
        return f".{call.func.attr}() may open an outbound connection"
    if isinstance(call.func, ast.Name) and call.func.id in ("iap_jsonrpc",):
        return f"{call.func.id}() calls Odoo's IAP service"
    return None


def _command_name(arg: ast.expr) -> str | None:
    if isinstance(arg, (ast.List, ast.Tuple)) and arg.elts:
        arg = arg.elts[0]
    text = _literal_str(arg)
    if not text or not text.split():
        return None
    return PurePosixPath(text.split()[0]).name


# --- Calls through a saved original ------------------------------------------------------------
# The interceptor's wrappers never name the call they stand in for: they call an original saved at
# install, through a dict (`_orig["connect"](self, address)`), a closure variable
# (`original(self, *args)`) or a module-level name (`_sendto = socket.socket.sendto`). The scan
# follows these within a file: a *holder* is a name, a dict or an attribute name that is ever given
# a value that may be a network original (see `original_value`); calling a holder is egress like
# calling the original itself. Holders propagate through assignments (tuple to tuple pairwise),
# dict stores (`d[k] = v`, `d.setdefault(k, v)`, `d.update(...)`, a dict literal), `setattr` with
# a literal name, parameter defaults, and arguments passed to a function of the same file (so a
# closure's free variable is its outer function's parameter). It is conservative where it cannot
# know: a value taken out of a namespace (`cls.__dict__[name]`, `vars(cls).get("send")`) or looked
# up by a computed name (`getattr(cls, name)`) may be any original, any method of a connecting
# class (EGRESS_CALLS, but socket.socket) counts, and holders are keyed by name per file, whatever
# the scope. Across files, a
# module-level holder imported by name from another of our modules, or read as an attribute of
# that module (`socket_hooks._orig`), is a holder too. Not followed: a list, set or
# functools.partial of originals, a value a function returns, an original fetched and called in
# one expression (`getattr(cls, name)(...)`; the literal form is caught by the direct rule).

def _network_name(name: str | None) -> bool:
    """`socket.create_connection`, `socket.socket.sendto`, `smtplib.SMTP.connect`, and any method of
    a connecting class but the plain socket's (`http.client.HTTPConnection.endheaders` connects on
    first use; a socket connects only through the EGRESS_METHODS)."""
    if not name:
        return False
    if name in EGRESS_CALLS:
        return True
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in EGRESS_METHODS and parts[0] in NETWORK_ROOTS:
        return True
    owners = (".".join(parts[:i]) for i in range(1, len(parts)))
    return any(owner in EGRESS_CALLS and owner != "socket.socket" for owner in owners)


def _lookup_key(node: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """(namespace, key) of `X.__dict__[k]`, `X.__dict__.get(k)`, `vars(X)[k]`, `vars(X).get(k)`."""
    if isinstance(node, ast.Subscript):
        space, key = node.value, node.slice
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
          and node.args):
        space, key = node.func.value, node.args[0]
    else:
        return None
    if isinstance(space, ast.Attribute) and space.attr == "__dict__":
        return space.value, key
    if (isinstance(space, ast.Call) and isinstance(space.func, ast.Name) and space.func.id == "vars"
            and space.args):
        return space.args[0], key
    return None


def _holder_key(node: ast.expr) -> str | None:
    """The holder a call's target or a store's target names: "name" or ".attr"; a subscript is
    its container's (a dict of originals)."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return "." + node.attr
    return None


def original_value(node: ast.expr | None, aliases: dict[str, str], holders: dict[str, str]) -> str | None:
    """What `node` may be when it may be a network original (for the finding), else None."""
    if node is None:
        return None
    if isinstance(node, (ast.IfExp, ast.BoolOp)):
        parts = (node.body, node.orelse) if isinstance(node, ast.IfExp) else node.values
        return next((v for v in (original_value(p, aliases, holders) for p in parts) if v), None)
    if isinstance(node, ast.Dict):
        return next((v for v in (original_value(p, aliases, holders) for p in node.values) if v), None)
    lookup = _lookup_key(node)
    if lookup is not None:  # a function taken out of a class's namespace: how originals are saved
        key = _literal_str(lookup[1])
        return f"{ast.unparse(lookup[0])}.{key}" if key else "an attribute looked up by a computed name"
    if isinstance(node, ast.Call):
        if qualified_name(node.func, aliases) == "builtins.getattr" and len(node.args) >= 2:
            key = _literal_str(node.args[1])
            if key is None:
                return "an attribute looked up by a computed name"
            name = qualified_name(node, aliases)
            return name if _network_name(name) else f".{key}" if key in EGRESS_METHODS else None
        return None
    if isinstance(node, (ast.Subscript, ast.Name, ast.Attribute)):
        what = _held(node, aliases, holders)
        if what:
            return what
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = qualified_name(node, aliases)
        if _network_name(name):
            return name
        if isinstance(node, ast.Attribute) and node.attr in EGRESS_METHODS:
            return f".{node.attr}"
    return None


def _stores(tree: ast.Module) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) of every store that can make a holder."""
    functions: dict[str, list[ast.arguments]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.setdefault(node.name, []).append(node.args)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from _pairs(target, node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
            yield node.target, node.value
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            with_default = positional[len(positional) - len(a.defaults):]
            yield from zip((ast.Name(p.arg) for p in with_default), a.defaults)
            yield from ((ast.Name(p.arg), d) for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("setdefault", "update", "__setitem__"):
                for value in (*node.args[1 if func.attr != "update" else 0:], *(k.value for k in node.keywords)):
                    yield func.value, value
            elif isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) == 3:
                attr = _literal_str(node.args[1])
                yield (ast.Attribute(node.args[0], attr) if attr else ast.Name("setattr(…)")), node.args[2]
            elif isinstance(func, ast.Name) and func.id in functions:
                for a in functions[func.id]:
                    params = [*a.posonlyargs, *a.args]
                    yield from ((ast.Name(p.arg), v) for p, v in zip(params, node.args))
                    names = {p.arg for p in (*params, *a.kwonlyargs)}
                    yield from ((ast.Name(k.arg), k.value) for k in node.keywords if k.arg in names)


def _pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
            and len(target.elts) == len(value.elts):
        for t, v in zip(target.elts, value.elts):
            yield from _pairs(t, v)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for t in target.elts:  # unpacked from something not literal: each may be any element
            yield from _pairs(t.value if isinstance(t, ast.Starred) else t, value)
    else:
        yield target, value


def original_holders(tree: ast.Module, aliases: dict[str, str], seed: dict[str, str] | None = None
                     ) -> dict[str, str]:
    """Holder ("name", or ".attr") -> what it may hold, for every holder of a network original."""
    stores = list(_stores(tree))
    holders: dict[str, str] = dict(seed or {})
    changed = True
    while changed:  # to a fixed point: a holder given to another name makes that one a holder
        changed = False
        for target, value in stores:
            key = _holder_key(target)
            if key is None or key in holders:
                continue
            what = original_value(value, aliases, holders)
            if what:
                holders[key] = what
                changed = True
    return holders


def shared_holders(t: Tree) -> dict[str, str]:
    """"module.name" -> what it may hold, for every module-level holder of our scanned files: what
    another of our modules may import (`from interceptor.socket_hooks import _orig`) or read as an
    attribute of the module (`socket_hooks._orig`)."""
    shared: dict[str, str] = {}
    for path, tree in t.python():
        if _egress_scope(path):
            module = ".".join(_module_package(path) + [PurePosixPath(path).stem])
            module = module.removesuffix(".__init__")
            module_names = _module_level_names(tree)
            for key, what in original_holders(tree, t.aliases(path)).items():
                if key in module_names:
                    shared[f"{module}.{key}"] = f"{what}, from {path}"
    return shared


def _module_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds outside its functions and classes (what another module can import)."""
    names: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return names


def imported_holders(path: str, tree: ast.Module, shared: dict[str, str]) -> dict[str, str]:
    """A file's holders from other modules of ours: each shared one under "=module.name" (read
    through a module attribute), and under its local name when imported by name."""
    seed = {"=" + dotted: what for dotted, what in shared.items()}
    package = _module_package(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                if f"{module}.{a.name}" in shared:
                    seed[a.asname or a.name] = shared[f"{module}.{a.name}"]
    return seed


def _held(node: ast.expr, aliases: dict[str, str], holders: dict[str, str]) -> str | None:
    """What `node` holds when it is a holder, or a subscript of one (a dict of originals)."""
    key = _holder_key(node)
    if key in holders:
        return holders[key]
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return holders.get(f"={qualified_name(node, aliases)}")
    return None


def _original_call_reason(call: ast.Call, aliases: dict[str, str], holders: dict[str, str]) -> str | None:
    """A call of a holder: `_orig["connect"](...)`, `original(...)`, `_sendto(...)`."""
    if not holders or not isinstance(call.func, (ast.Name, ast.Attribute, ast.Subscript)):
        return None
    what = _held(call.func, aliases, holders)
    if what is None:
        return None
    return (f"{ast.unparse(call.func)}() calls a saved original (e.g. {what}), which may open "
            f"an outbound connection")


def check_license(t: Tree) -> Iterator[Finding]:
    if t.kind == "wheel":
        texts = {p: d for p, d in t.files.items()
                 if re.search(r"\.dist-info/(licenses/)?(LICEN[CS]E|COPYING)", p)}
        metadata = next((d for p, d in t.files.items() if p.endswith(".dist-info/METADATA")), b"")
    else:
        texts = {p: d for p, d in t.files.items() if p in ("LICENSE", "COPYING", "LICENSE.txt")}
        metadata = t.files.get("PKG-INFO", b"") if t.kind == "sdist" else None
    if not texts:
        yield Finding("license", t.label, "no LICENSE file in the artifact")
    elif not any(all(m in d for m in LICENSE_MARKERS) for d in texts.values()):
        yield Finding("license", t.where(sorted(texts)[0]), "LICENSE is not the LGPL version 3")
    if metadata is not None and not LICENSE_METADATA.search(metadata.decode("utf-8", "replace")):
        yield Finding("license", t.label, "metadata does not declare LGPL-3.0")


def check_sdist_contents(t: Tree) -> Iterator[Finding]:
    if not any(re.fullmatch(r"tests/(.*/)?test_[^/]*\.py", p) for p in t.files):
        yield Finding("sdist-contents", t.label, "no tests/ (tests/**/test_*.py) in the sdist")
    if f"{ADDON_PATH}/__manifest__.py" not in t.files:
        yield Finding("sdist-contents", t.label,
                      f"no addon ({ADDON_PATH}/__manifest__.py) in the sdist")


def check_wheel_record(t: Tree) -> Iterator[Finding]:
    record_path = next((p for p in t.files if re.fullmatch(r"[^/]+\.dist-info/RECORD", p)), None)
    if record_path is None:
        yield Finding("wheel-record", t.label, "no .dist-info/RECORD")
        return
    listed: dict[str, str] = {}
    for row in csv.reader(io.StringIO(t.files[record_path].decode("utf-8", "replace"))):
        if row:
            listed[_wheel_path(row[0])] = row[1] if len(row) > 1 else ""
    for path in sorted(t.files):
        if path == record_path:
            continue
        if path not in listed:
            yield Finding("wheel-record", t.where(path), "file not listed in RECORD")
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(t.files[path]).digest()).rstrip(b"=")
        if listed[path] != "sha256=" + digest.decode():
            yield Finding("wheel-record", t.where(path), "hash differs from RECORD")


def check_wheel_matches_sdist(wheel: Tree, sdist: Tree) -> Iterator[Finding]:
    for path in sorted(wheel.files):
        if path.split("/")[0].endswith(".dist-info"):
            continue
        if path not in sdist.files:
            yield Finding("wheel-matches-sdist", wheel.where(path), f"not in {sdist.label}")
        elif sdist.files[path] != wheel.files[path]:
            yield Finding("wheel-matches-sdist", wheel.where(path), f"differs from {sdist.label}")


TREE_CHECKS: dict[str, Callable[[Tree], Iterable[Finding]]] = {
    "compiled-code": check_compiled, "native-code": check_native,
    "obfuscator": check_obfuscator, "code-from-data": check_code_from_data,
    "unreadable-source": check_unreadable, "core-no-odoo": check_core_no_odoo,
    "layering": check_layering, "license": check_license,
}


# === Running ====================================================================================

@dataclass
class RuleResult:
    rule: str
    description: str
    checked: list[str] = field(default_factory=list)   # labels of what the rule looked at
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "FAIL" if self.findings else ("PASS" if self.checked else "SKIP")


def run_gate(trees: list[Tree], wrappers: Iterable[tuple[str, str]] = EGRESS_WRAPPERS
             ) -> list[RuleResult]:
    """Run every rule on every tree; a rule that applies to none of them is skipped."""
    wrappers = tuple(wrappers)
    results = {rule: RuleResult(rule, text) for rule, text in RULES}

    def run(rule: str, label: str, findings: Iterable[Finding]) -> None:
        results[rule].checked.append(label)
        try:
            results[rule].findings.extend(findings)
        except RecursionError:  # fail closed on code nested too deep to walk
            results[rule].findings.append(Finding(rule, label, "code too deeply nested to scan"))

    for t in trees:
        for rule, check in TREE_CHECKS.items():
            run(rule, t.label, check(t))
        run("no-self-egress", t.label, check_self_egress(t, wrappers))
        if t.kind == "sdist":
            run("sdist-contents", t.label, check_sdist_contents(t))
        if t.kind == "wheel":
            run("wheel-record", t.label, check_wheel_record(t))
    for wheel in (t for t in trees if t.kind == "wheel"):
        for sdist in (t for t in trees if t.kind == "sdist"):
            if _dist_version(wheel.label) == _dist_version(sdist.label):
                run("wheel-matches-sdist", f"{wheel.label} ~ {sdist.label}",
                    check_wheel_matches_sdist(wheel, sdist))
    return [results[rule] for rule in RULE_IDS]


def _dist_version(filename: str) -> str:
    """`mit_network_audit-0.1.0-py3-none-any.whl`, `mit-network-audit-0.1.0.tar.gz` -> same key."""
    if filename.endswith(".whl"):
        name, version = filename.split("-")[:2]
    else:
        name, version = re.sub(r"(\.tar\.gz|\.tgz)$", "", filename).rsplit("-", 1)
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}"


def render_text(results: list[RuleResult]) -> str:
    width = max(len(r.rule) for r in results)
    lines = []
    for r in results:
        count = f"{len(r.findings)} failure(s)" if r.findings else "ok" if r.checked else "n/a"
        lines.append(f"{r.status} {r.rule:<{width}}  {r.description} [{count}]")
    for r in results:
        lines.extend(f"  {r.rule}: {f}" for f in r.findings)
    ok = not any(r.findings for r in results)
    lines.append("release gate: " + ("passed" if ok else "FAILED"))
    return "\n".join(lines)


def render_json(results: list[RuleResult]) -> str:
    return json.dumps({
        "ok": not any(r.findings for r in results),
        "rules": [{"rule": r.rule, "status": r.status, "description": r.description,
                   "checked": r.checked,
                   "failures": [{"where": f.where, "reason": f.reason} for f in r.findings]}
                  for r in results],
    }, indent=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="release_gate.py",
        description="Check built sdists/wheels (and source trees) for obfuscation, Odoo imports "
                    "in the core and outbound connections in the auditor's own code.")
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="a .whl or .tar.gz")
    parser.add_argument("--source", action="append", default=[], metavar="DIR",
                        help="also scan a source tree (repeatable)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    args = parser.parse_args(argv)
    if not args.artifacts and not args.source:
        parser.error("give at least one ARTIFACT or --source DIR")
    try:
        trees = [load_artifact(a) for a in args.artifacts] + [load_source(s) for s in args.source]
    except GateError as exc:
        print(f"release gate: {exc}", file=sys.stderr)
        return 2
    results = run_gate(trees)
    print(render_json(results) if args.json else render_text(results))
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
