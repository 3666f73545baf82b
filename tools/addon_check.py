#!/usr/bin/env python3
"""Static checks of the Odoo addon, without Odoo installed: fast, and non-zero on a real problem.

usage: addon_check.py ADDON_DIR [--no-pylint]

Checks:
  manifest    __manifest__.py is a literal dict with the keys an OCA addon needs, version
              18.0.x.y.z, LGPL-3, data files that exist, in security -> data -> views order;
  xml         every XML file parses;
  models      every model (parsed from models/*.py with ast) has _description, every field help=;
  views       every <field name> in a view exists on the view's model (fields inherited from
              Odoo's own models are accepted for models we only _inherit), and every
              <button type="object"> calls a method the model defines;
  access      ir.model.access.csv has the right header, unique ids, and names only our models;
              every model we define (not transient) has an access line;
  pylint      pylint-odoo, when it can be installed into its own venv (.venv-pylint/);
              skipped with a message otherwise (--no-pylint, or no network).
"""
from __future__ import annotations

import argparse
import ast
import csv
import os
import re
import subprocess
import sys
import venv
import xml.etree.ElementTree as ET

REQUIRED_KEYS = ("name", "version", "license", "author", "depends", "data",
                 "external_dependencies", "summary", "website", "category")
VERSION = re.compile(r"^18\.0\.\d+\.\d+\.\d+$")
ACCESS_HEADER = ["id", "name", "model_id:id", "group_id:id", "perm_read", "perm_write",
                 "perm_create", "perm_unlink"]
# Fields every Odoo model has.
MAGIC_FIELDS = {"id", "display_name", "create_uid", "create_date", "write_uid", "write_date"}
FIELD_TYPES = {"Boolean", "Integer", "Float", "Monetary", "Char", "Text", "Html", "Date",
               "Datetime", "Binary", "Image", "Selection", "Many2one", "One2many", "Many2many",
               "Reference", "Many2oneReference", "Json", "Properties", "BigInteger"}
# Fields of the Odoo models we only extend that our views use.
KNOWN_INHERITED = {"res.config.settings": {"company_id"}}


METHODS: dict[str, set[str]] = {}  # model -> method names defined in this addon


class Problems(list):
    def add(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


# ---- models ------------------------------------------------------------------------------------

def _const(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def parse_models(addon: str, problems: Problems) -> tuple[dict, dict]:
    """Models of models/ and wizard/: {model: {field: (type, has_help, comodel)}},
    {model: 'model'|'transient'|'inherit'}."""
    models: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    sources = [os.path.join(addon, sub, f) for sub in ("models", "wizard")
               if os.path.isdir(os.path.join(addon, sub))
               for f in sorted(os.listdir(os.path.join(addon, sub))) if f.endswith(".py")]
    for path in sources:
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            attrs, fields = {}, {}
            methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            base = " ".join(ast.unparse(b) for b in cls.bases)
            for stmt in cls.body:
                if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                        and isinstance(stmt.targets[0], ast.Name)):
                    continue
                name, value = stmt.targets[0].id, stmt.value
                if name.startswith("_"):
                    attrs[name] = _const(value)
                elif isinstance(value, ast.Call):
                    ftype = ast.unparse(value.func).split(".")[-1]
                    if ftype in FIELD_TYPES:
                        kw = {k.arg: k.value for k in value.keywords}
                        comodel = _const(value.args[0]) if value.args else _const(kw.get("comodel_name"))
                        fields[name] = (ftype, "help" in kw, comodel if ftype in (
                            "Many2one", "One2many", "Many2many") else None)
            model = attrs.get("_name")
            inherit = attrs.get("_inherit")
            if not model and not inherit:
                continue
            where = f"{os.path.relpath(path, addon)}:{cls.name}"
            if model:
                kinds[model] = "transient" if "TransientModel" in base else "model"
                if not attrs.get("_description"):
                    problems.add(where, f"model {model} has no _description")
            else:
                model = inherit if isinstance(inherit, str) else inherit[0]
                kinds.setdefault(model, "inherit")
            for fname_, (ftype, has_help, _) in fields.items():
                if not has_help:
                    problems.add(where, f"field {model}.{fname_} has no help=")
            models.setdefault(model, {}).update(fields)
            METHODS.setdefault(model, set()).update(methods)
    return models, kinds


# ---- manifest -----------------------------------------------------------------------------------

def check_manifest(addon: str, problems: Problems) -> dict:
    path = os.path.join(addon, "__manifest__.py")
    try:
        manifest = ast.literal_eval(open(path, encoding="utf-8").read())
    except (OSError, ValueError, SyntaxError) as exc:
        problems.add("__manifest__.py", f"not a literal dict: {exc}")
        return {}
    for key in REQUIRED_KEYS:
        if key not in manifest:
            problems.add("__manifest__.py", f"missing key {key!r}")
    if not VERSION.match(str(manifest.get("version", ""))):
        problems.add("__manifest__.py", f"version {manifest.get('version')!r} is not 18.0.x.y.z")
    if manifest.get("license") != "LGPL-3":
        problems.add("__manifest__.py", f"license {manifest.get('license')!r}, expected 'LGPL-3'")
    python_deps = manifest.get("external_dependencies", {}).get("python", [])
    for dep in ("apsw", "cryptography", "platformdirs"):
        if dep not in python_deps:
            problems.add("__manifest__.py", f"external_dependencies python lacks {dep!r}")
    order = {"security": 0, "data": 1, "views": 2, "wizard": 2, "report": 2}
    last = 0
    for entry in manifest.get("data", []):
        if not os.path.isfile(os.path.join(addon, entry)):
            problems.add("__manifest__.py", f"data file {entry} does not exist")
        rank = order.get(entry.split("/")[0], 1)
        if rank < last:
            problems.add("__manifest__.py", f"data file {entry} is out of security -> data -> views order")
        last = max(last, rank)
    hook = manifest.get("post_load")
    if hook:
        init = ast.parse(open(os.path.join(addon, "__init__.py"), encoding="utf-8").read())
        names = {a.asname or a.name for n in ast.walk(init) if isinstance(n, ast.ImportFrom)
                 for a in n.names} | {n.name for n in init.body if isinstance(n, ast.FunctionDef)}
        if hook not in names:
            problems.add("__init__.py", f"post_load hook {hook!r} is not defined or imported")
    return manifest


# ---- XML and views ------------------------------------------------------------------------------

def _view_fields(arch, model: str, models: dict, where: str, problems: Problems) -> None:
    """Every <field name> at this level belongs to `model`; sub-views of x2many fields to their comodel."""
    known = models.get(model)

    def walk(node, current, fields):
        for child in node:
            if not isinstance(child.tag, str):
                continue
            if (child.tag == "button" and child.get("type") == "object" and current in METHODS
                    and child.get("name") not in METHODS[current]):
                problems.add(where, f"button calls {current}.{child.get('name')}(), which does not exist")
            if child.tag == "field" and child.get("name"):
                name = child.get("name")
                if fields is not None and name not in fields and name not in MAGIC_FIELDS \
                        and name not in KNOWN_INHERITED.get(current, ()):
                    problems.add(where, f"view uses field {current}.{name}, which does not exist")
                spec = (fields or {}).get(name)
                if spec and spec[2]:  # x2many/many2one sub-views describe the comodel
                    walk(child, spec[2], models.get(spec[2]))
                    continue
            walk(child, current, fields)

    walk(arch, model, known)


def check_xml(addon: str, models: dict, problems: Problems) -> set[str]:
    xmlids = set()
    for root, _dirs, files in os.walk(addon):
        for fname in sorted(files):
            if not fname.endswith(".xml"):
                continue
            path = os.path.join(root, fname)
            rel = os.path.relpath(path, addon)
            try:
                tree = ET.parse(path)
            except ET.ParseError as exc:
                problems.add(rel, f"XML does not parse: {exc}")
                continue
            for record in tree.iter("record"):
                xmlids.add(record.get("id", ""))
                if record.get("model") != "ir.ui.view":
                    continue
                fields = {f.get("name"): f for f in record.findall("field")}
                model_el = fields.get("model")
                arch = fields.get("arch")
                if model_el is None or arch is None:
                    continue
                model = (model_el.text or "").strip()
                where = f"{rel}:{record.get('id')}"
                if model not in models:
                    continue  # a model of another addon, not ours to check
                for tag in ("tree",):
                    if arch.find(f".//{tag}") is not None:
                        problems.add(where, "Odoo 18 uses <list>, not <tree>")
                for el in arch.iter():
                    if isinstance(el.tag, str) and any(a in el.attrib for a in ("attrs", "states")):
                        problems.add(where, f"<{el.tag}> uses attrs/states, removed in Odoo 17+")
                _view_fields(arch, model, models, where, problems)
    return xmlids


# ---- access ---------------------------------------------------------------------------------------

def check_access(addon: str, models: dict, kinds: dict, problems: Problems) -> None:
    path = os.path.join(addon, "security", "ir.model.access.csv")
    rel = os.path.relpath(path, addon)
    try:
        rows = list(csv.reader(open(path, encoding="utf-8", newline="")))
    except OSError as exc:
        problems.add(rel, f"unreadable: {exc}")
        return
    if not rows or rows[0] != ACCESS_HEADER:
        problems.add(rel, f"header must be {','.join(ACCESS_HEADER)}")
        return
    ids, covered = set(), set()
    ours = {m.replace(".", "_"): m for m, k in kinds.items() if k != "inherit"}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(ACCESS_HEADER):
            problems.add(f"{rel}:{n}", f"{len(row)} columns, expected {len(ACCESS_HEADER)}")
            continue
        xid, _name, model_ref, group, *perms = row
        if xid in ids:
            problems.add(f"{rel}:{n}", f"duplicate id {xid}")
        ids.add(xid)
        key = model_ref.split(".")[-1]
        if not key.startswith("model_") or key[len("model_"):] not in ours:
            problems.add(f"{rel}:{n}", f"{model_ref} is not a model of this addon")
            continue
        model = ours[key[len("model_"):]]
        covered.add(model)
        expected = f"access_{model.replace('.', '_')}_{group.split('.')[-1].removeprefix('group_')}"
        if xid != expected:
            problems.add(f"{rel}:{n}", f"id {xid!r}, expected {expected!r} (access_<model>_<group>)")
        if any(p not in ("0", "1") for p in perms):
            problems.add(f"{rel}:{n}", "permissions must be 0 or 1")
    for model, kind in kinds.items():
        if kind != "inherit" and model not in covered:
            problems.add(rel, f"model {model} has no access line")


# ---- pylint-odoo ------------------------------------------------------------------------------------

def run_pylint(addon: str) -> tuple[bool | None, str]:
    """(True/False, output) when pylint-odoo ran; (None, reason) when it could not be set up."""
    here = os.path.dirname(os.path.abspath(__file__))
    # at the repository's root, like the other venvs: never inside a folder the sdist grafts
    env_dir = os.path.join(os.path.dirname(here), ".venv-pylint")
    py = os.path.join(env_dir, "bin", "python")
    if not os.path.exists(os.path.join(env_dir, ".ok")):
        try:
            venv.create(env_dir, with_pip=True, clear=True)
            # short network timeouts: offline, this must skip quickly, not hang `make test`
            subprocess.run([py, "-m", "pip", "install", "-q", "--timeout", "20", "--retries", "1",
                            "pylint-odoo"], check=True, capture_output=True, timeout=300)
            open(os.path.join(env_dir, ".ok"), "w").close()
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"pylint-odoo could not be installed ({type(exc).__name__}); skipped"
    proc = subprocess.run(
        [py, "-m", "pylint", "--load-plugins=pylint_odoo", "--rcfile",
         os.path.join(here, "pylint-odoo.cfg"), addon],
        capture_output=True, text=True, timeout=600)
    return proc.returncode == 0, proc.stdout + proc.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addon")
    parser.add_argument("--no-pylint", action="store_true", help="skip pylint-odoo")
    args = parser.parse_args(argv)
    addon = args.addon.rstrip("/")
    if not os.path.isfile(os.path.join(addon, "__manifest__.py")):
        print(f"addon_check: {addon}: no __manifest__.py", file=sys.stderr)
        return 2
    problems = Problems()
    check_manifest(addon, problems)
    models, kinds = parse_models(addon, problems)
    check_xml(addon, models, problems)
    check_access(addon, models, kinds, problems)
    name = os.path.basename(addon)
    for p in problems:
        print(f"addon_check: {name}/{p}")
    lint_ok = True
    if args.no_pylint or os.environ.get("ADDON_CHECK_NO_PYLINT"):
        print("addon_check: pylint-odoo skipped (--no-pylint)")
    else:
        ran, output = run_pylint(addon)
        if ran is None:
            print(f"addon_check: {output}")
        elif not ran:
            print(output.rstrip())
            print("addon_check: pylint-odoo found problems")
            lint_ok = False
        else:
            print("addon_check: pylint-odoo clean")
    if problems or not lint_ok:
        print(f"addon_check: {name}: {len(problems)} problem(s)" + ("" if lint_ok else " + pylint-odoo"))
        return 1
    print(f"addon_check: {name}: OK ({len(kinds)} models, manifest, XML, views, access)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
