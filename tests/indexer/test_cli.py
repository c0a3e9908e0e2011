"""``msir-index``: results identical to the Python API, exit codes, user errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from indexer import Collection
from indexer.cli import app
from indexer.manifest import Manifest
from indexer.vectors.faiss_index import INDEX_FILE
from models import open_image
from tests.fixtures_formats import write_manifest
from tests.indexer.conftest import write_images, write_labelled_folder

runner = CliRunner()


def run(*args: str | Path, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result.stdout


@pytest.fixture
def built(tmp_path: Path, checkpoint: Path) -> Path:
    root = write_labelled_folder(tmp_path / "data", 5)
    directory = tmp_path / "col"
    out = json.loads(
        run(
            "build",
            directory,
            "-c",
            checkpoint,
            "--data",
            root,
            "--workers",
            "0",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--json",
        )
    )
    assert out["added"] == 30 and out["vectors"] == 30 and out["failed"] == 0
    assert {s["stage"] for s in out["stages"]} >= {"reader (wait)", "embedder", "writer"}
    return directory


def test_search_json_matches_python_api(built: Path, tmp_path: Path) -> None:
    query = next((tmp_path / "data" / "test" / "green").glob("*.png"))
    out = json.loads(run("search", built, "--image", query, "-k", "7", "--device", "cpu", "--json"))
    with Collection.open(built, device="cpu") as col:
        emb = col.embedder.embed_images([open_image(query)]).embeddings
        hits = col.search(emb, 7)[0]
        filtered = col.search(emb, 4, split="train", labels=["red"])[0]
    assert [h["id"] for h in out["hits"]] == [h.id for h in hits]
    assert [h["score"] for h in out["hits"]] == [h.score for h in hits]
    assert out["hits"][0]["uri"].endswith(str(query.relative_to(tmp_path / "data"))) and out["hits"][0]["score"] > 0.999
    out = json.loads(
        run(
            "search",
            built,
            "--image",
            query,
            "-k",
            "4",
            "--split",
            "train",
            "--label",
            "red",
            "--device",
            "cpu",
            "--json",
        )
    )
    assert [h["id"] for h in out["hits"]] == [h.id for h in filtered]
    assert all(h["split"] == "train" and h["labels"] == ["red"] for h in out["hits"])
    assert "nearest to" in run("search", built, "--image", query, "-k", "3", "--device", "cpu")


def test_stats_eval_remove_verify(built: Path) -> None:
    stats = json.loads(run("stats", built, "--json"))
    assert stats["rows"] == 30 and stats["splits"] == {"train": 15, "test": 15} and stats["problems"] == []
    metrics = json.loads(run("eval", built, "--ks", "1,5", "--json"))
    assert metrics["num_queries"] == 15 and metrics["num_database"] == 15 and metrics["ks"] == [1, 5]
    assert 0.0 <= metrics["precision_at_k"]["5"] <= 1.0
    assert "retrieval" in run("eval", built)
    assert json.loads(run("verify", built, "--json"))["ok"] is True
    assert json.loads(run("remove", built, "--id", "1", "--id", "2", "--json")) == {"removed": 2, "rows": 28}
    assert "ok" in run("verify", built)
    run("rebuild", built, "--index", "hnsw", "--hnsw-m", "8")
    assert json.loads(run("stats", built, "--json"))["index"]["type"] == "hnsw"
    assert json.loads(run("verify", built, "--json"))["ok"] is True


def test_verify_exits_1_on_mismatch_and_rebuild_repairs(built: Path) -> None:
    index = faiss.read_index(str(built / INDEX_FILE))
    index.remove_ids(np.asarray([5], dtype=np.int64))
    faiss.write_index(index, str(built / INDEX_FILE))
    report = json.loads(run("verify", built, "--json", code=1))
    assert report["ok"] is False and report["orphan_rows"] == [5]
    assert "orphan rows" in run("verify", built, code=1)
    # Other commands refuse the inconsistent collection with a clear message (exit 3: the collection).
    result = runner.invoke(app, ["search", str(built), "--image", str(next(built.parent.rglob("*.png")))])
    assert result.exit_code == 3 and "msir-index rebuild" in result.output
    run("rebuild", built)
    assert json.loads(run("verify", built, "--json"))["ok"] is True


def test_user_errors_exit_with_their_class(tmp_path: Path, checkpoint: Path, other_checkpoint: Path) -> None:
    """One line, no traceback, and the exit code of the class: 2 usage, 3 collection, 4 checkpoint."""
    write_images(tmp_path / "imgs", 3)
    directory = tmp_path / "col"
    cases = [
        (["build", directory, "-c", checkpoint], "exactly one image source", 2),
        (["build", directory, "-c", checkpoint, "--folder", tmp_path / "imgs", "--data", tmp_path], "exactly one", 2),
        (["build", directory, "-c", checkpoint, "--folder", tmp_path / "imgs", "--index", "lsh"], "lsh", 2),
        (["build", directory, "-c", checkpoint, "--folder", tmp_path / "imgs", "--nlist", "4"], "--nlist", 2),
        (["build", directory, "-c", tmp_path / "nope", "--folder", tmp_path / "imgs"], "nope", 4),
        (["stats", tmp_path / "imgs"], "not a collection", 3),
        (["remove", tmp_path / "imgs"], "--id", 2),
    ]
    for args, message, code in cases:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    run("build", directory, "-c", checkpoint, "--folder", tmp_path / "imgs", "--workers", "0", "--device", "cpu")
    for args, message, code in [
        (["add", directory, "-c", other_checkpoint, "--folder", tmp_path / "imgs"], "checkpoint mismatch", 4),
        (["build", directory, "-c", checkpoint, "--folder", tmp_path / "imgs", "--index", "hnsw"], "rebuild", 2),
        (["eval", directory], "no images", 3),
    ]:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code and message in result.output, result.output
    # Re-running the build indexes nothing twice; `add FILES` reports duplicates.
    out = json.loads(
        run(
            "build",
            directory,
            "-c",
            checkpoint,
            "--folder",
            tmp_path / "imgs",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--resume",
            "--json",
        )
    )
    assert out["added"] == 0 and out["already_present"] == 3
    out = json.loads(run("add", directory, *sorted((tmp_path / "imgs").iterdir()), "--device", "cpu", "--json"))
    assert out["added"] == 0 and out["already_present"] == 3


def test_multi_label_manifest_build_and_eval(tmp_path: Path, checkpoint: Path) -> None:
    rows = [
        ("a.png", "red|green", "train"),
        ("b.png", "green", "train"),
        ("c.png", "blue|red", "train"),
        ("d.png", "", "train"),
        ("e.png", "red", "test"),
        ("f.png", "green|blue", "test"),
    ]
    csv_path = write_manifest(tmp_path / "m" / "manifest.csv", rows)
    directory = tmp_path / "col"
    out = json.loads(
        run("build", directory, "-c", checkpoint, "--manifest", csv_path, "--workers", "0", "--device", "cpu", "--json")
    )
    assert out["added"] == 6
    with Collection.open(directory, device="cpu") as col:
        labels = {Path(r.uri).name: r.labels for r in col.get_many(range(1, 7)).values()}
    assert sorted(labels["a.png"]) == ["green", "red"] and labels["d.png"] == []
    metrics = json.loads(run("eval", directory, "--ks", "1,2", "--json"))
    assert metrics["multi_label"] is True and metrics["num_queries"] == 2 and metrics["num_database"] == 4


def test_rerank_search_matches_the_evaluation_code(built: Path, tmp_path: Path) -> None:
    """The indexer's re-ranked search gives the order msir_core.retrieval.rerank computes on the stored vectors."""
    import torch

    from msir_core.retrieval.rerank import RerankConfig, exact_neighbours, expand_queries, rerank_shortlist

    query = next((tmp_path / "data" / "test" / "green").glob("*.png"))
    with Collection.open(built, device="cpu") as col:
        emb = col.embedder.embed_images([open_image(query)]).embeddings
        everything = col.search(emb, 30)[0]
        ids = np.array([h.id for h in everything])
        vectors = torch.from_numpy(np.stack([col.vector(int(i)) for i in ids]).astype(np.float32))
        vectors = torch.nn.functional.normalize(vectors, dim=1)
        q = torch.nn.functional.normalize(torch.from_numpy(emb.astype(np.float32)), dim=1)
        search = exact_neighbours(vectors)
        for method in ("aqe", "dba", "kreciprocal"):
            cfg = RerankConfig(method=method, shortlist=12, qe_neighbours=3, k1=4, k2=2)  # type: ignore[arg-type]
            got = col.search(emb, 5, rerank=cfg)[0]
            if method == "aqe":
                expected = torch.argsort(expand_queries(q, search, cfg)[0] @ vectors.T, descending=True)[:5]
            else:
                scores = torch.tensor([[h.score for h in everything[:12]]])
                order, _ = rerank_shortlist(q, scores, vectors[:12].unsqueeze(0), cfg, search)
                expected = order[0][:5]
            assert [h.id for h in got] == [int(ids[int(i)]) for i in expected], method
    out = json.loads(run("search", built, "--image", query, "-k", "5", "--device", "cpu", "--rerank", "aqe", "--json"))
    with Collection.open(built, device="cpu") as col:
        assert [h["id"] for h in out["hits"]] == [
            h.id for h in col.search(emb, 5, rerank=RerankConfig(method="aqe"))[0]
        ]
    result = runner.invoke(app, ["search", str(built), "--image", str(query), "--rerank", "nope"])
    assert result.exit_code == 2 and "rerank must be one of" in " ".join(result.output.split())


def test_every_command_that_opens_a_collection_takes_the_same_options() -> None:
    """The options of reaching a collection are declared once (indexer.cli.options.OPENING_OPTIONS): every command
    has them, Milvus ones included (label once lacked them although relabelling writes to Milvus)."""
    import typer.main

    from indexer.cli.options import OPENING_OPTIONS

    group = typer.main.get_command(app)
    names = {name: {p.name for p in command.params} for name, command in group.commands.items()}  # type: ignore[attr-defined]
    assert set(names) >= {"build", "add", "remove", "label", "rebuild", "stats", "verify", "search", "eval"}
    # backup/restore copy rows and files as they are: they open neither the model nor a vector backend.
    copies = {"backup", "restore"}
    assert copies <= set(names)
    for name, params in names.items():
        if name in copies:
            continue
        assert set(OPENING_OPTIONS) <= params, (name, set(OPENING_OPTIONS) - params)


def test_rebuild_with_index_auto_records_the_choice(built: Path) -> None:
    out = run("rebuild", built, "--index", "auto", "--memory-budget", "64M")
    assert "flat" in out
    spec = Manifest.load(built).index
    assert spec.type == "flat" and spec.auto is not None and spec.auto["memory_budget"] == 64 * 1024**2
    assert json.loads(run("verify", built, "--json"))["ok"] is True
    run("rebuild", built, "--index", "auto", code=2)  # no budget: refused
    run("rebuild", built, "--index", "hnsw")  # an explicit type clears the record
    assert Manifest.load(built).index.auto is None
