"""Near-duplicate groups (indexer.duplicates): pairs, components, grouping, collapsing, `msir-index duplicates` and
its backfill of the copy descriptors of rows stored without one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from indexer import Collection
from indexer.cli import app
from indexer.duplicates import DEFAULT_THRESHOLD, collapse, components, group_vectors, similar_pairs
from indexer.metadata.tables import make_engine
from models import copy_descriptor
from tests.models.test_copy_descriptor import picture

REPO = Path(__file__).resolve().parents[2]


def brute_groups(ids: np.ndarray, x: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """Connected components of the cosine >= threshold graph by breadth-first search (the reference)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    n = len(ids)
    seen: set[int] = set()
    out: set[frozenset[int]] = set()
    for start in range(n):
        if start in seen:
            continue
        todo, comp = [start], {start}
        while todo:
            i = todo.pop()
            for j in np.flatnonzero(sims[i] >= threshold):
                if int(j) not in comp:
                    comp.add(int(j))
                    todo.append(int(j))
        seen |= comp
        if len(comp) > 1:
            out.add(frozenset(int(ids[i]) for i in comp))
    return out


def planted(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors (nearly orthogonal) with chains and clusters of close copies planted among them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    for src in range(0, n // 4, 7):  # copies of every 7th vector of the first quarter, some chained
        x[n - 1 - src] = x[src] + 0.05 * rng.normal(size=d)
        if src % 3 == 0:
            x[n // 2 + src] = x[n - 1 - src] + 0.05 * rng.normal(size=d)
    ids = rng.permutation(np.arange(10, 10 + 3 * n, 3)).astype(np.int64)  # unordered, not contiguous
    return ids, x


def test_groups_match_breadth_first_search_and_are_ordered() -> None:
    ids, x = planted(600, 24)
    found = group_vectors(ids, x, 0.97)
    assert found.exact and found.vectors == 600
    groups = [found.members(g) for g in range(len(found))]
    assert {frozenset(m.tolist()) for m, _ in groups} == brute_groups(ids, x, 0.97)
    assert any(len(m) == 3 for m, _ in groups)  # a chain joined transitively
    sizes = [len(m) for m, _ in groups]
    assert sizes == sorted(sizes, reverse=True)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    row = {int(i): r for r, i in enumerate(ids)}
    for members, scores in groups:
        assert members[0] == members.min() and list(members) == sorted(members)  # representative first
        expected = [float(unit[row[int(i)]] @ unit[row[int(members[0])]]) for i in members]
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert found.group_of[int(groups[0][0][-1])] == int(groups[0][0][0])


def test_inverted_file_search_finds_the_planted_pairs() -> None:
    ids, x = planted(4000, 32, seed=1)
    exact = group_vectors(ids, x, 0.97)
    approx = group_vectors(ids, x, 0.97, exact_max=100)
    assert not approx.exact
    assert {frozenset(approx.members(g)[0].tolist()) for g in range(len(approx))} == {
        frozenset(exact.members(g)[0].tolist()) for g in range(len(exact))
    }


def test_threshold_is_inclusive_and_self_pairs_are_left_out() -> None:
    x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)  # cosines 0.6, 0, 0.8
    a, b, exact = similar_pairs(x, 0.8)
    assert exact and sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(1, 2)]
    a, _, _ = similar_pairs(x, 0.5)
    assert len(a) == 2
    assert len(group_vectors(np.arange(3), x, 0.99)) == 0
    assert len(group_vectors(np.zeros(0, np.int64), np.zeros((0, 2), np.float32), 0.9)) == 0


def test_components_of_long_chains() -> None:
    n = 10_000
    a = np.arange(n - 1)[::-1].copy()  # one path 0-1-2-...: the worst case for naive hooking
    roots = components(n, a, a + 1)
    assert (roots == 0).all()
    roots = components(6, np.array([4, 1, 3]), np.array([5, 2, 4]))
    assert roots.tolist() == [0, 1, 1, 3, 3, 3]


def test_collapse_keeps_the_best_of_each_group() -> None:
    class H:
        def __init__(self, i: int) -> None:
            self.id = i

    hits = [H(i) for i in (5, 7, 9, 6, 8, 1)]
    kept = collapse(hits, {5: 5, 6: 5, 7: 7, 8: 7}, 3)
    assert [h.id for h in kept] == [5, 7, 9]
    assert [h.id for h in collapse(hits, {5: 5, 6: 5, 7: 7, 8: 7}, 10)] == [5, 7, 9, 1]


def test_cli_groups_a_re_encoded_copy_with_its_original(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "imgs"
    paths = write_pictures(folder, 12)
    Image.open(paths[3]).save(folder / "copy.jpg", quality=90)  # the same picture, other bytes
    directory = tmp_path / "col"
    runner = CliRunner()
    build = ["build", str(directory), "-c", str(checkpoint), "--folder", str(folder), "--workers", "0"]
    assert runner.invoke(app, [*build, "--device", "cpu", "--json"]).exit_code == 0
    with Collection.open(directory, device="cpu") as col:
        by_name = {Path(r.uri).name: r.id for r in col.get_many(col.store.ids().tolist()).values()}
        vectors = stored_descriptors(col)
    original, copy = by_name[paths[3].name], by_name["copy.jpg"]
    cosine = float(vectors[original] @ vectors[copy])
    threshold = cosine - 1e-4
    result = runner.invoke(app, ["duplicates", str(directory), "--threshold", f"{threshold}", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    ids = np.array(list(vectors), np.int64)
    expected = brute_groups(ids, np.stack([vectors[int(i)] for i in ids]), threshold)
    assert {frozenset(m["id"] for m in g) for g in out["groups"]} == expected
    assert any({original, copy} <= {m["id"] for m in g} for g in out["groups"])
    assert out["images"] == 13 and out["exact"] and out["threshold"] == pytest.approx(threshold)
    text = runner.invoke(app, ["duplicates", str(directory), "--threshold", f"{threshold}"])
    assert text.exit_code == 0 and "copy.jpg" in text.stdout and "near-duplicate groups" in text.stdout
    bad = runner.invoke(app, ["duplicates", str(directory), "--threshold", "1.5"])
    assert bad.exit_code == 2
    # At the calibrated default the copy is grouped with its original, and with nothing else (distinct images).
    default = json.loads(runner.invoke(app, ["duplicates", str(directory), "--json"]).stdout)
    assert [sorted(m["id"] for m in g) for g in default["groups"]] == [sorted([original, copy])]
    assert default["backfill"] == {"filled": 0, "skipped": []}


def write_pictures(folder: Path, n: int) -> list[Path]:
    """``n`` distinct synthetic photos (PNG): with edges and colour fields, unlike pure noise, whose descriptors
    are alike (the copy descriptor looks at coarse structure only)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        picture(i, size=48).save(path)
    return paths


def stored_descriptors(col: Collection) -> dict[int, np.ndarray]:
    return {int(i): v for ids, x in col.store.iter_copy_descriptors() for i, v in zip(ids, x, strict=True)}


def test_cli_backfills_rows_stored_without_a_copy_descriptor(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "imgs"
    paths = write_pictures(folder, 6)
    Image.open(paths[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "flipped.png")
    directory = tmp_path / "col"
    runner = CliRunner()
    build = ["build", str(directory), "-c", str(checkpoint), "--folder", str(folder), "--workers", "0"]
    assert runner.invoke(app, [*build, "--device", "cpu", "--json"]).exit_code == 0
    with Collection.open(directory, device="cpu") as col:
        computed = stored_descriptors(col)
        by_name = {Path(r.uri).name: r.id for r in col.get_many(col.store.ids().tolist()).values()}
    assert len(computed) == 7
    # As an older msir left them: no descriptors; one row's file has gone since.
    engine = make_engine(f"sqlite:///{directory / 'metadata.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE images SET copy_descriptor = NULL"))
    engine.dispose()
    paths[4].unlink()
    before = json.loads(runner.invoke(app, ["duplicates", str(directory), "--no-backfill", "--json"]).stdout)
    assert before["images"] == 0 and before["groups"] == [] and before["backfill"] is None
    result = runner.invoke(app, ["duplicates", str(directory), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    gone = by_name[paths[4].name]
    assert out["backfill"]["filled"] == 6 and [s["id"] for s in out["backfill"]["skipped"]] == [gone]
    assert "not found" in out["backfill"]["skipped"][0]["reason"]
    assert out["images"] == 6
    assert [sorted(m["id"] for m in g) for g in out["groups"]] == [
        sorted([by_name[paths[1].name], by_name["flipped.png"]])
    ]
    with Collection.open(directory, device="cpu") as col:
        filled = stored_descriptors(col)
    assert sorted(filled) == sorted(i for i in computed if i != gone)
    for i, v in filled.items():  # the same descriptor as the one computed on add
        np.testing.assert_allclose(v, computed[i], atol=1e-5)
    again = json.loads(runner.invoke(app, ["duplicates", str(directory), "--json"]).stdout)
    assert again["backfill"]["filled"] == 0 and len(again["backfill"]["skipped"]) == 1  # still reported
    text = runner.invoke(app, ["duplicates", str(directory)])
    assert f"skipped {gone}" in text.stdout


def test_default_threshold_is_the_calibrated_one() -> None:
    """The constant the service and CLI default to is the one benchmarks/duplicates.py calibrated, for the copy
    descriptor the service compares."""
    result = json.loads((REPO / "results" / "benchmarks" / "duplicates.json").read_text())
    assert result["served"] == "copy_descriptor" and result["descriptor_version"] == copy_descriptor.VERSION
    assert result["calibrated_threshold"] == pytest.approx(DEFAULT_THRESHOLD, abs=5e-5)
