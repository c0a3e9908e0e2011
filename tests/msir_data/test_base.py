"""SkipLog, Item and the hash split shared by every reader."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from msir_data import Item, SkipLog
from msir_data.base import assign_split, check_fractions, hash_fraction


def test_skiplog_counts_by_reason_and_dedupes() -> None:
    log = SkipLog()
    assert log.add("a.jpg", "decode failed", "truncated")
    assert log.add("b.jpg", "decode failed")
    assert log.add("c.csv:3", "unknown label", "Foo")
    assert not log.add("a.jpg", "decode failed", "again")  # same source and reason: recorded once
    assert len(log) == 3
    assert log.summary() == {"decode failed": 2, "unknown label": 1}
    assert log.describe() == "3 skipped (decode failed: 2, unknown label: 1)"
    assert [e.source for e in log] == ["a.jpg", "b.jpg", "c.csv:3"]
    assert SkipLog().describe() == "nothing skipped"


def test_skiplog_write_csv_report(tmp_path: Path) -> None:
    log = SkipLog()
    log.add(tmp_path / "x, y.jpg", "image file missing", 'quote " inside')
    out = log.write(tmp_path / "reports" / "skipped.csv")
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["source", "reason", "detail"],
        [str(tmp_path / "x, y.jpg"), "image file missing", 'quote " inside'],
    ]
    assert not list(out.parent.glob(".*tmp"))


def test_item_is_frozen() -> None:
    item = Item("a/b.png", (1,), "train", "/data/a/b.png", Path("/data/a/b.png"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.split = "test"  # type: ignore[misc]


def test_hash_split_is_deterministic_grouped_and_near_the_fractions() -> None:
    groups = [f"patient-{i}" for i in range(4000)]
    first = [assign_split(g, test_fraction=0.2, val_fraction=0.1) for g in groups]
    assert first == [assign_split(g, test_fraction=0.2, val_fraction=0.1) for g in groups]
    share = {s: first.count(s) / len(groups) for s in ("train", "val", "test")}
    assert share["test"] == pytest.approx(0.2, abs=0.03)
    assert share["val"] == pytest.approx(0.1, abs=0.03)
    other_seed = [assign_split(g, test_fraction=0.2, seed=1) for g in groups]
    assert other_seed != [assign_split(g, test_fraction=0.2) for g in groups]
    assert 0.0 <= hash_fraction("x") < 1.0


@pytest.mark.parametrize(("test", "val"), [(-0.1, 0.0), (1.0, 0.0), (0.5, 0.5), (0.2, -0.1)])
def test_bad_fractions_are_refused(test: float, val: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        check_fractions(test, val)
