"""README stays true: the two-command quick start and every service setting documented."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings
from training.distributed import CONNECT_TIMEOUT_ENV

# Environment variables of the other tools (not service settings) that README documents.
OTHER_TOOLS = {CONNECT_TIMEOUT_ENV}

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_is_the_two_make_commands() -> None:
    text = README.read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_setting_is_in_the_configuration_reference() -> None:
    documented = set(re.findall(r"`(MSIR_[A-Z0-9_]+)`", README.read_text()))
    expected = {f"MSIR_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from README"
    assert documented - expected - OTHER_TOOLS == set(), "README documents settings that do not exist"


def test_linked_files_exist() -> None:
    root = README.parent
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if target.startswith("http"):
            continue
        assert (root / target).exists(), f"README links to missing {target}"
