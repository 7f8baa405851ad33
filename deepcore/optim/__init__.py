"""Optimizers, learning-rate schedulers and gradient clipping, with PyTorch's update rules."""

from .adam import Adam, AdamW
from .clip import clip_grad_norm_
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .schedulers import CosineAnnealingLR, LinearLR, LRScheduler, StepLR, WarmupCosineLR
from .sgd import SGD

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "LRScheduler",
    "StepLR",
    "CosineAnnealingLR",
    "LinearLR",
    "WarmupCosineLR",
    "clip_grad_norm_",
]
