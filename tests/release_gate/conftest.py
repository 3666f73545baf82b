"""The release gate's fixtures: one real sdist+wheel per session, and planted copies of them.

The release is built from a copy of this source tree with the standard `build` frontend, as
`make release` does; it is built once per test session and shared.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from .gate_helpers import REPO, Release, ensure_build_frontend, ignore_local_files, rewrite_sdist, \
    rewrite_wheel


# Left in the copied tree before the build, as in any developer's checkout: MANIFEST.in must keep
# them out of the sdist, or the gate (rightly) fails the real release.
LOCAL_LEFTOVERS = {
    "tools/.venv-local/lib/python3.11/site-packages/junk.py": b"import marshal\nmarshal.loads(b'')\n",
    "interceptor/__pycache__/event.cpython-311.pyc": b"\xa7\r\r\n" + b"\0" * 12,
    "tests/__pycache__/conftest.cpython-311.pyc": b"\xa7\r\r\n" + b"\0" * 12,
    "odoo_addon/mit_network_audit/__pycache__/__init__.cpython-311.pyc": b"\xa7\r\r\n" + b"\0" * 12,
}


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Release:
    """The real sdist and wheel, built once per test session from a copy of this tree."""
    root = tmp_path_factory.mktemp("release")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=ignore_local_files)
    for path, data in LOCAL_LEFTOVERS.items():  # what a developer's tree holds besides source
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    wheel, sdist = build_release(source, root / "dist")
    return Release(wheel=wheel, sdist=sdist, source=source)


def build_release(source: Path, out: Path) -> tuple[Path, Path]:
    """`python -m build --sdist --wheel`, as `make release` runs it: (wheel, sdist)."""
    ensure_build_frontend()
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture
def plant_wheel(release, tmp_path) -> Callable[..., Path]:
    """plant_wheel({"ledger/x.pyc": b"..."}, remove=[...]) -> a planted copy of the real wheel."""
    def plant(add: dict[str, bytes] | None = None, **kwargs) -> Path:
        return rewrite_wheel(release.wheel, tmp_path / "planted", add, **kwargs)
    return plant


@pytest.fixture
def plant_sdist(release, tmp_path) -> Callable[..., Path]:
    """plant_sdist({"odoo_addon/...": b"..."}, remove_prefixes=[...]) -> a planted real sdist."""
    def plant(add: dict[str, bytes] | None = None, **kwargs) -> Path:
        return rewrite_sdist(release.sdist, tmp_path / "planted", add, **kwargs)
    return plant
