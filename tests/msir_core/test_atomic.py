"""Atomic file replacement: all or nothing, no temp file left behind, and the permissions of a plain open()."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import models
from models import PreprocessSpec, save_checkpoint
from msir_core import atomic
from msir_core.atomic import atomic_write, atomic_write_bytes, atomic_write_text, remove_stale_temps


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if the process had been started under umask 022 (the usual default); restored afterwards."""
    previous = os.umask(0o022)
    monkeypatch.setattr(atomic, "_UMASK", 0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_new_file_gets_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    with plain.open("w") as fh:
        fh.write("x")
    target = tmp_path / "out.txt"
    atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    assert mode_of(target) == mode_of(plain)


def test_umask_022_gives_0644_and_replacing_keeps_it(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "sub" / "out.bin"  # missing parents are created
    atomic_write_bytes(target, b"one")
    assert mode_of(target) == 0o644
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and mode_of(target) == 0o644


def test_explicit_private_mode(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "secret"
    atomic_write_text(target, "key\n", mode=0o600)
    assert mode_of(target) == 0o600
    assert target.read_text() == "key\n"


def test_failing_writer_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    atomic_write_text(target, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("new but incompl")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_writer_gets_an_empty_temp_file_in_the_same_folder(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.read_bytes() == b""
        tmp.write_bytes(b"abc")

    target = tmp_path / "x.bin"
    atomic_write(target, write)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".x.bin.") and seen[0].name.endswith(".tmp")
    assert not seen[0].exists() and target.read_bytes() == b"abc"


def test_remove_stale_temps_only_removes_that_names_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".index.faiss.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".index.faiss.def456.tmp").write_bytes(b"half")
    (tmp_path / ".other.abc.tmp").write_bytes(b"keep")
    (tmp_path / "index.faiss").write_bytes(b"keep")
    assert remove_stale_temps(tmp_path, "index.faiss") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "index.faiss"]


def test_checkpoint_files_are_readable_by_group_and_others(tmp_path: Path, umask_022: None) -> None:
    torch.manual_seed(0)
    model = models.build("mscfnet2", num_classes=2, in_channels=3, image_size=16)
    weights = save_checkpoint(
        tmp_path / "ckpt", model, class_names=["a", "b"], preprocess=PreprocessSpec.for_dataset("cifar10", 16)
    )
    for path in (weights, weights.with_suffix(".json")):
        assert mode_of(path) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]
