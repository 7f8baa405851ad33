"""Shared fixtures: one `backend` fixture runs a test on every backend in the registry.

A backend that cannot run here (not installed, not implemented, no GPU) is skipped with the
reason `deepcore.available_backends()` gives, so numba and cupy join the same command as soon
as they work, with no change to the tests.

Fixture names other test files rely on: `backend_name` (a registry name), `backend` (a Backend
instance), `dtype` ("float32" / "float64"), `torch` (the module, or skip), `tol` and `assert_close`.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import deepcore as dc
from deepcore.backends import BACKEND_NAMES

_AVAILABILITY = dc.available_backends()


def pytest_configure(config: pytest.Config) -> None:
    """The Numba backend's measured GEMM choice goes to a fresh cache directory per session
    (inherited by the CLI subprocesses), not the user's ~/.cache."""
    os.environ.setdefault("DEEPCORE_CACHE_DIR", tempfile.mkdtemp(prefix="deepcore-tests-"))


#: Tolerances per dtype, for an op whose error does not grow with its size. Reductions and GEMMs
#: scale `rtol` with the number of terms (see `tol`).
TOLERANCES = {
    "float32": {"rtol": 1e-5, "atol": 1e-6},
    "float64": {"rtol": 1e-12, "atol": 1e-12},
}


def _backend_params() -> list:
    params = []
    for name in BACKEND_NAMES:
        avail = _AVAILABILITY[name]
        marks = () if avail.available else (pytest.mark.skip(reason=f"{name}: {avail.reason}"),)
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(params=_backend_params())
def backend_name(request: pytest.FixtureRequest) -> str:
    """Every registered backend name; unavailable ones are skipped with their reason."""
    return request.param


@pytest.fixture
def backend(backend_name: str) -> dc.Backend:
    """The Backend instance for `backend_name`."""
    return dc.get_backend(backend_name)


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _isolate_selection_and_seed():
    """Each test starts with no default backend and deepcore's generator seeded to 0."""
    from deepcore import backends

    backends.set_default_backend(None)
    dc.seed(0)
    yield
    backends.set_default_backend(None)


def tolerance(dtype: str, terms: int = 1, scale: float = 1.0) -> dict[str, float]:
    """assert_allclose kwargs for `dtype`; `terms` = length of the sums behind each value."""
    t = TOLERANCES[np.dtype(dtype).name]
    grow = max(1.0, float(terms) ** 0.5) * scale
    return {"rtol": t["rtol"] * grow, "atol": t["atol"] * grow}


def assert_close_to(actual, expected, dtype: str, terms: int = 1, scale: float = 1.0, err_msg=""):
    """Compare a backend result (moved to the host) with a float64 reference."""
    np.testing.assert_allclose(
        np.asarray(dc.to_numpy(actual), dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        err_msg=err_msg,
        **tolerance(dtype, terms, scale),
    )


@pytest.fixture(name="tol")
def tol_fixture():
    """`tol(dtype, terms=1, scale=1.0)` -> rtol/atol kwargs for numpy.testing.assert_allclose."""
    return tolerance


@pytest.fixture(name="assert_close")
def assert_close_fixture():
    """`assert_close(actual, expected, dtype, terms=1, scale=1.0)` against a float64 reference."""
    return assert_close_to
