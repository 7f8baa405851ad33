"""Weight initialisation, drawn on the host from deepcore's seeded generator (deepcore.random)."""

from __future__ import annotations

import math
from typing import Any

from .. import random as dc_random


def linear_default(out_features: int, in_features: int, dtype: str) -> tuple[Any, Any]:
    """PyTorch's default Linear init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform_ with a=sqrt(5) reduces to that bound for the weight.) Weight first, then
    bias, from one generator, so every backend starts from the same numbers.
    """
    bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
    w = dc_random.uniform((out_features, in_features), -bound, bound, dtype)
    b = dc_random.uniform((out_features,), -bound, bound, dtype)
    return w, b
