"""Zero self-egress: no call that opens an outbound connection in our code, outside the wrappers."""
from __future__ import annotations

import pytest

from .gate_helpers import release_gate, run_gate

EGRESS = [
    ("import socket\nsocket.create_connection(('example.org', 80))\n", 2, "socket.create_connection"),
    ("import _socket, socket\n\ndef f():\n    s = _socket.socket(socket.AF_INET)\n    s.connect(('example.org', 80))\n",
     5, ".connect()"),
    ("import socket\n\ndef f():\n    s = socket.socket()\n    s.connect(('example.org', 80))\n", 5,
     ".connect()"),
    ("import socket\nsocket.getaddrinfo('example.org', 443)\n", 2, "socket.getaddrinfo"),
    ("from urllib.request import urlopen\nurlopen('https://example.org')\n", 2, "urllib.request.urlopen"),
    ("import urllib.request as ur\nur.urlopen('https://example.org')\n", 2, "urllib.request.urlopen"),
    ("import requests as r\nr.post('https://example.org', data=b'')\n", 2, "requests.post"),
    ("import smtplib\nsmtplib.SMTP('mail.example.org')\n", 2, "smtplib.SMTP"),
    ("import xmlrpc.client\nxmlrpc.client.ServerProxy('https://example.org/xmlrpc/2/common')\n", 2,
     "xmlrpc.client.ServerProxy"),
    ("from http.client import HTTPSConnection as C\nC('example.org')\n", 2, "http.client.HTTPSConnection"),
    ("import ftplib, imaplib, poplib\nftplib.FTP('example.org')\n", 2, "ftplib.FTP"),
    ("SOCK = __import__('socket').create_connection(('example.org', 80))\n", 1,
     "socket.create_connection"),
    ("from socket import *\ncreate_connection(('example.org', 80))\n", 2, "socket.create_connection"),
    ("import socket\ngetattr(socket, 'create_connection')(('example.org', 80))\n", 2,
     "socket.create_connection"),
    ("import subprocess\nsubprocess.run(['curl', 'https://example.org'])\n", 2, "runs curl"),
    ("import os\nos.system('wget -q https://example.org')\n", 2, "runs wget"),
    ("import asyncio\n\nasync def f(loop):\n    await loop.create_connection(object, 'example.org', 80)\n",
     4, ".create_connection()"),
]


@pytest.mark.parametrize("package", ["interceptor", "ledger", "verifier"])
@pytest.mark.parametrize("code, line, reason", EGRESS)
def test_outbound_call_in_the_core_fails(plant_wheel, package, code, line, reason):
    path = f"{package}/planted.py"
    run = run_gate(plant_wheel({path: code.encode()}))
    third_party = package != "ledger" and "requests" in code  # also breaks layering
    assert run.rc == 1
    assert run.failed_rules() == {"no-self-egress"} | ({"layering"} if third_party else set()), \
        run.stdout
    assert any(f":{path}:{line}: " in f and reason in f for f in run.failures("no-self-egress")), \
        run.failures("no-self-egress")


@pytest.mark.parametrize("code", [
    "import sqlite3\nDB = sqlite3.connect(':memory:')\n",
    "import apsw\nDB = apsw.Connection(':memory:')\n",
    "import socket\nHOST = socket.gethostname()\n",
    "import _socket, socket\n\ndef f():\n    s = _socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "    s.sendto(b'x', '/tmp/w.sock')\n",
    "import subprocess\nsubprocess.run(['git', 'status'])\n",
    "EVENTS = ('socket.connect', 'socket.getaddrinfo')  # audit-hook event names are not calls\n",
])
def test_local_calls_pass(plant_wheel, code):
    run = run_gate(plant_wheel({"ledger/planted.py": code.encode()}))
    assert run.rc == 0, run.stdout


def test_outbound_call_in_the_addon_fails(plant_sdist):
    path = "odoo_addon/mit_network_audit/models/planted.py"
    code = b"import requests\n\n\nclass X:\n    def push(self):\n        requests.get('https://example.org')\n"
    run = run_gate(plant_sdist({path: code}))
    assert run.failed_rules() == {"no-self-egress"}, run.stdout
    assert any(f":{path}:6: requests.get() opens an outbound connection in X.push()" in f
               for f in run.failures("no-self-egress")), run.failures("no-self-egress")


def test_odoo_mail_send_in_the_addon_fails(plant_sdist):
    path = "odoo_addon/mit_network_audit/glue/planted.py"
    code = b"def alert(env, msg):\n    env['ir.mail_server'].send_email(msg)\n"
    run = run_gate(plant_sdist({path: code}))
    assert any(f":{path}:2: .send_email()" in f for f in run.failures("no-self-egress"))


def test_addon_tests_may_make_local_calls(plant_sdist):
    """The addon's own tests exercise capture with real calls; Odoo never serves them."""
    code = b"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1')\n"
    run = run_gate(plant_sdist({"odoo_addon/mit_network_audit/tests/test_planted.py": code}))
    assert run.rc == 0, run.stdout


WRAPPER_FILE = (
    b"import socket\n\n_ORIGINAL_CONNECT = socket.socket.connect\n\n\n"
    b"class Hooks:\n"
    b"    def wrapped_connect(self, sock, address):\n"
    b"        try:\n"
    b"            return sock.connect(address)\n"         # line 9: the audited call, allowed
    b"        finally:\n"
    b"            pass\n\n\n"
    b"def helper(sock, address):\n"
    b"    return sock.connect(address)\n"               # line 15: not a wrapper, flagged
)


def _gate_in_process(wheel, wrappers):
    trees = [release_gate.load_artifact(str(wheel))]
    result = {r.rule: r for r in release_gate.run_gate(trees, wrappers=wrappers)}
    return [str(f) for f in result["no-self-egress"].findings]


def test_allow_listed_wrapper_may_connect_and_nothing_else(plant_wheel):
    wheel = plant_wheel({"interceptor/planted.py": WRAPPER_FILE})
    found = _gate_in_process(wheel, wrappers=[*release_gate.EGRESS_WRAPPERS,
                                              ("interceptor/planted.py", "Hooks.wrapped_connect")])
    assert len(found) == 1, found
    assert "interceptor/planted.py:15: .connect() may open an outbound connection in helper()" in found[0]


def test_the_allow_list_is_by_file_and_function(plant_wheel):
    """The same function name in another file is not allowed."""
    wheel = plant_wheel({"ledger/planted.py": WRAPPER_FILE, "interceptor/planted.py": WRAPPER_FILE})
    found = _gate_in_process(wheel, wrappers=[*release_gate.EGRESS_WRAPPERS,
                                              ("interceptor/planted.py", "Hooks.wrapped_connect")])
    assert sorted(f.split(": ", 1)[0].split(":", 1)[1] for f in found) == [
        "interceptor/planted.py:15", "ledger/planted.py:15", "ledger/planted.py:9"]


def test_stale_allow_list_entry_fails(release):
    found = _gate_in_process(release.wheel, wrappers=[*release_gate.EGRESS_WRAPPERS,
                                                      ("interceptor/gone.py", "wrapped_connect")])
    assert found == [f"{release.wheel.name}:interceptor/gone.py: stale allow-list entry: "
                     f"no function wrapped_connect (EGRESS_WRAPPERS)"]


def test_every_allow_list_entry_is_an_interceptor_function():
    for file, function in release_gate.EGRESS_WRAPPERS:
        assert file.startswith("interceptor/") and file.endswith(".py"), file
        assert function.replace(".", "").replace("_", "").isalnum(), function


LOCAL_SOCKET_FILE = (
    b"import socket\n\n\n"
    b"class Relay:\n"
    b"    def __init__(self, path):\n"
    b"        self.path = path\n"
    b"        self._sock = None\n\n"
    b"    def send(self, data):\n"
    b"        if self._sock is None:\n"
    b"            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    b"        self._sock.sendto(data, self.path)\n\n\n"
    b"def once(path, data):\n"
    b"    sock = socket.socket(family=socket.AF_UNIX, type=socket.SOCK_DGRAM)\n"
    b"    sock.connect(path)\n"
    b"    sock.send(data)\n"
)


@pytest.mark.parametrize("package", ["interceptor", "ledger"])
def test_unix_socket_relay_passes(plant_wheel, package):
    """An AF_UNIX socket is a file path (the relay of `netaudit run`), not network egress."""
    run = run_gate(plant_wheel({f"{package}/planted.py": LOCAL_SOCKET_FILE}))
    assert run.rc == 0, run.stdout


@pytest.mark.parametrize("code, line, reason", [
    # another family: the socket may reach the network
    (b"import socket\n\ndef f(path):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
     b"    s.sendto(b'x', ('example.org', 53))\n", 4, "socket.socket()"),
    # the same receiver also bound to a network connection in this file
    (b"import socket\n\ndef f(path):\n    s = socket.socket(socket.AF_UNIX)\n"
     b"    s = socket.create_connection(('example.org', 80))\n    s.connect(path)\n", 6, ".connect()"),
    # a parameter of the same name in another function is not the local socket
    (b"import socket\n\ndef f(path):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect(path)\n\n\n"
     b"def g(s):\n    s.connect(('example.org', 80))\n", 9, ".connect()"),
    # an attribute rebound from a tuple: not provably local
    (b"import socket\n\nclass R:\n    def a(self):\n        self.s = socket.socket(socket.AF_UNIX)\n\n"
     b"    def b(self, other):\n        self.s, x = other, 1\n        self.s.sendto(b'x', ('example.org', 9))\n",
     9, ".sendto()"),
])
def test_not_provably_local_socket_fails(plant_wheel, code, line, reason):
    path = "ledger/planted.py"
    run = run_gate(plant_wheel({path: code}))
    assert run.failed_rules() == {"no-self-egress"}, run.stdout
    assert any(f":{path}:{line}: " in f and reason in f for f in run.failures("no-self-egress")), \
        run.failures("no-self-egress")


@pytest.mark.parametrize("path", ["_netaudit_entry.py", "_netaudit_entry/__init__.py", "_netaudit_helper.py"])
def test_the_console_scripts_entry_is_checked_as_core(plant_wheel, path):
    """_netaudit_entry (the console scripts' entry), a top-level module, is checked as part of the
    ledger, as a package of that name would be, and so is any other module at the wheel's root
    (review 20, M3): an outbound call or an Odoo import there fails the gate as in ledger/."""
    code = b"import socket\nimport odoo\nsocket.create_connection(('example.org', 80))\n"
    run = run_gate(plant_wheel({path: code}))
    assert run.rc == 1
    assert run.failed_rules() == {"no-self-egress", "core-no-odoo"}, run.stdout
    assert any(f":{path}:3: " in f for f in run.failures("no-self-egress"))
