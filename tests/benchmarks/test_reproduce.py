"""benchmarks/reproduce.py: the grid machinery on tiny fixtures in the real on-disk formats, and the papers'
reference numbers checked against the paper text."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks import reproduce
from benchmarks.reproduce import Entry, run_entry
from benchmarks.reproduce_report import MSCFNET_TABLES, MSVIT_QUOTE, write_results
from models import load_checkpoint
from tests.fixtures_formats import write_chestxray, write_image_folder

REPO = Path(__file__).resolve().parents[2]
PAPERS = REPO.parent / "shared" / "papers"
CNN_COLUMNS = "Method|Source|Accuracy (%)|F-Score (%)|Parameters|Training time (s)|mAP@all|P@10|Device|Budget"
CNN_HEADER = "| " + " | ".join(CNN_COLUMNS.split("|")) + " |"


def _config(path: Path, extends: str, body: str) -> Path:
    path.write_text(f"extends: {REPO / extends}\n{body}", encoding="utf-8")
    return path


def _row(markdown: str, section: str, first_cells: str) -> list[str]:
    """Cells of the first table row of ``section`` that starts with ``first_cells``."""
    text = markdown[markdown.index(section) :]
    line = next(row for row in text.splitlines() if row.startswith(f"| {first_cells} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, str]:
    """A micro budget: one CNN run on a 3-class ImageFolder, one ViT ablation arm on ChestX-ray14 fixtures."""
    tmp = tmp_path_factory.mktemp("reproduce")
    folder = write_image_folder(tmp / "folder", classes=("c0", "c1", "c2"), n=8, size=(8, 8))
    chest = write_chestxray(tmp / "chest", patients=16, images_per_patient=3, size=(16, 16))
    common = "runtime: {device: cpu, progress: false}\n"
    cnn_cfg = _config(
        tmp / "cnn.yaml",
        "configs/cnn/mscfnet2_cifar10.yaml",
        "model: {name: mscfnet2, options: {width: 4}}\n"
        f"data: {{kind: imagefolder, root: {folder}, image_size: 8, cache_dir: {tmp / 'cache'}, limit_train: 12}}\n"
        f"optim: {{epochs: 1, batch_size: 4}}\n{common}",
    )
    vit_cfg = _config(
        tmp / "vit.yaml",
        "configs/vit/vit_ce_chestxray14.yaml",
        "model: {name: vit_tiny, options: {width: 16, depth: 1, heads: 2, embedding_dim: 8}}\n"
        f"data: {{root: {chest}, image_size: 16, cache_dir: {tmp / 'cache'},\n"
        "       options: {official_split: false, test_fraction: 0.25, val_fraction: 0.2}}\n"
        f"optim: {{epochs: 1, batch_size: 8}}\neval: {{best_metric: auc_macro, retrieval_every: 1}}\n{common}",
    )
    out, runs = tmp / "out", tmp / "runs"
    cnn = run_entry(
        Entry("mscfnet2_cifar10", "paper-cnn", "cifar10", "mscfnet2", {"micro": cnn_cfg}), "micro", out, runs
    )
    vit = run_entry(
        Entry("vit_ce_chestxray14", "vit-ablation", "chestxray14", "vit_ce", {"micro": vit_cfg}), "micro", out, runs
    )
    md = write_results(out, tmp / "RESULTS.md", tmp / "figures" / "accuracy_across_datasets.png")
    return tmp, cnn, vit, md.read_text(encoding="utf-8")


def test_run_saves_small_metrics_json_and_keeps_checkpoints_out(grid: tuple[Path, dict, dict, str]) -> None:
    tmp, cnn, _, _ = grid
    saved = tmp / "out" / "micro" / "mscfnet2_cifar10"
    assert sorted(p.name for p in saved.iterdir()) == ["metrics.json"]
    assert json.loads((saved / "metrics.json").read_text()) == json.loads(json.dumps(cnn))
    budget = cnn["budget"]
    assert (budget["name"], budget["epochs"], budget["limit_train"], budget["train_images"]) == ("micro", 1, 12, 12)
    assert budget["test_images"] == 24 and cnn["retrieval"]["num_queries"] == 24
    assert cnn["retrieval"]["num_database"] == 12  # the training subset the model saw
    assert (tmp / "runs" / "micro" / "mscfnet2_cifar10" / "best.safetensors").is_file()
    # Our evaluation and the trainer's own test pass score the same checkpoint on the same images.
    assert cnn["classification"]["accuracy"] == pytest.approx(cnn["trainer_test"]["accuracy"])


def test_results_table_has_the_papers_form_and_our_measured_numbers(grid: tuple[Path, dict, dict, str]) -> None:
    tmp, cnn, _, md = grid
    assert CNN_HEADER in md
    paper = _row(md, "### CIFAR-10", "MSCFNet (2 layers) | paper (Table 1)")
    assert paper[2:6] == ["70.75", "70.60", "881,994", "113.1"]
    ours = _row(md, "### CIFAR-10", "MSCFNet (2 layers) | ours")
    model = load_checkpoint(tmp / "runs" / "micro" / "mscfnet2_cifar10" / "best").model
    c, q = cnn["classification"], cnn["retrieval"]
    assert ours[2] == f"{100 * c['accuracy']:.2f}" and ours[3] == f"{100 * c['f1_macro']:.2f}"
    assert ours[4] == f"{sum(p.numel() for p in model.parameters()):,}" != paper[4]
    assert ours[5] == f"{cnn['train_seconds']:.1f}"
    assert ours[6] == f"{q['map_at_all']:.4f}" and ours[7] == f"{q['precision_at_k']['10']:.4f}"
    assert "cores" in ours[8] and ours[9].startswith("micro: 1 epoch, subset of 12 train images, 8x8 px")
    assert "No run of ours on this dataset" in md[md.index("### CIFAR-100") : md.index("### Fashion-MNIST")]
    png = tmp / "figures" / "accuracy_across_datasets.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_table_reports_multi_label_metrics(grid: tuple[Path, dict, dict, str]) -> None:
    _, _, vit, md = grid
    row = _row(md, "## MS-ViT ablation", "ViT | no | no | vit_tiny")
    c = vit["classification"]
    assert vit["classification"]["task"] == "multi_label"
    assert row[4:7] == [f"{c['auc_macro']:.4f}", f"{c['f1_macro']:.4f}", f"{c['f1_macro_tuned']:.4f}"]
    assert row[9] == f"{vit['retrieval']['map_at_all']:.4f}"
    assert "best val auc_macro" in md


def test_skip_existing_resumes_a_grid(grid: tuple[Path, dict, dict, str], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = grid[0]
    called: list[str] = []

    def failing_run(entry: Entry, *args: object, **kwargs: object) -> dict:
        called.append(entry.name)
        raise OSError("run refused by the test")

    monkeypatch.setattr(reproduce, "run_entry", failing_run)
    out = tmp / "resume"
    target = out / "cpu-small" / "mscfnet2_cifar10"
    target.mkdir(parents=True)
    shutil.copy(tmp / "out" / "micro" / "mscfnet2_cifar10" / "metrics.json", target / "metrics.json")
    args = ["--only", "mscfnet2_cifar10", "--out", str(out), "--results", str(tmp / "resume.md")]
    args += ["--figures", str(tmp / "resume_figures")]
    assert reproduce.main([*args, "--skip-existing"]) == 0
    assert called == []
    assert reproduce.main(args) == 1  # without --skip-existing the run is redone (and fails here)
    assert called == ["mscfnet2_cifar10"]
    assert "run refused by the test" in (target / "error.json").read_text()
    assert "Failed runs: cpu-small/mscfnet2_cifar10: OSError: run refused" in (tmp / "resume.md").read_text()
    with pytest.raises(SystemExit, match="unknown run name"):
        reproduce.main(["--only", "no_such_run", "--dry-run"])


def test_paper_reference_numbers_are_quoted_exactly() -> None:
    mscfnet, msvit = PAPERS / "000_d759c8061e7aee5e.txt", PAPERS / "003_0d82152e28e3a2c9.txt"
    if not mscfnet.is_file() or not msvit.is_file():
        pytest.skip(f"paper texts not present in {PAPERS}")
    text = mscfnet.read_text(encoding="utf-8")
    for table_no, rows in MSCFNET_TABLES.values():
        number = table_no.split()[-1]
        start = re.search(rf"\*\*Table\.? ?{number}\.\*\*", text)
        assert start is not None, table_no
        lines = text[start.end() :].splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("Method\tAccuracy\tF-Score\t"))
        assert lines[header + 1 : header + 6] == ["\t".join(row[1:]) for row in rows], table_no
    assert MSVIT_QUOTE in msvit.read_text(encoding="utf-8")


def test_ordering_sentence_compares_with_the_paper() -> None:
    from benchmarks.reproduce_report import ordering_sentences

    def rec(method: str, acc: float) -> dict:
        return {"method": method, "budget": {"name": "cpu-paper"}, "classification": {"accuracy": acc}}

    # Paper CIFAR-10: MSCFNet-4 74.43 > MSCFNet-2 70.75 > CNN-5 51.03.
    same = ordering_sentences("cifar10", [rec("cnn5", 0.5), rec("mscfnet2", 0.6), rec("mscfnet4", 0.7)])
    assert same[0].startswith("Ordering (cpu-paper") and same[0].endswith("the same as the paper's.")
    other = ordering_sentences("cifar10", [rec("cnn5", 0.5), rec("mscfnet2", 0.8), rec("mscfnet4", 0.7)])
    assert "NOT the paper's (MSCFNet (4 layers) > MSCFNet (2 layers) > CNN (5 layers))" in other[0]
    assert ordering_sentences("cifar10", [rec("cnn5", 0.5)]) == []
