"""The layers in pyproject.toml's `[tool.importlinter]` hold, and the gate bites.

A contract that passes proves little on its own (a typo in a module name can make it
vacuous), so the second half runs the same configuration over a copy of the packages with
one forbidden import added and expects `lint-imports` to name it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# The root packages of `[tool.importlinter]`, by import name.
PACKAGES = {
    "agentflux": ROOT / "gen" / "python" / "agentflux",
    "services": ROOT / "services",
    "interceptors": ROOT / "interceptors",
}


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_tree_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The three root packages and the real configuration, in a folder of their own.

    lint-imports puts its working directory first on sys.path, so the copies shadow the
    editable install."""
    for name, source in PACKAGES.items():
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(tree: Path, module: str, imported: str) -> None:
    """Appends `import <imported>` to `module`, creating it (and its package) if new."""
    path = tree / (module.replace(".", "/") + ".py")
    if not path.exists() and (tree / module.replace(".", "/")).is_dir():
        path = tree / module.replace(".", "/") / "__init__.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    with path.open("a") as fh:
        fh.write(f"\nimport {imported}\n")


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("services.runtime.config", "services.cli"),
        ("services.runtime.contracts", "interceptors"),
        ("interceptors._context", "services.demo"),
        ("agentflux.v1", "services.runtime"),
        # Optional layers, not yet present, are enforced as soon as they appear: a model
        # provider may not reach up into the tooling, nor a service into another service.
        ("services.models.scripted", "services.stack"),
        ("services.gateway.app", "services.planner.app"),
    ],
)
def test_an_upward_import_fails_the_gate(tree: Path, importer: str, imported: str) -> None:
    if imported == "services.planner.app":
        # The sibling it imports, as a real service module would look (runtime is below it).
        add_import(tree, "services.planner.app", "services.runtime")
    add_import(tree, importer, imported)
    result = lint_imports(tree, "--no-cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout
    assert f"- {importer} -> {imported} (l." in result.stdout
