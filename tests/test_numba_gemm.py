"""The Numba backend's JIT GEMM (kernels/numba/gemm.py, simd.py) against float64 references,
and its measured choice between the JIT kernel and BLAS (_gemm_choice, _numba_gemm)."""

from __future__ import annotations

import json
import os
import re
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


#: Register-block widths (NR columns) the kernel has on the targets it supports: float32 and
#: float64 on SSE (16-byte vectors, NV = 2), AVX2 or NEON (NR = 16 / 8) and AVX-512 (64 / 32).
BLOCK_WIDTHS = (4, 8, 16, 32, 64)


@pytest.mark.parametrize("nr", BLOCK_WIDTHS)
def test_choose_grid_splits_the_larger_side_and_uses_every_thread(g, nr):
    """The grid for every block width the kernel can have, not only this host's."""
    assert g.choose_grid(128, 512, 784, 1, nr) == (1, 1)
    assert g.choose_grid(128, 64 * nr, 512, 2, nr) == (1, 2)  # 22 row strips, 64 column strips
    assert g.choose_grid(4096, nr, 512, 2, nr) == (2, 1)  # one column strip: split the rows
    assert g.choose_grid(6, 4096 * nr, 64, 4, nr) == (1, 4)  # one row strip: split the columns
    for threads in (2, 3, 4, 6):
        tm, tn = g.choose_grid(1000, 1000, 100, threads, nr)
        assert tm * tn == threads


def _nan_empty(real):  # type: ignore[no-untyped-def]
    """np.empty whose float buffers come filled with NaN."""

    def empty(shape, dtype=float, *args, **kw):  # type: ignore[no-untyped-def]
        out = real(shape, dtype, *args, **kw)
        if out.dtype.kind == "f":
            out.fill(np.nan)
        return out

    return empty


@pytest.mark.parametrize("impl", ["jit", "blas"])
def test_no_route_reads_unwritten_memory_or_raises_fp_flags(monkeypatch, impl):
    """NumPy's matmul reports the floating-point flags its BLAS raised as warnings, and a kernel
    or check reading an uninitialised buffer would show up the same way. Here every float
    buffer np.empty hands out is NaN, FP exceptions raise and warnings are errors: GEMMs (every
    layout, beta 0 on a NaN `out`, beta != 0) and both training-step routes stay finite and
    right. (The warnings seen under qemu came from NumPy's arm64 OpenBLAS on qemu's `max`
    CPU, not from deepcore: see ci/aarch64.sh.)"""
    import warnings

    monkeypatch.setattr(np, "empty", _nan_empty(np.empty))
    be = NumbaBackend()
    be.gemm_impl = impl
    rng = np.random.default_rng(11)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for m, n, k in ((4, 4, 4), (7, 70, 300), (33, 10, 64), (100, 130, 50)):
            for ta in (False, True):
                for tb in (False, True):
                    a, b, c = _operands(rng, m, n, k, ta, tb, "float32")
                    for alpha, beta in ((1.0, 0.0), (0.5, 0.0), (-0.5, 2.0)):
                        out = np.full((m, n), np.nan, np.float32) if beta == 0 else c.copy()
                        got = be.gemm(a, b, ta, tb, alpha, beta, out=out)
                        _assert_close(got, _reference(a, b, c, ta, tb, alpha, beta), "float32", k)
        sizes, batch = (64, 256, 128, 10), 32
        ws0 = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype("float32")
               for i, o in zip(sizes, sizes[1:], strict=False)]  # fmt: skip
        bs0 = [np.zeros(o, "float32") for o in sizes[1:]]
        x = rng.standard_normal((batch, sizes[0])).astype("float32")
        y = rng.integers(0, sizes[-1], batch)
        runs = []
        for path in ("compiled", "layered"):
            be.step_path = path
            ws, bs = [w.copy() for w in ws0], [b.copy() for b in bs0]
            grads = ([np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs])
            state = ([np.zeros_like(p) for p in (*ws, *bs)],)
            losses = [float(be.fused_mlp_step(ws, bs, *grads, ("relu", "relu", "identity"), x,
                                              y, "sgd", lr=0.05, momentum=0.9,
                                              first_step=i == 0, state=state))
                      for i in range(2)]  # fmt: skip
            runs.append((losses, [*ws, *bs]))
    assert all(np.isfinite(v).all() for v in runs[0][1])
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for got, want in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


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


def test_vector_width_and_register_block_agree_with_the_target(nb):
    s, g = nb._k.simd, nb._k.gemm
    t = s.TARGET
    assert (s.VECTOR_BYTES, s.VECTOR_REGISTERS, s.HAS_FMA) == (t.vector_bytes, t.registers, t.fma)
    assert s.VECTOR_BYTES in (16, 32, 64) and s.VECTOR_REGISTERS in (16, 32)
    assert g.nr_of("float32") == g.NV * s.VECTOR_BYTES // 4
    assert g.nr_of("float64") == g.NV * s.VECTOR_BYTES // 8
    assert (g.NV == 4) == (s.VECTOR_REGISTERS == 32)
    assert g.MR * g.NV + g.NV + 1 <= s.VECTOR_REGISTERS  # accumulators, B vectors, A broadcast
    assert nb.fma is s.HAS_FMA
    if t.arch == "aarch64":  # NEON: 32 x 128-bit registers, FMA in the base ISA
        assert (s.VECTOR_BYTES, s.VECTOR_REGISTERS, s.HAS_FMA) == (16, 32, True)


def _loops(asm: str) -> list[list[str]]:
    """Each backward branch's span of assembly lines, from its target label to the branch."""
    lines = asm.splitlines()
    labels: dict[str, int] = {}
    spans = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.?L\w+):", line)
        if m:
            labels[m.group(1)] = i
        m = re.match(r"^\s+(j\w+|b(\.\w+)?|cbn?z|tbn?z)\s+.*?(\.?L\w+)\s*$", line)
        if m and m.group(3) in labels:
            spans.append(lines[labels[m.group(3)] : i + 1])
    return spans


#: A float32 vector FMA and a vector register's spill or reload (a stack operand), per arch.
ASM = {
    "x86_64": (r"\bvfmadd\d+ps\b", r"[xyz]mm\d+.*\(%rsp\)|\(%rsp\).*[xyz]mm\d+"),
    "aarch64": (r"\bfmla\s+v\d+\.4s", r"\b[qdv]\d+\b.*\[sp\b"),
}


def test_micro_kernel_k_loop_is_register_fmas_without_spills(nb):
    """The float32 micro-kernel's k loop, in the assembly emitted for this target: MR x NV
    vector FMAs per k step (LLVM may unroll the loop), and no vector register spilled to or
    reloaded from the stack. The check behind the register block's size on every target the
    CI compiles for (native, haswell, ARM64 under qemu)."""
    from deepcore.kernels.numba import micro as mk
    from numba import njit

    s = nb._k.simd
    if s.TARGET.arch not in ASM or not s.HAS_FMA:
        pytest.skip(f"no assembly check for {s.TARGET.describe()}")
    fma_re, spill_re = ASM[s.TARGET.arch]
    from deepcore.kernels.numba._config import GEMM_OPTS

    fresh = njit(**{**GEMM_OPTS, "cache": False})(mk.micro.py_func)  # the cache keeps no asm
    f32 = np.float32
    nr, k = mk.NV * s.lanes_of(np.dtype(f32)), 10
    a, b = np.ones(6 * k, f32), np.ones(k * nr, f32)
    c, tmp = np.zeros(6 * nr, f32), np.zeros(6 * nr, f32)
    fresh(a, 0, k, 2 * k, 3 * k, 4 * k, 5 * k, 1, b, 0, nr, k, c, 0, nr, 6, nr, True, f32(1),
          f32(0), tmp, mk.NV)  # fmt: skip
    assert np.array_equal(c, np.full(6 * nr, k, f32))
    (asm,) = fresh.inspect_asm().values()
    loops = [(sum(bool(re.search(fma_re, x)) for x in body), body) for body in _loops(asm)]
    fmas, body = max(loops, key=lambda t: (t[0], -len(t[1])))
    per_step = mk.MR * mk.NV
    assert fmas >= per_step and fmas % per_step == 0, (fmas, per_step)
    spills = [x.strip() for x in body if re.search(spill_re, x)]
    assert not spills, spills


#: Other x86 targets the kernels are compiled for in a fresh process (NUMBA_CPU_NAME, empty
#: NUMBA_CPU_FEATURES: the CPU's own features), with the facts they must report:
#: (cpu, vector bytes, NV, vector FMA, what the host needs to run the code).
X86_TARGETS = [
    ("haswell", 32, 2, True, ("avx2", "fma")),  # AVX2 laptops and desktops
    ("x86-64", 16, 2, False, ()),  # the baseline: SSE2 only, no FMA
]


@pytest.mark.parametrize("cpu,vbytes,nv,fma,needs", X86_TARGETS, ids=[t[0] for t in X86_TARGETS])
def test_kernel_and_routes_on_other_x86_targets(tmp_path, cpu, vbytes, nv, fma, needs):
    """The kernel compiled for another x86 target in a fresh process (its own Numba cache):
    the facts it reports, the JIT GEMM (forced) against NumPy, and, without FMA, GEMMs and
    the training step kept off the slow micro-kernel (BLAS, the layer-by-layer route)."""
    import llvmlite.binding as ll

    if not ll.get_process_triple().startswith("x86_64"):
        pytest.skip("not an x86-64 host")
    host = ll.get_host_cpu_features()
    if not all(host.get(f) for f in needs):
        pytest.skip(f"this host cannot run {cpu} code")
    code = f"""
import numpy as np
from deepcore.backends import get_backend
be = get_backend("numba")
g, s = be._k.gemm, be._k.simd
assert (s.VECTOR_BYTES, g.NV, s.HAS_FMA, be.fma) == ({vbytes}, {nv}, {fma}, {fma}), s.TARGET
be.gemm_impl = "jit"
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
be.gemm_impl = "auto"
calls = []
real = be._k.step.mlp_step
be._k.step.mlp_step = lambda *a: calls.append(1) or real(*a)
w = [rng.standard_normal((16, 8)).astype("float32"), rng.standard_normal((3, 16)).astype("float32")]
bs = [np.zeros(16, "float32"), np.zeros(3, "float32")]
gr = ([np.empty_like(v) for v in w], [np.empty_like(v) for v in bs])
x = rng.standard_normal((4, 8)).astype("float32")
be.fused_mlp_step(w, bs, *gr, ("relu", "identity"), x, np.array([0, 1, 2, 0]), "sgd", lr=0.1)
assert {fma} or not be._use_jit(256 * 512 * 512, np.dtype("float32"))  # BLAS, unmeasured
assert len(calls) == {int(fma)}, calls  # the compiled step (micro-kernel) only with FMA
print("ok")
"""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), DEEPCORE_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


# ---------------------------------------------------------------------- the backend's choice


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A new NumbaBackend (no remembered choices) with its choice file in tmp_path, as on a
    target with vector FMA (where `auto` follows the measured choice)."""
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    be = NumbaBackend()
    be.fma = True
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
    be = NumbaBackend()
    be.fma = True  # as on a target with FMA (without, auto is BLAS: tested below)
    info = be.gemm_info()
    assert info.startswith("auto; float32: small ") and str(tmp_path) in info


def test_unwritable_cache_keeps_the_choice_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(blocker / "sub"))  # under a file: not creatable
    chosen = _gemm_choice.Choice(True, 1.0, 2.0, "now")
    monkeypatch.setattr(_gemm_choice, "measure", lambda j, b, w, rounds=7: chosen)
    be = NumbaBackend()
    be.fma = True
    assert _gemm_choice.cache_path() is None
    assert be.gemm_choices("float32")["large"].jit
    a = np.ones((100, 100), np.float32)
    np.testing.assert_array_equal(be.gemm(a, a), np.full((100, 100), 100, np.float32))
    assert "not saved" in be.gemm_info()


def test_without_fma_auto_runs_blas_unmeasured(monkeypatch, tmp_path):
    """On a target without vector FMA the JIT kernel is far slower than BLAS: `auto` sends every
    GEMM to BLAS without measuring; `jit` still forces the kernel."""
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_gemm_choice, "measure", lambda *a, **k: pytest.fail("measured"))
    be = NumbaBackend()
    be.fma = False
    calls = []
    monkeypatch.setattr(be, "_jit_gemm", lambda *a, **k: calls.append("jit") or a[4])
    monkeypatch.setattr(be, "_blas_gemm", lambda *a, **k: calls.append("blas") or a[4])
    a16, a128 = np.ones((16, 16), np.float32), np.ones((128, 128), np.float32)
    be.gemm(a16, a16)
    be.gemm(a128, a128)
    assert calls == ["blas", "blas"]
    assert "no vector FMA" in be.gemm_info()
    be.gemm_impl = "jit"
    be.gemm(a128, a128)
    assert calls[-1] == "jit"


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
    from deepcore.kernels.numba import gemm, simd

    from deepcore.backends.numba import env as _numba_env
    from deepcore.bench.machine import cpu_model

    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    rule = _numba_env.openblas_runs_large_gemms
    monkeypatch.setattr(simd, "HAS_FMA", False)  # no FMA: auto means BLAS, whatever is stored
    assert rule("auto", "numpy") is True and rule("jit", "numpy") is False
    monkeypatch.setattr(simd, "HAS_FMA", True)  # as on a target with FMA
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
