"""The verifier validates a bundle produced by the server and refuses a tampered one, in a
test that imports nothing from the project (CONTRACT 5: "a pharmacy can verify it offline
with any standard library").

The bundle comes from the ``server_bundle`` fixture (``tests/rx_bundle_fixture.py``, a
plugin named by a string below): a real prescription signed, approved, claimed and
downloaded through the HTTP API, written to files. This module then does what a pharmacy
integrator does: it copies the one file ``prescriptions/verify.py`` into an empty folder
and runs it with a Python that cannot import the project.

Why not just ``python -I -m verify``: from Python 3.11, ``-I`` also leaves the current
folder off ``sys.path`` (so ``-m verify`` would not find the copy), and the project's
editable install adds an import hook through a ``.pth`` file that ``-I`` still runs, so the
project would stay importable. Instead the verifier runs with ``-I -S`` (no ``site``, no
``.pth`` files); a few lines put the copy's folder and only the folders holding its two
dependencies (``cryptography``, ``rfc8785``) on ``sys.path``, check that no project
package can be found, and run the copy as ``-m verify`` would.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.rx_bundle_fixture"]

HERE = Path(__file__).resolve()
VERIFIER = HERE.parent.parent / "prescriptions" / "verify.py"
PROJECT_PACKAGES = (
    "backend",
    "prescriptions",
    "consultations",
    "console",
    "mobile_api",
    "payments",
    "regulators",
    "tests",
)

#: Run inside the sealed interpreter: argv is [-c, <dependency folders>, verifier args...].
BOOT = f"""
import importlib.util, os, runpy, sys
dependencies = sys.argv.pop(1).split(os.pathsep)
sys.path[:] = [os.getcwd(), *[p for p in sys.path if p], *dependencies]
leaked = [n for n in {PROJECT_PACKAGES!r} if importlib.util.find_spec(n) is not None]
if leaked:
    sys.stderr.write("the project is importable: " + ", ".join(leaked))
    sys.exit(3)
runpy.run_module("verify", run_name="__main__", alter_sys=True)
"""


def _dependency_folders() -> str:
    folders = []
    for name in ("cryptography", "rfc8785"):
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.origin is not None
        folders.append(str(Path(spec.origin).parent.parent))
    return os.pathsep.join(sorted(set(folders)))


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """An empty folder holding only a copy of the verifier."""
    folder = tmp_path / "pharmacy"
    folder.mkdir()
    shutil.copy(VERIFIER, folder / "verify.py")
    assert sorted(p.name for p in folder.iterdir()) == ["verify.py"]
    return folder


def verify(sandbox: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", BOOT, _dependency_folders(), *args],
        cwd=sandbox,
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr)
    return proc.returncode, json.loads(proc.stdout)


def tampered(server_bundle: dict[str, Any], folder: Path, name: str, **changes: Any) -> str:
    bundle = json.loads(Path(server_bundle["bundle"]).read_text(encoding="utf-8"))
    bundle.update(changes)
    path = folder / name
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return str(path)


def _flip(encoded: str, position: int) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_this_module_imports_nothing_from_the_project() -> None:
    tree = ast.parse(HERE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & set(PROJECT_PACKAGES), imported


def test_the_sandbox_cannot_import_the_project(sandbox) -> None:
    probe = "import sys\ntry:\n    import prescriptions\nexcept ImportError:\n    sys.exit(0)\n"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=sandbox,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_bundle_from_the_server_verifies_offline(server_bundle, sandbox) -> None:
    status, summary = verify(sandbox, server_bundle["bundle"], "--root", server_bundle["root"])
    assert status == 0, summary
    assert summary["valid"] is True
    assert summary["prescription_id"] == server_bundle["prescription_id"]
    assert summary["version"] == 1
    assert summary["root_sha256"] == server_bundle["root_sha256"]
    assert summary["doctor"]["role"] == "doctor"
    assert (
        summary["doctor"]["practice_certificate_number"]
        == server_bundle["doctor_practice_certificate_number"]
    )
    assert summary["pharmacist"]["role"] == "pharmacist"
    assert (
        summary["pharmacist"]["practice_certificate_number"]
        == server_bundle["pharmacist_practice_certificate_number"]
    )
    assert summary["warnings"] == []
    assert sorted(p.name for p in sandbox.iterdir()) == ["verify.py"]


def test_a_flipped_byte_in_the_signed_content_is_refused(server_bundle, sandbox, tmp_path) -> None:
    bundle = json.loads(Path(server_bundle["bundle"]).read_text(encoding="utf-8"))
    raw = base64.b64decode(bundle["signed_content"])
    # A byte inside a value ("qd" becomes "pd"): still canonical JSON, still this
    # prescription, so only the signature can tell.
    position = raw.index(b'"frequency":"qd"') + len(b'"frequency":"')
    path = tampered(
        server_bundle,
        tmp_path,
        "flipped.json",
        signed_content=_flip(bundle["signed_content"], position),
    )
    status, answer = verify(sandbox, path, "--root", server_bundle["root"])
    assert status == 1
    assert answer["valid"] is False
    assert answer["code"] == "signature_invalid"

    # The first byte: the bytes are no longer JSON at all.
    path = tampered(
        server_bundle, tmp_path, "first.json", signed_content=_flip(bundle["signed_content"], 0)
    )
    assert verify(sandbox, path, "--root", server_bundle["root"])[1]["code"] == "not_canonical"

    # A byte of the doctor's signature.
    signature = dict(
        bundle["doctor_signature"], value=_flip(bundle["doctor_signature"]["value"], 9)
    )
    path = tampered(server_bundle, tmp_path, "signature.json", doctor_signature=signature)
    status, answer = verify(sandbox, path, "--root", server_bundle["root"])
    assert (status, answer["code"]) == (1, "signature_invalid")


def test_a_bundle_under_another_root_is_untrusted(server_bundle, sandbox, tmp_path) -> None:
    # The genuine bundle, with another hospital's root pinned.
    status, answer = verify(sandbox, server_bundle["bundle"], "--root", server_bundle["other_root"])
    assert (status, answer["valid"], answer["code"]) == (1, False, "untrusted_root")

    # The bundle's root swapped for another hospital's, with ours pinned.
    other_root = Path(server_bundle["other_root"]).read_text(encoding="utf-8")
    path = tampered(server_bundle, tmp_path, "swapped.json", root_certificate=other_root)
    status, answer = verify(sandbox, path, "--root", server_bundle["root"])
    assert (status, answer["valid"], answer["code"]) == (1, False, "untrusted_root")
