"""Secrets stay out: unique markers in bodies, header values, query values, userinfo passwords,
raw TCP and UDP payloads, sent by a program run under `netaudit run`, never
appear in the ledger, its -wal, the heads file, the program's own logs (stdout/stderr), the
report (text and JSON), the signed head, or the verifier's output. Key files are 0600 in a 0700
folder, and no output ever holds the private key or the salt, raw, hex or base64.
(url_path is kept by design: markers go in query values, never in paths.)
"""
from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import urllib.request
import uuid

import pytest

from .servers import HTTPServerProcess

PROGRAM = r"""
import http.client, socket, sys, urllib.request, xmlrpc.client
port, m = int(sys.argv[1]), dict(a.split("=", 1) for a in sys.argv[2:])
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("POST", "/login?user=" + m["query"] + "&x=1", body=m["body"].encode(),
          headers={"Authorization": "Bearer " + m["auth"], "Cookie": "sid=" + m["cookie"], "X-Api-Key": m["apikey"]})
c.getresponse().read()
urllib.request.urlopen("http://127.0.0.1:%d/basic?token=%s" % (port, m["token"]), data=m["form"].encode()).read()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /raw HTTP/1.0\r\nX-Secret: " + m["raw"].encode() + b"\r\n\r\n")
s.recv(100)
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(m["udp"].encode(), ("127.0.0.1", 9))
u.close()
try:
    http.client.HTTPConnection("127.0.0.1", 1).request("GET", "/refused?k=" + m["refused"])
except OSError as exc:
    print("refused as expected:", type(exc).__name__)
print("done")
"""

NAMES = ("query", "body", "auth", "cookie", "apikey", "token", "form", "raw", "udp", "refused")


def _run(args, env) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


def test_no_marker_and_no_key_in_any_output(tmp_path):
    tag = uuid.uuid4().hex[:12]
    markers = {k: f"CANARY{k.upper()}{tag}" for k in NAMES}
    ledger, key_dir = str(tmp_path / "led" / "l.sqlite"), str(tmp_path / "keys")
    env = dict(os.environ, NETAUDIT_HOME=str(tmp_path / "home"))
    netaudit = [os.path.join(os.path.dirname(sys.executable), "netaudit")]
    server = HTTPServerProcess()
    try:
        prog = tmp_path / "app.py"
        prog.write_text(PROGRAM)
        outputs = {"run": _run(netaudit + ["run", "--ledger", ledger, "--key-dir", key_dir, "--", sys.executable, str(prog),
                                           str(server.port), *[f"{k}={v}" for k, v in markers.items()]], env)}
    finally:
        server.close()
    assert outputs["run"].returncode == 0 and "done" in outputs["run"].stdout, outputs["run"].stderr
    for name, args in {"sign-head": ["sign-head"], "head": ["head"], "pubkey": ["pubkey"], "report": ["report"],
                       "report-json": ["report", "--json"]}.items():
        outputs[name] = _run(netaudit + args + ["--ledger", ledger, "--key-dir", key_dir], env)
        assert outputs[name].returncode == 0, (name, outputs[name].stderr)
    folder = os.path.join(key_dir, os.listdir(key_dir)[0])
    outputs["verify"] = _run([sys.executable, "-m", "verifier", ledger, "--pubkey", os.path.join(folder, "pubkey"),
                              "--head", os.path.join(folder, "heads"), "--json"], env)
    assert outputs["verify"].returncode == 0, outputs["verify"].stdout

    # the calls were recorded (so this test can fail by recording nothing)
    import apsw
    con = apsw.Connection(ledger, flags=apsw.SQLITE_OPEN_READONLY)
    paths = {r[0] for r in con.execute("SELECT url_path FROM egress_log")}
    con.close()
    assert {"/login", "/basic"} <= paths, paths

    # key material: 0600 files in a 0700 folder
    secret = {}
    for name in ("ed25519.key", "hmac.salt"):
        p = os.path.join(folder, name)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, name
        secret[name] = open(p, "rb").read()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700

    texts = {f"{name}:{stream}": getattr(p, stream) for name, p in outputs.items() for stream in ("stdout", "stderr")}
    files = {p: open(p, "rb").read() for p in (ledger, ledger + "-wal", os.path.join(folder, "heads"),
                                               os.path.join(folder, "pubkey")) if os.path.exists(p)}
    blobs = {**{k: v.encode() for k, v in texts.items()}, **files}
    for where, data in blobs.items():
        for k, marker in markers.items():
            assert marker.encode() not in data, f"the {k} marker reached {where}"
        for name, raw in secret.items():
            for form in (raw, raw.hex().encode(), base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")):
                assert form not in data, f"{name} reached {where}"


def test_userinfo_password_never_reaches_the_ledger(tmp_path):
    import interceptor
    from interceptor import MemoryWriter, NullWriter, Sink

    interceptor.install(sink=Sink(NullWriter()))
    writer = MemoryWriter()
    previous = interceptor.use_sink(Sink(writer, linger_s=0))
    server = HTTPServerProcess()
    try:
        marker = f"CANARYUSERINFO{uuid.uuid4().hex[:12]}"
        with pytest.raises(OSError):  # the host 'user:...@127.0.0.1' does not resolve, with or without us
            urllib.request.urlopen(f"http://user:{marker}@127.0.0.1:{server.port}/userinfo", timeout=10).read()
        assert interceptor.current_sink().flush(5)
    finally:
        interceptor.use_sink(previous)
        server.close()
    events = [e for e in writer.events if e.url_path == "/userinfo"]
    assert events, "the call was not recorded"
    assert all(marker not in repr(e) for e in events), events
