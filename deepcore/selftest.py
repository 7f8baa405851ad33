"""Self-check of a backend on this machine: every kernel against the NumPy backend, then a short
training run on both.

Meant for a user with a GPU (`deepcore selftest`, or `deepcore.selftest.run_selftest()`): the
CuPy backend's kernels were only executed in emulation before release, so this is the first
time they meet your GPU. Works for any backend (default: the best available one, as "auto"
picks); prints one line per check with the largest absolute and relative error and the
tolerance, then timings (selftest_speed.py), and returns True when all checks pass. With
`json_path` everything goes to a JSON report too (the file to send back from a first GPU run).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends.base import ACTIVATIONS, Backend

#: (rtol, atol) per dtype for one value built from a handful of terms; grown with sqrt(terms).
TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}
ROWS, FEATURES, UNITS = 67, 31, 33  # awkward sizes on purpose: no multiple of a warp or block

Check = tuple[str, int, Callable[[Backend, dict[str, np.ndarray]], list[Any]]]


def _inputs(dtype: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int, scale: float = 1.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    return {
        "x": r(ROWS, FEATURES),
        "w": r(UNITS, FEATURES, scale=0.3),
        "b": r(UNITS),
        "z": r(ROWS, UNITS, scale=3.0),
        "dy": r(ROWS, UNITS),
        "c": r(ROWS, UNITS),
        "probs": rng.random((ROWS, UNITS)).astype(dtype),
        "labels": rng.integers(0, UNITS, ROWS),
        "p": r(UNITS, FEATURES),
        "grads": np.stack([r(UNITS, FEATURES) for _ in range(3)]),
    }


def _checks() -> list[Check]:
    """(name, number of terms behind each value, fn(backend, host inputs) -> outputs)."""
    checks: list[Check] = []
    for ta in (False, True):
        for tb in (False, True):

            def gemm(be: Backend, d: dict, ta: bool = ta, tb: bool = tb) -> list[Any]:
                a = d["x"].T.copy() if ta else d["x"]
                w = d["w"] if tb else d["w"].T.copy()
                out = be.asarray(d["c"])
                return [be.gemm(be.asarray(a), be.asarray(w), ta, tb, 0.5, 2.0, out=out)]

            checks.append((f"gemm[{'T' if ta else 'N'}{'T' if tb else 'N'}]", FEATURES, gemm))
    for kind in ACTIVATIONS:

        def linear(be: Backend, d: dict, kind: str = kind) -> list[Any]:
            pre = be.empty((ROWS, UNITS), d["x"].dtype.name)
            x, w, b = (be.asarray(d[k]) for k in ("x", "w", "b"))
            return [be.linear(x, w, b, kind, alpha=0.1, pre_out=pre), pre]

        def backward(be: Backend, d: dict, kind: str = kind) -> list[Any]:
            z, dy = be.asarray(d["z"]), be.asarray(d["dy"])
            y = be.activation(kind, z)
            dz, db = be.activation_backward_bias_grad(kind, dy, x=z, y=y)
            return [y, be.activation_backward(kind, dy, x=z, y=y), dz, db]

        checks.append((f"linear+{kind}", FEATURES, linear))
        checks.append((f"{kind} fwd/bwd+bias grad", ROWS, backward))

    def small(be: Backend, d: dict) -> list[Any]:
        z = be.asarray(d["z"])
        return [be.bias_add(z, be.asarray(d["b"])), be.bias_grad(z), be.softmax(z)]

    def losses(be: Backend, d: dict) -> list[Any]:
        z, t = be.asarray(d["z"]), be.asarray(d["probs"])
        out: list[Any] = []
        out += be.softmax_cross_entropy(z, be.asarray(d["labels"]))
        out += be.bce_with_logits(z, t)
        out += be.mse(z, t)
        return out

    checks += [("bias_add/bias_grad/softmax", ROWS, small), ("losses", ROWS * UNITS, losses)]
    for opt in ("sgd", "adam", "rmsprop"):
        checks.append((f"{opt} update x3", 1, lambda be, d, opt=opt: [_optimizer(be, d, opt)]))
    return checks


def _optimizer(be: Backend, d: dict, opt: str) -> Any:
    p = be.asarray(d["p"])
    dtype = d["p"].dtype.name
    st = [be.zeros(p.shape, dtype) for _ in range(3)]
    for step, g in enumerate(d["grads"], start=1):
        g = be.asarray(g)
        if opt == "sgd":
            be.sgd_update(p, g, st[0], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                          first_step=step == 1)  # fmt: skip
        elif opt == "adam":
            be.adam_update(p, g, st[0], st[1], step=step, lr=0.01, beta1=0.9, beta2=0.999,
                           eps=1e-8, weight_decay=0.01, decoupled=True, amsgrad=True,
                           max_exp_avg_sq=st[2])  # fmt: skip
        else:
            be.rmsprop_update(p, g, st[0], lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9,
                              momentum_buffer=st[1], centered=True, grad_avg=st[2])  # fmt: skip
    return p


def _compare(got: list[np.ndarray], want: list[np.ndarray], dtype: str, terms: int):
    """(passed, max abs error, max rel error, (rtol, atol)) over all outputs of a check."""
    rtol, atol = TOLERANCES[dtype]
    grow = max(1.0, terms**0.5) * 10.0
    rtol, atol = rtol * grow, atol * grow
    max_abs = max_rel = 0.0
    passed = True
    for g, w in zip(got, want, strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err = np.abs(g - w)
        scale = max(1.0, float(np.abs(w).max(initial=0.0)))  # cancellation: judge vs the scale
        max_abs = max(max_abs, float(err.max(initial=0.0)))
        max_rel = max(max_rel, float((err / np.maximum(np.abs(w), 1e-30)).max(initial=0.0)))
        passed &= bool(np.all(err <= atol * scale + rtol * np.abs(w)))
    return passed, max_abs, max_rel, (rtol, atol)


def _training(be: Backend, ref: Backend, dtype: str, steps: int, seed: int):
    """Loss curves of the same small MLP trained on both backends from the same start."""
    import deepcore as dc
    from deepcore.nn import mlp
    from deepcore.train import Trainer

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((128, 20)).astype(dtype)
    y = (X @ rng.standard_normal((20, 5))).argmax(axis=1)
    curves = []
    for backend in (ref, be):
        dc.seed(seed)
        trainer = Trainer(mlp([20, 33, 5], "relu", backend=backend, dtype=dtype), lr=1e-2)
        xb, yb = backend.asarray(X), backend.asarray(y)
        losses = [trainer.train_step(xb, yb) for _ in range(steps)]
        curves.append(np.array([float(backend.to_host(v)) for v in losses]))
    return curves


def run_selftest(
    backend: str | Backend = "auto",
    verbose: bool = True,
    seed: int = 0,
    steps: int = 20,
    json_path: str | os.PathLike[str] | None = None,
    timings: bool = True,
) -> bool:
    """Check every kernel of `backend` against the NumPy backend, train briefly on both and
    (with `timings`) time its GEMM and a training step per workload.

    Prints one line per check (max abs/rel error, tolerance) when verbose; writes the whole
    report to `json_path` when given; returns True when every check agrees, False (saying why)
    when one fails or the backend cannot run here. Timings never fail the self-test.
    """
    report = selftest_report(backend, verbose=verbose, seed=seed, steps=steps, timings=timings)
    if json_path is not None:
        write_json(json_path, report)
    return bool(report["passed"])


def selftest_report(
    backend: str | Backend = "auto",
    verbose: bool = True,
    seed: int = 0,
    steps: int = 20,
    timings: bool = True,
) -> dict[str, Any]:
    """The self-test as a JSON-ready dict ("passed", "checks", "training", "timings", ...)."""
    from . import __version__
    from .backends import get_backend
    from .backends.numpy import NumpyBackend
    from .errors import BackendUnavailableError

    say: Callable[..., None] = print if verbose else (lambda *a, **k: None)
    report: dict[str, Any] = {
        "deepcore": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
        },  # fmt: skip
        "backend": str(backend if isinstance(backend, str) else backend.name),
        "reference": "numpy",
        "passed": False,
    }
    try:
        be = get_backend(backend)
    except BackendUnavailableError as exc:
        say(f"selftest: {exc}")
        report["error"] = str(exc)
        return report
    ref = NumpyBackend()
    report["backend"] = be.name
    say(f"selftest: {be.name} against numpy")
    info = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
            for k, v in be.info().items()}  # fmt: skip
    report["backend_info"] = info
    for key, value in info.items():
        say(f"  {key}: {value}")
    if getattr(be, "allow_tf32", False):
        say("  note: TF32 is on; float32 GEMM checks will exceed float32 tolerances")
    checks: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    for dtype in ("float32", "float64"):
        for name, terms, fn in _checks():
            row: dict[str, Any] = {"name": name, "dtype": dtype, "terms": terms}
            try:  # fresh inputs per run: on the CPU backends asarray does not copy
                got = [be.to_host(a) for a in fn(be, _inputs(dtype, seed))]
                be.synchronize()
                want = [ref.to_host(a) for a in fn(ref, _inputs(dtype, seed))]
                passed, mabs, mrel, (rtol, atol) = _compare(got, want, dtype, terms)
                row.update(max_abs=mabs, max_rel=mrel, rtol=rtol, atol=atol)
                line = (
                    f"max_abs={mabs:.2e} max_rel={mrel:.2e} tol=(rtol {rtol:.0e}, atol {atol:.0e})"
                )
            except Exception as exc:  # a kernel that fails to compile or launch is a failed check
                passed, line = False, f"error: {type(exc).__name__}: {exc}"
                row["error"] = line[7:]
            row["passed"] = bool(passed)
            checks.append(row)
            say(f"  {'ok  ' if passed else 'FAIL'} {dtype} {name:<30} {line}")
        name = f"training {steps} steps (adam)"
        row = {"name": name, "dtype": dtype, "steps": steps}
        try:
            ref_curve, curve = _training(be, ref, dtype, steps, seed)
            rel = float(np.max(np.abs(curve - ref_curve) / np.abs(ref_curve)))
            tol = 1e-3 if dtype == "float32" else 1e-9
            passed = rel <= tol and bool(np.isfinite(curve).all())
            row.update(max_rel=rel, tol=tol, losses=curve.tolist(), numpy_losses=ref_curve.tolist())
            line = (
                f"loss {ref_curve[0]:.4f} -> {ref_curve[-1]:.4f} (numpy) vs "
                f"{curve[0]:.4f} -> {curve[-1]:.4f}; max_rel={rel:.2e} tol={tol:.0e}"
            )
        except Exception as exc:
            passed, line = False, f"error: {type(exc).__name__}: {exc}"
            row["error"] = line[7:]
        row["passed"] = bool(passed)
        training.append(row)
        say(f"  {'ok  ' if passed else 'FAIL'} {dtype} {name:<30} {line}")
    all_ok = all(r["passed"] for r in checks + training)
    report.update(checks=checks, training=training, passed=all_ok)
    say(f"selftest: {'all checks passed' if all_ok else 'SOME CHECKS FAILED'} on {be.name}")
    if timings:
        from .selftest_speed import measure

        say("timings (a first look; `deepcore bench` is the measurement of record):")
        try:
            report["timings"] = measure(be, say=say)
        except Exception as exc:  # a timing problem is reported, never a failed self-test
            report["timings"] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  timings failed: {type(exc).__name__}: {exc}")
    return report


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a report, and a failure leaves no file."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
