"""The project's shape: one-way imports, lint, and a wheel that installs under one namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """The core never imports Qt or Gradio; front ends and training stay in their lanes."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed")
    proc = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "garbage_sorter", "training", "bench", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if "No module named ruff" in proc.stderr:
        pytest.skip("ruff is not installed")
    assert proc.returncode == 0, proc.stdout


def test_wheel_keeps_everything_under_garbage_sorter(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("garbage_sorter-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"garbage_sorter", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for needed in (
        "garbage_sorter/training/train.py",
        "garbage_sorter/resources/bins/de.toml",
        "garbage_sorter/resources/models/u2netp.onnx",
        "garbage_sorter/resources/models/garbage_sorter.pt",
        "garbage_sorter/resources/models/garbage_sorter.onnx",
    ):
        assert needed in names, needed


def test_python_dash_m_and_console_script_agree():
    a = subprocess.run(
        [sys.executable, "-m", "garbage_sorter", "--help"], capture_output=True, text=True
    )
    exe = shutil.which("garbage-sorter", path=str(Path(sys.executable).parent))
    assert exe, "the garbage-sorter console script is not installed"
    b = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout.replace("__main__.py", "garbage-sorter") == b.stdout
    t = subprocess.run(
        [sys.executable, "-m", "garbage_sorter.training", "--help"], capture_output=True, text=True
    )
    assert t.returncode == 0 and "--data" in t.stdout and "--mode" in t.stdout


def test_training_imports_no_front_end():
    """import-linter cannot see training/ (mapped into the package at install), so check it here."""
    import ast

    forbidden = ("PySide6", "gradio", "garbage_sorter.ui", "garbage_sorter.web")
    for path in (ROOT / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
