"""Bundled 8x8 handwritten digits, a small real dataset that needs no download.

Data: Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak,
UCI Machine Learning Repository (CC BY 4.0),
https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits

The bundle holds the 1,797 images of the UCI test set (each pixel counts the "on" bits in a 4x4
block of a 32x32 bitmap, so 0..16), as scikit-learn distributes them. ``digits.npz`` stores
``images`` (uint8, 1797x8x8) and ``labels`` (uint8) and is read with ``allow_pickle=False``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from .dataset import Dataset

__all__ = ["load_digits", "DIGITS_CREDIT"]

DIGITS_CREDIT = (
    "Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak, "
    "UCI Machine Learning Repository (CC BY 4.0)"
)

_FEATURE_NAMES = tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8))


def _read_bundle() -> tuple[np.ndarray, np.ndarray]:
    ref = resources.files(__package__).joinpath("digits.npz")
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return npz["images"], npz["labels"]


def load_digits(dtype: np.dtype | type = np.float32) -> Dataset:
    """The 1,797 bundled digits: ``X`` (1797, 64) scaled to [0, 1], ``y`` int64 in 0..9.

    ``dtype`` must be a float dtype (float32 by default, matching the backends' default).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    images, labels = _read_bundle()
    X = images.reshape(len(images), -1).astype(dtype) / dtype.type(16)
    return Dataset(
        X=X.astype(dtype, copy=False),
        y=labels.astype(np.int64),
        name="digits",
        n_classes=10,
        feature_names=_FEATURE_NAMES,
        classes=np.arange(10, dtype=np.int64),
    )
