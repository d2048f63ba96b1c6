"""The contract gates CI relies on really close: `buf breaking` against the committed
baseline, `buf lint`, and `scripts/gen-check` for stale generated code.

Each test edits a copy of the repo in tmp_path and runs the real tool on it, as
`make gen-check` does; the checkout itself is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASELINE = "proto/published/agentflux-v1.1.binpb"
EVENTS = "proto/agentflux/v1/events.proto"
TYPES = "proto/agentflux/v1/types.proto"
# The venv's bin (not resolved: the venv's python is a symlink out of the venv).
VENV_BIN = Path(sys.executable).parent
TOOL_PATH = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def _buf() -> str:
    # The venv's buf first: it is the version pyproject pins, whose rule set CI uses.
    found = shutil.which("buf", path=TOOL_PATH)
    if found is None:
        pytest.fail(
            f"buf is on neither {VENV_BIN} nor PATH; install the dev extras (`make venv`)",
            pytrace=False,
        )
    return found


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": TOOL_PATH},
    )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    # An edit that silently matched nothing would make a "refused" test pass vacuously.
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new))


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    """buf.yaml, proto/ (with the published baseline) and proto-vendor/ (the subset of
    buf/validate/validate.proto the contracts import) copied to tmp_path."""
    assert (REPO / BASELINE).is_file(), f"the baseline {BASELINE} is not committed"
    shutil.copy2(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    shutil.copytree(REPO / "proto-vendor", tmp_path / "proto-vendor")
    return tmp_path


def _breaking(root: Path) -> subprocess.CompletedProcess[str]:
    return _run(root, _buf(), "breaking", "--against", BASELINE)


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return _run(root, _buf(), "lint")


def test_unchanged_contracts_pass_breaking_and_lint(contracts: Path) -> None:
    # Otherwise every refusal below might come from the copy, not from the edit.
    for result in (_breaking(contracts), _lint(contracts)):
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "expected"),
    [
        pytest.param(
            EVENTS,
            "  // The caller's prompt.\n  string prompt = 4;\n",
            "",
            ['"prompt"', 'message "AgentRequested"', "deleted"],
            id="field-deleted",
        ),
        pytest.param(
            EVENTS,
            "  int32 step = 6;\n",
            "  int64 step = 6;\n",
            ['"step"', 'message "AgentRequested"', '"int32" to "int64"'],
            id="field-type-changed",
        ),
        pytest.param(
            EVENTS,
            "  string prompt = 4;\n",
            "  string question = 4;\n",
            ['"prompt"', 'message "AgentRequested"', '"question"'],
            id="field-renamed",
        ),
        pytest.param(
            TYPES,
            "  // Served before anything else.\n"
            "  PRIORITY_URGENT = 4 [(agentflux.v1.amqp_priority) = 10];\n",
            "",
            ['enum value "4"', 'enum "Priority"', "deleted"],
            id="enum-value-deleted",
        ),
    ],
)
def test_breaking_change_is_refused(
    contracts: Path, path: str, old: str, new: str, expected: list[str]
) -> None:
    _edit(contracts / path, old, new)
    result = _breaking(contracts)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for text in expected:
        assert text in output


def test_compatible_addition_passes(contracts: Path) -> None:
    _edit(
        contracts / EVENTS,
        "  google.protobuf.Timestamp request_time = 9;\n",
        "  google.protobuf.Timestamp request_time = 9;\n"
        "  // Free-form label the caller attached to the run.\n"
        "  string label = 10;\n",
    )
    for result in (_breaking(contracts), _lint(contracts)):
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "\nmessage Uncommented {\n  // A field.\n  string id = 1;\n}\n",
            ['Message "Uncommented"', "comment"],
            id="message-without-comment",
        ),
        pytest.param(
            "\n// Colours.\nenum Colour {\n  // Red.\n  COLOUR_RED = 0;\n}\n",
            ['"COLOUR_RED"', '"_UNSPECIFIED"'],
            id="enum-zero-not-unspecified",
        ),
    ],
)
def test_lint_refuses(contracts: Path, text: str, expected: list[str]) -> None:
    _append(contracts / TYPES, text)
    result = _lint(contracts)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for part in expected:
        assert part in output


# -- scripts/gen-check ----------------------------------------------------------------


@pytest.fixture
def checkout(contracts: Path) -> Path:
    """The parts of the repo `scripts/gen-check` reads, copied to tmp_path."""
    _buf()  # fail with the clear message rather than a shell's "command not found"
    generators = [REPO / ".tools/bin/protoc", REPO / "gen/ts/node_modules/.bin/protoc-gen-es"]
    if not all(tool.exists() for tool in generators):
        pytest.fail("the code generators are not installed: run `make tools`", pytrace=False)
    shutil.copy2(REPO / "buf.gen.yaml", contracts / "buf.gen.yaml")
    shutil.copytree(REPO / "scripts", contracts / "scripts")
    shutil.copytree(
        REPO / "gen",
        contracts / "gen",
        ignore=shutil.ignore_patterns("__pycache__", "node_modules", "dist", "target"),
    )
    # The generators themselves are the checkout's (installed by `make tools`).
    (contracts / ".tools").symlink_to(REPO / ".tools")
    (contracts / "gen/ts/node_modules").symlink_to(REPO / "gen/ts/node_modules")
    return contracts


def _gen_check(root: Path) -> subprocess.CompletedProcess[str]:
    return _run(root, str(root / "scripts" / "gen-check"))


def test_gen_check_passes_on_fresh_code(checkout: Path) -> None:
    result = _gen_check(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def _edit_generated(root: Path) -> None:
    _append(root / "gen/python/agentflux/v1/events_pb2.py", "# edited by hand\n")


def _delete_generated(root: Path) -> None:
    (root / "gen/python/agentflux/v1/tasks_pb2.pyi").unlink()


def _add_stray_file(root: Path) -> None:
    (root / "gen/python/agentflux/v1/stray_pb2.py").write_text("")


def _change_proto_without_regenerating(root: Path) -> None:
    _edit(
        root / EVENTS,
        "  google.protobuf.Timestamp request_time = 9;\n",
        "  google.protobuf.Timestamp request_time = 9;\n"
        "  // Free-form label the caller attached to the run.\n"
        "  string label = 10;\n",
    )


def _edit_go(root: Path) -> None:
    _append(root / "gen/go/agentflux/v1/events.pb.go", "// edited by hand\n")


def _delete_java(root: Path) -> None:
    (root / "gen/java/src/main/java/dev/agentflux/v1/AgentRequested.java").unlink()


def _edit_typescript(root: Path) -> None:
    _append(root / "gen/ts/src/agentflux/v1/gateway_pb.ts", "// edited by hand\n")


@pytest.mark.parametrize(
    "change",
    [
        _edit_generated,
        _delete_generated,
        _add_stray_file,
        _change_proto_without_regenerating,
        _edit_go,
        _delete_java,
        _edit_typescript,
    ],
)
def test_gen_check_fails_on_stale_code(checkout: Path, change: Callable[[Path], None]) -> None:
    change(checkout)
    result = _gen_check(checkout)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "stale" in result.stderr
