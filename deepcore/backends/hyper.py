"""Optimizer hyperparameters packed for the update kernels: one order per rule, written once.

A rule's row is (hp, flags): hp holds floats in the parameters' dtype, flags small integers.
Scalars derived from the hyperparameters (Adam's bias corrections, 1 - dampening, ...) are
computed here on the host in float64 and then cast, as PyTorch's eager rules do, so every
backend and every route feeds its per-element formula the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Update rules, in the order of their kernel codes (kernels/numba/optimizers.py).
RULES = ("sgd", "adam", "rmsprop")
#: Widths of a packed row.
HP_WIDTH, FLAGS_WIDTH = 9, 3
#: The optimizer state arrays of each rule, in the kernels' (s1, s2, s3) order.
STATE_KEYS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
}


def adam_scalars(
    step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
) -> tuple[float, ...]:
    """Adam's per-step scalars (float64): lr/bc1, beta1, 1-beta1, beta2, 1-beta2, sqrt(bc2),
    eps, weight_decay, 1 - lr*weight_decay."""
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    return (
        lr / bc1, beta1, 1.0 - beta1, beta2, 1.0 - beta2, bc2_sqrt, eps, weight_decay,
        1.0 - lr * weight_decay,
    )  # fmt: skip


def pack(
    rule: str,
    group: dict[str, Any],
    *,
    step: int = 1,
    first_step: bool = False,
    decoupled: bool | None = None,
) -> tuple:
    """(hp floats, flags) of `rule` for one parameter group at this step (Python numbers).
    Adam's decay is decoupled (AdamW) when `decoupled`, or when the group says so."""
    wd = float(group.get("weight_decay", 0.0))
    maximize = bool(group.get("maximize", False))
    lr = float(group["lr"])
    if rule == "sgd":
        hp = (lr, float(group["momentum"]), 1.0 - float(group["dampening"]), wd)
        flags = (bool(group["nesterov"]), maximize, bool(first_step))
    elif rule == "adam":
        beta1, beta2 = group["betas"]
        hp = adam_scalars(step, lr, float(beta1), float(beta2), float(group["eps"]), wd)
        if decoupled is None:
            decoupled = bool(group.get("decoupled", False))
        flags = (decoupled, bool(group["amsgrad"]), maximize)
    elif rule == "rmsprop":
        alpha = float(group["alpha"])
        hp = (lr, alpha, 1.0 - alpha, float(group["eps"]), wd, float(group["momentum"]))
        flags = (bool(group["centered"]), maximize, False)
    else:
        raise ValueError(f"unknown update rule {rule!r}; expected one of {', '.join(RULES)}")
    return hp, flags


def rows(packed: list[tuple], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-parameter (hp, flags) arrays from a list of `pack` results (one per parameter)."""
    hp = np.zeros((len(packed), HP_WIDTH), dtype)
    flags = np.zeros((len(packed), FLAGS_WIDTH), np.int64)
    for i, (h, f) in enumerate(packed):
        hp[i, : len(h)] = h
        flags[i, : len(f)] = f
    return hp, flags
