#!/usr/bin/env python3
"""Check the addon in Odoo's prefork mode: post_load in the master, capture in every worker.

Run by tools/test_odoo.sh with the venv's Python, after the addon's tests:
    odoo_prefork_check.py ODOO_SCRIPT DB DATA_DIR PORT -- ODOO_OPTIONS...

Starts `odoo --workers=2 --load=base,web,mit_network_audit` on 127.0.0.1 for DB (the addon must be
installed there), makes XML-RPC calls from a separate client process, each of which makes the
stock `mail` module call a local stand-in for the publisher warranty server, six to the workers'
port and one to the evented (gevent) process's port, stops the server, then reads this host's
ledger for DB under DATA_DIR. Fails unless: the server logged no error and no interceptor left
uninstalled, the ledger verifies, `mail`'s egress and `base`'s ingress rows are there, they come
from worker processes (not the master), the evented process's call is there too, from a process
of its own, every process that served a call wrote an interceptor_installed row, and nothing is
self-egress. Before the calls the client turns forensic mode on (JSON-RPC, served by one
worker): every worker call's request and response bodies must then be stored, whichever worker
served it.
"""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

CLIENT = r"""
import http.server, socketserver, sys, threading, xmlrpc.client
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"{'messages': []}"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.HTTPServer):
    server_bind = socketserver.TCPServer.server_bind
srv = S(("127.0.0.1", int(sys.argv[3])), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
base, db = sys.argv[1], sys.argv[2]
uid = xmlrpc.client.ServerProxy(base + "/xmlrpc/2/common").authenticate(db, "admin", "admin", {})
assert uid, "admin/admin cannot log in"
def call(_):  # a connection per call, several at once: the workers share them out
    models = xmlrpc.client.ServerProxy(base + "/xmlrpc/2/object")
    return models.execute_kw(db, uid, "admin", "publisher_warranty.contract",
                             "update_notification", [[]], {"cron_mode": False})
import datetime, json, urllib.request
def jsonrpc(model, method, args, kw=None):  # /jsonrpc: not among the /xmlrpc/2/object rows counted
    req = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {"service": "object",
           "method": "execute_kw", "args": [db, uid, "admin", model, method, args, kw or {}]}}
    out = json.load(urllib.request.urlopen(urllib.request.Request(
        base + "/jsonrpc", json.dumps(req).encode(), {"Content-Type": "application/json"})))
    assert "error" not in out, out["error"]
    return out["result"]
if sys.argv[4] == "1":  # forensic mode on (served by one worker): every worker must capture
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    jsonrpc("network.audit.forensic.session", "create",
            [{"reason": "prefork check", "expires_at": until.strftime("%Y-%m-%d %H:%M:%S")}])
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(3) as pool:
    assert all(pool.map(call, range(6)))
if sys.argv[4] == "1":
    print(json.dumps(jsonrpc("network.audit.forensic.body", "search_read", [[]],
                             {"fields": ["direction", "module", "host", "size"]})), flush=True)
# The same call once through the evented (gevent) process, which serves every route too.
evented = xmlrpc.client.ServerProxy(sys.argv[5] + "/xmlrpc/2/object")
assert evented.execute_kw(db, uid, "admin", "publisher_warranty.contract", "update_notification", [[]],
                          {"cron_mode": False})
"""


def _writer_helpers(db_dir: str) -> dict[int, int]:
    """{pid: parent pid} of the ledger writer processes (ledger.process_writer) appending under db_dir."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    args = fh.read().decode(errors="replace").split("\0")
                if "ledger.process_writer" in args and any(a.startswith(db_dir) for a in args):
                    with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                        found[int(entry)] = int(fh.read().rpartition(")")[2].split()[1])
            except OSError:  # gone meanwhile
                continue
    return found


def _wait_for_rows(path_glob: str, port: int, n: int, timeout: float) -> None:
    """Wait until the ledger holds n egress rows to `port`. Odoo stops its evented process with
    SIGKILL ("FIXME make longpolling process handle SIGTERM correctly", odoo/service/server.py):
    what that process has not handed to its ledger writer by then is lost, with no gap row."""
    from ledger import Ledger

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in glob.glob(path_glob):
            try:
                with Ledger.open(path, readonly=True) as led:
                    if sum(1 for r in led.rows() if r["dst_port"] == port) >= n:
                        return
            except Exception:  # not made yet, or being made
                pass
        time.sleep(0.2)


def _answers(opener, base: str, tries: int = 60) -> bool:
    """Whether the server at `base` answers (any HTTP status) within `tries` half-seconds."""
    for _ in range(tries):
        try:
            opener.open(base + "/web/login", timeout=2)
            return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            time.sleep(0.5)
    return False


def fail(msg: str) -> int:
    print(f"prefork_check: FAILED: {msg}")
    return 1


def _free_port(preferred: int) -> int:
    """`preferred` if nothing listens or is bound there on 127.0.0.1, else a port the kernel picks.
    PORT+1 and PORT+2 were taken as they came, and on a busy machine one was in use
    ("client: OSError: [Errno 98] Address already in use")."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    script, db, data_dir, port = argv[:sep]
    options = argv[sep + 1:]
    port = str(_free_port(int(port)))
    stand_in = _free_port(int(port) + 1)
    evented_port = _free_port(int(port) + 2)
    while evented_port in (int(port), stand_in):
        evented_port = _free_port(0)
    while stand_in == int(port):
        stand_in = _free_port(0)
    conf = os.path.join(data_dir, "prefork-check.conf")
    with open(conf, "w") as fh:  # publisher_warranty_url has no command-line option
        fh.write(f"[options]\npublisher_warranty_url = http://127.0.0.1:{stand_in}/publisher-warranty/\n")
    log = open(os.path.join(data_dir, "prefork-check.log"), "w")
    server = subprocess.Popen(
        [sys.executable, script, "-c", conf, *options, "-d", db, f"--db-filter=^{db}$",
         "--load=base,web,mit_network_audit", "--workers=2", "--max-cron-threads=0",
         "--http-interface=127.0.0.1", f"--http-port={port}", f"--gevent-port={evented_port}",
         "--log-level=info"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*"}
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        evented_url = f"http://127.0.0.1:{evented_port}"
        if not _answers(opener, base):
            return fail("the prefork server did not answer")
        if not _answers(opener, evented_url):  # it starts a moment after the workers
            return fail("the evented (gevent) process did not answer")
        client = subprocess.run([sys.executable, "-c", CLIENT, base, db, str(stand_in), "1", evented_url],
                                capture_output=True, text=True, timeout=120, env=env)
        if client.returncode:
            return fail(f"client: {client.stderr.strip().splitlines()[-1:]}")
        helpers = _writer_helpers(os.path.join(data_dir, "mit_network_audit", db))
        _wait_for_rows(os.path.join(data_dir, "mit_network_audit", db, "ledgers", "*.sqlite"), stand_in, 7, 20)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    with open(log.name, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    bad = [line for line in lines if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
           or "interceptor not installed" in line]  # a WARNING: the evented process's, until this check
    if bad:
        return fail(f"the server logged errors: {bad[0].strip()[:200]}")

    from ledger import Ledger
    from verifier import verify_ledger

    [path] = glob.glob(os.path.join(data_dir, "mit_network_audit", db, "ledgers", "*.sqlite"))
    verdict = verify_ledger(path)
    if not verdict.valid:
        return fail(f"ledger does not verify: {verdict.message}")
    with Ledger.open(path, readonly=True) as led:
        rows = list(led.rows())
    master = server.pid
    mail = [r for r in rows if r["module"] == "mail" and r["dst_port"] == stand_in]
    ingress = [r for r in rows if r["direction"] == "ingress" and r["url_path"] == "/xmlrpc/2/object"]
    installed = {r["pid"] for r in rows if r["method"] == "interceptor_installed"}
    if len(mail) != 7 or len(ingress) != 7:
        return fail(f"{len(mail)} mail egress rows and {len(ingress)} ingress rows, expected 7 and 7")
    if any(r["module"] != "base" for r in ingress):
        return fail("an /xmlrpc/2/object ingress row is not attributed to base")
    # the evented process served the last call, and none of the six before it
    last = max(mail, key=lambda r: r["ts"])["pid"]
    others = {r["pid"] for r in mail if r["pid"] != last}
    if len([r for r in mail if r["pid"] == last]) != 1 or not others:
        return fail(f"no mail egress row from the evented process alone: "
                    f"pids {sorted(r['pid'] for r in mail)}")
    evented = [last]
    workers = {r["pid"] for r in mail + ingress} - set(evented)
    if master in workers or master in evented:
        return fail("the master process served a request: not prefork")
    # one helper started in the master for -d DB, shared by both workers; the evented process is
    # not forked from the master (Odoo starts it as a new program): it starts its own
    if sorted(helpers.values()) != sorted([master, evented[0]]):
        return fail(f"ledger writer processes for {db} (pid: parent) {helpers}, expected one of the "
                    f"master {master}, shared by the workers, and one of the evented process {evented[0]}")
    if not workers | set(evented) <= installed:
        return fail(f"processes {sorted(workers | set(evented) - installed)} wrote no interceptor_installed row")
    if any(r["self_egress"] for r in rows):
        return fail("self-egress rows in the ledger")
    # forensic mode was turned on in one worker before the 6 calls: every worker stored bodies
    import json

    bodies = json.loads(client.stdout.strip().splitlines()[0])
    kinds = sorted((b["direction"], b["module"], b["host"]) for b in bodies if b["size"])
    if kinds != sorted([("request", "mail", "127.0.0.1"), ("response", "mail", "127.0.0.1")] * 6):
        return fail(f"forensic bodies stored: {kinds}, expected a request and a response per call")
    print(f"prefork_check: OK: {verdict.message}; master {master}, workers {sorted(workers)}, "
          f"evented process {evented[0]}; {len(mail)} mail egress rows, {len(ingress)} ingress rows "
          f"attributed to base; forensic mode on: {len(bodies)} encrypted bodies stored")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
