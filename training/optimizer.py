"""The optimizer a run's ``optim`` section asks for (SGD, Adam, AdamW)."""

from __future__ import annotations

import torch
from torch import nn

from training.config import OptimConfig


def build_optimizer(cfg: OptimConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr0, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr0, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


__all__ = ["build_optimizer"]
