"""Helpers of the release gate's tests: run the gate's command line, plant files in a real artifact.

The release is built from a copy of this source tree with the standard `build` frontend, as
`make release` does. A planted artifact is a copy of that real wheel or sdist with files added,
replaced or removed; a wheel's RECORD is rewritten with the planted files' hashes (as a careful
attacker would), so each plant trips only the rule it is aimed at.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[2]
GATE = REPO / "tools" / "release_gate.py"


def _load_gate():
    spec = importlib.util.spec_from_file_location("tools_release_gate", GATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


release_gate = _load_gate()


@dataclass(frozen=True)
class Release:
    wheel: Path
    sdist: Path
    source: Path     # the copy of the source tree the release was built from


@dataclass(frozen=True)
class GateRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)

    def status(self, rule: str) -> str:
        return next(r["status"] for r in self.report["rules"] if r["rule"] == rule)

    def failures(self, rule: str) -> list[str]:
        """`where: reason` of every failure of a rule."""
        rule_report = next(r for r in self.report["rules"] if r["rule"] == rule)
        return [f"{f['where']}: {f['reason']}" for f in rule_report["failures"]]

    def failed_rules(self) -> set[str]:
        return {r["rule"] for r in self.report["rules"] if r["status"] == "FAIL"}


def run_gate(*args: str | Path, json_output: bool = True) -> GateRun:
    """The gate's command line, run in this process (fast: most tests call it)."""
    argv = [*map(str, args)] + (["--json"] if json_output else [])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = release_gate.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
    return GateRun(rc, out.getvalue(), err.getvalue())


def run_gate_process(*args: str | Path, json_output: bool = True) -> GateRun:
    """The gate's real command line in its own interpreter, as `make release` runs it."""
    argv = [sys.executable, str(GATE), *map(str, args)] + (["--json"] if json_output else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return GateRun(proc.returncode, proc.stdout, proc.stderr)


def ignore_local_files(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if release_gate.SKIP_DIRS.fullmatch(n) or n.endswith((".pyc", ".pyo"))
            or n.endswith((".sqlite", ".sqlite-wal", ".sqlite-shm"))}


def ensure_build_frontend() -> None:
    """`make release` installs `build` into the venv; do the same if the test run comes first."""
    if importlib.util.find_spec("build") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "build"], check=True)


def _record(files: dict[str, bytes], record_path: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for name, data in files.items():
        if name == record_path:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([record_path, "", ""])
    return out.getvalue().encode()


def rewrite_wheel(wheel: Path, out_dir: Path, add: dict[str, bytes] | None = None,
                  remove: Iterable[str] = (), name: str | None = None,
                  edit: Callable[[dict[str, bytes]], None] | None = None,
                  fix_record: bool = True) -> Path:
    """A copy of a real wheel with files added/replaced/removed and, by default, a true RECORD."""
    with zipfile.ZipFile(wheel) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    for path in remove:
        assert path in files, f"{path} is not in {wheel.name}"
        del files[path]
    files.update(add or {})
    if edit:
        edit(files)
    record_path = next(p for p in files if p.endswith(".dist-info/RECORD"))
    if fix_record:
        files[record_path] = _record(files, record_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (name or wheel.name)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return target


def rewrite_sdist(sdist: Path, out_dir: Path, add: dict[str, bytes] | None = None,
                  remove_prefixes: Iterable[str] = ()) -> Path:
    """A copy of a real sdist with files added/replaced, and files under some paths removed."""
    remove_prefixes = tuple(remove_prefixes)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / sdist.name
    with tarfile.open(sdist, "r:gz") as src, tarfile.open(target, "w:gz") as dst:
        top = src.getmembers()[0].name.split("/")[0]
        added = {f"{top}/{p}": d for p, d in (add or {}).items()}
        for member in src.getmembers():
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            if rel and rel.startswith(remove_prefixes) or member.name in added:
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name, data in added.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return target
