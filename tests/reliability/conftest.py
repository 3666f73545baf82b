"""Shared fixtures of the reliability suite: the soak switch, a logical dump, and the figures table.

`make soak` sets NETAUDIT_SOAK=1: every loop here scales with `scaled(normal, soak)`. Tests put
their figures in the session's `FIGURES`; the table is printed once at the end of the run (the
table in docs/RELIABILITY.md is a copy of the last `make soak` run).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import apsw

import pytest

SOAK = os.environ.get("NETAUDIT_SOAK") == "1"


def scaled(normal, soak):
    """`soak` under `make soak`, `normal` under `make test`."""
    return soak if SOAK else normal


class Figures:
    """What the suite measured, printed as one table at the end of the session."""

    def __init__(self):
        self.faults: dict[str, dict[str, int]] = {}
        self.crash: dict[str, int] = {}
        self.load: dict[str, str] = {}

    def fault(self, kind: str, tried: int, succeeded: int, recorded: int, gaps: int) -> None:
        row = self.faults.setdefault(kind, dict(tried=0, succeeded=0, recorded=0, gaps=0))
        for k, v in dict(tried=tried, succeeded=succeeded, recorded=recorded, gaps=gaps).items():
            row[k] += v

    def table(self) -> str:
        out = []
        if self.faults:
            out.append(f"{'fault kind':<34} {'tried':>7} {'succeeded':>9} {'recorded':>8} {'gaps':>6}")
            for kind, r in self.faults.items():
                out.append(f"{kind:<34} {r['tried']:>7} {r['succeeded']:>9} {r['recorded']:>8} {r['gaps']:>6}")
        if self.crash:
            out.append("")
            out.append(f"{'crash (SIGKILL) step':<34} {'rounds':>7}")
            for step, n in self.crash.items():
                out.append(f"{step:<34} {n:>7}")
        if self.load:
            out.append("")
            out.append(f"{'load':<34} value")
            for k, v in self.load.items():
                out.append(f"{k:<34} {v}")
        return "\n".join(out)


FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES.faults or FIGURES.crash or FIGURES.load:
        mode = "soak (NETAUDIT_SOAK=1)" if SOAK else "default (make test)"
        terminalreporter.write_sep("=", f"reliability figures, {mode}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        terminalreporter.write_line(FIGURES.table())


def dump(path: str) -> dict[str, list] | None:
    """The logical content of a ledger file (with its -wal): every table's rows, in rowid order.

    A byte flip that leaves this unchanged (free pages, unused header bytes, a WAL frame that
    a later one supersedes) did not tamper with anything; one that changes it did. Read from a
    private copy, as SQLite may write beside the file it opens. None when SQLite cannot read it.
    """
    with tempfile.TemporaryDirectory(prefix="netaudit-dump-") as tmp:
        copy = os.path.join(tmp, "d.sqlite")
        shutil.copyfile(path, copy)
        if os.path.exists(path + "-wal"):
            shutil.copyfile(path + "-wal", copy + "-wal")
        try:
            con = apsw.Connection(copy)
            try:
                out = {"__schema__": con.execute("SELECT hex(type), hex(name), hex(sql) FROM sqlite_master "
                                                 "ORDER BY type, name").fetchall()}
                for (name,) in con.execute("SELECT CAST(name AS BLOB) FROM sqlite_master WHERE type='table' ORDER BY name").fetchall():
                    name = name.decode("utf-8", "replace")
                    try:
                        out[name] = con.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
                    except UnicodeDecodeError:  # TEXT that is not UTF-8: the writer never stores that
                        try:
                            cols = [c[1] for c in con.execute(f'PRAGMA table_info("{name}")')]
                        except UnicodeDecodeError:  # the flip hit a column name: __schema__ shows it
                            out[name] = ("undecodable schema",)
                            continue
                        sel = ", ".join(f'typeof("{c}"), hex("{c}")' for c in cols)
                        out[name] = ("undecodable", con.execute(f'SELECT {sel} FROM "{name}" ORDER BY rowid').fetchall())
                return out
            finally:
                con.close()
        except apsw.Error:
            return None


@pytest.fixture
def ledger_files(home):
    """Factory: a signed ledger with n events; returns (path, key_dir, pubkey text, heads text)."""
    from conftest import make_event
    from ledger import Ledger

    def factory(n: int = 20, name: str = "l", sign: bool = True):
        path, key_dir = str(home / f"{name}.sqlite"), str(home / "keys")
        led = Ledger.open(path, key_dir=key_dir)
        try:
            led.append_many(make_event(i) for i in range(n))
            if sign:
                led.sign_head()
            pub = led.public_key_text
            heads = open(led.keys.heads_path).read() if sign else ""
        finally:
            led.close()
        return path, key_dir, pub, heads

    return factory
