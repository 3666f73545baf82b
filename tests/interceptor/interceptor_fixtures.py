"""Fixtures: the interceptor installed once in this test process, a fresh in-memory sink per
test, real local servers, and a ledger-backed sink on a temp ledger.

Test modules import them by name (`from interceptor_fixtures import captured, ...`): a
conftest.py here would shadow tests/conftest.py, which other test packages import as `conftest`.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import interceptor
from interceptor import MemoryWriter, NullWriter, Sink

from interceptor_servers import Servers, forget_heads, self_signed


_servers: list[Servers] = []


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """(certificate, key): a throwaway self-signed pair for 127.0.0.1, made once per test process."""
    made = self_signed(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("needs the openssl command to make a test certificate")
    return made


@pytest.fixture
def servers():
    """The local servers, started once per test process (daemon threads); the request heads they
    read before this test are forgotten (interceptor_servers.head_size)."""
    if not _servers:
        _servers.append(Servers())
    forget_heads()
    interceptor.install(sink=Sink(NullWriter()))  # idempotent; outside a test, capture to nowhere
    return _servers[0]


class Captured:
    """The events the installed interceptor recorded during one test."""

    def __init__(self):
        self.writer = MemoryWriter()
        self.sink = Sink(self.writer, linger_s=0)

    def events(self, channel: str | None = None, direction: str = "egress"):
        assert self.sink.flush(5), "the sink did not drain"
        return [e for e in self.writer.events
                if (channel is None or e.channel == channel) and e.direction == direction]


@pytest.fixture
def captured(servers):
    c = Captured()
    previous = interceptor.use_sink(c.sink)
    yield c
    interceptor.use_sink(previous)


@pytest.fixture
def ledger_sink(tmp_path, servers):
    """Factory: install a LedgerWriter sink on tmp_path/ledger.sqlite for this test."""
    from ledger.sink import LedgerWriter

    made = []

    def factory(path=None, key_dir=None, **writer_kw):
        path = str(path or tmp_path / "ledger.sqlite")
        key_dir = str(key_dir or tmp_path / "keys")
        writer = LedgerWriter(path, key_dir, **writer_kw)
        sink = Sink(writer, linger_s=0)
        made.append((sink, interceptor.use_sink(sink)))
        return sink, writer, path, key_dir

    yield factory
    for sink, previous in reversed(made):
        interceptor.use_sink(previous)
        sink.close(2)


def netaudit_run(tmp_path, *argv, env=None):
    """`netaudit run` into tmp_path's ledger (no PYTHONPATH unless `env` gives one), from tmp_path,
    a folder that is not the program's: `python -m` puts the current folder first on netaudit's
    own path."""
    cmd = [sys.executable, "-m", "ledger.cli", "run", "--ledger", str(tmp_path / "run.sqlite"),
           "--key-dir", str(tmp_path / "keys"), "--", *argv]
    return subprocess.run(cmd, env=env or dict(os.environ, PYTHONPATH=""), capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))


def run_rows(tmp_path) -> list[dict]:
    """The rows of the ledger netaudit_run wrote."""
    from ledger.ledger import Ledger

    with Ledger.open(str(tmp_path / "run.sqlite"), key_dir=str(tmp_path / "keys"), readonly=True) as led:
        return list(led.rows())


def http_rows(tmp_path) -> dict[str, dict]:
    """The http rows of the ledger netaudit_run wrote, by path."""
    return {x["url_path"]: x for x in run_rows(tmp_path) if x["channel"] == "http"}


def line_of(text: str, marker: str) -> int:
    """The number of the line of `text` that holds `marker` (a call site's line)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def pythons() -> list[str]:
    """This Python, and the others named in NETAUDIT_TEST_PYTHONS (paths, os.pathsep between):
    .ci/run names the other CPython 3.11+ it finds on the machine."""
    found = [sys.executable]
    for path in os.environ.get("NETAUDIT_TEST_PYTHONS", "").split(os.pathsep):
        if path and os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, found):
            found.append(path)
    return found
