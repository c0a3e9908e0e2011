"""Run names: ``--name``, else ``<model>_<data folder>`` (never the config file's name), used for the run
directory, the progress bar, ``run.json`` and the checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models import load_checkpoint
from tests.training.test_trainer import REPO, write_imagefolder
from training.cli import app
from training.config import default_run_name, load_config

CONFIG = REPO / "configs" / "cnn" / "mscfnet4_cifar10.yaml"


def test_default_name_comes_from_the_data_not_the_config_file(tmp_path: Path, monkeypatch) -> None:
    cfg, raw = load_config(CONFIG, [f"data.root={tmp_path / 'My Photos'}"])
    assert cfg.name == raw["name"] == "mscfnet4_My_Photos"
    assert load_config(CONFIG)[0].name == "mscfnet4_cifar10"  # the config's own data root: cifar10
    assert load_config(CONFIG, ["name=holiday", f"data.root={tmp_path}"])[0].name == "holiday"
    monkeypatch.chdir(tmp_path)
    assert default_run_name("cnn5", Path(".")) == f"cnn5_{tmp_path.name}"  # "." names the folder itself
    assert default_run_name("cnn5", None) == "cnn5"


@pytest.mark.parametrize("name", ["holiday", "2024"])
def test_cli_name_names_the_run_directory_record_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    write_imagefolder(tmp_path / "data")
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'base.yaml'}\nmodel: {{name: mscfnet2, options: {{width: 8}}}}\n"
        f"data: {{kind: imagefolder, image_size: 8, stats: cifar10, cache_dir: {tmp_path / 'cache'}}}\n"
        "optim: {batch_size: 12, epochs: 1, lr0: 0.003}\nruntime: {progress: false, num_threads: 1}\n"
    )
    monkeypatch.chdir(tmp_path)  # the default run directory is runs/<name>, relative to where msir-train runs
    args = ["--config", str(config), "--data-root", str(tmp_path / "data"), "--device", "cpu", "--name", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / name
    assert json.loads((run_dir / "run.json").read_text())["name"] == name  # "2024" stays a string
    for which in ("best", "last"):
        assert load_checkpoint(run_dir / which).meta.training["name"] == name
    assert f"msir-train: {name}" in result.output
