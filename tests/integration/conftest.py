"""Integration fixtures: the real local stack, brought up once per session.

Tests never share broker state: each gets its own name prefix for topics, queues,
consumer groups and keys, so they can run in any order against one stack."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.runtime.config import Settings

AGENTFLUX = str(Path(sys.executable).with_name("agentflux"))


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings of the local stack, after `agentflux stack up` succeeded (idempotent:
    with `make test` it is already up and this takes a fraction of a second)."""
    done = subprocess.run(
        [AGENTFLUX, "stack", "up"], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"agentflux stack up failed:\n{done.stdout}\n{done.stderr}")
    return Settings()


@pytest.fixture
def prefix() -> str:
    """A name prefix no other test uses."""
    return f"test.{uuid.uuid4().hex[:12]}."
