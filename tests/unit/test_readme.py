"""The README's configuration table is the user's reference: it must match Settings."""

from __future__ import annotations

import re
from pathlib import Path

from services.runtime.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_setting_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(AGENTFLUX_[A-Z0-9_]+)` \|", README.read_text(), re.M))
    expected = {f"AGENTFLUX_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text
