"""make demo: the main job end to end, on the embedded default location.

1. append a few hundred sample events through the real writer (ledger under NETAUDIT_HOME, or the
   platform data dir);
2. sign the head (stored in the ledger and in the heads file beside the key);
3. verify the ledger with the public key and the outside heads, as an auditor would;
4. tamper a copy (one row's host changed, triggers dropped, as someone holding the file would)
   and show the verifier naming the tampered row;
5. real capture: a sample app run under `netaudit run` calls servers this demo starts on
   127.0.0.1 (HTTP with requests and urllib, SMTP, XML-RPC, a raw socket, a refused connection,
   and a child Python process); its own ledger is then signed, verified and reported.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from interceptor.event import NetEvent
from ledger import Ledger, default_ledger_path

HOSTS = ["api.stripe.example", "smtp.mail.example", "geo.ip.example", "partner-autocomplete.example"]
MODULES = [("payment_stripe", "Odoo S.A."), ("mail", "Odoo S.A."), ("base_geolocalize", "Odoo S.A."),
           ("partner_autocomplete", "Odoo S.A.")]


def sample_events(n: int) -> list[NetEvent]:
    now = time.time_ns()
    out = []
    for i in range(n):
        k = i % len(HOSTS)
        out.append(NetEvent(
            ts=now - (n - i) * 1_000_000_000, duration_ms=5.0 + i % 40, direction="egress",
            channel="smtp" if k == 1 else "http", protocol="smtps" if k == 1 else "https",
            method="MAIL" if k == 1 else ("POST" if i % 3 else "GET"), host=HOSTS[k], url_path="" if k == 1 else f"/v1/r{i % 9}",
            query_keys=() if k == 1 else ("id",), dst_port=465 if k == 1 else 443, status="250" if k == 1 else "200",
            req_bytes=200 + i, resp_bytes=900 + 3 * i, module=MODULES[k][0], author=MODULES[k][1],
            call_site=f"odoo/addons/{MODULES[k][0]}/models/x.py:{100 + k}:_call", pid=os.getpid()))
    return out


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def verify(*args: str) -> int:
    cmd = [sys.executable, "-m", "verifier", *args]
    print("$ netaudit-verify " + " ".join(args), flush=True)
    return subprocess.run(cmd).returncode


def main() -> int:
    path = default_ledger_path()
    step(f"appending 300 sample events to {path}")
    with Ledger.open(path) as led:
        last = led.append_many(sample_events(300))
        print(f"ledger {led.ledger_id}: last chain_seq {last}")
        step("signing the head (kept in the ledger and in the heads file beside the key)")
        print(led.sign_head(), end="")
        pub = os.path.join(led.keys.folder, "pubkey")
        heads = led.keys.heads_path
    step("verifying, as an offline auditor would, with the public key and the outside heads")
    if verify(path, "--pubkey", pub, "--head", heads) != 0:
        print("demo: the fresh ledger did not verify", file=sys.stderr)
        return 1
    step("tampering with a copy: row 42's host rewritten, triggers dropped first")
    tmp = tempfile.mkdtemp(prefix="netaudit-demo-")
    try:
        copy = os.path.join(tmp, "tampered.sqlite")
        with Ledger.open(path) as led:
            led.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(path, copy)
        con = sqlite3.connect(copy, isolation_level=None)
        try:
            con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = 42")
        except sqlite3.Error as exc:
            print(f"plain sqlite3 UPDATE refused: {exc}")
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE egress_log SET host = 'innocent.example' WHERE chain_seq = 42")
        con.close()
        code = verify(copy, "--pubkey", pub, "--head", heads)
        print(f"(exit {code}: 1 means tampered)")
        if code != 1:
            return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step("report")
    subprocess.run([sys.executable, "-m", "ledger.cli", "report", "--ledger", path])
    return real_capture(os.path.join(os.path.dirname(path), "demo-run.sqlite"))


# ---- 5. real capture under `netaudit run` ------------------------------------------------------

def start_local_servers() -> dict[str, int]:
    """HTTP, SMTP, XML-RPC and a raw TCP echo server on 127.0.0.1, in daemon threads."""
    import http.server
    import socketserver
    from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

    class HTTP(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    class SMTP(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"220 demo ESMTP\r\n")
            for line in self.rfile:
                cmd = line[:4].upper()
                if cmd == b"EHLO":
                    self.wfile.write(b"250-demo\r\n250 AUTH PLAIN\r\n")
                elif cmd == b"AUTH":
                    self.wfile.write(b"235 ok\r\n")
                elif cmd == b"DATA":
                    self.wfile.write(b"354 go\r\n")
                    while self.rfile.readline().rstrip() != b".":
                        pass
                    self.wfile.write(b"250 queued\r\n")
                elif cmd == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(self.request.recv(1024).upper())

    class Quiet(SimpleXMLRPCRequestHandler):
        def log_message(self, *args):
            pass

    class TCP(socketserver.ThreadingTCPServer):
        daemon_threads = True

    rpc = SimpleXMLRPCServer(("127.0.0.1", 0), requestHandler=Quiet, logRequests=False)
    rpc.register_function(lambda sku: {"sku": sku, "stock": 7}, "stock_level")
    servers = {"http": http.server.ThreadingHTTPServer(("127.0.0.1", 0), HTTP), "smtp": TCP(("127.0.0.1", 0), SMTP),
               "xmlrpc": rpc, "echo": TCP(("127.0.0.1", 0), Echo)}
    for srv in servers.values():
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return {name: srv.server_address[1] for name, srv in servers.items()}


SHOP_SYNC = '''
"""A sample integration: stock sync, order push, mail notification."""
import json
import smtplib
import socket
import subprocess
import sys
import urllib.request
import xmlrpc.client

try:
    import requests
except ImportError:  # the demo still runs; the requests call is skipped
    requests = None


def run(ports):
    base = "http://127.0.0.1:%d" % ports["http"]
    if requests is not None:
        s = requests.Session()
        for sku in ("A-1", "B-2", "C-3"):
            s.get(base + "/api/stock", params={"sku": sku, "api_key": "SECRET-KEY-VALUE"},
                  headers={"Authorization": "Bearer SECRET-TOKEN"})
    order = json.dumps({"customer": "Jane Doe", "card": "4111-SECRET"}).encode()
    urllib.request.urlopen(urllib.request.Request(base + "/api/orders", data=order,
                                                  headers={"Content-Type": "application/json"})).read()
    erp = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % ports["xmlrpc"])
    erp.stock_level("A-1")
    with smtplib.SMTP("127.0.0.1", ports["smtp"]) as smtp:
        smtp.login("shop", "SECRET-PASSWORD")
        smtp.sendmail("shop@example.com", ["jane@example.com"], "Subject: your order\\r\\n\\r\\nSECRET body")
    raw = socket.create_connection(("127.0.0.1", ports["echo"]))
    raw.sendall(b"ping")
    raw.recv(16)
    raw.close()
    try:
        socket.create_connection(("127.0.0.1", ports["refused"]), timeout=2)
    except OSError:
        pass
    subprocess.run([sys.executable, "-c", "import urllib.request; "
                    "urllib.request.urlopen('%s/api/health').read()" % base], check=True)
'''

SHOP_MAIN = '''
import json, sys
from shopapp import sync
sync.run(json.loads(sys.argv[1]))
print("sample app: done")
'''


def real_capture(ledger: str) -> int:
    import json

    ports = start_local_servers()
    with __import__("socket").socket() as s:  # a port with nothing listening: a refused connection
        s.bind(("127.0.0.1", 0))
        ports["refused"] = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="netaudit-demo-app-")
    try:
        os.makedirs(os.path.join(tmp, "shopapp"))
        with open(os.path.join(tmp, "shopapp", "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(tmp, "shopapp", "sync.py"), "w") as f:
            f.write(textwrap.dedent(SHOP_SYNC))
        with open(os.path.join(tmp, "shop.py"), "w") as f:
            f.write(SHOP_MAIN)
        step(f"real capture: running a sample app under `netaudit run --ledger {ledger}`")
        print("$ netaudit run --ledger " + ledger + " -- python shop.py PORTS", flush=True)
        code = subprocess.run([sys.executable, "-m", "ledger.cli", "run", "--ledger", ledger, "--",
                               sys.executable, "shop.py", json.dumps(ports)], cwd=tmp).returncode
        print(f"(the app exited {code}; netaudit run returns the program's own exit code)")
        if code != 0:
            return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step("the captured rows (names only: no query values, header values, bodies or passwords)")
    with Ledger.open(ledger) as led:
        for r in led.rows():
            if r["channel"] == "audit":
                print(f"  #{r['chain_seq']:<3} audit  {r['method']} {r['url_path']}")
                continue
            where = r["url_path"] + ("?" + "&".join(r["query_keys"].split()) if r["query_keys"] else "")
            print(f"  #{r['chain_seq']:<3} {r['channel']:<6} {r['method']:<8} {r['host']}:{r['dst_port']}{where}  "
                  f"status={r['status'] or '-'} error={r['error'] or '-'} headers=[{r['header_names']}] "
                  f"fp={r['fingerprint'][:8] or '-'} module={r['module']} at {r['call_site']}")
        print(f"signed head:\n{led.sign_head()}", end="")
        pub = os.path.join(led.keys.folder, "pubkey")
        heads = led.keys.heads_path
    step("verifying the captured ledger")
    if verify(ledger, "--pubkey", pub, "--head", heads) != 0:
        print("demo: the captured ledger did not verify", file=sys.stderr)
        return 1
    step("report of the captured ledger")
    return subprocess.run([sys.executable, "-m", "ledger.cli", "report", "--ledger", ledger]).returncode


if __name__ == "__main__":
    sys.exit(main())
