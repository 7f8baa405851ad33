"""scikit-learn's MLPClassifier beside deepcore.sklearn.MLPClassifier on every backend.

Same data split, same hyperparameters (solver adam, fixed epochs: tol=0 and n_iter_no_change
above max_iter, so both run exactly max_iter epochs), same seed. Reports test accuracy and the
median fit time over `repeats` fits, after one untimed short warm-up fit per row (Numba's JIT
compiles then; its time is reported as `warmup_seconds`). scikit-learn runs twice as anchors:
on float64 input (its usual use) and on float32 input (deepcore's default dtype).

    python -m deepcore.bench.sklearn_compare --max-iter 50 --repeats 3

`deepcore bench` calls `compare()`; absolute times drift on shared machines, the ratio
column (`speedup_vs_sklearn`, against the float64 anchor of the same run) is what holds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np


def _load(dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_test, y_train, y_test), features in [0, 1] or standardized."""
    from sklearn.model_selection import train_test_split

    if dataset == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        return tuple(train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y))
    from deepcore.data import load_dataset

    train, test = load_dataset(dataset, seed=seed)
    return (
        np.asarray(train.X, dtype=np.float64),
        np.asarray(test.X, dtype=np.float64),
        np.asarray(train.y),
        np.asarray(test.y),
    )


def _time_fit(make: Any, X: np.ndarray, y: np.ndarray, repeats: int) -> tuple[Any, list[float]]:
    times, est = [], None
    for _ in range(repeats):
        est = make()
        t0 = time.perf_counter()
        est.fit(X, y)
        times.append(time.perf_counter() - t0)
    return est, times


def compare(
    dataset: str = "digits",
    backends: list[str] | None = None,
    hidden: tuple[int, ...] = (100,),
    max_iter: int = 50,
    seed: int = 0,
    repeats: int = 3,
    batch_size: int | str = "auto",
) -> list[dict[str, Any]]:
    """Fit both implementations on `dataset`; one dict per row (implementation, backend, dtype,
    accuracy, fit_seconds, warmup_seconds, epochs, speedup_vs_sklearn)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP

    import deepcore
    from deepcore.sklearn import MLPClassifier as DcMLP

    if backends is None:
        backends = [n for n, a in deepcore.available_backends().items() if a.available]
    Xtr, Xte, ytr, yte = _load(dataset, seed)
    params = dict(
        hidden_layer_sizes=tuple(hidden),
        solver="adam",
        max_iter=max_iter,
        tol=0.0,
        n_iter_no_change=max_iter + 1,
        random_state=seed,
        batch_size=batch_size,
    )
    runs: list[tuple[str, str, str, Any, Any]] = [
        ("sklearn", "-", "float64", lambda m: SkMLP(**{**params, "max_iter": m}), np.float64),
        ("sklearn", "-", "float32", lambda m: SkMLP(**{**params, "max_iter": m}), np.float32),
    ]
    for name in backends:
        runs.append(
            (
                "deepcore",
                name,
                "float32",
                lambda m, name=name: DcMLP(**{**params, "max_iter": m}, backend=name),
                np.float32,
            )
        )
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for impl, backend, dtype, make, xdt in runs:
            X, Xt = Xtr.astype(xdt), Xte.astype(xdt)
            t0 = time.perf_counter()
            make(2).fit(X, ytr)  # warm-up: imports, JIT compiles, BLAS thread pools
            warm = time.perf_counter() - t0
            est, times = _time_fit(lambda make=make: make(max_iter), X, ytr, repeats)
            rows.append(
                {
                    "dataset": dataset,
                    "impl": impl,
                    "backend": backend,
                    "dtype": dtype,
                    "hidden": tuple(hidden),
                    "epochs": int(est.n_iter_),
                    "accuracy": float(est.score(Xt, yte)),
                    "fit_seconds": statistics.median(times),
                    "warmup_seconds": warm,
                    "final_loss": float(est.loss_),
                }
            )
    anchor = rows[0]["fit_seconds"]
    for r in rows:
        r["speedup_vs_sklearn"] = anchor / r["fit_seconds"] if r["fit_seconds"] > 0 else None
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'impl':<9} {'backend':<8} {'dtype':<8} {'epochs':>6} {'accuracy':>9} "
        f"{'fit s':>8} {'warmup s':>9} {'vs sklearn':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['impl']:<9} {r['backend']:<8} {r['dtype']:<8} {r['epochs']:>6} "
            f"{r['accuracy']:>9.4f} {r['fit_seconds']:>8.3f} {r['warmup_seconds']:>9.3f} "
            f"{r['speedup_vs_sklearn']:>9.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--backends", default=None, help="comma-separated; default: all available")
    ap.add_argument("--hidden", default="100", help="hidden sizes, e.g. 100 or 256,128")
    ap.add_argument("--max-iter", type=int, default=50)
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rows = compare(
        dataset=a.dataset,
        backends=a.backends.split(",") if a.backends else None,
        hidden=tuple(int(h) for h in a.hidden.split(",")),
        max_iter=a.max_iter,
        seed=a.seed,
        repeats=a.repeats,
        batch_size=a.batch_size if a.batch_size == "auto" else int(a.batch_size),
    )
    print(_table(rows))


if __name__ == "__main__":
    main()
