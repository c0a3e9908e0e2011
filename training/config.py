"""Run configuration: pydantic models, layered YAML (``extends:``) and dotted ``--set`` overrides.

A config file may name a parent with ``extends: ../base.yaml`` (relative to the file); parents are merged
first,
dictionaries deep, everything else (lists included) replaced. CLI overrides (``optim.lr0=1e-3``; the value is
parsed as YAML) come last. Unknown keys are errors that name the key and the file (or override) that set it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.preprocessing import DATASET_STATS, PreprocessSpec
from training.schedule import Phase, ScheduleKind


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file or override and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Strict):
    name: str = "mscfnet4"
    options: dict[str, Any] = Field(default_factory=dict)  # model-specific (checked by models.build)


class DataConfig(_Strict):
    kind: str = "auto"
    root: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # reader options (open_dataset(kind, root, **options))
    train_split: str = "train"
    val_split: str | None = None  # an explicit split; None -> hold out val_fraction of train
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_split: str | None = "test"
    # A dataset with a single split (a plain root/<class>/* folder, a manifest without a split column) has no train
    # or test split: this stratified fraction of it is held out for testing (and val_fraction of the rest for
    # validation), so pointing msir-train at your own folder just works.
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    image_size: int | tuple[int, int] = 32
    channels: Literal[1, 3] = 3
    resize: Literal["crop", "pad", "stretch"] = "crop"
    stats: str | None = "imagenet"  # name in models.preprocessing.DATASET_STATS, used when mean/std are unset
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cache_dir: Path = Field(Path("~/.cache/msir/decoded"), validate_default=True)
    limit_train: int | None = Field(None, ge=1)  # train on a deterministic subset of this many images

    @field_validator("root", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser()

    @model_validator(mode="after")
    def _stats(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std must be given together")
        if self.mean is None and self.stats not in DATASET_STATS:
            raise ValueError(f"data.stats {self.stats!r} unknown; known: {sorted(DATASET_STATS)} (or give mean/std)")
        return self

    def preprocess_spec(self) -> PreprocessSpec:
        if self.mean is not None and self.std is not None:
            return PreprocessSpec(
                image_size=self.image_size,  # type: ignore[arg-type]
                channels=self.channels,
                resize=self.resize,
                mean=self.mean,
                std=self.std,
            )
        return PreprocessSpec.for_dataset(str(self.stats), self.image_size, channels=self.channels, resize=self.resize)


class OptimConfig(_Strict):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr0: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)  # sgd only
    nesterov: bool = False  # sgd only
    # The GLOBAL batch: under torchrun each of the N ranks trains on batch_size / N images per step, so one config
    # gives the same optimisation on any number of GPUs (batch_size must be divisible by N).
    batch_size: int = Field(64, ge=1)
    epochs: float | None = Field(None, gt=0)  # None: the sum of the phases; else the phases are rescaled
    grad_clip: float | None = Field(None, gt=0)


class ScheduleConfig(_Strict):
    kind: ScheduleKind = "constant"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_fraction: float | None = Field(None, ge=0, lt=1)  # of the whole run (follows --epochs); wins if set
    min_lr_fraction: float = Field(0.0, ge=0, le=1)  # cosine floor
    onecycle_div: float = Field(25.0, gt=0)
    onecycle_final_div: float = Field(1e4, gt=0)


class LossWeights(_Strict):
    ce: float = Field(1.0, ge=0)
    contrastive: float = Field(0.0, ge=0)
    triplet: float = Field(0.0, ge=0)
    distill: float = Field(0.0, ge=0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.ce, self.contrastive, self.triplet, self.distill)


class PhaseConfig(_Strict):
    epochs: float = Field(gt=0)
    decay: float = Field(1.0, gt=0)  # LR multiplier reached at the end of the phase (phased schedule)
    weights: LossWeights = Field(default_factory=LossWeights)

    def to_phase(self) -> Phase:
        return Phase(self.epochs, self.decay, self.weights.as_tuple())


class LossConfig(_Strict):
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # single-label cross-entropy only
    # Class imbalance (ours; e.g. ISIC 2018, where NV is 67 % of training): weight each class's cross-entropy by
    # (n / n_c) ("inverse") or its square root ("sqrt_inverse"), normalised so the mean weight over training
    # images is 1. Single-label only; "none" is plain cross-entropy.
    class_weighting: Literal["none", "inverse", "sqrt_inverse"] = "none"
    # Cosine similarity on L2-normalised embeddings: positives pulled above pos_margin, negatives below
    # neg_margin.
    contrastive_pos_margin: float = 1.0
    contrastive_neg_margin: float = 0.0
    pair_miner_epsilon: float | None = 0.1  # multi-similarity mining; None = all pairs
    triplet_margin: float = Field(0.1, gt=0)
    triplet_type: Literal["all", "hard", "semihard"] = "all"
    max_triplets: int = Field(65536, ge=1)  # multi-label miner cap per batch
    distill_teacher: Path | None = None  # msir checkpoint (.safetensors + .json)
    distill_temperature: float = Field(4.0, gt=0)


class AugmentConfig(_Strict):
    hflip: float = Field(0.0, ge=0, le=1)  # probabilities
    vflip: float = Field(0.0, ge=0, le=1)
    rotate_degrees: float = Field(0.0, ge=0, le=180)
    rotate_p: float = Field(1.0, ge=0, le=1)
    crop_padding: int = Field(0, ge=0)  # random crop after zero padding (CIFAR recipe)
    cutout: int = Field(0, ge=0)  # side of the square erased, px
    cutout_p: float = Field(1.0, ge=0, le=1)


class EvalConfig(_Strict):
    batch_size: int = Field(256, ge=1)
    every: int = Field(1, ge=1)  # validation every N epochs (and always after the last)
    retrieval_every: int = Field(0, ge=0)  # 0 = never; else retrieval mAP on the val set every N epochs
    retrieval_max: int = Field(2000, ge=2)  # val images used for retrieval (deterministic subset)
    best_metric: str | None = None  # key of classification_metrics; None = accuracy (single) / f1_macro (multi)


class RuntimeConfig(_Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU: see cpu_bf16)
    # bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX): about 1.9x the fp32 step rate on this project's
    # EPYC VM. Off by default because results differ slightly from fp32; on a CPU without native bf16 it is ignored
    # with a warning (emulated bf16 is slower than fp32).
    cpu_bf16: bool = False
    compile: bool = False
    channels_last: bool = True  # CUDA, and a CPU under cpu_bf16
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    gpu_data_fraction: float = Field(0.5, gt=0, le=0.9)  # put the uint8 dataset on the GPU if below this x free
    num_threads: int | None = Field(None, ge=1)  # CPU threads for torch (None: torch's default)
    log_every: int = Field(25, ge=1)  # steps between host syncs for the progress bar on CUDA
    progress: bool = True
    # torchrun with BatchNorm models: batch statistics over the global batch (torch.nn.SyncBatchNorm, CUDA only);
    # off, each rank normalises with its own per-rank batch.
    sync_batch_norm: bool = False


class RunConfig(_Strict):
    name: str | None = None  # names the run in the progress bar, run.json and checkpoints; None: default_run_name
    seed: int = 0
    output_dir: Path | None = None  # default runs/<name>
    checkpoint_every: int = Field(0, ge=0)  # steps between resume states; 0 = at epoch ends only
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    phases: list[PhaseConfig] | None = None  # None: one CE-only phase of optim.epochs
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _length(self) -> RunConfig:
        if self.phases is None and self.optim.epochs is None:
            raise ValueError("give optim.epochs or phases")
        if self.phases is not None and not self.phases:
            raise ValueError("phases must not be empty (omit it for a single CE phase)")
        if not self.name:
            self.name = default_run_name(self.model.name, self.data.root)
        return self

    def phase_list(self) -> tuple[Phase, ...]:
        """The phases, rescaled to ``optim.epochs`` when that is set."""
        from training.schedule import scale_phases

        if self.phases is None:
            return (Phase(float(self.optim.epochs or 0)),)
        phases = tuple(p.to_phase() for p in self.phases)
        return scale_phases(phases, self.optim.epochs) if self.optim.epochs is not None else phases

    @property
    def total_epochs(self) -> float:
        return float(sum(p.epochs for p in self.phase_list()))

    @property
    def warmup_epochs(self) -> float:
        s = self.schedule
        return s.warmup_fraction * self.total_epochs if s.warmup_fraction is not None else s.warmup_epochs


# -- layering ------------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any], source: str, origin: dict[str, str], prefix: str = "") -> None:
    """Deep-merge ``over`` into ``base`` in place, recording in ``origin`` which source set each key."""
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            origin.setdefault(dotted, source)
            _merge(base[key], value, source, origin, dotted + ".")
        else:
            base[key] = copy.deepcopy(value)
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _leaf_keys(value, dotted + "."):
                    origin[sub] = source


def _leaf_keys(d: dict[str, Any], prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _leaf_keys(v, f"{prefix}{k}.")
    return out


def load_layers(path: str | Path, origin: dict[str, str] | None = None, _chain: tuple[Path, ...] = ()) -> dict:
    """The merged raw mapping of ``path`` and its ``extends`` ancestors."""
    path = Path(path).expanduser().resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"extends cycle: {cycle}")
    if not path.is_file():
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: config file not found{where}")
    origin = {} if origin is None else origin
    raw = _read_yaml(path)
    parents = raw.pop("extends", None)
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents or []:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: extends must be a path or a list of paths, got {parent!r}")
        _merge(merged, load_layers(path.parent / parent, origin, (*_chain, path)), "", {})
    _merge(merged, raw, str(path), origin)
    # Keys inherited from parents keep the parent's name as their origin (set in the recursive call).
    return merged


def apply_override(data: dict[str, Any], assignment: str, origin: dict[str, str]) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to ``data`` in place."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. optim.lr0=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({exc})") from exc
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, key)
            continue
        if not isinstance(node.get(part), dict | list):
            if part in node and node[part] is not None:
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value
    origin[key] = f"--set {assignment}"


def _list_index(node: list[Any], part: str, key: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _list_item(node: list[Any], part: str, key: str) -> Any:
    return node[_list_index(node, part, key)]


def default_run_name(model: str, root: Path | None) -> str:
    """``<model>_<data folder>`` (``mscfnet4_my_photos``): a run is named after what it learns from, not after the
    config file it borrowed its recipe from. Without a data root (in-memory arrays), the model name."""
    folder = root.expanduser().resolve().name if root is not None else ""  # resolve: "." names the folder
    slug = re.sub(r"[^\w.-]+", "_", folder).strip("._")
    return f"{model}_{slug}" if slug else model


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, dict]:
    """Load, layer, override and validate; returns the config and the merged raw mapping (for
    ``config.yaml``)."""
    origin: dict[str, str] = {}
    data = load_layers(path, origin) if path is not None else {}
    for assignment in overrides:
        apply_override(data, assignment, origin)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, path)) from exc
    return cfg, cfg.model_dump(mode="json")


def _describe(exc: ValidationError, origin: dict[str, str], path: str | Path | None) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = _origin_of(key, origin) or (str(path) if path else "the defaults")
        if err["type"] == "extra_forbidden":
            parent = key.rpartition(".")[0]
            lines.append(
                f"unknown key {key!r} in {where}; accepted keys under {parent or 'the top level'}: "
                f"{', '.join(_accepted(parent))}"
            )
        elif not key:
            lines.append(f"{err['msg']} (in {where})")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r}, set in {where})")
    return "invalid training config:\n  " + "\n  ".join(lines)


def _origin_of(key: str, origin: dict[str, str]) -> str | None:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        src = origin.get(".".join(parts[:n]))
        if src:
            return src
    return None


def _accepted(parent: str) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in parent.split(".") if parent else []:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        sub = _model_in(annotation)
        if sub is None:
            return []
        model = sub
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_config(raw: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "LossWeights",
    "ModelConfig",
    "OptimConfig",
    "PhaseConfig",
    "RunConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "apply_override",
    "default_run_name",
    "dump_config",
    "load_config",
    "load_layers",
]
