"""The trainer end to end on tiny CPU data: run record, checkpoints, exact resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from models import load_checkpoint
from training.batches import BatchSource, epoch_order
from training.config import RunConfig, load_config
from training.loop import TrainingDivergedError
from training.prepared_data import PreparedData, from_arrays
from training.splits import holdout, limit_rows
from training.state import ResumeError
from training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c", "d"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two shared cores: OpenMP threads waiting on each other make tiny convolutions 100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(multi_label: bool = False, n: int = 96, size: int = 8) -> PreparedData:
    """Class-dependent uint8 images (a learnable signal on top of noise)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 120, (n + 24, 3, size, size), dtype=np.uint8)
    if multi_label:
        y = (rng.random((n + 24, 4)) < 0.35).astype(np.uint8)
        for c in range(4):
            x[y[:, c] == 1, c % 3, c : c + 3, :] += 120
    else:
        y = np.arange(n + 24, dtype=np.int64) % 4
        for c in range(4):
            x[y == c, c % 3, c : c + 3, :] += 120
    spec = RunConfig.model_validate({"optim": {"epochs": 1}, "data": {"image_size": size}}).data.preprocess_spec()
    return from_arrays(x[:n], y[:n], CLASSES, spec, multi_label=multi_label, val_fraction=0.25, test=(x[n:], y[n:]))


def make_config(out: Path, *extra: str) -> tuple[RunConfig, dict]:
    return load_config(
        None,
        [
            "name=tiny",
            f"output_dir={out}",
            "model.name=mscfnet2",
            "model.options={width: 8, dropout: 0.1}",
            "data.image_size=8",
            "optim.batch_size=12",
            "optim.lr0=3e-3",
            "optim.epochs=3",
            "augment={hflip: 0.5, rotate_degrees: 15, crop_padding: 1}",
            "runtime={device: cpu, progress: false, num_threads: 1}",
            *extra,
        ],
    )


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_run_writes_its_record_and_checkpoints_reload(tmp_path: Path) -> None:
    cfg, raw = make_config(tmp_path / "run")
    trainer = Trainer(cfg, raw, make_data())
    result = trainer.run()
    out = result.output_dir
    for name in (
        "config.yaml",
        "run.json",
        "history.csv",
        "metrics.json",
        "training_state.safetensors",
        "training_state.json",
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
    ):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text()) == raw
    run = json.loads((out / "run.json").read_text())
    for key in ("git_sha", "torch", "python", "device_name", "started_at", "ended_at", "dataset"):
        assert key in run, key
    assert run["ended_at"] and run["dataset"]["train"] == 72 and run["dataset"]["val"] == 24
    history = read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert [int(r["step"]) for r in history] == [6, 12, 18]
    assert float(history[-1]["loss"]) < float(history[0]["loss"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.4  # chance is 0.25
    assert metrics["best"]["metric"] == "accuracy" and 1 <= metrics["best"]["epoch"] <= 3
    # The last checkpoint rebuilds the trained model exactly.
    loaded = load_checkpoint(result.last_checkpoint)
    x = torch.randn(5, 3, 8, 8)
    trainer.model.eval()
    with torch.no_grad():
        a, b = trainer.model(x), loaded.model(x)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.logits, b.logits)
    assert loaded.meta.class_names == CLASSES and loaded.meta.training["step"] == 18
    assert loaded.meta.preprocess == trainer.data.spec
    # Re-running into the finished directory resumes at the end: nothing is trained again.
    again = Trainer(*make_config(tmp_path / "run"), make_data()).run()
    assert again.resumed_from_step == 18
    assert len(read_history(out / "history.csv")) == 3


def test_multi_label_multiloss_run(tmp_path: Path) -> None:
    phases = (
        "phases=[{epochs: 1, decay: 0.25, weights: {ce: 0.2, contrastive: 1, triplet: 1}}, "
        "{epochs: 1, decay: 0.0625, weights: {ce: 1, contrastive: 0.1, triplet: 0.1}}]"
    )
    cfg, raw = make_config(
        tmp_path / "ml", phases, "optim.epochs=null", "schedule.kind=phased", "eval.retrieval_every=1"
    )
    result = Trainer(cfg, raw, make_data(multi_label=True)).run()
    history = read_history(result.output_dir / "history.csv")
    assert len(history) == 2
    assert float(history[0]["contrastive"]) > 0 and float(history[0]["triplet"]) >= 0
    assert float(history[1]["lr"]) == pytest.approx(3e-3 * 0.0625 ** (5 / 6))  # last step of phase 2
    assert "val_map_at_all" in history[0] and result.metrics["best"]["metric"] == "f1_macro"
    assert json.loads((result.output_dir / "best.json").read_text())["multi_label"] is True


SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
from tests.training.test_trainer import make_config, make_data
from training.trainer import Trainer

def hook(step):
    if step + 1 == {kill_after}:
        Path({marker!r}).write_text(str(step))
        time.sleep(600)

Trainer(*make_config(Path({out!r}), *{extra!r}), make_data(), after_step=hook).run()
"""


def test_killed_run_resumes_exactly(tmp_path: Path) -> None:
    extra = ("checkpoint_every=4",)
    # Reference: one uninterrupted run.
    ref = Trainer(*make_config(tmp_path / "ref", *extra), make_data()).run()
    # The same run in a subprocess, SIGKILLed right after the mid-epoch state of step 8 (epoch 2, batch 2).
    out, marker = tmp_path / "killed", tmp_path / "marker"
    script = SCRIPT.format(repo=str(REPO), kill_after=8, marker=str(marker), out=str(out), extra=extra)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early ({proc.returncode}): {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("training subprocess did not reach step 8 within 120 s")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 8 and state["accumulator"]["steps"] == 2
    assert not (out / "metrics.json").exists()
    # Resume: the step counter, schedule and data order continue exactly where the killed run stopped.
    seen: list[int] = []
    trainer = Trainer(*make_config(out, *extra), make_data(), after_step=seen.append)
    result = trainer.run()
    assert result.resumed_from_step == 8 and seen == list(range(8, 18))
    final, reference = (
        load_file(str(out / "last.safetensors")),
        load_file(str(ref.output_dir / "last.safetensors")),
    )
    assert final.keys() == reference.keys()
    for key in final:
        assert torch.equal(final[key], reference[key]), key
    drop = ("seconds", "images_per_s")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in read_history(out / "history.csv")]
    assert strip == [
        {k: v for k, v in r.items() if k not in drop} for r in read_history(ref.output_dir / "history.csv")
    ]
    assert len(json.loads((out / "run.json").read_text())["sessions"]) == 2


def test_resume_refuses_another_setup_and_no_resume_starts_over(tmp_path: Path) -> None:
    cfg, raw = make_config(tmp_path / "r", "optim.epochs=1")
    Trainer(cfg, raw, make_data()).run()
    with pytest.raises(ResumeError, match="schedule_digest"):
        Trainer(*make_config(tmp_path / "r", "optim.epochs=1", "optim.lr0=1e-2"), make_data()).run()
    fresh = Trainer(*make_config(tmp_path / "r", "optim.epochs=1", "optim.lr0=1e-2"), make_data(), resume=False)
    assert fresh.run().resumed_from_step is None


def test_non_finite_loss_stops_with_step_and_components(tmp_path: Path) -> None:
    cfg, raw = make_config(tmp_path / "nan", "optim.optimizer=sgd", "optim.lr0=1e12", "augment={}")
    with pytest.raises(TrainingDivergedError) as err:
        Trainer(cfg, raw, make_data()).run()
    msg = str(err.value)
    assert f"step {err.value.step} " in msg and "epoch" in msg and "ce=" in msg and "contrastive=" in msg
    assert not np.isfinite(err.value.components["ce"])


def test_holdout_is_stratified_deterministic_and_disjoint() -> None:
    labels = np.repeat(np.arange(5), [40, 40, 20, 10, 1])
    ids = [f"img{i}" for i in range(len(labels))]
    train, val = holdout(labels, ids, 0.2)
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val], minlength=5).tolist() == [8, 8, 4, 2, 0]
    assert np.array_equal(val, holdout(labels, ids, 0.2)[1])
    sub = limit_rows(train, labels, ids, 30)
    assert len(sub) == 30 and np.isin(sub, train).all()
    multi = (np.random.default_rng(0).random((50, 3)) < 0.3).astype(np.uint8)
    t, v = holdout(multi, ids[:50], 0.3)
    assert len(v) > 5 and np.intersect1d(t, v).size == 0


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    a = epoch_order(50, 3, 7)
    assert torch.equal(a, epoch_order(50, 3, 7)) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(50, 3, 8)) and not torch.equal(a, epoch_order(50, 4, 7))
    images = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
    src = BatchSource(images, np.arange(10), np.array([1, 3, 5, 7, 9]), torch.device("cpu"), batch_size=2)
    assert src.steps_per_epoch == 2 and src.placement == "ram"
    src.set_epoch(0, 0)
    x, y = src.batch(1)
    rows = np.array([1, 3, 5, 7, 9])[epoch_order(5, 0, 0)[2:4].numpy()]
    assert np.array_equal(x.numpy(), images[rows]) and y.tolist() == rows.tolist()


def write_imagefolder(root: Path, train_per_class: int = 12, seed: int = 1) -> Path:
    """A tiny class-per-folder tree (train/ and test/, 8x8 PNGs), each class a bright band at its own row."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("test", 3)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8)
                img[c : c + 3, :, c % 3] += 150
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_cli_trains_from_an_image_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    write_imagefolder(tmp_path / "data")
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'base.yaml'}\nmodel: {{name: mscfnet2, options: {{width: 8}}}}\n"
        f"data: {{kind: imagefolder, image_size: 8, stats: cifar10, cache_dir: {tmp_path / 'cache'}}}\n"
        "optim: {batch_size: 8, epochs: 2, lr0: 0.003}\nruntime: {progress: false, num_threads: 1}\n"
    )
    args = [
        "--config",
        str(config),
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--set",
        "eval.retrieval_every=1",
        "--limit-train",
        "40",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best checkpoint" in result.output and "test accuracy" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["dataset"]["train"] == 40 and run["dataset"]["test"] == 12 and run["dataset"]["skipped"] == 0
    assert load_checkpoint(tmp_path / "run" / "best").meta.class_names == CLASSES
    bad = CliRunner().invoke(app, [*args, "--set", "optim.lr=1"])
    assert bad.exit_code == 2 and "optim.lr" in bad.output


def test_shipped_multiloss_config_on_a_chestxray14_fixture(tmp_path: Path) -> None:
    """The MS-ViT multi-loss recipe, shrunk, end to end through the ChestX-ray14 reader (multi-label)."""
    from tests.fixtures_formats import nih_row, write_chestxray

    root = write_chestxray(
        tmp_path / "nih",
        patients=30,
        images_per_patient=2,
        official_split=True,
        extra_rows=[nih_row("99999999_000.png", "Mass", 0, 99)],  # listed but missing: reported as skipped
    )
    overrides = [
        f"data.root={root}",
        f"output_dir={tmp_path / 'run'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model.name=msvit_tiny",
        "data.image_size=16",
        "optim.batch_size=8",
        "optim.epochs=1.5",
        "runtime={device: cpu, progress: false, num_threads: 1}",
        "eval.retrieval_every=1",
        "data.options.val_fraction=0.2",
    ]
    cfg, raw = load_config(REPO / "configs" / "vit" / "msvit_multiloss_chestxray14.yaml", overrides)
    assert [p.epochs for p in cfg.phase_list()] == pytest.approx([0.5, 0.5, 0.5])
    trainer = Trainer(cfg, raw)
    assert trainer.data.multi_label and trainer.data.val is not None and trainer.schedule.active[:3] == (True,) * 3
    result = trainer.run()
    run = json.loads((result.output_dir / "run.json").read_text())
    assert run["dataset"]["skipped"] == 1 and run["dataset"]["test"] == 2
    assert result.metrics["best"]["metric"] == "f1_macro" and "map_at_all" in result.metrics["test"]
    assert load_checkpoint(result.best_checkpoint).meta.multi_label


@pytest.mark.cuda
@pytest.mark.parametrize("gpu_fraction", [0.5, 1e-9], ids=["data-on-gpu", "pinned-host"])
def test_cuda_training(tmp_path: Path, gpu_fraction: float) -> None:
    cfg, raw = make_config(
        tmp_path / "cuda",
        "runtime={device: cuda, progress: false, amp: true, channels_last: true, log_every: 2}",
        f"runtime.gpu_data_fraction={gpu_fraction}",
    )
    trainer = Trainer(cfg, raw, make_data())
    assert trainer.source.placement == ("gpu" if gpu_fraction == 0.5 else "pinned")
    result = trainer.run()
    assert result.metrics["test"]["accuracy"] > 0.3
    assert load_checkpoint(result.best_checkpoint, device="cuda").model is not None


def test_a_single_split_folder_gets_stratified_test_and_validation_sets(tmp_path: Path) -> None:
    """A plain root/<class>/* folder (one split, "all") trains without any split configuration."""
    from tests.fixtures_formats import write_image_folder
    from training.prepared_data import prepare_data

    root = write_image_folder(tmp_path / "mine", classes=("cat", "dog"), n=20, size=(12, 10), split_dirs=False)
    cfg, _ = make_config(
        tmp_path / "run", f"data.root={root}", "data.kind=imagefolder", f"data.cache_dir={tmp_path / 'cache'}"
    )
    data = prepare_data(cfg, progress=False)
    assert data.test is not None and data.val is not None
    test_ids, val_ids = set(data.test.item_ids), set(data.val.item_ids)
    train_ids = {data.item_ids[r] for r in data.train_rows.tolist()}
    # 20 % of each class for test, 10 % of the rest for validation; disjoint and covering everything.
    assert (len(test_ids), len(val_ids), len(train_ids)) == (8, 4, 28)
    assert not (test_ids & val_ids) and not (train_ids & (test_ids | val_ids))
    assert sorted(np.bincount(data.test.labels).tolist()) == [4, 4]
    assert data.summary["test_source"] == "0.2 of all (stratified)"
    # Deterministic: the same folder gives the same split.
    again = prepare_data(cfg, progress=False)
    assert set(again.test.item_ids) == test_ids  # type: ignore[union-attr]


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bf16")
def test_cpu_bf16_trains_in_bf16_and_keeps_fp32_weights(tmp_path: Path) -> None:
    cfg, raw = make_config(tmp_path / "run", "runtime.cpu_bf16=true")
    trainer = Trainer(cfg, raw, data=make_data())
    assert trainer.cpu_bf16 and trainer.channels_last
    seen: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda _m, _i, out: seen.append(out.embedding.dtype))
    result = trainer.run()
    assert torch.bfloat16 in seen  # the forward ran under bf16 autocast
    history = read_history(result.output_dir / "history.csv")
    assert all(np.isfinite(float(row["loss"])) for row in history)
    weights = load_file(str(result.output_dir / "last.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def test_cpu_bf16_off_by_default(tmp_path: Path) -> None:
    cfg, raw = make_config(tmp_path / "run")
    trainer = Trainer(cfg, raw, data=make_data())
    assert not trainer.cpu_bf16 and not trainer.channels_last
