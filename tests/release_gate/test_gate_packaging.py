"""The artifacts carry the LGPL-3.0 licence, the sdist is the whole source, the wheel is the sdist's."""
from __future__ import annotations

import re
import shutil

from .gate_helpers import ignore_local_files, run_gate

MIT = b"MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n"


def _dist_info(files: dict[str, bytes], name: str) -> str:
    return next(p for p in files if re.fullmatch(rf"[^/]+\.dist-info/{name}", p))


def test_wheel_without_license_fails(plant_wheel):
    def drop_license(files):
        del files[_dist_info(files, r"(licenses/)?LICENSE")]
    run = run_gate(plant_wheel(edit=drop_license))
    assert run.failed_rules() == {"license"}, run.stdout
    assert any("no LICENSE file" in f for f in run.failures("license"))


def test_wheel_with_another_license_fails(plant_wheel):
    def swap_license(files):
        files[_dist_info(files, r"(licenses/)?LICENSE")] = MIT
    run = run_gate(plant_wheel(edit=swap_license))
    assert run.failed_rules() == {"license"}, run.stdout
    assert any("LICENSE is not the LGPL version 3" in f for f in run.failures("license"))


def test_wheel_metadata_without_lgpl_fails(plant_wheel):
    def relicense(files):
        path = _dist_info(files, "METADATA")
        text = files[path].decode()
        text = re.sub(r"^(License|License-Expression): .*$", r"\1: MIT", text, flags=re.M)
        files[path] = re.sub(r"^Classifier: License :: .*\n", "", text, flags=re.M).encode()
    run = run_gate(plant_wheel(edit=relicense))
    assert run.failed_rules() == {"license"}, run.stdout
    assert any("metadata does not declare LGPL-3.0" in f for f in run.failures("license"))


def test_sdist_without_license_fails(plant_sdist):
    run = run_gate(plant_sdist(remove_prefixes=["LICENSE"]))
    assert run.failed_rules() == {"license"}, run.stdout
    assert any(f.endswith("no LICENSE file in the artifact") for f in run.failures("license"))


def test_sdist_without_tests_fails(plant_sdist):
    run = run_gate(plant_sdist(remove_prefixes=["tests/"]))
    assert run.failed_rules() == {"sdist-contents"}, run.stdout
    assert any("no tests/" in f for f in run.failures("sdist-contents"))


def test_sdist_without_the_addon_fails(plant_sdist):
    run = run_gate(plant_sdist(remove_prefixes=["odoo_addon/"]))
    assert run.failed_rules() == {"sdist-contents"}, run.stdout
    assert any("no addon (odoo_addon/mit_network_audit/__manifest__.py)" in f
               for f in run.failures("sdist-contents"))


def test_file_missing_from_record_fails(plant_wheel):
    run = run_gate(plant_wheel({"ledger/extra.py": b"X = 1\n"}, fix_record=False))
    assert run.failed_rules() == {"wheel-record"}, run.stdout
    assert any(f.endswith("ledger/extra.py: file not listed in RECORD")
               for f in run.failures("wheel-record"))


def test_file_changed_after_record_fails(plant_wheel):
    run = run_gate(plant_wheel({"interceptor/event.py": b'"""Changed."""\n'}, fix_record=False))
    assert run.failed_rules() == {"wheel-record"}, run.stdout
    assert any(f.endswith("interceptor/event.py: hash differs from RECORD")
               for f in run.failures("wheel-record"))


def test_wheel_code_not_in_the_sdist_fails(release, plant_wheel):
    wheel = plant_wheel({"ledger/extra.py": b"X = 1\n"})
    run = run_gate(wheel, release.sdist)
    assert run.failed_rules() == {"wheel-matches-sdist"}, run.stdout
    assert any(f"ledger/extra.py: not in {release.sdist.name}" in f
               for f in run.failures("wheel-matches-sdist"))


def test_wheel_code_differing_from_the_sdist_fails(release, plant_wheel):
    wheel = plant_wheel({"interceptor/event.py": b'"""Not what the sdist says."""\n'})
    run = run_gate(wheel, release.sdist)
    assert run.failed_rules() == {"wheel-matches-sdist"}, run.stdout
    assert any(f"interceptor/event.py: differs from {release.sdist.name}" in f
               for f in run.failures("wheel-matches-sdist"))


def test_source_tree_scan_names_the_planted_file(release, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(release.source, tree, ignore=ignore_local_files)
    (tree / "verifier" / "planted.py").write_text("import ledger\nimport odoo\n")
    (tree / "interceptor" / "__pycache__").mkdir(exist_ok=True)
    (tree / "interceptor" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0" * 16)  # not shipped
    run = run_gate("--source", tree)
    assert run.failed_rules() == {"core-no-odoo", "layering"}, run.stdout
    assert run.failures("core-no-odoo") == [f"{tree}/verifier/planted.py:2: imports odoo"]
    assert run.failures("layering")[0].startswith(f"{tree}/verifier/planted.py:1: verifier imports ledger")


def test_wheel_file_outside_our_packages_not_in_the_sdist_fails(release, plant_wheel):
    """A top-level module slipped into the wheel (it would run as `import sitecustomize`)."""
    wheel = plant_wheel({"sitecustomize.py": b"import os\n"})
    run = run_gate(wheel, release.sdist)
    assert run.failed_rules() == {"wheel-matches-sdist"}, run.stdout
    assert run.failures("wheel-matches-sdist") == [
        f"{wheel.name}:sitecustomize.py: not in {release.sdist.name}"]
