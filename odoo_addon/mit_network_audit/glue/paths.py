# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
"""Where each database's ledger, keys and heads live: under Odoo's data_dir, never in source.

    <data_dir>/mit_network_audit/<db>/ledgers/<host>.sqlite   this host's ledger (+ shipped ones)
    <data_dir>/mit_network_audit/<db>/keys/                   signing key, HMAC salt, heads file
    <data_dir>/mit_network_audit/_server/...                  calls made outside any database
"""
import glob
import os
import re
import socket

from odoo.tools import config

LEDGER_SUFFIX = ".sqlite"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def host_id() -> str:
    """This Odoo host's id, as written into its ledgers' meta (a name, not a network lookup)."""
    return socket.gethostname() or "localhost"


def database_dir(dbname: str) -> str:
    """This database's folder under Odoo's data_dir (ledgers and keys)."""
    return os.path.join(config["data_dir"], "mit_network_audit", _SAFE.sub("_", dbname))


def own_ledger_path(dbname: str) -> str:
    """This host's ledger for `dbname`."""
    return os.path.join(database_dir(dbname), "ledgers", _SAFE.sub("_", host_id()) + LEDGER_SUFFIX)


def key_dir(dbname: str) -> str:
    """Where the signing key, HMAC salt and heads file of this database's ledger live."""
    return os.path.join(database_dir(dbname), "keys")


SERVER_DB = "_server"  # calls made outside any database (Odoo names never start with "_")


def default_folders(dbname: str) -> list[str]:
    """This database's ledger folder, and the server-level one."""
    return [os.path.dirname(own_ledger_path(dbname)), os.path.dirname(own_ledger_path(SERVER_DB))]


def parse_folders(text: str | None, dbname: str) -> list[str]:
    """The configured ledger folders (one per line or comma separated), or the default one."""
    folders = [f.strip() for f in re.split(r"[,\n]", text or "") if f.strip()]
    return folders or default_folders(dbname)


def ledger_files(folders: list[str]) -> list[str]:
    """Every ledger file in the folders, sorted, without SQLite's -wal/-shm companions."""
    found = set()
    for folder in folders:
        found.update(glob.glob(os.path.join(glob.escape(folder), "*" + LEDGER_SUFFIX)))
    return sorted(found)
