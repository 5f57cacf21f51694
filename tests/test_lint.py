"""The code passes the project's linter (ruff, configured in ruff.toml: pyflakes,
pycodestyle, pyupgrade, bugbear) — the package, tests, demos and benchmarks — and no
test module imports another (what tests share is in tests/conftest.py)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    pytest.fail("ruff is not installed: it is part of the test extra (pip install -e '.[test]')")


def test_ruff_passes():
    res = subprocess.run(ruff() + ["check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_ruff_checks_what_it_should(tmp_path):
    """The configuration is the one in effect (an unused import is reported)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    res = subprocess.run(ruff() + ["check", "--no-cache", "--config", str(ROOT / "ruff.toml"), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "F401" in res.stdout, res.stdout


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    modules = {p.stem for p in tests.glob("test_*.py")}
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found += [f"tests/{path.name}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in modules]
    assert len(modules) > 20, sorted(modules)
    assert not found, "\n".join(found) + "\n(move what is shared to tests/conftest.py)"
