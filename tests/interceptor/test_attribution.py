"""Attribution with fake Odoo addon trees on disk (no Odoo installed) and fake own packages."""
from __future__ import annotations

import importlib
import sys
import threading
import textwrap
from pathlib import Path

import pytest

import interceptor
from interceptor_fixtures import captured, ledger_sink, servers  # noqa: F401  (fixtures)
from interceptor.attribution import StackAttribution, read_author

CALLER = """
import http.client


def fetch(port):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", "/from-addon")
    conn.getresponse().read()
    conn.close()
"""


@pytest.fixture
def addon_tree(tmp_path, monkeypatch):
    """tmp/odoo/addons/<name>/{__manifest__.py, models/caller.py}, importable as odoo.addons.<name>."""
    def make(name, manifest, code=CALLER, root="odoo/addons"):
        d = tmp_path / root / name
        (d / "models").mkdir(parents=True)
        (d / "__manifest__.py").write_text(manifest)
        (d / "__init__.py").write_text("")
        (d / "models" / "__init__.py").write_text("")
        (d / "models" / "caller.py").write_text(textwrap.dedent(code))
        return d

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for mod in [m for m in sys.modules if m == "odoo" or m.startswith(("odoo.", "mit_network_audit"))]:
        del sys.modules[mod]
    importlib.invalidate_caches()


def test_addon_module_author_and_call_site(addon_tree, captured, servers):
    addon_tree("some_module", "{'name': 'Some', 'author': 'Acme Integrations', 'version': '18.0.1.0.0'}")
    importlib.invalidate_caches()
    from odoo.addons.some_module.models import caller

    caller.fetch(servers.http)
    (e,) = captured.events()
    assert (e.module, e.author, e.self_egress) == ("some_module", "Acme Integrations", False)
    assert e.call_site == "odoo.addons.some_module.models.caller:7:fetch"
    assert not [m for m in sys.modules if "__manifest__" in m], "a manifest was imported"


def test_manifest_read_once_and_never_executed(addon_tree, tmp_path, servers):
    d = addon_tree("other_mod", "{'author': 'First Author'}\n")
    attribution = StackAttribution()
    importlib.invalidate_caches()
    from odoo.addons.other_mod.models import caller

    code = "import sys\ndef here():\n    return sys._getframe(0)\n"
    (d / "models" / "frames.py").write_text(code)
    from odoo.addons.other_mod.models import frames

    assert attribution(frames.here())[:2] == ("other_mod", "First Author")
    (d / "__manifest__.py").write_text("{'author': 'Changed'}")
    assert attribution(frames.here())[1] == "First Author"  # cached
    (tmp_path / "evil.py").write_text("raise SystemExit('manifest executed')")
    assert read_author(str(tmp_path / "evil.py")) == ""  # literal_eval, never exec
    assert caller  # imported fine


def test_calls_at_the_same_offset_of_different_functions_keep_their_own_call_sites(addon_tree):
    """The call-site cache is keyed by a code's first line and the instruction offset: functions
    whose calls sit at the same offset (same bytecode), on other lines or in other modules at the
    same line, must each keep their own call site."""
    d = addon_tree("twin_mod", "{'author': 'Twins'}\n")
    code = "import sys\n\n\ndef first():\n    return sys._getframe(0)\n\n\ndef second():\n    return sys._getframe(0)\n"
    (d / "models" / "twins.py").write_text(code)
    (d / "models" / "twins_too.py").write_text(code)
    importlib.invalidate_caches()
    from odoo.addons.twin_mod.models import twins, twins_too

    assert twins.first().f_lasti == twins.second().f_lasti  # the premise: one offset, four code objects
    attribution = StackAttribution()
    calls = (twins.first, twins.second, twins_too.first, twins_too.second) * 3
    sites = [attribution(f())[2] for f in calls]
    assert sites == [f"odoo.addons.twin_mod.models.{m}:{line}:{name}" for m in ("twins", "twins_too")
                     for line, name in ((5, "first"), (9, "second"))] * 3


def test_code_whose_globals_have_no_usable_name_is_skipped_not_a_fault():
    """exec'd code may have no __name__, or one that is not a str (even unhashable): its frames
    are skipped like built-in code, and the call is attributed to the frame that called it."""
    attribution = StackAttribution()
    for name in ([], None, 42):
        g = {"sys": sys}
        if name is not None:
            g["__name__"] = name
        exec("def odd(att):\n    return att(sys._getframe(0))\n", g)
        for _ in range(2):  # the second time too (nothing was cached for it)
            module, _, site, _ = g["odd"](attribution)
            assert module == "test_attribution" and site.endswith(":test_code_whose_globals_have_no_usable_name_is_skipped_not_a_fault")


def test_a_stack_of_skipped_frames_only_is_unattributed():
    """A call from a thread whose every frame is skipped (here: code without a file, as built-in
    code, started by threading) is unattributed, the first time (each module classified) and
    again (the walk over modules already known reaches the stack's end)."""
    attribution = StackAttribution()
    g = {"sys": sys, "__name__": "builtin_like"}
    exec("def odd(att, out):\n    out.append(att(sys._getframe(0)))\n", g)
    out = []
    for _ in range(2):
        t = threading.Thread(target=g["odd"], args=(attribution, out))
        t.start()
        t.join()
    assert out == [("", "", "", False)] * 2


def test_our_own_packages_are_self_egress(addon_tree, captured, servers):
    addon_tree("mit_network_audit", "{'author': 'MIT Network Audit'}")
    importlib.invalidate_caches()
    from odoo.addons.mit_network_audit.models import caller

    caller.fetch(servers.http)
    (e,) = captured.events()
    assert e.self_egress and e.module == "mit_network_audit"


def test_top_level_package_outside_odoo(addon_tree, captured, servers):
    addon_tree("shopapp", "{}", root="")  # a plain package: tmp/shopapp/models/caller.py
    importlib.invalidate_caches()
    from shopapp.models import caller

    caller.fetch(servers.http)
    (e,) = captured.events()
    assert (e.module, e.author, e.self_egress) == ("shopapp", "", False)
    assert e.call_site.startswith("shopapp.models.caller:")
    del sys.modules["shopapp"], sys.modules["shopapp.models"], sys.modules["shopapp.models.caller"]


def test_library_frames_are_skipped(captured, servers):
    requests = pytest.importorskip("requests")
    requests.get(servers.url("/lib"))  # requests -> urllib3 -> http.client, all skipped
    (e,) = captured.events()
    assert e.call_site.endswith(":test_library_frames_are_skipped")


def test_custom_attribution(captured, servers):
    import http.client

    previous = interceptor.use_attribution(lambda frame: ("glue", "Someone", "x:1:f", False))
    try:
        c = http.client.HTTPConnection("127.0.0.1", servers.http)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
    finally:
        interceptor.use_attribution(previous)
    (e,) = captured.events()
    assert (e.module, e.author, e.call_site) == ("glue", "Someone", "x:1:f")


def test_custom_attribution_objects_of_any_kind(captured, servers):
    """An object whose class defines __call__ as a method is called through that method, bound
    (the hot path's fast call); the class's method, not an attribute of the instance, as calling
    the object would. A static __call__ and a partial are called as they are. use_attribution hands
    back the object it replaced, not the bound method."""
    import functools
    import http.client

    class Counted:
        calls = 0

        def __call__(self, frame):
            Counted.calls += 1
            return ("counted", "", "c:1:f", False)

    class Static:
        @staticmethod
        def __call__(frame):
            return ("static", "", "s:1:f", False)

    def get():
        c = http.client.HTTPConnection("127.0.0.1", servers.http)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()

    counted = Counted()
    counted.__call__ = lambda frame: ("instance attribute", "", "i:1:f", False)  # not what obj() calls
    partial = functools.partial(lambda tag, frame: (tag, "", "p:1:f", False), "partial")
    previous = interceptor.use_attribution(counted)
    try:
        fast = interceptor.STATE.attribute
        get()
        replaced = interceptor.use_attribution(Static())
        get()
        interceptor.use_attribution(partial)
        get()
    finally:
        back = interceptor.use_attribution(previous)
    assert (fast.__self__, fast.__func__) == (counted, Counted.__call__)
    assert replaced is counted and back is partial and interceptor.STATE.attribution is previous
    assert Counted.calls == 1
    assert [e.module for e in captured.events()] == ["counted", "static", "partial"]


def test_manifest_without_author_gets_odoos_default(tmp_path):
    """Stock addons (mail, base...) have no 'author' key; Odoo itself fills in "Odoo S.A."."""
    (tmp_path / "__manifest__.py").write_text("{'name': 'Discuss', 'depends': ['base']}")
    assert read_author(str(tmp_path / "__manifest__.py")) == "Odoo S.A."
    (tmp_path / "__manifest__.py").write_text("not a dict at all (")
    assert read_author(str(tmp_path / "__manifest__.py")) == ""


OWN_LEDGER_APP = """
import json, sys
import interceptor
from interceptor import MemoryWriter, Sink
writer = MemoryWriter()
sink = Sink(writer, linger_s=0)
interceptor.install(sink=sink)
import ledger.books  # the program's own `ledger` package (an accounting app), not ours
ledger.books.sync(int(sys.argv[1]))
sink.flush(5)
print(json.dumps([(e.module, e.call_site, e.self_egress) for e in writer.events if e.channel == "http"]))
"""


def test_a_program_package_named_like_ours_is_not_self_egress(tmp_path, servers):
    """"ledger" is a common name: a program's own `ledger` package is the program's, and its
    calls are no alarm (review 16, M5: they were marked self-egress by name)."""
    import json
    import os
    import subprocess

    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "__init__.py").write_text("")
    (tmp_path / "ledger" / "books.py").write_text(textwrap.dedent(CALLER).replace("def fetch", "def sync"))
    (tmp_path / "app.py").write_text(OWN_LEDGER_APP)
    r = subprocess.run([sys.executable, str(tmp_path / "app.py"), str(servers.http)], capture_output=True,
                       text=True, timeout=60, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    [(module, call_site, self_egress)] = json.loads(r.stdout)
    assert (module, self_egress) == ("ledger", False) and call_site.startswith("ledger.books:")


MAIN_WITH_SPAWNED_CHILD = """
import multiprocessing, sys, urllib.request

def get(path):
    urllib.request.urlopen("http://127.0.0.1:%d%s" % (int(sys.argv[1]), path)).read()

if __name__ == "__main__":
    get("/from-main")
    for method in sys.argv[2:]:
        p = multiprocessing.get_context(method).Process(target=get, args=("/from-" + method,))
        p.start()
        p.join(60)
"""


@pytest.mark.parametrize("how", ["script", "module"])
def test_the_main_module_is_named_alike_in_spawned_children_and_under_python_m(tmp_path, servers, how):
    """One program, one module name: a spawned (or forkserver) child runs the main module again as
    `__mp_main__`, which named its calls `__mp_main__` where the parent's and a forked child's
    were the script's; `python -m pkg` named them `__main__` (helper 39, L3). (A spawned child
    cannot run a target of a package's `__main__`, with or without the auditor: multiprocessing
    does not import it again.)"""
    from interceptor_fixtures import netaudit_run, run_rows

    if how == "script":
        (tmp_path / "shop.py").write_text(MAIN_WITH_SPAWNED_CHILD)
        argv, module, label, methods = [str(tmp_path / "shop.py")], "shop", "shop", ["spawn", "fork"]
    else:
        (tmp_path / "shop").mkdir()
        (tmp_path / "shop" / "__init__.py").write_text("")
        (tmp_path / "shop" / "__main__.py").write_text(MAIN_WITH_SPAWNED_CHILD)
        argv, module, label, methods = ["-m", "shop"], "shop", "shop.__main__", ["fork"]
    r = netaudit_run(tmp_path, sys.executable, *argv, str(servers.http), *methods)
    assert r.returncode == 0, r.stderr
    rows = sorted((x["url_path"], x["module"], x["call_site"].split(":")[0])
                  for x in run_rows(tmp_path) if x["channel"] == "http")
    assert rows == sorted((path, module, label) for path in ["/from-main", *("/from-" + m for m in methods)])


ROOT = Path(__file__).resolve().parents[2]
RUN_AS_MODULE = """
import json, sys, urllib.request
sys.path.insert(0, %(root)r)
import interceptor
from interceptor import MemoryWriter, Sink
writer = MemoryWriter()
sink = Sink(writer, linger_s=0)
interceptor.install(sink=sink)
urllib.request.urlopen("http://127.0.0.1:%%s/" %% sys.argv[1]).read()
sink.flush(5)
print(json.dumps([(e.module, e.call_site.split(":")[0], e.self_egress) for e in writer.events if e.channel == "http"]))
"""


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "namesake"])
def test_a_module_of_ours_run_with_python_m_is_self_egress(tmp_path, servers, ours):
    """`python -m ledger.x` names the call by its package, and one of ours is self-egress, as when
    imported (review 41, L5: it was named `ledger`, not self-egress). A package beside our
    `ledger` and `verifier` is ours; a namesake `ledger` alone is the program's."""
    import json
    import os
    import subprocess

    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / "__init__.py").write_text("")
    (tmp_path / "ledger" / "probe.py").write_text(RUN_AS_MODULE % {"root": str(ROOT)})
    if ours:  # laid out as our packages are installed together
        (tmp_path / "ledger" / "ledger.py").write_text("")
        (tmp_path / "verifier").mkdir()
        (tmp_path / "verifier" / "format.py").write_text("")
    r = subprocess.run([sys.executable, "-m", "ledger.probe", str(servers.http)], capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["ledger", "ledger.probe", ours]]
