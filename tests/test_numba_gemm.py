"""The Numba backend's JIT GEMM (kernels/numba/gemm.py, simd.py) against float64 references,
and its measured choice between the JIT kernel and BLAS (_gemm_choice, _numba_gemm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

from deepcore.backends import get_backend  # noqa: E402
from deepcore.backends.base import ACTIVATIONS  # noqa: E402
from deepcore.backends.numba import NumbaBackend  # noqa: E402
from deepcore.backends.numba import gemm_choice as _gemm_choice  # noqa: E402

DTYPES = ("float32", "float64")
TOL = {"float32": 3e-6, "float64": 1e-14}


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


@pytest.fixture(scope="module")
def g(nb):
    return nb._k.gemm


def _operands(rng, m, n, k, ta, tb, dt):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    c = rng.standard_normal((m, n)).astype(dt)
    return a, b, c


def _reference(a, b, c, ta, tb, alpha, beta):
    a64 = (a.T if ta else a).astype(np.float64)
    b64 = (b.T if tb else b).astype(np.float64)
    return alpha * (a64 @ b64) + beta * c.astype(np.float64)


def _assert_close(got, want, dt, k):
    err = np.abs(got.astype(np.float64) - want).max(initial=0.0)
    scale = max(1.0, np.abs(want).max(initial=0.0))
    assert err <= TOL[dt] * scale * max(1.0, k**0.5) * 10, err


#: Edges of every loop: partial MR row strips and NR strips, K blocks (KC = 256) with a tail,
#: more columns than one packed B block (8 strips), k below and not a multiple of the lanes.
SHAPES = [(1, 1, 1), (5, 3, 7), (7, 70, 300), (13, 130, 513), (6, 64, 256), (31, 600, 19),
          (64, 1030, 40), (100, 10, 50)]  # fmt: skip


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_kernel_matches_float64_and_bits_do_not_depend_on_grid_or_mode(g, dt, m, n, k):
    """Every layout, alpha/beta, serial and every thread grid for 1-4 threads, B packed or read
    in place: results match a float64 product and are bitwise identical to each other."""
    rng = np.random.default_rng(m * 1000 + n + k)
    ws = np.empty((4, g.workspace_size(dt)), dt)
    ep0 = (g.no_epilogue(dt), g.no_activation(dt))
    t = np.dtype(dt).type
    for ta in (False, True):
        for tb in (False, True):
            a, b, c0 = _operands(rng, m, n, k, ta, tb, dt)
            for alpha, beta in ((1.0, 0.0), (-0.5, 2.0)):
                want = _reference(a, b, c0, ta, tb, alpha, beta)
                first = None
                for mode in (0, g.DIRECT_B):
                    grids = [(0, 0), (1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4)]
                    for tm, tn in grids:
                        c = c0.copy()
                        if tm == 0:  # gemm_serial
                            g.gemm_serial(a, ta, b, tb, c, t(alpha), t(beta), ws, mode, *ep0)
                        else:
                            g.gemm_parallel(
                                a, ta, b, tb, c, t(alpha), t(beta), ws, tm, tn, mode, *ep0
                            )
                        if first is None:
                            _assert_close(c, want, dt, k)
                            first = c
                        else:
                            assert np.array_equal(c, first), (ta, tb, mode, tm, tn)


def test_beta_zero_never_reads_out(g):
    """As BLAS: with beta == 0, NaN or Inf already in C does not leak into the result."""
    a = np.ones((9, 70), np.float32)
    b = np.ones((70, 130), np.float32)
    ep0 = (g.no_epilogue("float32"), g.no_activation("float32"))
    for tm, tn in ((1, 1), (2, 1), (1, 2)):
        c = np.full((9, 130), np.nan, np.float32)
        ws = np.empty((tm * tn, g.workspace_size("float32")), np.float32)
        g.gemm_parallel(a, False, b, False, c, np.float32(1), np.float32(0), ws, tm, tn, 0, *ep0)
        assert np.array_equal(c, np.full((9, 130), 70, np.float32))


#: Update rules for the GEMM epilogue: (rule, hp, flags) as optimizers.update_flat takes them.
EPILOGUES = [
    ("sgd", [0.1, 0.9, 1.0, 0.0], [0, 0, 0]),  # momentum
    ("sgd", [0.1, 0.9, 1.0, 0.01], [1, 0, 1]),  # nesterov, weight decay, first step
    ("sgd", [0.1, 0.0, 1.0, 0.0], [0, 1, 0]),  # plain, maximize
    ("adam", [0.01, 0.9, 0.1, 0.999, 0.001, 0.3, 1e-8, 0.0, 1.0], [0, 0, 0]),
    ("adam", [0.01, 0.9, 0.1, 0.999, 0.001, 0.3, 1e-8, 0.1, 0.999], [1, 1, 0]),  # AdamW, amsgrad
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("rule,hp,flags", EPILOGUES)
def test_update_epilogue_equals_a_separate_update_bitwise(nb, g, dt, rule, hp, flags):
    """The dW GEMM with the optimizer update fused in gives the same gradient, parameter and
    state bits as the GEMM followed by the update kernel over the whole parameter, on every
    grid (k = 300: two K blocks, the update runs only after the last)."""
    opt = nb._k.optimizers
    code = opt.SGD if rule == "sgd" else opt.ADAM
    rng = np.random.default_rng(7)
    m, n, k = 45, 200, 300  # dW = d.T @ x: d (k x m), x (k x n)
    d = rng.standard_normal((k, m)).astype(dt)
    x = rng.standard_normal((k, n)).astype(dt)
    p0 = rng.standard_normal((m, n)).astype(dt)
    st0 = [np.abs(rng.standard_normal(m * n)).astype(dt) for _ in range(3)]
    hp_a, flags_a = np.array(hp, dt), np.array(flags, np.int64)
    ws = np.empty((4, g.workspace_size(dt)), dt)
    t = np.dtype(dt).type
    no_fe = g.no_activation(dt)
    want_g = np.empty((m, n), dt)
    g.gemm_serial(d, True, x, False, want_g, t(1), t(0), ws, 0, g.no_epilogue(dt))
    want_p, want_s = p0.reshape(-1).copy(), [s.copy() for s in st0]
    opt.update_flat(0, m * n, want_p, want_g.reshape(-1), *want_s, code, hp_a, flags_a)
    for tm, tn in ((0, 0), (1, 1), (2, 1), (1, 2), (2, 2)):
        gw, p, s = np.empty((m, n), dt), p0.reshape(-1).copy(), [s.copy() for s in st0]
        ep = (np.int64(code), p, *s, hp_a, flags_a)
        if tm == 0:
            g.gemm_serial(d, True, x, False, gw, t(1), t(0), ws, 0, ep)
        else:
            g.gemm_parallel(d, True, x, False, gw, t(1), t(0), ws, tm, tn, 0, ep, no_fe)
        assert np.array_equal(gw, want_g) and np.array_equal(p, want_p), (tm, tn)
        for got, want in zip(s, want_s, strict=True):
            assert np.array_equal(got, want), (tm, tn)
    assert not np.array_equal(want_p, p0.reshape(-1))  # the update did change p


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_epilogue_equals_the_separate_pass_bitwise(nb, g, dt, kind):
    """z = x @ W.T with z += b and out = act(z) fused in: the same z and out bits as the
    GEMM followed by the backend's bias + activation pass, on every grid."""
    from deepcore.kernels.numba.elementwise import bias_act_rows

    rng = np.random.default_rng(3)
    m, n, k = 40, 150, 300
    x = rng.standard_normal((m, k)).astype(dt)
    w = rng.standard_normal((n, k)).astype(dt)
    bias = rng.standard_normal(n).astype(dt)
    code, t = ACTIVATIONS.index(kind), np.dtype(dt).type
    ws = np.empty((4, g.workspace_size(dt)), dt)
    want_z, want_out = np.empty((m, n), dt), np.empty((m, n), dt)
    g.gemm_serial(x, False, w, True, want_z, t(1), t(0), ws, 0)
    bias_act_rows(0, m, want_z, bias, True, code, t(0.1), want_out, want_z, True)
    for tm, tn in ((0, 0), (2, 1), (1, 2)):
        z, out = np.empty((m, n), dt), np.empty((m, n), dt)
        fe = (np.int64(code), t(0.1), bias, out.reshape(-1))
        if tm == 0:
            g.gemm_serial(x, False, w, True, z, t(1), t(0), ws, 0, None, fe)
        else:
            g.gemm_parallel(x, False, w, True, z, t(1), t(0), ws, tm, tn, 0,
                            g.no_epilogue(dt), fe)  # fmt: skip
        assert np.array_equal(z, want_z) and np.array_equal(out, want_out), (tm, tn)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 3, 7), (33, 9, 100), (128, 10, 512),
                                   (64, 31, 17)])  # fmt: skip
def test_dot_rows_match_float64_and_are_thread_independent(g, dt, m, n, k):
    rng = np.random.default_rng(n + k)
    a, b, c0 = _operands(rng, m, n, k, False, True, dt)
    t = np.dtype(dt).type
    for alpha, beta in ((1.0, 0.0), (0.5, -1.0)):
        c1, c2, c3 = c0.copy(), c0.copy(), c0.copy()
        g.dot_rows(a, b, c1, t(alpha), t(beta), 0, m)
        g.dot_rows_parallel(a, b, c2, t(alpha), t(beta), 2)
        g.dot_rows_parallel(a, b, c3, t(alpha), t(beta), 3)
        _assert_close(c1, _reference(a, b, c0, False, True, alpha, beta), dt, k)
        assert np.array_equal(c1, c2) and np.array_equal(c1, c3)


def test_choose_grid_splits_the_larger_side_and_uses_every_thread(g):
    nr = g.nr_of("float32")
    assert g.choose_grid(128, 512, 784, 1, nr) == (1, 1)
    tm, tn = g.choose_grid(128, 4096, 512, 2, nr)
    assert (tm, tn) == (1, 2)  # 22 row strips but 64 column strips: split the columns
    assert g.choose_grid(4096, 64, 512, 2, nr) == (2, 1)  # one column strip: split the rows
    for threads in (2, 3, 4, 6):
        tm, tn = g.choose_grid(1000, 1000, 100, threads, nr)
        assert tm * tn == threads


# ---------------------------------------------------------------------- SIMD intrinsics


@pytest.mark.parametrize("dt", DTYPES)
def test_simd_transpose_sum_load_store(nb, dt):
    from numba import njit

    s = nb._k.simd
    lanes = s.lanes_of(np.dtype(dt))

    @njit
    def transpose(src, so, sl, dst, do, dl):
        s.vtranspose(src, so, sl, dst, do, dl)

    @njit
    def total(x, i):
        return s.vsum(s.vload(x, i))

    @njit
    def axpy(x, i, y, j, alpha):  # y[j:j+L] = alpha * x[i:i+L] + y[j:j+L], unaligned
        s.vstore(y, j, s.vfma(s.vsplat(x, alpha), s.vload(x, i), s.vload(y, j)))

    a = np.arange(40 * 50, dtype=dt).reshape(40, 50)
    out = np.zeros((30, 60), dt)
    transpose(a.reshape(-1), 3 * 50 + 5, 50, out.reshape(-1), 2 * 60 + 7, 60)
    assert np.array_equal(out[2 : 2 + lanes, 7 : 7 + lanes], a[3 : 3 + lanes, 5 : 5 + lanes].T)
    assert out.sum() == a[3 : 3 + lanes, 5 : 5 + lanes].sum()  # nothing else was written

    x = np.random.default_rng(0).standard_normal(lanes + 3).astype(dt)
    v = list(x[1 : 1 + lanes])
    while len(v) > 1:  # the documented tree: upper half added onto lower half
        h = len(v) // 2
        v = [np.asarray(v[i], dt) + np.asarray(v[i + h], dt) for i in range(h)]
    assert total(x, 1) == v[0]

    y = np.ones(lanes + 5, dt)
    axpy(x, 2, y, 3, 2.0)
    want = np.ones(lanes + 5, dt)
    want[3 : 3 + lanes] += np.asarray(2.0, dt) * x[2 : 2 + lanes]
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_vector_width_and_register_block_agree_with_the_host(nb):
    s, g = nb._k.simd, nb._k.gemm
    assert s.VECTOR_BYTES in (32, 64)
    assert g.nr_of("float32") == g.NV * s.VECTOR_BYTES // 4
    assert g.nr_of("float64") == g.NV * s.VECTOR_BYTES // 8
    assert (g.NV == 4) == (s.VECTOR_REGISTERS == 32)


def test_kernel_on_a_256_bit_avx2_target(tmp_path):
    """The 16-register, 256-bit variant (NV = 2) that AVX2-only hosts get: compiled for a
    Haswell target in a fresh process (its own Numba cache) and checked against NumPy."""
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    if not (host.get("avx2") and host.get("fma")):
        pytest.skip("this host cannot run AVX2 code")
    features = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
                "+movbe,+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")  # fmt: skip
    code = """
import numpy as np
from deepcore.backends import get_backend
be = get_backend("numba")
be.gemm_impl = "jit"
g, s = be._k.gemm, be._k.simd
assert (s.VECTOR_BYTES, g.NV) == (32, 2), (s.VECTOR_BYTES, g.NV)
rng = np.random.default_rng(0)
for dt in ("float32", "float64"):
    for m, n, k in ((7, 70, 300), (130, 33, 257), (64, 10, 40)):
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                want = (a.T if ta else a).astype(float) @ (b.T if tb else b).astype(float)
                got = be.gemm(a, b, ta, tb)
                err = np.abs(got - want).max() / np.abs(want).max()
                assert err < (1e-5 if dt == "float32" else 1e-13), (dt, m, n, k, ta, tb, err)
print("ok")
"""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=features)
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), DEEPCORE_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


# ---------------------------------------------------------------------- the backend's choice


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A new NumbaBackend (no remembered choices) with its choice file in tmp_path."""
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    be = NumbaBackend()
    calls = []
    monkeypatch.setattr(be, "_jit_gemm", lambda *a, **k: calls.append("jit") or a[4])
    monkeypatch.setattr(be, "_blas_gemm", lambda *a, **k: calls.append("blas") or a[4])
    be.calls = calls
    return be


def _stored(be, small: bool, large: bool) -> None:
    """Write a choice file entry for `be`'s current configuration (float32)."""
    be.gemm_choices("float32")  # measured once (the fakes record calls; cleared below)
    path = _gemm_choice.cache_path()
    data = json.loads(path.read_text())
    (key,) = [k for k in data if k.endswith("| float32")]
    data[key]["small"]["jit"] = small
    data[key]["large"]["jit"] = large
    path.write_text(json.dumps(data))
    be.__dict__.pop("_choices", None)
    be.calls.clear()


@pytest.mark.parametrize("small,large", [(True, False), (False, True)])
def test_auto_follows_the_stored_choice_per_size_class(fresh, small, large):
    _stored(fresh, small, large)
    a16 = np.ones((16, 16), np.float32)  # 16^3: small class
    a128 = np.ones((128, 128), np.float32)  # 128^3: large
    fresh.gemm(a16, a16)
    fresh.gemm(a128, a128)
    want = ["jit" if small else "blas", "jit" if large else "blas"]
    assert fresh.calls == want


def test_forced_impl_wins_and_bad_values_are_refused(fresh, monkeypatch):
    a = np.ones((128, 128), np.float32)
    for impl in ("jit", "blas"):
        monkeypatch.setattr(fresh, "gemm_impl", impl)
        fresh.gemm(a, a)
        assert fresh.calls[-1] == impl
    assert fresh.gemm_info() == "blas (forced)"
    monkeypatch.setattr(fresh, "gemm_impl", "fastest")
    with pytest.raises(ValueError, match="gemm_impl must be auto, jit or blas"):
        fresh.gemm(a, a)


def test_choice_is_measured_once_then_read_from_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    measured = []
    real = _gemm_choice.measure

    def counting(jit, blas, work, rounds=7):
        measured.append(work)
        return real(jit, blas, work, rounds=1)

    monkeypatch.setattr(_gemm_choice, "measure", counting)
    first = NumbaBackend().gemm_choices("float32")
    assert sorted(measured) == sorted(m * n * k for m, n, k in _gemm_choice.PROBES.values())
    assert set(first) == {"small", "large"}
    second = NumbaBackend().gemm_choices("float32")  # a new process would read the same file
    assert len(measured) == 2 and second == first
    (tmp_path / "numba-gemm-choice.json").write_text("{not json")  # corrupt: measured again
    assert NumbaBackend().gemm_choices("float32") is not None and len(measured) == 4
    json.loads((tmp_path / "numba-gemm-choice.json").read_text())  # and rewritten whole
    info = NumbaBackend().gemm_info()
    assert info.startswith("auto; float32: small ") and str(tmp_path) in info


def test_unwritable_cache_keeps_the_choice_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(blocker / "sub"))  # under a file: not creatable
    chosen = _gemm_choice.Choice(True, 1.0, 2.0, "now")
    monkeypatch.setattr(_gemm_choice, "measure", lambda j, b, w, rounds=7: chosen)
    be = NumbaBackend()
    assert _gemm_choice.cache_path() is None
    assert be.gemm_choices("float32")["large"].jit
    a = np.ones((100, 100), np.float32)
    np.testing.assert_array_equal(be.gemm(a, a), np.full((100, 100), 100, np.float32))
    assert "not saved" in be.gemm_info()


def test_measure_picks_the_faster_callable():
    import time

    slow = lambda: time.sleep(2e-4)  # noqa: E731
    fast = lambda: None  # noqa: E731
    assert not _gemm_choice.measure(slow, fast, 10, rounds=2).jit
    assert _gemm_choice.measure(fast, slow, 10, rounds=2).jit


def test_expects_jit_reads_the_stored_float32_choices(tmp_path):
    path = tmp_path / "c.json"
    assert _gemm_choice.expects_jit(path, "cpu", "kern") is None  # no file
    key = _gemm_choice.machine_key("cpu", "kern", "blas", 2, "float32", "0")
    entry = {c: {"jit": False, "jit_seconds": 1.0, "blas_seconds": 1.0, "measured": "x"}
             for c in ("small", "large")}  # fmt: skip
    _gemm_choice.save(path, key, {c: _gemm_choice.Choice(**v) for c, v in entry.items()})
    assert _gemm_choice.expects_jit(path, "cpu", "kern") is False
    assert _gemm_choice.expects_jit(path, "other cpu", "kern") is None
    assert _gemm_choice.load(path, key)["large"].jit is False


def test_gemm_with_an_aliased_out_is_still_right(nb, monkeypatch):
    """out overlapping an operand cannot go to the kernel (it would read what it overwrote)."""
    monkeypatch.setattr(nb, "gemm_impl", "jit")
    a = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    want = a.astype(np.float64) @ a
    got = nb.gemm(a, a, out=a)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_wait_policy_rule_reads_the_stored_choice(monkeypatch, tmp_path):
    """Passive waiting exactly when large GEMMs are expected on OpenBLAS: forced, from the
    stored measurement for this CPU and kernel, or (none stored yet) from the vector width."""
    from deepcore.kernels.numba import gemm

    from deepcore.backends.numba import env as _numba_env
    from deepcore.bench.machine import cpu_model

    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    rule = _numba_env.openblas_runs_large_gemms
    assert rule("jit", "numpy") is False
    assert rule("blas", "numpy") is True
    assert rule("auto", "numpy") is (gemm.VECTOR_BYTES < 64)  # nothing stored yet
    for jit in (True, False):
        key = _gemm_choice.machine_key(cpu_model(), gemm.kernel_id(), "b", 2, "float32", "v")
        c = _gemm_choice.Choice(jit, 1.0, 2.0, "now")
        _gemm_choice.save(_gemm_choice.cache_path(), key, {"small": c, "large": c})
        assert rule("auto", "numpy") is (not jit)
    monkeypatch.setattr(_numba_env, "_mkl_installed", lambda: True)
    assert rule("blas", "auto") is False  # MKL is the BLAS: its threads are libgomp's


def test_a_bad_gemm_setting_is_one_clear_cli_line():
    """DEEPCORE_NUMBA_GEMM is checked when the backend starts: one line naming the setting,
    exit code 2, no traceback, before any compiling."""
    env = {**os.environ, "DEEPCORE_NUMBA_GEMM": "fast"}
    argv = ["train", "--backend", "numba", "--epochs", "1"]
    run = subprocess.run([sys.executable, "-m", "deepcore.cli", *argv], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2
    assert "gemm_impl must be auto, jit or blas, not 'fast'" in run.stderr
    assert "Traceback" not in run.stderr and "compiling" not in run.stdout + run.stderr
