"""Layered YAML configs, dotted overrides and error messages that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models import options_of
from training.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    write(
        tmp_path / "base.yaml",
        "seed: 1\noptim:\n  lr0: 0.01\n  batch_size: 32\n  epochs: 4\nmodel:\n  name: mscfnet2\n"
        "  options: {width: 16, dropout: 0.1}\naugment:\n  hflip: 0.5\n",
    )
    write(
        tmp_path / "mid" / "mid.yaml",
        "extends: ../base.yaml\noptim:\n  batch_size: 8\nmodel:\n  options: {width: 8}\n",
    )
    return write(tmp_path / "mid" / "leaf" / "run.yaml", "extends: ../mid.yaml\naugment:\n  vflip: 0.25\n")


def test_extends_merges_deep(layered: Path) -> None:
    cfg, raw = load_config(layered)
    assert cfg.name == "mscfnet2"  # no data root: the model; never the config file's name ("run")
    assert cfg.seed == 1
    assert cfg.optim.lr0 == 0.01 and cfg.optim.batch_size == 8 and cfg.optim.epochs == 4
    assert cfg.model.name == "mscfnet2"
    assert cfg.model.options == {"width": 8, "dropout": 0.1}  # dicts merge key by key
    assert cfg.augment.hflip == 0.5 and cfg.augment.vflip == 0.25
    assert raw["optim"]["batch_size"] == 8 and "extends" not in raw


def test_overrides_are_yaml_parsed_and_win(layered: Path) -> None:
    cfg, raw = load_config(
        layered,
        [
            "optim.lr0=1e-3",
            "model.name=mscfnet4",
            "model.options.batch_norm=true",
            "optim.betas=[0.8, 0.9]",
            "data.root=/tmp/x",
            "phases=[{epochs: 2}, {epochs: 1, weights: {ce: 0.5, triplet: 1}}]",
            "phases.1.decay=0.25",
        ],
    )
    assert cfg.optim.lr0 == pytest.approx(1e-3)
    assert cfg.model.name == "mscfnet4"
    assert cfg.model.options["batch_norm"] is True
    assert cfg.optim.betas == (0.8, 0.9)
    assert str(cfg.data.root) == "/tmp/x"
    assert cfg.phases is not None and cfg.phases[1].decay == 0.25 and cfg.phases[1].weights.triplet == 1
    # optim.epochs (4) rescales the phases (2 + 1 epochs) proportionally.
    assert [p.epochs for p in cfg.phase_list()] == pytest.approx([8 / 3, 4 / 3])
    assert raw["optim"]["lr0"] == pytest.approx(1e-3)


def test_unknown_key_names_key_and_file(layered: Path, tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "extends: mid/leaf/run.yaml\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "bad.yaml")
    msg = str(err.value)
    assert "optim.lr" in msg and str(tmp_path / "bad.yaml") in msg and "lr0" in msg  # lists accepted keys
    # In a parent file: the parent is named.
    write(tmp_path / "base.yaml", (tmp_path / "base.yaml").read_text() + "augmentt: {}\n")
    with pytest.raises(ConfigError, match=r"'augmentt' in .*base\.yaml"):
        load_config(layered)


def test_unknown_override_and_bad_values(layered: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lr_zero.*--set optim\.lr_zero=1"):
        load_config(layered, ["optim.lr_zero=1"])
    with pytest.raises(ConfigError, match=r"optim\.lr0.*--set optim\.lr0=-1"):
        load_config(layered, ["optim.lr0=-1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(layered, ["optim.lr0"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(layered, ["phases=[{epochs: 1}]", "phases.3.epochs=2"])


def test_missing_parent_and_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    write(tmp_path / "c.yaml", "extends: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "b.yaml")


def test_preprocess_spec_from_stats_or_values(layered: Path) -> None:
    cfg, _ = load_config(layered, ["data.stats=cifar10", "data.image_size=16"])
    spec = cfg.data.preprocess_spec()
    assert spec.image_size == (16, 16) and spec.mean == pytest.approx((0.4914, 0.4822, 0.4465))
    cfg, _ = load_config(layered, ["data.channels=1", "data.mean=[0.5]", "data.std=[0.25]"])
    assert cfg.data.preprocess_spec().std == (0.25,)
    with pytest.raises(ConfigError, match=r"mean and data\.std"):
        load_config(layered, ["data.mean=[0.5]"])


def test_shipped_configs_validate() -> None:
    """Every YAML in configs/ loads (extends chain included) and describes a consistent run."""
    # Layers (base.yaml, *_common.yaml) hold shared keys only; each must be extended by a config that validates.
    layers = {p for p in (REPO / "configs").rglob("*.yaml") if p.name == "base.yaml" or p.stem.endswith("_common")}
    paths = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p not in layers)
    extended = {
        (p.parent / parent).resolve()
        for p in paths
        for parent in [yaml.safe_load(p.read_text()).get("extends")]
        if isinstance(parent, str)
    }
    assert layers <= extended | {REPO / "configs" / "base.yaml"}, layers - extended
    assert len(paths) >= 24  # 15 CNN + 8 ViT + the improved recipe (+ any added later)
    for path in paths:
        cfg, _ = load_config(path)
        assert cfg.total_epochs > 0, path
        cfg.data.preprocess_spec()
        unknown = set(cfg.model.options) - set(options_of(cfg.model.name))
        assert not unknown, (path, unknown)
