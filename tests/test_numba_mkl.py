"""The Numba backend's optional MKL GEMM (deepcore.backends.numba.mkl) and its `blas` setting."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from deepcore.backends import get_backend  # noqa: E402
from deepcore.backends.numba import mkl as _mkl  # noqa: E402
from deepcore.errors import BackendUnavailableError  # noqa: E402

MKL = _mkl.load()
needs_mkl = pytest.mark.skipif(isinstance(MKL, str), reason=str(MKL))


@pytest.fixture
def nb(monkeypatch):
    be = get_backend("numba")
    monkeypatch.setattr(be, "blas", "mkl")
    monkeypatch.setattr(be, "gemm_impl", "blas")
    monkeypatch.setattr("deepcore.backends.numba.gemm.MKL_MIN_WORK", 0)  # small GEMMs on MKL
    return be


def _operand(rng, shape, dt, layout):
    """A (shape) array stored C-order, F-order or as a strided view (which MKL can't take)."""
    a = rng.standard_normal(shape).astype(dt)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros((shape[0], 2 * shape[1]), dt)
        big[:, ::2] = a
        return big[:, ::2]
    return a


@needs_mkl
@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("la,lb", list(itertools.product("CF", "CF")))
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 0.25)])
def test_mkl_gemm_matches_float64_reference(dt, la, lb, alpha, beta):
    rng = np.random.default_rng(0)
    a = _operand(rng, (37, 53), dt, la)
    b = _operand(rng, (53, 29), dt, lb)
    out = rng.standard_normal((37, 29)).astype(dt)
    want = alpha * (a.astype(np.float64) @ b.astype(np.float64)) + beta * out.astype(np.float64)
    assert MKL.gemm(a, b, out, alpha, beta)
    tol = 1e-5 if dt == "float32" else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 10)


@needs_mkl
def test_mkl_declines_what_it_cannot_take():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 6)).astype("float32")
    b = rng.standard_normal((6, 5)).astype("float32")
    out = np.full((8, 5), 7.0, np.float32)
    strided = _operand(rng, (8, 6), "float32", "strided")
    assert not MKL.gemm(strided, b, out)  # neither C- nor F-contiguous
    assert not MKL.gemm(a, b.astype("float64"), out)  # mixed dtypes
    assert not MKL.gemm(a.astype("float16"), b.astype("float16"), out.astype("float16"))
    assert not MKL.gemm(a, b, np.asfortranarray(out))  # out must be C-contiguous
    assert not MKL.gemm(a, b[:5], out)  # inner dimensions differ
    assert (out == 7.0).all()  # nothing was written
    sq = rng.standard_normal((6, 6)).astype("float32")
    want = sq @ sq
    assert not MKL.gemm(sq, sq, sq)  # out aliases an operand
    np.testing.assert_allclose(MKL.matmul(sq, sq.copy(), sq), want, rtol=1e-5)
    # matmul falls back to NumPy for what MKL declines, with NumPy's result
    np.testing.assert_allclose(MKL.matmul(strided, b, out), strided @ b, rtol=1e-6)
    empty = MKL.matmul(a[:, :0], b[:0], np.full((8, 5), 3.0, np.float32))
    assert (empty == 0).all()


@needs_mkl
def test_mkl_bits_do_not_depend_on_alignment():
    """Conditional numerical reproducibility (strict) is on: a misaligned copy of an operand
    gives the same bits, so the same seed trains to the same weights run to run."""
    assert MKL.cbwr_branch >= 2
    rng = np.random.default_rng(2)
    a = rng.standard_normal((128, 300)).astype("float32")
    b = rng.standard_normal((300, 200)).astype("float32")
    raw = np.empty(a.size + 1, np.float32)
    a2 = raw[1:].reshape(a.shape)  # 4 bytes off the allocation's alignment
    a2[...] = a
    r1, r2 = np.empty((128, 200), np.float32), np.empty((128, 200), np.float32)
    MKL.gemm(a, b, r1)
    MKL.gemm(a2, b, r2)
    assert np.array_equal(r1, r2)


@needs_mkl
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_backend_gemm_on_mkl_matches_numpy_blas(nb, monkeypatch, ta, tb):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30) if not ta else (30, 40)).astype("float32")
    b = rng.standard_normal((30, 20) if not tb else (20, 30)).astype("float32")
    c0 = rng.standard_normal((40, 20)).astype("float32")
    got = nb.gemm(a, b, trans_a=ta, trans_b=tb, alpha=2.0, beta=0.5, out=c0.copy())
    monkeypatch.setattr(nb, "blas", "numpy")
    want = nb.gemm(a, b, trans_a=ta, trans_b=tb, alpha=2.0, beta=0.5, out=c0.copy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_mkl
def test_backend_gemm_on_mkl_keeps_the_contract_errors(nb):
    a = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(4, 4\), expected \(4, 2\)"):
        nb.gemm(a, np.ones((3, 2), np.float32), out=np.empty((4, 4), np.float32))
    with pytest.raises(ValueError, match="beta != 0 needs out="):
        nb.gemm(a, np.ones((3, 2), np.float32), beta=1.0)


@needs_mkl
def test_set_num_threads_reaches_mkl(nb):
    from deepcore import threads

    old = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        assert MKL._lib.MKL_Get_Max_Threads() == 1
    finally:
        threads.set_num_threads(old)
    assert MKL._lib.MKL_Get_Max_Threads() == old


@needs_mkl
def test_mkl_shares_gnu_openmp_and_is_reported(nb):
    nb.gemm(np.ones((300, 300), np.float32), np.ones((300, 300), np.float32))
    if sys.platform.startswith("linux"):
        maps = open("/proc/self/maps").read()
        assert "libmkl_gnu_thread" in maps
        assert "libiomp5" not in maps  # no Intel OpenMP runtime beside libgomp
    info = nb.info()["blas"]
    assert info.startswith("MKL ") and "reproducible" in info


@needs_mkl
def test_small_gemms_stay_on_numpys_blas(monkeypatch):
    """On MKL, GEMMs up to MKL_MIN_WORK = m*n*k go to NumPy's BLAS (cheaper per call there),
    in the public gemm and in the layered step alike."""
    from deepcore.backends.numba import gemm as _numba_gemm

    be = get_backend("numba")
    monkeypatch.setattr(be, "blas", "mkl")
    monkeypatch.setattr(be, "gemm_impl", "blas")
    calls = []
    real = MKL.gemm
    monkeypatch.setattr(
        MKL, "gemm", lambda a, b, out, *r: calls.append(a.shape) or real(a, b, out, *r)
    )
    small = np.ones((16, 16), np.float32)
    be.gemm(small, small)
    assert calls == []
    big = np.ones((80, 80), np.float32)  # 512000 > 64^3
    np.testing.assert_array_equal(be.gemm(big, big), np.full((80, 80), 80.0, np.float32))
    assert calls == [(80, 80)]
    assert _numba_gemm.MKL_MIN_WORK == 64**3


def test_blas_setting_errors(monkeypatch):
    be = get_backend("numba")
    monkeypatch.setattr(be, "blas", "openblas")
    with pytest.raises(ValueError, match="NumbaBackend.blas must be auto, mkl or numpy"):
        be.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    monkeypatch.setattr(_mkl, "load", lambda: "MKL could not be loaded: not installed")
    monkeypatch.setattr(be, "blas", "mkl")
    with pytest.raises(BackendUnavailableError, match="blas is 'mkl' but MKL could not be loaded"):
        be.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    monkeypatch.setattr(be, "blas", "auto")  # auto falls back to NumPy's BLAS, and says why
    out = be.gemm(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(out, np.full((2, 2), 3.0, np.float32))
    assert be.info()["blas"] == "numpy's BLAS (MKL could not be loaded: not installed)"


@pytest.mark.parametrize(
    "value,why",
    [
        ("openblas", "must be auto, mkl or numpy"),
        ("mkl", "blas is 'mkl' but MKL could not be loaded"),
    ],
)
def test_cli_reports_a_bad_blas_setting_in_one_line(value, why):
    import os
    import subprocess

    if value == "mkl" and not isinstance(MKL, str):
        pytest.skip("MKL is installed here")
    env = {**os.environ, "DEEPCORE_NUMBA_BLAS": value}
    argv = ["train", "--backend", "numba", "--epochs", "1", "--quiet"]
    run = subprocess.run(
        [sys.executable, "-m", "deepcore.cli", *argv], env=env, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert why in run.stderr and "Traceback" not in run.stderr


def test_missing_mkl_package_is_a_message_not_a_crash(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    _mkl.load.cache_clear()
    try:
        why = _mkl.load()
        assert isinstance(why, str) and "pip install 'deepcore[mkl]'" in why
    finally:
        monkeypatch.undo()
        _mkl.load.cache_clear()
        _mkl.load()  # the real state again for the other tests


@pytest.mark.parametrize(
    "gemm,blas,passive",
    [("blas", "numpy", True), ("jit", "numpy", False), ("blas", "auto", None)],
)
def test_wait_policy_is_passive_only_for_openblas_gemms(gemm, blas, passive):
    """OMP_WAIT_POLICY=passive is set when large GEMMs run on OpenBLAS (whose own threads need
    the cores between kernels), not when they run on the JIT kernel or on MKL, both on the
    kernels' own libgomp threads (None: passive exactly when MKL is missing)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(DEEPCORE_NUMBA_BLAS=blas, DEEPCORE_NUMBA_GEMM=gemm)
    code = (
        "import os\nfrom deepcore.backends import get_backend\nget_backend('numba')\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    if passive is None:
        passive = isinstance(MKL, str)
    assert out == ("passive" if passive else "None")
