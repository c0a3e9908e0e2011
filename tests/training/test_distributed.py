"""Distributed training on CPU (gloo) under ``torchrun --standalone --nproc-per-node 2``.

Deterministic settings (no augmentation, no dropout, no BatchNorm, Adam): two ranks with per-rank batch b must
follow one process with batch 2b (``optim.batch_size`` is the global batch), loss curve and final weights, up to
float reduction order (gradients are summed across ranks by DDP instead of inside one backward pass). The loss
mixes cross-entropy with contrastive and triplet losses, so the gathered global-batch mining is exercised too.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from app.server_process import free_port
from models import ModelOutput
from tests.training.test_trainer import write_imagefolder
from training.config import LossConfig
from training.distributed import CONNECT_STALLED_EXIT
from training.losses import MultiLoss

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
LOSS_RTOL = 1e-4  # per-epoch mean losses, two ranks vs one process
WEIGHT_ATOL = 1e-4  # final weights after 12 Adam steps


def write_folder(root: Path) -> Path:
    return write_imagefolder(root, train_per_class=14, seed=3)


def write_config(tmp: Path) -> Path:
    config = tmp / "dist.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'base.yaml'}\n"
        "model: {name: mscfnet2, options: {width: 8}}\n"
        f"data: {{kind: imagefolder, image_size: 8, stats: cifar10, cache_dir: {tmp / 'cache'}}}\n"
        "optim: {batch_size: 8, lr0: 0.003}\n"
        "checkpoint_every: 4\n"
        "phases: [{epochs: 2, weights: {ce: 1.0, contrastive: 0.5, triplet: 0.5}}]\n"
        "loss: {pair_miner_epsilon: null, triplet_type: all, triplet_margin: 0.5}\n"
        "runtime: {device: cpu, progress: false, num_threads: 1, deterministic: true}\n"
    )
    return config


def env(writes: Path, **extra: str) -> dict[str, str]:
    writes.mkdir(parents=True, exist_ok=True)
    out = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MSIR_TEST_WRITES": str(writes),
        "MSIR_DIST_CONNECT_TIMEOUT_S": "40",
        **extra,
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def train(tmp: Path, name: str, nproc: int, **extra_env: str) -> Path:
    out = tmp / name
    args = ["--config", str(write_config(tmp)), "--data-root", str(tmp / "data"), "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        # Restarts are torchrun's own recovery: the killed run needs one; the spares are for a round whose connect
        # stalls anyway (bounded by MSIR_DIST_CONNECT_TIMEOUT_S, set below), so that such a round is retried.
        cmd = [*launcher, "--max-restarts=3", "--monitor-interval=0.5", str(WORKER), *args]
    # Its own session, so that on a time-out torchrun and its workers go together (no process outlives the test).
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env(tmp / f"writes-{name}", **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{name}: torchrun did not finish in 300 s\n{stdout[-3000:]}{stderr[-6000:]}") from None
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return out


def history(out: Path) -> list[dict[str, str]]:
    with (out / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    write_folder(tmp_path / "data")
    one = train(tmp_path, "one", 1)
    two = train(tmp_path, "two", 2)

    run = json.loads((two / "run.json").read_text())
    assert (run["world_size"], run["backend"], run["global_batch"], run["per_rank_batch"]) == (2, "gloo", 8, 4)
    assert json.loads((one / "run.json").read_text())["world_size"] == 1
    # Same steps, same per-epoch losses (ce, contrastive, triplet and their weighted sum) and accuracy.
    h1, h2 = history(one), history(two)
    assert [r["step"] for r in h1] == [r["step"] for r in h2] == ["6", "12"]
    for a, b in zip(h1, h2, strict=True):
        for key in ("loss", "ce", "contrastive", "triplet", "val_accuracy"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=LOSS_RTOL, abs=1e-6), key
        assert a["train_accuracy"] == b["train_accuracy"]
    assert float(h2[0]["contrastive"]) > 0 and float(h2[0]["triplet"]) > 0
    w1, w2 = load_file(str(one / "last.safetensors")), load_file(str(two / "last.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=WEIGHT_ATOL, rtol=0, msg=key)

    # Only rank 0 wrote files.
    written = (tmp_path / "writes-two" / "rank0.txt").read_text().split()
    assert {"config.yaml", "run.json", "history.csv", "metrics.json", "last.safetensors", "best.safetensors"} <= set(
        written
    ) and "training_state.safetensors" in written
    assert not (tmp_path / "writes-two" / "rank1.txt").exists()


def test_resume_after_a_rank_is_killed(tmp_path: Path) -> None:
    write_folder(tmp_path / "data")
    two = train(tmp_path, "two", 2)
    h2 = history(two)
    w2 = load_file(str(two / "last.safetensors"))

    # Rank 1 SIGKILLed after the mid-epoch state of step 8: torchrun restarts both ranks, which resume at step 8
    # and end with exactly the weights of the uninterrupted two-rank run.
    killed = train(tmp_path, "killed", 2, MSIR_TEST_KILL_RANK="1", MSIR_TEST_KILL_STEP="8")
    assert (tmp_path / "writes-killed" / "killed").is_file()
    assert not (tmp_path / "writes-killed" / "rank1.txt").exists()
    sessions = json.loads((killed / "run.json").read_text())["sessions"]
    assert [s["start_step"] for s in sessions] == [0, 8]
    w3 = load_file(str(killed / "last.safetensors"))
    for key in w2:
        torch.testing.assert_close(w3[key], w2[key], atol=1e-6, rtol=0, msg=key)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in history(killed)] == [
        {k: v for k, v in r.items() if k not in drop} for r in h2
    ]


# -- the gathered metric losses ------------------------------------------------------------------------------------
class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        e = self.body(x)
        return ModelOutput(e, self.head(e))


def batch(multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 6, generator=gen)
    y = (torch.rand(12, 3, generator=gen) < 0.4).to(torch.uint8) if multi_label else torch.arange(12) % 3
    return x, y


def loss_and_grads(multi_label: bool, rows: slice) -> tuple[torch.Tensor, list[torch.Tensor]]:
    cfg = LossConfig(triplet_margin=0.5, triplet_type="all", pair_miner_epsilon=None)
    loss_fn = MultiLoss(cfg, multi_label=multi_label, active=(True, True, True, False), num_classes=3)
    model = TinyNet()
    x, y = batch(multi_label)
    result = loss_fn(model(x[rows]), y[rows], torch.tensor([1.0, 0.7, 0.3, 0.0]))
    result.total.backward()
    return result.components, [p.grad for p in model.parameters()]  # type: ignore[misc]


def _rank(rank: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    # The reference first, before the process group exists: one process on all 12 samples.
    reference = {multi_label: loss_and_grads(multi_label, slice(None)) for multi_label in (False, True)}
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        for multi_label, (whole, whole_grads) in reference.items():
            part, grads = loss_and_grads(multi_label, slice(6 * rank, 6 * rank + 6))
            # Contrastive and triplet: every rank computes the loss of the concatenated (global) batch.
            torch.testing.assert_close(part[1:3], whole[1:3], rtol=1e-6, atol=1e-7)
            assert whole[1] > 0 and whole[2] > 0
            # Cross-entropy is local; its mean over ranks is the global mean.
            ce = part[:1].clone()
            dist.all_reduce(ce)
            torch.testing.assert_close(ce / 2, whole[:1], rtol=1e-6, atol=1e-7)
            # DDP's update: the mean over ranks of the local gradients = the one-process gradient on the whole batch.
            for g, ref in zip(grads, whole_grads, strict=True):
                dist.all_reduce(g)
                torch.testing.assert_close(g / 2, ref, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_gathered_metric_losses_equal_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}",), nprocs=2, join=True)


def test_a_stalled_connect_exits_for_torchrun_to_restart(tmp_path: Path) -> None:
    """Rank 0 of 2 whose peer never comes: the watchdog ends it with CONNECT_STALLED_EXIT after the limit."""
    port = free_port()
    environment = {
        **env(tmp_path / "writes-stalled"),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "MSIR_DIST_CONNECT_TIMEOUT_S": "3",
    }
    code = "import torch; from training import distributed; distributed.setup(torch.device('cpu'))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == CONNECT_STALLED_EXIT, done.stderr[-2000:]
    # The watchdog's own exit code and message are the event; subprocess's timeout only guards against a hang.
    assert "did not connect within 3 s" in done.stderr
