"""The ``Dataset`` value, a seeded train/test split and train-fitted standardisation.

Everything here is plain NumPy on the host: backends receive the arrays only when a model
consumes them, so every backend sees the same numbers in the same order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "Standardizer", "standardize", "train_test_split", "as_generator"]

SeedLike = int | np.random.Generator | None


def as_generator(seed: SeedLike) -> np.random.Generator:
    """Turn an int seed (or ``None``) into a Generator; pass a Generator through unchanged."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise TypeError(f"seed must be an int, a numpy.random.Generator or None, got {seed!r}")
    return np.random.default_rng(seed)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``X`` (n, d) and targets ``y`` with the metadata a model and a report need.

    ``y`` holds int64 class indices 0..n_classes-1 for classification and floats for regression
    (``n_classes is None``). ``classes[i]`` is the original label behind index ``i`` (strings or
    non-contiguous ints), so predictions can be mapped back with :meth:`decode`.
    """

    X: np.ndarray
    y: np.ndarray
    name: str = "dataset"
    n_classes: int | None = None
    feature_names: tuple[str, ...] | None = None
    classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        X, y = self.X, self.y
        if not isinstance(X, np.ndarray) or X.ndim != 2:
            raise ValueError(f"{self.name}: X must be a 2-D numpy array, got shape {np.shape(X)}")
        if X.dtype.kind != "f":
            raise ValueError(f"{self.name}: X must have a floating dtype, got {X.dtype}")
        if not isinstance(y, np.ndarray) or y.ndim != 1:
            raise ValueError(f"{self.name}: y must be a 1-D numpy array, got shape {np.shape(y)}")
        if len(X) != len(y):
            raise ValueError(f"{self.name}: X has {len(X)} rows but y has {len(y)} labels")
        if self.n_classes is None:
            if y.dtype.kind != "f":
                raise ValueError(f"{self.name}: regression targets must be float, got {y.dtype}")
        else:
            if self.n_classes < 1:
                raise ValueError(f"{self.name}: n_classes must be >= 1, got {self.n_classes}")
            if y.dtype != np.int64:
                raise ValueError(f"{self.name}: class labels must be int64, got {y.dtype}")
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise ValueError(
                    f"{self.name}: class labels must lie in 0..{self.n_classes - 1}, "
                    f"got range {y.min()}..{y.max()}"
                )
            if self.classes is not None and len(self.classes) != self.n_classes:
                raise ValueError(
                    f"{self.name}: {len(self.classes)} classes given for n_classes={self.n_classes}"
                )
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))
            if len(self.feature_names) != X.shape[1]:
                raise ValueError(
                    f"{self.name}: {len(self.feature_names)} feature names for "
                    f"{X.shape[1]} features"
                )

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        kind = f"n_classes={self.n_classes}" if self.n_classes is not None else "regression"
        return (
            f"Dataset(name={self.name!r}, n_samples={self.n_samples}, "
            f"n_features={self.n_features}, {kind}, dtype={self.X.dtype})"
        )

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "regression" if self.n_classes is None else "classification"

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Map predicted class indices back to the original label values."""
        if self.n_classes is None:
            raise ValueError(f"{self.name}: decode() only applies to classification datasets")
        indices = np.asarray(indices)
        if self.classes is None:
            return indices
        return self.classes[indices]

    def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
        """Rows ``indices`` as a new Dataset sharing this one's metadata."""
        return dataclasses.replace(
            self, X=self.X[indices], y=self.y[indices], name=name or self.name
        )

    def astype(self, dtype: np.dtype | type) -> Dataset:
        """The same data with ``X`` (and regression ``y``) cast to the float ``dtype``."""
        dtype = np.dtype(dtype)
        y = self.y.astype(dtype, copy=False) if self.n_classes is None else self.y
        return dataclasses.replace(self, X=self.X.astype(dtype, copy=False), y=y)


def _n_test(n: int, test_size: float | int) -> int:
    if isinstance(test_size, bool):
        raise TypeError("test_size must be a float in (0, 1) or an int count, not a bool")
    if isinstance(test_size, int | np.integer):
        n_test = int(test_size)
    elif isinstance(test_size, float | np.floating) and 0.0 < test_size < 1.0:
        n_test = int(np.ceil(test_size * n))
    else:
        raise ValueError(f"test_size must be a float in (0, 1) or an int count, got {test_size!r}")
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"test_size={test_size!r} gives {n_test} test samples out of {n}; "
            "both train and test need at least one sample"
        )
    return n_test


def _stratified_counts(counts: np.ndarray, n_test: int) -> np.ndarray:
    """Per-class test counts summing to ``n_test``, proportional by largest remainder."""
    n = counts.sum()
    exact = counts * (n_test / n)
    take = np.floor(exact).astype(np.int64)
    # Keep at least one training sample per class when the class has more than one member.
    take = np.minimum(take, np.maximum(counts - 1, 0))
    short = n_test - int(take.sum())
    order = np.argsort(-(exact - take), kind="stable")
    while short > 0:
        progressed = False
        for c in order:
            if short == 0:
                break
            if take[c] < counts[c] - (1 if counts[c] > 1 else 0):
                take[c] += 1
                short -= 1
                progressed = True
        if not progressed:  # every class is at its cap: take from classes with spare rows
            for c in order:
                if short and take[c] < counts[c]:
                    take[c] += 1
                    short -= 1
    return take


def train_test_split(
    ds: Dataset,
    test_size: float | int = 0.2,
    seed: SeedLike = 0,
    stratify: bool = True,
) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into (train, test), deterministic for a seed.

    ``test_size`` is a fraction (rounded up, as scikit-learn does) or a count. For classification
    with ``stratify=True`` each class keeps its proportion in both parts (largest-remainder
    rounding, at least one training sample per class that has two or more).
    """
    n = len(ds)
    n_test = _n_test(n, test_size)
    rng = as_generator(seed)
    if stratify and ds.n_classes is not None:
        counts = np.bincount(ds.y, minlength=ds.n_classes)
        take = _stratified_counts(counts, n_test)
        test_parts, train_parts = [], []
        for c in range(ds.n_classes):
            idx = np.flatnonzero(ds.y == c)
            idx = idx[rng.permutation(len(idx))]
            test_parts.append(idx[: take[c]])
            train_parts.append(idx[take[c] :])
        test_idx = np.concatenate(test_parts)
        train_idx = np.concatenate(train_parts)
        test_idx = test_idx[rng.permutation(len(test_idx))]
        train_idx = train_idx[rng.permutation(len(train_idx))]
    else:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    return ds.subset(train_idx, f"{ds.name}-train"), ds.subset(test_idx, f"{ds.name}-test")


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature mean and scale fitted on training data; constant features get scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """Fit on ``X`` (n, d); statistics are computed in float64 for stability."""
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"Standardizer.fit needs a non-empty 2-D array, got shape {X.shape}")
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        # Guard constant (or nearly constant) columns: dividing by ~0 would blow them up.
        scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return cls(mean=mean, scale=scale)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / scale`` in ``X``'s own float dtype."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(
                f"expected an array with {len(self.mean)} columns, got shape {X.shape}"
            )
        dtype = X.dtype if X.dtype.kind == "f" else np.dtype(np.float64)
        return ((X - self.mean) / self.scale).astype(dtype, copy=False)

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`."""
        X = np.asarray(X)
        return (X * self.scale + self.mean).astype(X.dtype, copy=False)


def standardize(train: Dataset, *others: Dataset) -> tuple[Dataset, ...]:
    """Fit mean/std on ``train`` only and apply them to ``train`` and every other dataset.

    Returns the standardised ``(train, *others)``; fitting on train alone keeps test
    statistics out of training.
    """
    scaler = Standardizer.fit(train.X)
    return tuple(dataclasses.replace(d, X=scaler.transform(d.X)) for d in (train, *others))
