# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Inbound requests to Odoo controllers are ingress rows attributed to the controller's module;
the web client's own traffic is not recorded. The client runs in a separate process, as a real
outside caller would (and so that its own outbound calls are not this process's)."""
import subprocess
import sys
import time

import interceptor

from odoo.tests import HttpCase, tagged

CLIENT = """
import json, sys, urllib.request, xmlrpc.client
base, db = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
common = xmlrpc.client.ServerProxy(base + "/xmlrpc/2/common")
print(common.version()["server_serie"])
req = urllib.request.Request(base + "/web/webclient/version_info", data=json.dumps(
    {"jsonrpc": "2.0", "method": "call", "params": {}}).encode(),
    headers={"Content-Type": "application/json"})
print(json.load(opener.open(req))["result"]["server_serie"])
opener.open(base + "/web/static/img/favicon.ico").read()
"""


@tagged("post_install", "-at_install")
class TestIngress(HttpCase):
    def test_rpc_is_ingress_web_client_is_not(self):
        start = time.time_ns()
        env = {"NO_PROXY": "*", "no_proxy": "*", "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", CLIENT, self.base_url(), self.env.cr.dbname],
                             capture_output=True, text=True, timeout=60, env=env, check=False)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["18.0", "18.0"])
        self.assertTrue(interceptor.flush(10))
        # /xmlrpc/2/common without a database: the server-level router key; the sink is shared
        # per database name, so read what was routed there.
        router = interceptor.current_sink()
        self.assertTrue(router.flush(10))
        rows = self._server_rows(router, start)
        paths = {r.url_path: r for r in rows}
        self.assertIn("/xmlrpc/2/common", paths)
        rpc = paths["/xmlrpc/2/common"]
        self.assertEqual((rpc.direction, rpc.module, rpc.method, rpc.status), ("ingress", "base", "POST", "200"))
        self.assertNotIn("/web/webclient/version_info", paths)
        self.assertNotIn("/web/static/img/favicon.ico", paths)

    def _server_rows(self, router, start):
        """Ingress rows written since `start` to every ledger this process writes."""
        from ledger import Ledger

        rows = []
        for dbname in list(router._sinks):
            from ..glue import paths
            import os

            path = paths.own_ledger_path(dbname)
            if not os.path.exists(path):
                continue
            with Ledger.open(path, readonly=True) as led:
                for row in led.rows():
                    if row["direction"] == "ingress" and row["ts"] >= start:
                        rows.append(type("Row", (), row))
        return rows
