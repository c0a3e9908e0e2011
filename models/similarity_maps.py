"""Why two images are similar: per-location heat-maps of the cosine score, for MSCFNet and the ViTs.

Exact decompositions (:func:`location_contributions`). The heat-map math (:mod:`msir_core.retrieval.heatmaps`)
needs the embedding written as a sum of one vector per location of a feature map. Our heads are not plain pooling,
so each is decomposed for the given input:

- MSCFNet: ``e = act(W vec(F) + b)`` with ``F`` the last ``[C, h, w]`` feature map (flattened, or averaged with
  ``global_pool``). ``W vec(F) = sum_ij W[:, :, i, j] F[:, i, j]`` (for the average, ``W F[:, i, j] / N``): one
  vector per location; the bias is shared equally by the ``N`` locations. ``act`` is ReLU (``e = m * z`` with the
  mask ``m = z > 0`` of this input) or BatchNorm1d in eval mode (an affine map per dimension), so each location's
  vector goes through the same per-dimension scale and the sum stays exact.
- ViT with ``pool="mean"``: ``e = W2 GELU(W1 mean_i(t_i) + b1) + b2``. ``GELU(z) = g * z`` with the per-dimension
  gate ``g = GELU(z) / z`` of this input, so ``e = sum_i [W2 (g * (W1 t_i + b1) / N) + b2 / N]``: exact again.

With these, the two heat-maps of a pair each add up to the cosine of the two embeddings (the tests hold them to
1e-4). The ViT's tokens come from several scales: a coarser token's value is spread evenly over the full-resolution
patches it covers, so the map is on the full-resolution patch grid and its sum is unchanged.

ViT with a [CLS] embedding (the shipped presets): the [CLS] output is no sum over tokens, so the map is Grad-CAM on
the cosine (Selvaraju et al. 2017) over the tokens entering the last encoder layer: ``ReLU(sum_c alpha_c t_ic)`` with
``alpha`` the gradient of the cosine averaged over the patch tokens. It shows where the score comes from but does
not add up to it (``exact`` is false).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint import load_checkpoint
from models.mscfnet import MSCFNet
from models.preprocessing import PreprocessSpec, normalize
from models.vit import MultiScaleViT
from msir_core.retrieval.heatmaps import similarity_maps


class ExplainUnsupportedError(ValueError):
    """A model whose similarity cannot be mapped to image locations here."""


@dataclass
class LocationMap:
    """Per-location contributions of a batch: ``parts [B, N, D]`` sum over N to the (unnormalised) embeddings;
    ``fold [N, rows * cols]`` spreads each location over the output grid (rows sum to 1)."""

    parts: Tensor
    grid: tuple[int, int]
    fold: Tensor


@dataclass
class PairMaps:
    """Heat-maps of one (query, result) pair on their grids; ``exact``: each sums to ``score``."""

    score: float
    query: np.ndarray  # [rows, cols]
    result: np.ndarray  # [rows, cols]
    exact: bool
    method: str


def _mscfnet_parts(model: MSCFNet, x: Tensor) -> LocationMap:
    features = model.features(x)  # [B, C, h, w]
    b, c, h, w = features.shape
    n = h * w
    linear: nn.Linear = model.embed[1]  # type: ignore[assignment]
    act = model.embed[2]
    if isinstance(model.pool, nn.AdaptiveAvgPool2d):
        parts = (features.flatten(2).transpose(1, 2) / n) @ linear.weight.T  # [B, N, D]
    else:
        weight = linear.weight.view(-1, c, h, w)  # flatten order: channel, row, column
        parts = torch.einsum("bchw,dchw->bhwd", features, weight).reshape(b, n, -1)
    parts = parts + linear.bias / n
    if isinstance(act, nn.ReLU):
        parts = parts * (parts.sum(dim=1, keepdim=True) > 0)
    elif isinstance(act, nn.BatchNorm1d):
        assert act.running_var is not None and act.running_mean is not None  # eval mode statistics
        scale = act.weight / torch.sqrt(act.running_var + act.eps)
        parts = parts * scale + (act.bias - act.running_mean * scale) / n
    else:  # pragma: no cover - MSCFNet builds only these two
        raise ExplainUnsupportedError(f"MSCFNet embedding activation {type(act).__name__}")
    return LocationMap(parts, (h, w), torch.eye(n, dtype=parts.dtype))


def _vit_fold(model: MultiScaleViT) -> tuple[tuple[int, int], Tensor]:
    """Each token -> the full-resolution patches its area covers, evenly weighted: ``[num_tokens, rows0 * cols0]``."""
    rows0, cols0 = model.grids[0]
    fold = torch.zeros(model.num_tokens, rows0 * cols0)
    token = 0
    for k, (rows, cols) in enumerate(model.grids):
        step = 2**k
        for r in range(rows):
            r0, r1 = min(r * step, rows0 - 1), min((r + 1) * step, rows0)
            for c in range(cols):
                c0, c1 = min(c * step, cols0 - 1), min((c + 1) * step, cols0)
                cells = [i * cols0 + j for i in range(r0, max(r1, r0 + 1)) for j in range(c0, max(c1, c0 + 1))]
                fold[token, cells] = 1.0 / len(cells)
                token += 1
    return (rows0, cols0), fold


def _vit_mean_parts(model: MultiScaleViT, x: Tensor) -> LocationMap:
    tokens = model.encode(x)[:, 1:]  # [B, N, W]
    n = tokens.shape[1]
    first, _, second = model.embed  # Linear, GELU, Linear
    hidden = first(tokens) / n  # each token's share of W1 mean(t) + b1
    z = hidden.sum(dim=1, keepdim=True)
    gate = torch.where(z == 0, torch.full_like(z, 0.5), F.gelu(z) / torch.where(z == 0, torch.ones_like(z), z))
    parts = (hidden * gate) @ second.weight.T + second.bias / n
    grid, fold = _vit_fold(model)
    return LocationMap(parts, grid, fold.to(parts.dtype))


def location_contributions(model: nn.Module, x: Tensor) -> LocationMap:
    """Per-location contributions of ``model``'s embeddings of ``x`` (normalised input; model in eval mode)."""
    if isinstance(model, MSCFNet):
        return _mscfnet_parts(model, x)
    if isinstance(model, MultiScaleViT) and model.pool == "mean":
        return _vit_mean_parts(model, x)
    raise ExplainUnsupportedError(f"no exact decomposition for {type(model).__name__}")


def _grad_cam_pairs(model: MultiScaleViT, query: Tensor, results: Tensor) -> list[PairMaps]:
    """Grad-CAM on the cosine of each (query, result) pair, over the tokens entering the last encoder layer."""
    captured: list[Tensor] = []

    def keep(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        args[0].retain_grad()
        captured.append(args[0])

    r = results.shape[0]
    batch = torch.cat([query.expand(r, -1, -1, -1), results])  # one query copy per pair: separate gradients
    handle = model.encoder.layers[-1].register_forward_pre_hook(keep)  # type: ignore[index]
    try:
        with torch.enable_grad():
            emb = model(batch).embedding
            cos = F.cosine_similarity(emb[:r], emb[r:], dim=1)
            cos.sum().backward()
    finally:
        handle.remove()
    acts = captured[0][:, 1:]  # patch tokens [2R, N, W]
    grads = captured[0].grad[:, 1:]  # type: ignore[index]
    alpha = grads.mean(dim=1, keepdim=True)
    cam = F.relu((alpha * acts).sum(dim=2)).detach()  # [2R, N]
    cos = cos.detach()
    grid, fold = _vit_fold(model)
    maps = (cam @ fold).reshape(2 * r, *grid).numpy()
    return [PairMaps(float(cos[i]), maps[i], maps[r + i], exact=False, method="grad-cam") for i in range(r)]


def explain_pairs(model: nn.Module, query: Tensor, results: Tensor) -> list[PairMaps]:
    """Heat-maps of the query (``[1, C, H, W]``, normalised) against each of ``results [R, C, H, W]``."""
    model.eval()
    if isinstance(model, MultiScaleViT) and model.pool == "cls":
        return _grad_cam_pairs(model, query, results)
    with torch.inference_mode():
        located = location_contributions(model, torch.cat([query, results]))
    parts = located.parts.double().numpy()
    fold = located.fold.double().numpy()
    out = []
    for i in range(1, len(parts)):
        score, heat_q, heat_r = similarity_maps(parts[0], parts[i])
        out.append(
            PairMaps(
                score,
                (heat_q @ fold).reshape(located.grid),
                (heat_r @ fold).reshape(located.grid),
                True,
                "decomposition",
            )
        )
    return out


class Explainer:
    """A checkpoint's torch model on the CPU for heat-maps (the service may embed with ONNX Runtime, which exposes no
    feature maps); loaded on first use, one explanation at a time."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = checkpoint
        self._lock = threading.Lock()
        self._model: nn.Module | None = None
        self._spec: PreprocessSpec | None = None

    def _load(self) -> tuple[nn.Module, PreprocessSpec]:
        if self._model is None or self._spec is None:
            loaded = load_checkpoint(self.checkpoint, device="cpu")
            if not isinstance(loaded.model, MSCFNet | MultiScaleViT):
                raise ExplainUnsupportedError(
                    f"heat-maps are available for MSCFNet and the ViTs, not for {loaded.meta.model_name}"
                )
            self._model, self._spec = loaded.model.eval(), loaded.meta.preprocess
        return self._model, self._spec

    def explain(self, query: np.ndarray, results: np.ndarray) -> list[PairMaps]:
        """``query uint8 [C, H, W]`` and ``results uint8 [R, C, H, W]`` (``to_uint8`` of the checkpoint's spec)."""
        with self._lock:
            model, spec = self._load()
            q = normalize(torch.from_numpy(np.ascontiguousarray(query[None])), spec)
            r = normalize(torch.from_numpy(np.ascontiguousarray(results)), spec)
            return explain_pairs(model, q, r)


__all__ = ["ExplainUnsupportedError", "Explainer", "LocationMap", "PairMaps", "explain_pairs", "location_contributions"]
