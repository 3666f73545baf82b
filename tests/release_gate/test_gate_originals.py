"""Zero self-egress through a saved original: a call through a dict of originals, a closure or a
module variable bound to a network function is the call itself; only EGRESS_WRAPPERS may make it."""
from __future__ import annotations

import pytest

from .gate_helpers import release_gate, run_gate

# Each plant is a new, unlisted function of ours that calls a network original indirectly.
INDIRECT = [
    # a dict of originals filled by a computed lookup, as the interceptor's install() does
    (b"import socket\n\n_orig = {}\n\n\ndef install():\n    for name in ('connect',):\n"
     b"        _orig[name] = getattr(socket.socket, name)\n\n\n"
     b"def phone_home(sock):\n    return _orig['connect'](sock, ('example.org', 80))\n", 12, "_orig['connect']()"),
    # a dict literal of originals
    (b"import socket\n\nORIGINALS = {'cc': socket.create_connection}\n\n\n"
     b"def phone_home():\n    return ORIGINALS['cc'](('example.org', 80))\n", 7, "ORIGINALS['cc']()"),
    # setdefault into a dict, the original read from a class's __dict__
    (b"import smtplib\n\nSAVED = {}\nSAVED.setdefault('c', smtplib.SMTP.__dict__['connect'])\n\n\n"
     b"def phone_home(smtp):\n    SAVED['c'](smtp, 'mail.example.org')\n", 8, "SAVED['c']()"),
    # a closure variable bound to an original passed in by the same file
    (b"import http.client\n\n\ndef make(original):\n    def inner(conn):\n        return original(conn)\n"
     b"    return inner\n\n\nPHONE = make(http.client.HTTPConnection.__dict__.get('connect'))\n", 6, "original()"),
    # a module variable, through an alias of the class, unpacked from a tuple
    (b"import socket\n\n_ss = socket.socket\n_recv, _sendto = _ss.recv, _ss.sendto\n\n\n"
     b"class Quiet:\n    def beacon(self, sock):\n        _sendto(sock, b'x', ('example.org', 53))\n",
     9, "_sendto()"),
    # a parameter default
    (b"import socket\n\n\ndef phone_home(addr, _open=socket.create_connection):\n    return _open(addr)\n",
     5, "_open()"),
    # an original stored on an object by setattr, then called through the attribute
    (b"import socket\n\n\nclass Box:\n    pass\n\n\nsetattr(Box, 'dial', socket.create_connection)\n\n\n"
     b"def phone_home():\n    return Box.dial(('example.org', 80))\n", 12, "Box.dial()"),
    # a method that connects on first use, taken out of the class's namespace by a literal name
    (b"import http.client\n\nbase = http.client.HTTPConnection\n_endheaders = base.__dict__['endheaders']\n\n\n"
     b"def push(conn):\n    _endheaders(conn)\n", 8, "_endheaders()"),
    # the same, through getattr on the named class
    (b"import http.client\n\n_request = getattr(http.client.HTTPConnection, 'request')\n\n\n"
     b"def push(conn):\n    _request(conn, 'GET', '/')\n", 7, "_request()"),
    # another module's dict of originals, imported by name
    (b"from interceptor.socket_hooks import _orig as saved\n\n\n"
     b"def phone_home(sock):\n    return saved['connect'](sock, ('example.org', 80))\n", 5, "saved['connect']()"),
    # another module's saved original, reached as an attribute of that module
    (b"import interceptor.socket_bytes as sb\n\n\n"
     b"def beacon(sock):\n    sb._sendto(sock, b'x', ('example.org', 53))\n", 5, "sb._sendto()"),
]


@pytest.mark.parametrize("package", ["interceptor", "ledger"])
@pytest.mark.parametrize("code, line, call", INDIRECT)
def test_unlisted_call_through_a_saved_original_fails(plant_wheel, package, code, line, call):
    path = f"{package}/planted.py"
    run = run_gate(plant_wheel({path: code}))
    assert run.rc == 1 and run.failed_rules() == {"no-self-egress"}, run.stdout
    found = run.failures("no-self-egress")
    assert any(f":{path}:{line}: {call} calls a saved original" in f for f in found), found
    assert all(":" + path + ":" in f for f in found), found  # nothing else of ours is flagged


# The interceptor imports itself only relatively (so `netaudit run` can load it under a private
# name): the same indirect calls, written with relative imports, are still the call itself.
RELATIVE = [
    (b"from . import socket_bytes as sb\n\n\n"
     b"def beacon(sock):\n    sb._sendto(sock, b'x', ('example.org', 53))\n", 5, "sb._sendto()"),
    (b"from . import socket_hooks\n\n\n"
     b"def phone_home(sock):\n    return socket_hooks._orig['connect'](sock, ('example.org', 80))\n",
     5, "socket_hooks._orig['connect']()"),
    (b"from .socket_hooks import _orig as saved\n\n\n"
     b"def phone_home(sock):\n    return saved['connect'](sock, ('example.org', 80))\n", 5, "saved['connect']()"),
]


@pytest.mark.parametrize("code, line, call", RELATIVE)
def test_a_saved_original_reached_through_a_relative_import_fails(plant_wheel, code, line, call):
    path = "interceptor/planted.py"
    run = run_gate(plant_wheel({path: code}))
    assert run.rc == 1 and run.failed_rules() == {"no-self-egress"}, run.stdout
    found = run.failures("no-self-egress")
    assert any(f":{path}:{line}: {call} calls a saved original" in f for f in found), found


def _findings(wheel, wrappers) -> list[str]:
    trees = [release_gate.load_artifact(str(wheel))]
    result = {r.rule: r for r in release_gate.run_gate(trees, wrappers=wrappers)}
    return [str(f) for f in result["no-self-egress"].findings]


def test_an_allow_listed_wrapper_may_call_its_original(plant_wheel):
    code, line, _ = INDIRECT[0]
    wheel = plant_wheel({"interceptor/planted.py": code})
    assert _findings(wheel, [*release_gate.EGRESS_WRAPPERS, ("interceptor/planted.py", "phone_home")]) == []


@pytest.mark.parametrize("entry", release_gate.EGRESS_WRAPPERS, ids="::".join)
def test_every_allow_list_entry_is_needed(release, entry):
    """The list is exact: without any one entry, the gate flags that wrapper's call of its original."""
    file, function = entry
    found = _findings(release.wheel, [w for w in release_gate.EGRESS_WRAPPERS if w != entry])
    assert found, f"{entry} calls no saved original any more: remove it from EGRESS_WRAPPERS"
    assert all(f":{file}:" in f and f.endswith(f" in {function}()") for f in found), found


@pytest.mark.parametrize("code", [
    # a dict of our own functions, called by key (capture.py's cleaners)
    b"def clean(x):\n    return x\n\n\nCLEANERS = {'m': clean}\n\n\ndef f(k, v):\n    return CLEANERS[k](v)\n",
    # a saved local function, and an original that is not a network call
    b"import socket\n\n_name = socket.gethostname\n_send = socket.socket.send\n\n\n"
    b"def f(sock):\n    _send(sock, b'x')\n    return _name()\n",
    # a method named like another module's saved original (interceptor.socket_bytes._sendto)
    b"class Relay:\n    def _sendto(self, data):\n        return data\n\n"
    b"    def hello(self):\n        return self._sendto(b'hi')\n",
    # a literal getattr of a harmless attribute, and a plain socket's send (it opens nothing)
    b"import socket\n\n_send = getattr(socket.socket, 'send')\n\n\n"
    b"def f(obj, sock):\n    g = getattr(obj, 'close')\n    g()\n    _send(sock, b'x')\n",
])
def test_other_saved_callables_pass(plant_wheel, code):
    run = run_gate(plant_wheel({"ledger/planted.py": code}))
    assert run.rc == 0, run.stdout
