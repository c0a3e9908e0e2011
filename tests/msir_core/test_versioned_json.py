"""msir_core.versioned_json: one reader of the versioned JSON files (checkpoint metadata, collection manifests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msir_core.versioned_json import read_versioned_json


class Refused(ValueError):
    pass


def read(path: Path) -> dict:
    return read_versioned_json(path, fmt="x", max_version=2, error=Refused, what="an x file", unreadable="unreadable")


def test_accepts_its_format_at_its_version_or_older(tmp_path: Path) -> None:
    for version in (1, 2):
        path = tmp_path / f"v{version}.json"
        path.write_text(json.dumps({"format": "x", "format_version": version, "a": 1}))
        assert read(path)["a"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable"),
        (json.dumps({"format": "y", "format_version": 1}), 'not an x file (expected "format": "x")'),
        (json.dumps([1, 2]), "not an x file"),
        (json.dumps({"format": "x", "format_version": 3}), "format_version 3 is newer than this msir understands (2)"),
        (json.dumps({"format": "x"}), "format_version None is newer"),
    ],
)
def test_refusals_name_the_file_and_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(content)
    with pytest.raises(Refused) as caught:
        read(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="unreadable"):
        read(tmp_path / "missing.json")
