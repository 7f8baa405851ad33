"""Small synthetic classification sets for demos and tests, deterministic for a seed.

All randomness comes from one ``numpy.random.Generator`` built from ``seed``, so the same seed
gives the same points on every machine and backend.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, SeedLike, as_generator

__all__ = ["make_spirals", "make_moons", "make_blobs"]


def _check(n_samples: int, noise: float, dtype: np.dtype | type, min_samples: int) -> np.dtype:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer):
        raise TypeError(f"n_samples must be an int, got {n_samples!r}")
    if n_samples < min_samples:
        raise ValueError(f"n_samples must be >= {min_samples}, got {n_samples}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def _split_counts(n: int, k: int) -> list[int]:
    """``n`` items over ``k`` groups as evenly as possible, earlier groups taking the remainder."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_spirals(
    n_samples: int = 300,
    n_classes: int = 3,
    noise: float = 0.2,
    seed: SeedLike = 0,
    shuffle: bool = True,
    dtype: np.dtype | type = np.float32,
) -> Dataset:
    """Interleaved 2-D spiral arms, one per class (the CS231n toy problem); not linearly separable.

    Class ``k`` has radius 0..1 and angle ``4k .. 4(k+1)`` radians plus Gaussian angle noise of
    standard deviation ``noise``.
    """
    dtype = _check(n_samples, noise, dtype, n_classes)
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    rng = as_generator(seed)
    Xs, ys = [], []
    for k, n in enumerate(_split_counts(n_samples, n_classes)):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(4.0 * k, 4.0 * (k + 1), n) + rng.normal(scale=noise, size=n)
        Xs.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        ys.append(np.full(n, k, dtype=np.int64))
    X, y = np.concatenate(Xs), np.concatenate(ys)
    if shuffle:
        perm = rng.permutation(n_samples)
        X, y = X[perm], y[perm]
    return Dataset(
        X=X.astype(dtype),
        y=y,
        name="spirals",
        n_classes=n_classes,
        feature_names=("x0", "x1"),
        classes=np.arange(n_classes, dtype=np.int64),
    )


def make_moons(
    n_samples: int = 300,
    noise: float = 0.1,
    seed: SeedLike = 0,
    shuffle: bool = True,
    dtype: np.dtype | type = np.float32,
) -> Dataset:
    """Two interleaving half circles, the same construction as ``sklearn.datasets.make_moons``.

    The outer moon gets ``n_samples // 2`` points, the inner the rest; Gaussian noise of standard
    deviation ``noise`` is added after the optional shuffle. (The random stream is numpy's
    Generator, so noisy points differ from scikit-learn's RandomState-based ones.)
    """
    dtype = _check(n_samples, noise, dtype, 2)
    rng = as_generator(seed)
    n_out = n_samples // 2
    n_in = n_samples - n_out
    outer = np.linspace(0.0, np.pi, n_out)
    inner = np.linspace(0.0, np.pi, n_in)
    X = np.vstack(
        [
            np.append(np.cos(outer), 1.0 - np.cos(inner)),
            np.append(np.sin(outer), 1.0 - np.sin(inner) - 0.5),
        ]
    ).T
    y = np.hstack([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    if shuffle:
        perm = rng.permutation(n_samples)
        X, y = X[perm], y[perm]
    if noise:
        X = X + rng.normal(scale=noise, size=X.shape)
    return Dataset(
        X=X.astype(dtype),
        y=y,
        name="moons",
        n_classes=2,
        feature_names=("x0", "x1"),
        classes=np.arange(2, dtype=np.int64),
    )


def make_blobs(
    n_samples: int = 300,
    n_classes: int = 3,
    n_features: int = 2,
    cluster_std: float = 1.0,
    center_box: tuple[float, float] = (-10.0, 10.0),
    seed: SeedLike = 0,
    shuffle: bool = True,
    dtype: np.dtype | type = np.float32,
) -> Dataset:
    """Isotropic Gaussian clusters, one per class, centres drawn uniformly from ``center_box``."""
    dtype = _check(n_samples, cluster_std, dtype, n_classes)
    if n_classes < 1 or n_features < 1:
        raise ValueError(f"n_classes and n_features must be >= 1, got {n_classes}, {n_features}")
    rng = as_generator(seed)
    centers = rng.uniform(center_box[0], center_box[1], size=(n_classes, n_features))
    counts = _split_counts(n_samples, n_classes)
    parts = [
        c + rng.normal(scale=cluster_std, size=(n, n_features))
        for c, n in zip(centers, counts, strict=True)
    ]
    X = np.concatenate(parts)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), counts)
    if shuffle:
        perm = rng.permutation(n_samples)
        X, y = X[perm], y[perm]
    return Dataset(
        X=X.astype(dtype),
        y=y,
        name="blobs",
        n_classes=n_classes,
        feature_names=tuple(f"x{i}" for i in range(n_features)),
        classes=np.arange(n_classes, dtype=np.int64),
    )
