"""Shared fixtures: a private NETAUDIT_HOME per test, an event factory, a ledger factory."""
from __future__ import annotations

import itertools
import os

import pytest

from interceptor.event import NetEvent

_counter = itertools.count()


def make_event(i: int | None = None, **overrides) -> NetEvent:
    i = next(_counter) if i is None else i
    fields = dict(
        ts=1_764_806_400_000_000_000 + i * 1_000_000, duration_ms=1.0 + (i % 7) / 4, direction="egress",
        channel="http", protocol="https", method="GET", host=f"h{i % 5}.example.com", url_path=f"/p/{i}",
        query_keys=("a", "b"), src_ip="127.0.0.1", src_port=40000 + i % 1000, dst_ip="127.0.0.1", dst_port=443,
        status="200", error="", req_bytes=100 + i, resp_bytes=1000 + i, header_names=("Host", "Accept"),
        fingerprint=f"{i:032x}", module=f"mod{i % 3}", author="Someone", call_site=f"mod/x.py:{i}:f", pid=1234,
        self_egress=False)
    fields.update(overrides)
    return NetEvent(**fields)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """NETAUDIT_HOME in a temp dir, so no test touches the real data dir."""
    h = tmp_path / "home"
    monkeypatch.setenv("NETAUDIT_HOME", str(h))
    return h


@pytest.fixture
def new_ledger(home):
    """Factory: a ledger at home/<name>.sqlite with n sample events; closed at teardown."""
    from ledger import Ledger

    opened = []

    def factory(n: int = 0, name: str = "l", **kw):
        led = Ledger.open(str(home / f"{name}.sqlite"), key_dir=str(home / "keys"), **kw)
        opened.append(led)
        if n:
            led.append_many(make_event(i) for i in range(n))
        return led

    yield factory
    for led in opened:
        try:
            led.close()
        except Exception:
            pass


@pytest.fixture
def event():
    return make_event


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def evidence_snapshot(path: str) -> dict[str, bytes | None]:
    return {p: (file_bytes(p) if os.path.exists(p) else None) for p in (path, path + "-wal")}
