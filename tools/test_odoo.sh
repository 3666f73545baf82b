#!/usr/bin/env bash
# Run the mit_network_audit addon's tests inside a real Odoo 18.0 on a real PostgreSQL.
#
# usage: tools/test_odoo.sh ODOO_SRC
#   ODOO_SRC  an Odoo 18.0 source tree (the folder holding requirements.txt and odoo/).
#
# What it does, each step skipped when already done:
#   1. PostgreSQL: installs the Debian package when missing, starts a cluster when none runs,
#      creates a superuser role for the current user.
#   2. A virtual environment ($ODOO_VENV, default .venv-odoo/) with that Odoo's requirements.txt
#      and this project (pip install -e .); rebuilt only when those requirements or this
#      project's runtime dependencies change.
#   3. An Odoo tree holding only the LGPL-3 addons: the source's odoo/addons mixes community
#      (LGPL-3) and enterprise (OEEL-1/OPL-1) addons; we hard-link the core and the LGPL-3 addons
#      only, so no enterprise addon is even visible to the server.
#   4. A template database with base, web, base_setup and mail installed and their asset bundles
#      built (cached), copied into a fresh test database on every run.
#   5. odoo -i mit_network_audit --test-enable --test-tags /mit_network_audit, then fails on any
#      failed test, any ERROR/CRITICAL log line, or when none of our tests ran (Odoo exits 0 then).
#   6. A prefork check (tools/odoo_prefork_check.py, ODOO_PREFORK_CHECK=0 skips it): a fresh
#      database, the addon installed, `--workers=2`, XML-RPC calls from another process; every
#      worker must capture into the database's ledger.
#
# Environment: ODOO_VENV, ODOO_TEST_DB (default netaudit_test), ODOO_HTTP_PORT (default: a free one),
#              ODOO_TEST_TAGS (default /mit_network_audit; the ingest benchmark:
#              netaudit_bench/mit_network_audit),
#              ODOO_KEEP_DB=1 keeps the test database afterwards.
set -euo pipefail

die() { echo "test_odoo: $*" >&2; exit 2; }
say() { echo "test_odoo: $*"; }

[ $# -ge 1 ] && [ -n "$1" ] || die "usage: $0 ODOO_SRC (an Odoo 18.0 source tree)"
ODOO_SRC=$(cd "$1" 2>/dev/null && pwd) || die "ODOO_SRC '$1' is not a directory"
[ -f "$ODOO_SRC/requirements.txt" ] && [ -f "$ODOO_SRC/odoo/release.py" ] \
    || die "$ODOO_SRC does not look like an Odoo source tree (requirements.txt, odoo/release.py)"
grep -q "^version_info = (18, 0" "$ODOO_SRC/odoo/release.py" || die "$ODOO_SRC is not Odoo 18.0"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${ODOO_VENV:-$ROOT/.venv-odoo}
DB=${ODOO_TEST_DB:-netaudit_test}
# a free port on 127.0.0.1 unless told (the prefork check starts at PORT+10, PORT+11, PORT+12 and
# takes other free ports where those are in use)
PORT=${ODOO_HTTP_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PYTHON=${PYTHON:-python3}
T0=$(date +%s)
export PGOPTIONS="${PGOPTIONS:---client-min-messages=warning}"  # no NOTICEs from dropdb --if-exists

# --- 1. PostgreSQL ----------------------------------------------------------------------
if ! command -v pg_lsclusters >/dev/null 2>&1; then
    say "PostgreSQL missing: apt-get install postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -q; then
    read -r PGVER PGCLUSTER _ < <(pg_lsclusters -h | head -1) || die "no PostgreSQL cluster found"
    say "starting PostgreSQL $PGVER/$PGCLUSTER"
    pg_ctlcluster "$PGVER" "$PGCLUSTER" start
    for _ in $(seq 30); do pg_isready -q && break; sleep 1; done
    pg_isready -q || die "PostgreSQL did not come up"
fi
ME=$(id -un)
if ! psql -d postgres -Atc "select 1" >/dev/null 2>&1; then
    say "creating PostgreSQL superuser role $ME"
    su postgres -c "createuser -s $ME" 2>/dev/null || sudo -u postgres createuser -s "$ME"
fi

# --- 2. virtual environment ------------------------------------------------------------
VENV_RECIPE=3  # bump when the way the venv is built changes
# Our package is installed editable: only its runtime dependencies matter, not the rest of pyproject.
OUR_DEPS=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"])' "$ROOT/pyproject.toml")
REQ_HASH=$( (echo "$VENV_RECIPE $OUR_DEPS"; cat "$ODOO_SRC/requirements.txt") | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.req-stamp" 2>/dev/null)" != "$REQ_HASH" ]; then
    say "building $VENV (Odoo requirements + this project)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # setuptools 70..80 still ships pkg_resources (gevent's plugin loader needs it) and reads
    # the normalised dist-info names of current wheels (zope_interface-*.dist-info).
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=25.3" wheel "setuptools>=70,<81"
    # python-ldap only builds with the OpenLDAP headers; the addons we load do not use it.
    REQS="$VENV/requirements.txt"
    if [ -f /usr/include/ldap.h ]; then
        cp "$ODOO_SRC/requirements.txt" "$REQS"
    else
        say "note: OpenLDAP headers missing, python-ldap (auth_ldap only) is left out"
        grep -v '^python-ldap' "$ODOO_SRC/requirements.txt" > "$REQS"
    fi
    # Some pinned sdists (cbor2 5.4.2, ...) still import pkg_resources in setup.py: keep the
    # isolated build environments on a setuptools that has it.
    echo "setuptools<70" > "$VENV/build-constraints.txt"
    quiet_pip() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }; return "${PIPESTATUS[0]}"; }
    if ! quiet_pip --build-constraint "$VENV/build-constraints.txt" -r "$REQS"; then
        say "some pinned requirements did not install: one by one, with a close wheel when a pin does not build"
        "$VENV/bin/python" - "$REQS" "$VENV/build-constraints.txt" <<'EOF'
import subprocess, sys
from pip._vendor.packaging.requirements import Requirement

reqs, constraints = sys.argv[1:3]
def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--build-constraint",
                           constraints, *args], capture_output=True, text=True).returncode == 0
failed = []
for line in open(reqs):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    if (req.marker and not req.marker.evaluate()) or pip(line):
        continue
    pins = [s.version for s in req.specifier if s.operator == "=="]
    tries = []
    if pins:
        major_minor = ".".join(pins[0].split(".")[:2])
        tries = [f"{req.name}=={major_minor}.*", f"{req.name}>={pins[0]}"]
    for spec in tries:
        if pip("--only-binary", ":all:", spec):
            print(f"test_odoo: note: {line} did not install; {spec} (a wheel) installed instead")
            break
    else:
        failed.append(line)
if failed:
    print("test_odoo: could not install: " + "; ".join(failed))
    sys.exit(1)
EOF
    fi
    quiet_pip -e "$ROOT"
    # Odoo pins cryptography 3.4.8 for Python < 3.12; our package accepts it, check pip kept it.
    "$VENV/bin/python" - <<'EOF'
import cryptography, sys
print("test_odoo: cryptography", cryptography.__version__)
EOF
    echo "$REQ_HASH" > "$VENV/.req-stamp"
fi
PY="$VENV/bin/python"

# --- 3. LGPL-only Odoo tree -------------------------------------------------------------
TREE="$VENV/odoo-lgpl"
SRC_STAMP="v2 $ODOO_SRC $(stat -c %Y "$ODOO_SRC/odoo/addons") $(ls "$ODOO_SRC/odoo/addons" | sha256sum | cut -c1-16)"
if [ "$(cat "$TREE/.stamp" 2>/dev/null)" != "$SRC_STAMP" ]; then
    say "building the LGPL-3-only Odoo tree in $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE/odoo/addons"
    link() { cp -al "$1" "$2" 2>/dev/null || cp -a "$1" "$2"; }   # hard links when same filesystem
    for entry in "$ODOO_SRC"/odoo/*; do
        [ "$(basename "$entry")" = addons ] || link "$entry" "$TREE/odoo/"
    done
    for f in "$ODOO_SRC"/odoo/addons/*; do [ -f "$f" ] && link "$f" "$TREE/odoo/addons/"; done
    "$PY" - "$ODOO_SRC/odoo/addons" > "$TREE/lgpl-addons.txt" <<'EOF'
import ast, os, sys
root = sys.argv[1]
manifests = {}
for name in sorted(os.listdir(root)):
    manifest = os.path.join(root, name, "__manifest__.py")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as fh:
            manifests[name] = ast.literal_eval(fh.read())
# Odoo's own default license is LGPL-3 when the key is absent.
keep = {n for n, m in manifests.items() if m.get("license", "LGPL-3") == "LGPL-3"}
# Some LGPL-3 addons depend on enterprise ones: drop them too, until nothing changes.
while True:
    drop = {n for n in keep if any(d not in keep for d in manifests[n].get("depends", []))}
    if not drop:
        break
    keep -= drop
print("\n".join(sorted(keep)))
EOF
    while read -r name; do link "$ODOO_SRC/odoo/addons/$name" "$TREE/odoo/addons/"; done < "$TREE/lgpl-addons.txt"
    mkdir -p "$TREE/setup"; link "$ODOO_SRC/setup/odoo" "$TREE/setup/"
    say "$(wc -l < "$TREE/lgpl-addons.txt") LGPL-3 addons of $(ls -d "$ODOO_SRC"/odoo/addons/*/ | wc -l)"
    echo "$SRC_STAMP" > "$TREE/.stamp"
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$TREE" > "$SITE/odoo-lgpl.pth"

ADDONS="$TREE/odoo/addons,$ROOT/odoo_addon"
DATA_DIR="$VENV/odoo-data"
mkdir -p "$DATA_DIR"
OPTS=(--addons-path="$ADDONS" --data-dir="$DATA_DIR" --without-demo=all)
ODOO=("$PY" "$TREE/setup/odoo" "${OPTS[@]}" --http-interface=127.0.0.1 --http-port="$PORT")

# --- 4. template database: base, web, base_setup and mail, cached ------------------------
# mail is there for the test where a stock module (mail's publisher warranty) makes a call.
TPL="netaudit_tpl_$(echo "v3 $SRC_STAMP $REQ_HASH" | sha256sum | cut -c1-10)"
if ! psql -d postgres -Atc "select 1 from pg_database where datname='$TPL'" | grep -q 1; then
    say "creating template database $TPL (base, web, base_setup, mail)"
    for old in $(psql -d postgres -Atc "select datname from pg_database where datname like 'netaudit_tpl_%'"); do
        dropdb "$old"; rm -rf "$DATA_DIR/filestore/$old"
    done
    createdb "$TPL"
    if ! "${ODOO[@]}" -d "$TPL" -i base,web,base_setup,mail --stop-after-init --log-level=warn > "$VENV/template.log" 2>&1; then
        tail -30 "$VENV/template.log"; dropdb --if-exists "$TPL"; die "template database failed"
    fi
    # The asset bundles Odoo builds before any HttpCase (~25 s), built once here instead.
    if ! echo "env['ir.qweb']._pregenerate_assets_bundles(); env.cr.commit()" \
            | "$PY" "$TREE/setup/odoo" shell "${OPTS[@]}" -d "$TPL" --no-http --log-level=warn \
            >> "$VENV/template.log" 2>&1; then
        tail -30 "$VENV/template.log"; dropdb --if-exists "$TPL"; die "template assets failed"
    fi
fi
dropdb --if-exists "$DB"
rm -rf "$DATA_DIR/filestore/$DB" "$DATA_DIR/mit_network_audit/$DB" "$DATA_DIR/mit_network_audit/_server"
createdb -T "$TPL" "$DB"
[ -d "$DATA_DIR/filestore/$TPL" ] && cp -a "$DATA_DIR/filestore/$TPL" "$DATA_DIR/filestore/$DB"

# --- 5. install the addon with its tests ------------------------------------------------
LOG="$VENV/test-odoo.log"
say "running the addon's tests on database $DB (log: $LOG)"
set +e
"${ODOO[@]}" -d "$DB" --load=base,web,mit_network_audit -i mit_network_audit \
    --test-enable --test-tags "${ODOO_TEST_TAGS:-/mit_network_audit}" --stop-after-init --log-level=test \
    > "$LOG" 2>&1
RC=$?
set -e
[ "${ODOO_KEEP_DB:-0}" = 1 ] || { dropdb --if-exists "$DB"; rm -rf "$DATA_DIR/filestore/$DB"; }

FAIL=0
# --- 6. prefork: post_load in the master, capture in every worker ------------------------
if [ "${ODOO_PREFORK_CHECK:-1}" = 1 ]; then
    PDB="${DB}_prefork"
    dropdb --if-exists "$PDB" 2>/dev/null
    rm -rf "$DATA_DIR/filestore/$PDB" "$DATA_DIR/mit_network_audit/$PDB"
    createdb -T "$TPL" "$PDB"
    [ -d "$DATA_DIR/filestore/$TPL" ] && cp -a "$DATA_DIR/filestore/$TPL" "$DATA_DIR/filestore/$PDB"
    if "${ODOO[@]}" -d "$PDB" -i mit_network_audit --stop-after-init --log-level=warn \
            > "$VENV/prefork-install.log" 2>&1 \
       && "$PY" "$ROOT/tools/odoo_prefork_check.py" "$TREE/setup/odoo" "$PDB" "$DATA_DIR" \
            "$((PORT + 10))" -- "${OPTS[@]}"; then
        :
    else
        echo "test_odoo: prefork check failed (logs: $VENV/prefork-install.log, $DATA_DIR/prefork-check.log)"
        FAIL=1
    fi
    dropdb --if-exists "$PDB"; rm -rf "$DATA_DIR/filestore/$PDB"
fi

LOGLINE='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:,]+ [0-9]+ '
if grep -E "$LOGLINE(ERROR|CRITICAL) " "$LOG" >/dev/null; then
    echo "---- ERROR/CRITICAL lines in the Odoo log:"
    grep -E -A12 "$LOGLINE(ERROR|CRITICAL) " "$LOG" | head -150
    FAIL=1
fi
RESULT=$(grep -E "odoo\.tests\.result: " "$LOG" | tail -1 || true)
STATS=$(grep -E "odoo\.tests\.stats: mit_network_audit: [0-9]+ tests" "$LOG" | tail -1 || true)
echo "${RESULT:-test_odoo: no odoo.tests.result line}"
echo "${STATS:-test_odoo: no test of mit_network_audit ran}"
[ -n "$STATS" ] || FAIL=1
if [ -z "$RESULT" ] || echo "$RESULT" | grep -q " of 0 tests"; then FAIL=1; fi
if grep -q "^Traceback" "$LOG"; then  # a traceback printed outside Odoo's logging
    echo "---- traceback in the Odoo log:"; grep -A15 "^Traceback" "$LOG" | head -40; FAIL=1
fi
if [ -n "$RESULT" ] && ! echo "$RESULT" | grep -q " 0 failed, 0 error(s)"; then FAIL=1; fi
[ "$RC" = 0 ] || { echo "test_odoo: odoo exited with $RC"; FAIL=1; }
say "done in $(( $(date +%s) - T0 ))s"
if [ "$FAIL" != 0 ]; then
    echo "test_odoo: FAILED"
    exit 1
fi
echo "test_odoo: OK"
