"""Seeded shuffling and mini-batching of host arrays.

Each epoch draws a fresh permutation from one ``numpy.random.Generator``; the batch order is
therefore fixed by the seed alone and is the same whichever backend consumes the batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .dataset import SeedLike, as_generator

__all__ = ["BatchIterator", "iterate_minibatches"]


class BatchIterator:
    """Re-iterable mini-batches ``(X[idx], y[idx])``: one pass over the data per ``iter()``.

    With ``shuffle=True`` every epoch uses a new permutation from ``rng`` (an int seed or a
    Generator, shared state across epochs); ``drop_last`` drops a final short batch. ``y`` may be
    ``None`` (e.g. for prediction), then batches are ``(X[idx], None)``.
    """

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        batch_size: int,
        shuffle: bool = True,
        rng: SeedLike = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        X = np.asarray(X)
        if X.ndim == 0:
            raise ValueError("X must have at least one dimension (samples first)")
        n = len(X)
        if n == 0:
            raise ValueError("cannot batch an empty dataset (X has 0 samples)")
        if y is not None:
            y = np.asarray(y)
            if y.ndim == 0 or len(y) != n:
                raise ValueError(f"X has {n} samples but y has {np.shape(y)[:1] or 'no'} labels")
        if drop_last and batch_size > n:
            raise ValueError(
                f"drop_last=True with batch_size={batch_size} > {n} samples would yield no batches"
            )
        self.X, self.y = X, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = as_generator(rng) if shuffle else None

    @property
    def n_samples(self) -> int:
        return len(self.X)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = self.n_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        n, b = self.n_samples, self.batch_size
        stop = (n // b) * b if self.drop_last else n
        if self.rng is None:  # contiguous slices: views, no copies
            for start in range(0, stop, b):
                sl = slice(start, min(start + b, n))
                yield self.X[sl], None if self.y is None else self.y[sl]
            return
        order = self.rng.permutation(n)
        for start in range(0, stop, b):
            idx = order[start : start + b]
            yield self.X[idx], None if self.y is None else self.y[idx]


def iterate_minibatches(
    X: np.ndarray,
    y: np.ndarray | None,
    batch_size: int,
    shuffle: bool = True,
    seed: SeedLike = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """One epoch of ``(X_batch, y_batch)``; arguments are validated before the first batch.

    ``seed`` is an int or a Generator (pass the same Generator each epoch for fresh but
    reproducible orders).
    """
    return iter(BatchIterator(X, y, batch_size, shuffle=shuffle, rng=seed, drop_last=drop_last))
