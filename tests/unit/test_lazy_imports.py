"""`import interceptors` loads no transport; each public name loads only what it needs.

Checked in a fresh interpreter, since this one has long since imported every client."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import interceptors

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ("confluent_kafka", "aio_pika", "grpc", "redis")


def loaded_after(code: str) -> list[str]:
    """The transport clients a fresh interpreter has imported after running `code`."""
    report = f"print(json.dumps([m for m in {TRANSPORTS!r} if m in sys.modules]))"
    probe = f"import sys, json\n{code}\n{report}"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_import_loads_no_transport() -> None:
    assert loaded_after("import interceptors") == []


def test_a_name_loads_its_transport_and_no_other() -> None:
    # A Kafka-only service never pays for the RabbitMQ client.
    loaded = loaded_after("import interceptors\ninterceptors.EventConsumer")
    assert "confluent_kafka" in loaded
    assert "aio_pika" not in loaded
    assert "aio_pika" in loaded_after("from interceptors import TaskConsumer")


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'NoSuchThing'"):
        _ = interceptors.NoSuchThing  # type: ignore[attr-defined]
    with pytest.raises(ImportError, match="NoSuchThing"):
        from interceptors import NoSuchThing  # type: ignore[attr-defined]  # noqa: F401


def test_dir_lists_the_public_names() -> None:
    assert set(interceptors.__all__) <= set(dir(interceptors))


def type_checking_names() -> set[str]:
    """The names `interceptors/__init__.py` imports under `if TYPE_CHECKING:`."""
    tree = ast.parse((ROOT / "interceptors" / "__init__.py").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_the_table_all_and_the_typing_imports_agree() -> None:
    # The table drives run time, the other two type checkers and IDEs: a name added to
    # one and not the others would work for one audience only.
    table: dict[str, str] = interceptors._EXPORTS
    assert sorted(table) == sorted(interceptors.__all__)
    assert type_checking_names() == set(table)
    for name, module in table.items():
        value = getattr(interceptors, name)
        assert value is getattr(sys.modules[f"interceptors.{module}"], name)
