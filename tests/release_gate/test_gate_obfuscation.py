"""Open source, never obfuscated: each kind of unreadable code, planted in the real wheel, fails."""
from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import random
import py_compile
import sysconfig
from pathlib import Path

import pytest

from .gate_helpers import run_gate


def _real_pyc(tmp_path: Path) -> bytes:
    source = tmp_path / "event.py"
    source.write_text("X = 1\n")
    return Path(py_compile.compile(str(source), cfile=str(tmp_path / "event.pyc"))).read_bytes()


def _real_extension_module() -> bytes:
    """The bytes of a real native extension module of this interpreter (e.g. _json)."""
    for name in ("_json", "_csv", "math", "_struct"):
        spec = importlib.util.find_spec(name)
        if spec and spec.origin and spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return Path(spec.origin).read_bytes()
    dynload = Path(sysconfig.get_paths()["platstdlib"], "lib-dynload")
    return next(dynload.glob("*.so")).read_bytes()


def _assert_fails_only(run, rule: str, path: str, reason: str = "") -> None:
    assert run.rc == 1, run.stdout
    assert run.failed_rules() == {rule}, run.stdout
    hits = [f for f in run.failures(rule) if f":{path}" in f and reason in f]
    assert hits, run.failures(rule)


# --- compiled-code --------------------------------------------------------------------------

def test_pyc_beside_its_source_fails(plant_wheel, tmp_path):
    wheel = plant_wheel({"interceptor/__pycache__/event.cpython-311.pyc": _real_pyc(tmp_path)})
    _assert_fails_only(run_gate(wheel), "compiled-code", "interceptor/__pycache__/event.cpython-311.pyc",
                       "compiled Python in the artifact")


def test_module_shipped_only_compiled_fails(plant_wheel, tmp_path):
    wheel = plant_wheel({"ledger/hidden.pyc": _real_pyc(tmp_path)})
    run = run_gate(wheel)
    _assert_fails_only(run, "compiled-code", "ledger/hidden.pyc", "without its source ledger/hidden.py")


def test_pyo_fails(plant_wheel, tmp_path):
    wheel = plant_wheel({"verifier/old.pyo": _real_pyc(tmp_path)})
    _assert_fails_only(run_gate(wheel), "compiled-code", "verifier/old.pyo", "compiled Python")


def test_package_without_its_init_source_fails(plant_wheel, tmp_path):
    wheel = plant_wheel({"ledger/__init__.pyc": _real_pyc(tmp_path)}, remove=["ledger/__init__.py"])
    run = run_gate(wheel)
    assert run.rc == 1
    assert any("ledger/__init__.py: package ledger ships without" in f
               for f in run.failures("compiled-code"))


# --- native-code ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "verifier/_speedups.cpython-311-x86_64-linux-gnu.so",
    "ledger/ledger.cpython-311-x86_64-linux-gnu.so",  # a Cython/Nuitka-compiled copy of a module
    "ledger/netaudit_helper",
    "interceptor/_hook.pyd",
    "ledger/helper.dll",
    "ledger/helper.dylib",
])
def test_native_extension_fails(plant_wheel, path):
    # The extension sits beside a .py of the same module, so only native-code is at stake.
    module_py = path.split(".")[0] + ".py"
    wheel = plant_wheel({path: _real_extension_module(), module_py: b'"""Pure fallback."""\n'})
    _assert_fails_only(run_gate(wheel), "native-code", path, "native e")


def test_platform_tagged_wheel_fails(release, plant_wheel):
    def platform_tag(files):
        name = next(p for p in files if p.endswith(".dist-info/WHEEL"))
        files[name] = (files[name].replace(b"Root-Is-Purelib: true", b"Root-Is-Purelib: false")
                       .replace(b"Tag: py3-none-any", b"Tag: cp311-cp311-linux_x86_64"))
    name = release.wheel.name.replace("py3-none-any", "cp311-cp311-linux_x86_64")
    run = run_gate(plant_wheel(edit=platform_tag, name=name))
    assert run.failed_rules() == {"native-code"}
    reasons = " | ".join(run.failures("native-code"))
    assert "not pure Python" in reasons and "platform tag cp311-cp311-linux_x86_64" in reasons


# --- obfuscator -----------------------------------------------------------------------------

PYARMOR_STUB = (b"# Pyarmor 8.5.1 (trial), 000000, 2024-05-01T00:00:00.000000\n"
                b"from pyarmor_runtime_000000 import __pyarmor__\n"
                b"__pyarmor__(__name__, __file__, b'PY000000\\x00\\x03\\x0b\\x00\\xa7\\r\\r\\n')\n")


def test_pyarmor_obfuscated_module_and_runtime_fail(plant_wheel):
    wheel = plant_wheel({
        "ledger/report.py": PYARMOR_STUB,
        "pyarmor_runtime_000000/__init__.py": b"from .pyarmor_runtime import __pyarmor__\n",
    })
    run = run_gate(wheel)
    assert run.failed_rules() == {"obfuscator"}, run.stdout
    found = " | ".join(run.failures("obfuscator"))
    assert "ledger/report.py:1: PyArmor header comment" in found
    assert "ledger/report.py:2: PyArmor trace" in found
    assert "ledger/report.py:3: PyArmor trace: __pyarmor__" in found
    assert "pyarmor_runtime_000000/__init__.py: PyArmor runtime" in found


def test_pyarmor_legacy_pytransform_runtime_fails(plant_wheel):
    wheel = plant_wheel({"pytransform/__init__.py": b"def pyarmor_runtime():\n    pass\n"})
    _assert_fails_only(run_gate(wheel), "obfuscator", "pytransform/__init__.py", "PyArmor runtime")


@pytest.mark.parametrize("path, data, what", [
    ("interceptor/event.c", b"/* Generated by Cython 3.0.10 */\n#define __PYX_ABI_MODULE_NAME x\n",
     "Cython"),
    ("interceptor/event.pyx", b"cdef int x = 1\n", "Cython source"),
    ("ledger/__init__.pyi", b"", None),  # a stub file is readable: not a trace (control)
    ("verifier/payload.dat", b"\x00" * 64 + b"Nuitka-Onefile-Payload", "Nuitka"),
    ("ledger/netaudit.dist/run.py", b"X = 1\n", "Nuitka build output"),
    ("interceptor/PYZ-00.pyz", b"PYZ\x00" + b"\x00" * 32, "PyInstaller"),
    ("interceptor/pyi_rth_inspect.py", b"import sys\n", "PyInstaller"),
    ("verifier/bundle.bin", b"\x00" * 32 + b"MEI\x0c\x0b\x0a\x0b\x0e" + b"\x00" * 8, "PyInstaller"),
])
def test_obfuscator_traces_fail(plant_wheel, path, data, what):
    run = run_gate(plant_wheel({path: data}))
    if what is None:
        assert run.rc == 0, run.stdout
        return
    _assert_fails_only(run, "obfuscator", path, what)


@pytest.mark.parametrize("code, what", [
    (b"import sys\nif '__compiled__' in dir():\n    print(__compiled__.containing_dir)\n", "Nuitka"),
    (b"import sys\nBASE = sys._MEIPASS\n", "PyInstaller"),
    (b"import pyximport\npyximport.install()\n", "Cython"),
])
def test_obfuscator_names_in_python_fail(plant_wheel, code, what):
    run = run_gate(plant_wheel({"ledger/planted.py": code}))
    _assert_fails_only(run, "obfuscator", "ledger/planted.py", f"{what} trace")


# --- code-from-data -------------------------------------------------------------------------

@pytest.mark.parametrize("code, line", [
    ('import base64\nexec(base64.b64decode(b"cHJpbnQoMSk="))\n', 2),
    ("import zlib as z\n\ndef run(data):\n    return eval(z.decompress(data))\n", 4),
    ("from base64 import b64decode as d\nBLOB = b''\ncode = d(BLOB)\nexec(code)\n", 4),
    ('import codecs\n\ndef load(s):\n    src = codecs.decode(s, "rot13")\n    text = src.strip()\n'
     '    return compile(text, "<x>", "exec")\n', 6),
    ("import binascii\nC = compile(source=binascii.unhexlify(b'31'), filename='x', mode='eval')\n", 2),
    ("import marshal\nCODE = marshal.loads(b'')\n", 2),
    ("CODE = __import__('marshal').loads(b'')\n", 1),
    ("import base64\nRUN = lambda blob: exec(base64.b64decode(blob))\n", 2),
    ("from base64 import *\nexec(b64decode(b''))\n", 2),
    ("import zlib\ngetattr(__builtins__, 'exec')(zlib.decompress(b''))\n", 2),
    ("import zlib\nSRC = zlib.decompress(b'')\n\ndef run():\n    exec(SRC)\n", 5),
    ("import marshal\n\ndef f(code=marshal.loads(b'')):\n    return code\n", 3),
])
def test_code_built_from_decoded_data_fails(plant_wheel, code, line):
    run = run_gate(plant_wheel({"ledger/planted.py": code.encode()}))
    _assert_fails_only(run, "code-from-data", f"ledger/planted.py:{line}")


def test_decoding_without_exec_passes(plant_wheel):
    code = (b"import base64, json\n\ndef parse(x):\n    return json.loads(base64.b64decode(x))\n\n"
            b"TWO = eval('1 + 1')\n")
    assert run_gate(plant_wheel({"ledger/planted.py": code})).rc == 0


def test_pth_file_fails(plant_wheel):
    wheel = plant_wheel({"mit_network_audit_hook.pth": b"import os; os.environ.setdefault('X', '1')\n"})
    _assert_fails_only(run_gate(wheel), "code-from-data", "mit_network_audit_hook.pth", ".pth")


# --- unreadable-source ----------------------------------------------------------------------

def _wrapped_literal(blob: str) -> bytes:
    """A long literal written as implicit concatenation over short lines."""
    parts = [blob[i:i + 70] for i in range(0, len(blob), 70)]
    body = "\n".join(f"    {p!r}" for p in parts)
    return f"BLOB = (\n{body}\n)\n".encode()


def test_overlong_line_fails(plant_wheel):
    code = b"X = 1  # " + b"a" * 600 + b"\n"
    _assert_fails_only(run_gate(plant_wheel({"verifier/planted.py": code})), "unreadable-source",
                       "verifier/planted.py:1", "line of 609 characters")


def test_base64_blob_literal_fails(plant_wheel):
    code = _wrapped_literal(base64.b64encode(random.Random(1).randbytes(600)).decode())
    _assert_fails_only(run_gate(plant_wheel({"interceptor/planted.py": code})), "unreadable-source",
                       "interceptor/planted.py:2", "literal without whitespace of entropy")


def test_random_bytes_literal_fails(plant_wheel):
    blob = random.Random(2).randbytes(400)
    lines = [repr(blob[i:i + 16]) for i in range(0, len(blob), 16)]
    code = ("BLOB = (\n" + "\n".join(f"    {line}" for line in lines) + "\n)\n").encode()
    _assert_fails_only(run_gate(plant_wheel({"ledger/planted.py": code})), "unreadable-source",
                       "ledger/planted.py:2", "entropy")


def test_unparsable_python_fails(plant_wheel):
    _assert_fails_only(run_gate(plant_wheel({"ledger/planted.py": b"def broken(:\n"})),
                       "unreadable-source", "ledger/planted.py", "does not parse")


def test_prose_sql_and_hex_literals_pass(plant_wheel):
    """Long readable literals are fine: documentation, SQL, and hex golden vectors."""
    prose = ("The ledger is append-only; every row links to the previous one by its SHA-256\n"
             "hash, and a signed head kept outside the file catches truncation and rollback.\n") * 8
    sql = "CREATE TABLE IF NOT EXISTS t (a INTEGER NOT NULL, b BLOB NOT NULL) STRICT;\n" * 10
    code = (f'"""{prose}"""\n\nSQL = """\n{sql}"""\n'.encode()
            + _wrapped_literal(random.Random(3).randbytes(300).hex()))
    assert run_gate(plant_wheel({"verifier/planted.py": code})).rc == 0


def test_code_too_deep_to_parse_fails_closed(plant_wheel):
    code = ("X = (1\n" + "+ 1\n" * 20000 + ")\n").encode()
    run = run_gate(plant_wheel({"ledger/planted.py": code}))
    assert run.rc == 1 and "Traceback" not in run.stderr
    assert any(":ledger/planted.py: does not parse" in f for f in run.failures("unreadable-source"))
