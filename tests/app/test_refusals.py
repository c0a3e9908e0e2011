"""``msir-serve`` refusing to start: one line naming the file, what is wrong and the fix; an exit code per class
of problem; the traceback only with ``MSIR_LOG_LEVEL=debug`` (issue #11, finding 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from tests.app.helpers import CLASSES, Fixture, free_port, serve_env

REPO_SERVE = Path(sys.executable).with_name("msir-serve")


def refuse(fixture: Fixture, cwd: Path, **extra: str) -> tuple[int, str]:
    env = serve_env(fixture, free_port(), **extra)
    command = [str(REPO_SERVE)] if REPO_SERVE.exists() else [sys.executable, "-m", "app.cli"]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def refusal_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("msir-serve: ")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def broken(sqlite_collection: Fixture, tmp_path: Path) -> Fixture:
    """A private copy with its own checkpoint (so that the checkpoint can be damaged too)."""
    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(sqlite_collection.checkpoint.parent, ckpt_dir)
    checkpoint = ckpt_dir / sqlite_collection.checkpoint.name
    return Fixture(sqlite_collection.directory, checkpoint, None, sqlite_collection.image_paths)


def test_truncated_index_is_refused_in_one_line(broken: Fixture, tmp_path: Path) -> None:
    index = broken.directory / "index.faiss"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    code, output = refuse(broken, tmp_path)
    line = refusal_line(output)
    assert code == 3, output
    assert "index.faiss" in line and f"msir-index rebuild {broken.directory}" in line
    # With debug logging the traceback is there for whoever needs it.
    code, output = refuse(broken, tmp_path, MSIR_LOG_LEVEL="debug")
    assert code == 3 and "Traceback" in output


def test_checkpoint_with_a_flipped_byte_is_refused_in_one_line(broken: Fixture, tmp_path: Path) -> None:
    weights = bytearray(broken.checkpoint.read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    broken.checkpoint.write_bytes(bytes(weights))
    code, output = refuse(broken, tmp_path, MSIR_CHECKPOINT=str(broken.checkpoint))
    line = refusal_line(output)
    assert code == 4, output
    assert broken.checkpoint.name in line and "sha256" in line and "--checkpoint" in line


def test_foreign_checkpoint_is_refused_in_one_line(broken: Fixture, tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = models.PreprocessSpec(image_size=(16, 16), channels=3, resize="stretch")
    foreign = models.save_checkpoint(
        tmp_path / "foreign", models.build("mscfnet2", 3, image_size=16), class_names=CLASSES, preprocess=spec
    )
    code, output = refuse(broken, tmp_path, MSIR_CHECKPOINT=str(foreign))
    line = refusal_line(output)
    assert code == 4, output
    assert "checkpoint mismatch" in line and "foreign" in line


def test_garbage_database_is_refused_in_one_line(broken: Fixture, tmp_path: Path) -> None:
    (broken.directory / "metadata.db").write_bytes(os.urandom(8192))
    code, output = refuse(broken, tmp_path)
    line = refusal_line(output)
    assert code == 5, output
    assert "metadata database" in line and "not a database" in line and "msir-index build" in line


def test_invalid_setting_is_refused_in_one_line(broken: Fixture, tmp_path: Path) -> None:
    code, output = refuse(broken, tmp_path, MSIR_MAX_K="0")
    line = refusal_line(output)
    assert code == 2 and "MSIR_MAX_K" in line, output
