"""The report half of benchmarks/isic2018.py: the ablation table (mean ± std over seeds), the paper's claims beside
ours, the shipped model's per-class table, confusion matrix and ROC curves.

Writes ``results/isic2018/report.md`` (also the ISIC 2018 section of ``results/RESULTS.md``), ``ablation.json`` and
the plots, from ``results/isic2018/runs/*.json`` and the test logits saved beside each run's checkpoint.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.isic2018 import BUDGET_ARMS, budget_cpu_seconds, result_path, shipped_record
from msir_data.isic import ISIC_DESCRIPTIONS
from training.evaluation.plots import plot_confusion_matrix, plot_roc_curves

logger = logging.getLogger(__name__)

ABLATION_ORDER = ("vit", "msvit", "vit_multiloss", "proposed", "proposed_distill", "mscfnet4", "resnet18")
# Paper 003's claims on ISIC-2018, quoted: abstract ("an improvement of 4.84 % in F1-score ... over the standard
# ViT", "precision for melanoma (MEL) ... increased by 5.46 %"), section 5.1.1 (AUC "above 0.92" for every class).
PAPER_F1_GAIN = 4.84
PAPER_MEL_PRECISION_GAIN = 5.46
PAPER_MIN_CLASS_AUC = 0.92
GOALS = {"macro AUC": 0.92, "accuracy": 0.80, "balanced accuracy": 0.65, "P@10": 0.75}

Metric = Callable[[dict[str, Any]], float]


def _cls(key: str) -> Metric:
    return lambda r: float(r["classification"][key])


def _macro(key: str) -> Metric:
    return lambda r: float(r["classification"]["macro"][key])


def _per_class(key: str, name: str) -> Metric:
    def get(r: dict[str, Any]) -> float:
        c = r["classification"]
        return float(c["per_class"][key][c["class_names"].index(name)])

    return get


def _at_k(key: str, k: int) -> Metric:
    return lambda r: float(r["retrieval"][key][str(k)])


COLUMNS: list[tuple[str, Metric]] = [
    ("accuracy", _cls("accuracy")),
    ("balanced acc.", _cls("balanced_accuracy")),
    ("macro F1", _macro("f1")),
    ("MEL F1", _per_class("f1", "MEL")),
    ("MEL precision", _per_class("precision", "MEL")),
    ("BCC F1", _per_class("f1", "BCC")),
    ("macro AUC", _macro("auc")),
    ("P@2", _at_k("precision_at_k", 2)),
    ("P@5", _at_k("precision_at_k", 5)),
    ("P@10", _at_k("precision_at_k", 10)),
    ("R@10", _at_k("recall_at_k", 10)),
    ("mAP@all", lambda r: float(r["retrieval"]["map_at_all"])),
]


def load_runs(out: Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*_seed*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        runs.setdefault(record["arm"], []).append(record)
    for records in runs.values():
        records.sort(key=lambda r: r["seed"])
    return runs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ms(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], metric: Metric) -> tuple[float, str]:
    """Difference of means a - b and a verdict: a difference within the seeds' spread (sum of the two standard
    deviations) is not told from noise."""
    (ma, sa), (mb, sb) = mean_std([metric(r) for r in a]), mean_std([metric(r) for r in b])
    delta = ma - mb
    if len(a) < 2 or len(b) < 2:
        return delta, "one seed: not judged"
    if abs(delta) <= sa + sb:
        return delta, "within noise"
    return delta, "higher" if delta > 0 else "lower"


def ablation_table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    head = ["arm", "seeds", "epochs", "CPU min/run", *(c for c, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ABLATION_ORDER:
        records = runs.get(arm)
        if not records:
            continue
        cpu = statistics.fmean(r["train_cpu_seconds"] for r in records) / 60
        cells = [
            records[0]["label"],
            ",".join(str(r["seed"]) for r in records),
            f"{records[0]['epochs']:g}",
            f"{cpu:.1f}",
            *(_ms([f(r) for r in records]) for _, f in COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ordering(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Does full > each single component > plain ViT hold, metric by metric, beyond the seeds' spread?"""
    pairs = [
        ("proposed", "msvit"),
        ("proposed", "vit_multiloss"),
        ("msvit", "vit"),
        ("vit_multiloss", "vit"),
        ("proposed", "vit"),
        ("proposed_distill", "proposed"),
    ]
    metrics = [(n, f) for n, f in COLUMNS if n in ("balanced acc.", "macro F1", "macro AUC", "P@10", "mAP@all")]
    head = ["comparison", *(n for n, _ in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        cells = [f"{runs[a][0]['label']} vs {runs[b][0]['label']}"]
        for _, f in metrics:
            delta, verdict = compare(runs[a], runs[b], f)
            cells.append(f"{delta:+.3f} ({verdict})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paper_claims(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    if "proposed" not in runs or "vit" not in runs:
        return ["The paper's claims need the proposed and ViT arms."]
    f1 = compare(runs["proposed"], runs["vit"], _macro("f1"))
    mel = compare(runs["proposed"], runs["vit"], _per_class("precision", "MEL"))
    aucs = [min(a for a in r["classification"]["per_class"]["auc"] if a is not None) for r in runs["proposed"]]
    return [
        "| the paper's claim (ISIC-2018, 224 px, 210 epochs on V100s) | ours (64 px, the CPU ablation budget) |",
        "|---|---|",
        f"| F1 +{PAPER_F1_GAIN} points over the standard ViT (abstract) | {100 * f1[0]:+.2f} points ({f1[1]}) |",
        f"| MEL precision +{PAPER_MEL_PRECISION_GAIN} points over the standard ViT (abstract) | "
        f"{100 * mel[0]:+.2f} points ({mel[1]}) |",
        f"| AUC above {PAPER_MIN_CLASS_AUC} for every class (§5.1.1) | lowest per-class AUC of the proposed arm: "
        f"{_ms(aucs)} |",
    ]


def budget_table(out: Path) -> list[str]:
    """The 90-minute recipes side by side (seed 0): budget spent, the validation score that picks the shipped
    one, and the test metrics of the goals."""
    lines = [
        "| recipe | config | CPU min | epochs (best) | val. balanced acc. | accuracy | balanced acc. | macro AUC "
        "| P@10 | mAP@all |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in BUDGET_ARMS:
        path = result_path(arm, 0, out)
        if not path.is_file():
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        c, ret, best = r["classification"], r["retrieval"], r.get("best") or {}
        lines.append(
            f"| {r['label']} | `{r['config']}` | {budget_cpu_seconds(r, out) / 60:.1f} | {r['epochs']:g} "
            f"({best.get('epoch')}) | {float(best.get('value') or 0):.4f} | {c['accuracy']:.4f} | "
            f"{c['balanced_accuracy']:.4f} | {c['macro']['auc']:.4f} | {ret['precision_at_k']['10']:.4f} | "
            f"{ret['map_at_all']:.4f} |"
        )
    return lines


def shipped_section(record: dict[str, Any], out: Path, runs_dir: Path) -> list[str]:
    c, r = record["classification"], record["retrieval"]
    names = c["class_names"]
    reached = {
        "macro AUC": c["macro"]["auc"],
        "accuracy": c["accuracy"],
        "balanced accuracy": c["balanced_accuracy"],
        "P@10": r["precision_at_k"]["10"],
    }
    lines = [
        f"{record['label']}. Trained {record['budget_cpu_seconds'] / 60:.1f} min of CPU time on one thread"
        f"{' (its teacher included)' if record['budget_cpu_seconds'] > record['train_cpu_seconds'] else ''} "
        f"({record['train_wall_seconds'] / 60:.1f} min wall; {record['device']}; {record['precision']}), "
        f"{record['epochs']:g} epochs, {record['parameters']:,} parameters, checkpoint of epoch "
        f"{(record.get('best') or {}).get('epoch')} (best validation balanced accuracy). Official test set, "
        f"{record['test_images']} images; retrieval database: the {r['num_database']} training images.",
        "",
        "| goal (issue #20) | goal | reached | met |",
        "|---|---:|---:|---|",
    ]
    for name, goal in GOALS.items():
        lines.append(f"| {name} | ≥ {goal:.2f} | {reached[name]:.4f} | {'yes' if reached[name] >= goal else 'no'} |")
    lines += [
        "",
        f"Macro precision {c['macro']['precision']:.4f}, recall {c['macro']['recall']:.4f}, F1 {c['macro']['f1']:.4f}; "
        f"P@2 {r['precision_at_k']['2']:.4f}, P@5 {r['precision_at_k']['5']:.4f}, R@2 {r['recall_at_k']['2']:.4f}, "
        f"R@5 {r['recall_at_k']['5']:.4f}, R@10 {r['recall_at_k']['10']:.4f}, mAP@all {r['map_at_all']:.4f}.",
        "",
        "| class | diagnosis | test images | precision | recall | F1 | ROC AUC | P@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    pc, rp = c["per_class"], r["per_class"]["precision_at_k"]["10"]
    for i, name in enumerate(names):
        auc = pc["auc"][i]
        lines.append(
            f"| {name} | {ISIC_DESCRIPTIONS.get(name, name)} | {pc['support'][i]} | {pc['precision'][i]:.3f} | "
            f"{pc['recall'][i]:.3f} | {pc['f1'][i]:.3f} | {'–' if auc is None else f'{auc:.3f}'} | "
            f"{rp[i]:.3f} |"
        )
    logits_file = runs_dir / record["arm"] / f"seed{record['seed']}" / "test_logits.npz"
    title = f"ISIC 2018 test: shipped MS-ViT ({record['arm']})"
    plot_confusion_matrix(c, out / "shipped_confusion_matrix.png", title=title)
    lines += ["", "![confusion matrix](shipped_confusion_matrix.png)"]
    if logits_file.is_file():
        saved = np.load(logits_file)
        plot_roc_curves(
            saved["labels"], saved["logits"], out / "shipped_roc_curves.png", class_names=names,
            title=f"ISIC 2018 test: shipped MS-ViT ({record['arm']}), ROC",
        )  # fmt: skip
        lines.append("![ROC curves](shipped_roc_curves.png)")
    return lines


def write_report(out: Path, runs_dir: Path) -> Path:
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"no runs in {out / 'runs'}: run `python -m benchmarks.isic2018 train` first")
    summary = {
        arm: {
            "label": records[0]["label"],
            "seeds": [r["seed"] for r in records],
            **{name: mean_std([f(r) for r in records]) for name, f in COLUMNS},
        }
        for arm, records in runs.items()
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    ablation = [r for arm in ABLATION_ORDER for r in runs.get(arm, [])]
    budget = ablation[0] if ablation else None
    lines = ["## MS-ViT on ISIC 2018 Task 3 (MS-ViT paper, §5.1, the ablation of §5.3)", ""]
    lines += [
        "Data: the complete ISIC 2018 Task 3 set at 64 px (`shared/datasets/isic2018_task3_64px.tar`): the "
        "official 1,512 test images for every number below; validation carved from the 10,015 training images by "
        "lesion, stratified by class (10 %). Recipes: `configs/vit/*isic2018_cpu*.yaml`, "
        "`configs/cnn/*isic2018_cpu.yaml`; runner: `benchmarks/isic2018.py`. Retrieval: the test images as "
        "queries against the training images, relevant = same diagnosis.",
        "",
    ]
    if budget is not None:
        lines += [
            f"### Ablation: every run {budget['epochs']:g} epochs, one CPU thread, {budget['precision']}, "
            f"{budget['device']} (mean ± std over seeds)",
            "",
            *ablation_table(runs),
            "",
            "Does full > each single component > plain ViT hold? Difference of means (row − column arm); "
            "'within noise' when it is no larger than the two arms' standard deviations added.",
            "",
            *ordering(runs),
            "",
            *paper_claims(runs),
            "",
        ]
    if any(arm in runs for arm in BUDGET_ARMS):
        lines += ["### The 90-minute models (one CPU thread, teacher included)", ""]
        lines += budget_table(out)
        record = shipped_record(out)
        record["budget_cpu_seconds"] = budget_cpu_seconds(record, out)
        lines += ["", "### The shipped model (the best validation balanced accuracy of the rows above)", ""]
        lines += shipped_section(record, out, runs_dir)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path


__all__ = ["load_runs", "mean_std", "write_report"]
