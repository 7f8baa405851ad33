"""``load_dataset(name, **kw)``: one entry point for the CLI, always returning (train, test).

Datasets without their own test set get a seeded held-out split (stratified for classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .dataset import Dataset, train_test_split
from .digits import load_digits
from .mnist import load_mnist
from .synthetic import make_blobs, make_moons, make_spirals
from .tabular import load_csv, load_npz

__all__ = ["load_dataset", "DATASET_NAMES"]

_SPLIT_KW = {"test_size", "seed", "stratify"}


def _split(
    ds: Dataset, test_size: float | int = 0.2, seed: int = 0, stratify: bool = True
) -> tuple[Dataset, Dataset]:
    return train_test_split(ds, test_size=test_size, seed=seed, stratify=stratify)


def _digits(**kw: Any) -> tuple[Dataset, Dataset]:
    split = {k: kw.pop(k) for k in _SPLIT_KW & kw.keys()}
    return _split(load_digits(**kw), **split)


def _mnist(data_dir: str | None = None, **kw: Any) -> tuple[Dataset, Dataset]:
    if data_dir is None:
        raise ValueError(
            "mnist needs data_dir=<folder with the four IDX files>; nothing is downloaded"
        )
    return load_mnist(data_dir, **kw)


def _file(loader: Callable[..., Dataset], kind: str) -> Callable[..., tuple[Dataset, Dataset]]:
    def load(
        path: str | None = None, test_path: str | None = None, **kw: Any
    ) -> tuple[Dataset, Dataset]:
        if path is None:
            raise ValueError(f"{kind} needs path=<file> (and label=<column>)")
        split = {k: kw.pop(k) for k in _SPLIT_KW & kw.keys()}
        train = loader(path, **kw)
        if test_path is None:
            return _split(train, **split)
        test = loader(test_path, **{**kw, "task": train.task})  # same task as training
        return train, _align_classes(train, test)

    return load


def _align_classes(train: Dataset, test: Dataset) -> Dataset:
    """Re-index a separately loaded test set's labels onto the training set's classes."""
    if train.n_features != test.n_features:
        raise ValueError(
            f"test file has {test.n_features} features but training file has {train.n_features}"
        )
    if train.task != test.task:
        raise ValueError(f"training data is {train.task} but test data is {test.task}")
    if train.n_classes is None or train.classes is None or test.classes is None:
        return test
    original = test.classes[test.y]
    unseen = np.setdiff1d(np.unique(original), train.classes)
    if unseen.size:
        raise ValueError(f"test labels not present in the training data: {unseen.tolist()}")
    y = np.searchsorted(train.classes, original).astype(np.int64)
    return Dataset(
        X=test.X,
        y=y,
        name=test.name,
        n_classes=train.n_classes,
        feature_names=test.feature_names,
        classes=train.classes,
    )


def _synthetic(maker: Callable[..., Dataset]) -> Callable[..., tuple[Dataset, Dataset]]:
    def load(**kw: Any) -> tuple[Dataset, Dataset]:
        split = {k: kw.pop(k) for k in ("test_size", "stratify") & kw.keys()}
        seed = kw.get("seed", 0)  # one seed drives both the points and the split
        return _split(maker(**kw), seed=seed, **split)

    return load


_LOADERS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "digits": _digits,
    "mnist": _mnist,
    "csv": _file(load_csv, "csv"),
    "npz": _file(load_npz, "npz"),
    "spirals": _synthetic(make_spirals),
    "moons": _synthetic(make_moons),
    "blobs": _synthetic(make_blobs),
}
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, **kw: Any) -> tuple[Dataset, Dataset]:
    """Load dataset ``name`` as (train, test).

    - ``digits``: bundled; 20% stratified held out (``test_size``, ``seed``, ``dtype``).
    - ``mnist``: ``data_dir`` with the IDX files; uses MNIST's own test set.
    - ``csv`` / ``npz``: ``path``, ``label`` and loader options; optional ``test_path``,
      else a seeded ``test_size`` split.
    - ``spirals`` / ``moons`` / ``blobs``: generator options; ``seed`` also seeds the split.
    """
    key = name.lower().strip() if isinstance(name, str) else name
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    try:
        return _LOADERS[key](**kw)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"load_dataset({key!r}): {exc}") from exc
        raise
