"""A serving-only install (the base dependencies, no `train` extra: the Docker image) never imports a training-only
package: every module of the serving packages imports with those packages blocked, and the CLIs start."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVING_PACKAGES = ("msir_core", "msir_schemas", "models", "msir_data", "indexer", "app")
# import names of the `train` extra's distributions
TRAIN_ONLY = ("matplotlib", "sklearn", "pytorch_metric_learning")

BLOCKER = """
import importlib, importlib.abc, pkgutil, sys

BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is training-only (the `train` extra)", name=name)
        return None

sys.meta_path.insert(0, Block())
for top in {packages!r}:
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith("__main__") or ".migrations" in info.name:
            continue
        importlib.import_module(info.name)
print("imported", len([m for m in sys.modules if m.split(".")[0] in {packages!r}]))
"""


def test_train_extra_lists_the_blocked_packages() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = " ".join(extras["train"]).replace("-", "_")
    for blocked, dist in zip(TRAIN_ONLY, ("matplotlib", "scikit_learn", "pytorch_metric_learning"), strict=True):
        assert dist in names, f"{blocked} ({dist}) is expected in the train extra"
    base = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for dist in ("matplotlib", "scikit-learn", "pytorch-metric-learning"):
        assert dist not in base, f"{dist} is training-only and must not be a base dependency"


def test_serving_modules_import_without_training_packages() -> None:
    code = BLOCKER.format(blocked=set(TRAIN_ONLY), packages=SERVING_PACKAGES)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("imported")


def test_the_blocker_blocks() -> None:
    # Without this, a finder that never fires would make the test above pass for nothing.
    code = BLOCKER.format(blocked=set(TRAIN_ONLY), packages=("training",))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode != 0 and "training-only" in out.stderr
