"""bf16 mixed precision: the policy (deepcore.precision), the NumPy reference GEMM, the numba
AVX512_BF16 kernel against float64 and against the reference, its fused epilogues, and Linear
under autocast. Training, checkpoints and the CLI are in test_bf16_training.py."""

from __future__ import annotations

import contextvars
import types
import warnings

import numpy as np
import pytest

import deepcore as dc
from deepcore.precision import autocast, get_precision, normalize_precision, round_bf16

ml_dtypes = pytest.importorskip("ml_dtypes")

SIZES = [(1, 1, 1), (7, 33, 5), (33, 7, 257), (257, 130, 33), (65, 64, 1), (6, 200, 514),
         (130, 97, 1031), (9, 70, 2100)]  # fmt: skip
TRANS = [(False, False), (False, True), (True, False), (True, True)]
U = 2.0**-8  # bf16 unit roundoff (8 significant bits: 2^-8 relative, to nearest)
U32 = 2.0**-24


def _numba():
    pytest.importorskip("numba")
    return dc.get_backend("numba")


def _bf16_kernel():
    """(the numba backend, its bf16 kernel module); skips where the CPU has no AVX512_BF16."""
    be = _numba()
    kern = be._bf16_kernels()
    if kern is None:
        pytest.skip("this CPU has no AVX512_BF16")
    return be, kern


def _operands(rng, m, n, k, ta, tb):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def _op(x, t):
    return x.T if t else x


def _bf16_bound(a, b, ta, tb):
    """|C - A@B (float64, unrounded)| <= (2 U + k 2^-23) (|A| @ |B|) elementwise: each operand
    rounds by at most U relative, the float32 sums add k rounding steps."""
    k = _op(a, ta).shape[1]
    mag = np.abs(_op(a, ta)).astype(np.float64) @ np.abs(_op(b, tb)).astype(np.float64)
    return (2 * U + U * U + 2 * k * U32) * mag + 1e-30


# ------------------------------------------------------------------ the policy
def test_autocast_is_a_context_variable_and_nests():
    assert get_precision() == "float32"
    with autocast("bfloat16"):
        assert get_precision() == "bf16"
        with autocast("bfloat16", enabled=False):
            assert get_precision() == "float32"
        assert get_precision() == "bf16"
        # a fresh context (another thread, a new task) does not inherit it
        assert contextvars.Context().run(get_precision) == "float32"
    assert get_precision() == "float32"
    with dc.autocast(ml_dtypes.bfloat16):
        assert get_precision() == "bf16"


def test_precision_names_and_errors():
    assert normalize_precision("BF16") == normalize_precision("bfloat16") == "bf16"
    assert normalize_precision(None) == normalize_precision("fp32") == "float32"
    assert normalize_precision("float16") == "fp16"  # accepted since fp16 loss scaling
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        with autocast("int8"):
            pass


def test_round_bf16_is_round_to_nearest_even():
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16 spacing at 1
    x = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2**-20, -(one + ulp / 2),
                  np.inf, -np.inf, 3.4e38, 1e-40], np.float32)  # fmt: skip
    r = round_bf16(x)
    assert r[0] == one  # tie: to even (1.0)
    assert r[1] == one + 2 * ulp  # tie: to even (1 + 2 ulp)
    assert r[2] == one + ulp  # above the tie: up
    assert r[3] == -one
    assert np.isposinf(r[4]) and np.isneginf(r[5])
    assert np.isposinf(r[6])  # above bf16's largest finite value: rounds to inf
    assert np.isnan(round_bf16(np.array([np.nan], np.float32)))[0]
    # the generic (array-module: CuPy's path) rounding of the base class matches ml_dtypes bit
    # for bit, ties and NaN included
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000)).astype(np.float32)
    bits = y.view(np.uint32)
    bits[:100] = (bits[:100] & 0xFFFF0000) | 0x8000  # exact ties
    y[100] = np.nan
    fake = dc.Backend.__new__(dc.Backend)
    fake.xp = types.SimpleNamespace(ascontiguousarray=np.ascontiguousarray, where=np.where,
                                    isnan=np.isnan)  # fmt: skip
    got = dc.Backend.round_bf16(fake, y)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, round_bf16(y))


# ------------------------------------------------------------------ the numpy reference
@pytest.mark.parametrize("m,n,k", SIZES[:5])
def test_numpy_reference_is_float32_math_on_rounded_operands(m, n, k):
    be = dc.get_backend("numpy")
    rng = np.random.default_rng(1)
    for ta, tb in TRANS:
        a, b = _operands(rng, m, n, k, ta, tb)
        c = be.gemm_bf16(a, b, ta, tb)
        assert c.dtype == np.float32
        exact = _op(round_bf16(a), ta).astype(np.float64) @ _op(round_bf16(b), tb).astype(
            np.float64
        )
        mag = np.abs(exact) + 1e-30
        assert np.all(
            np.abs(c - exact)
            <= k * U32 * 2 * (np.abs(_op(a, ta)) @ np.abs(_op(b, tb))) + mag * U32 * 2
        )
        assert np.all(
            np.abs(c - _op(a, ta).astype(np.float64) @ _op(b, tb)) <= _bf16_bound(a, b, ta, tb)
        )


def test_gemm_bf16_rejects_non_float32():
    be = dc.get_backend("numpy")
    a = np.ones((2, 3))
    with pytest.raises(dc.DtypeError, match="gemm_bf16: operands must be float32"):
        be.gemm_bf16(a, a.T)


# ------------------------------------------------------------------ the numba kernel
@pytest.mark.parametrize("m,n,k", SIZES)
def test_numba_bf16_gemm_against_float64_and_reference(m, n, k):
    be = _numba()
    ref = dc.get_backend("numpy")
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    for ta, tb in TRANS:
        a, b = _operands(rng, m, n, k, ta, tb)
        c = be.gemm_bf16(a, b, ta, tb)
        assert c.dtype == np.float32 and c.shape == (m, n)
        exact = _op(a, ta).astype(np.float64) @ _op(b, tb).astype(np.float64)
        err = np.abs(c - exact)
        assert np.all(err <= _bf16_bound(a, b, ta, tb)), (ta, tb, err.max())
        # against the reference: same rounded operands, only the float32 summation order differs
        r = ref.gemm_bf16(a, b, ta, tb)
        mag = np.abs(_op(round_bf16(a), ta)) @ np.abs(_op(round_bf16(b), tb))
        assert np.all(np.abs(c - r) <= 4 * k * U32 * mag + 1e-30), (ta, tb, np.abs(c - r).max())
        # and it is really bf16: a float32 GEMM would be ~2^-8 closer to float64
        if k >= 33:
            assert np.abs(c - exact).max() > 100 * np.abs(_op(a, ta) @ _op(b, tb) - exact).max()


def test_numba_warmup_bf16_leaves_nothing_to_compile_in_a_bf16_step():
    """After `warmup(precision="bf16")` (what `deepcore train --precision bf16` runs before the
    clock starts) a bf16 training step compiles no bf16 kernel: fresh process, fresh
    dispatchers."""
    be = _numba()
    if be._bf16_kernels() is None:
        pytest.skip("no AVX512_BF16 here: bf16 is emulated, nothing to compile")
    import subprocess
    import sys

    code = """
import numpy as np, deepcore as dc
from deepcore.kernels.numba import bf16, bf16_pack
from deepcore.train import Trainer
def compiled():
    return {f"{m.__name__}.{n}": len(f.signatures) for m in (bf16, bf16_pack)
            for n, f in vars(m).items() if hasattr(f, "signatures")
            and f.py_func.__module__ == m.__name__}  # the bf16 kernels, not imported float32 ones
be = dc.get_backend("numba")
before = compiled()
be.warmup(("float32",), (3, 2), precision="bf16")  # as deepcore train does
warm = compiled()
rng = np.random.default_rng(0)
model = dc.nn.mlp([64, 256, 128, 10], backend=be)
x = rng.standard_normal((32, 64)).astype(np.float32); y = rng.integers(0, 10, 32)
Trainer(model, "cross_entropy", "adam", precision="bf16").train_step(x, y)
big = dc.nn.mlp([512, 512, 10], backend=be)
x = rng.standard_normal((256, 512)).astype(np.float32); y = rng.integers(0, 10, 256)
Trainer(big, "cross_entropy", "sgd", precision="bf16").train_step(x, y)
after = compiled()
assert sum(before.values()) == 0, before
assert warm == after, {k: (warm[k], after[k]) for k in warm if warm[k] != after[k]}
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_numba_bf16_gemm_alpha_beta_and_out():
    be = _numba()
    ref = dc.get_backend("numpy")
    rng = np.random.default_rng(2)
    a, b = _operands(rng, 70, 90, 300, False, True)
    c0 = rng.standard_normal((70, 90)).astype(np.float32)
    out = c0.copy()
    got = be.gemm_bf16(a, b, False, True, alpha=0.5, beta=2.0, out=out)
    assert got is out
    expect = ref.gemm_bf16(a, b, False, True, alpha=0.5, beta=2.0, out=c0.copy())
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-4)
    with pytest.raises(dc.ShapeError, match="cannot multiply"):
        be.gemm_bf16(a, b)


def test_numba_bf16_gemm_same_bits_for_any_thread_count():
    be = _numba()
    rng = np.random.default_rng(3)
    a, b = _operands(rng, 300, 200, 700, False, False)
    one = two = None
    before = dc.get_num_threads()
    try:
        dc.set_num_threads(1)
        one = be.gemm_bf16(a, b)
        dc.set_num_threads(2)
        two = be.gemm_bf16(a, b)
    finally:
        dc.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_numba_bf16_gemm_propagates_nan_and_inf():
    be = _numba()
    a = np.ones((8, 40), np.float32)
    b = np.ones((40, 70), np.float32)
    a[3, 5] = np.nan
    b[7, 9] = np.inf
    c = be.gemm_bf16(a, b)
    assert np.isnan(c[3]).all()
    assert np.isposinf(np.delete(c, 3, axis=0)[:, 9]).all()
    assert np.isfinite(np.delete(np.delete(c, 3, axis=0), 9, axis=1)).all()


def test_vdpbf16_intrinsic_emits_the_instruction_and_its_maths():
    be, kern = _bf16_kernel()
    from deepcore.kernels.numba.simd import vload, vstore
    from numba import njit

    @njit
    def dot(c, a, b):  # not cached: its assembly is inspectable
        vstore(c, 0, kern.vdpbf16(vload(c, 0), vload(a, 0), vload(b, 0)))

    rng = np.random.default_rng(9)
    x = rng.standard_normal(32).astype(np.float32)
    y = rng.standard_normal(32).astype(np.float32)
    c = rng.standard_normal(16).astype(np.float32)
    pack = np.empty(16, np.uint32)
    a = np.empty((1, 16), np.uint32)
    kern.pack_a(x.reshape(1, 32), False, a)
    b = np.empty((1, 16), np.uint32)
    kern.pack_a(y.reshape(1, 32), False, b)
    pack[:] = a[0]
    expect = c.astype(np.float64) + (round_bf16(x) * round_bf16(y)).reshape(16, 2).sum(1)
    dot(c, pack, b[0].copy())
    np.testing.assert_allclose(c, expect, rtol=1e-6, atol=1e-6)
    asm = dot.inspect_asm(dot.signatures[0])
    assert "vdpbf16ps" in asm and "zmm" in asm


def test_emulated_path_without_avx512_bf16(monkeypatch):
    be = _numba()
    import deepcore.backends.numba.bf16 as mix

    monkeypatch.setitem(be.__dict__, "_bf16_k", None)
    monkeypatch.setattr(mix, "_warned", False)
    rng = np.random.default_rng(4)
    a, b = _operands(rng, 33, 65, 129, True, False)
    with pytest.warns(RuntimeWarning, match="no AVX512_BF16.*emulated.*no faster"):
        c = be.gemm_bf16(a, b, True, False)
    r = dc.get_backend("numpy").gemm_bf16(a, b, True, False)
    np.testing.assert_allclose(c, r, rtol=1e-5, atol=1e-5)
    assert "emulated" in be.bf16_info()


# ------------------------------------------------------------------ fused kernels in bf16
@pytest.mark.parametrize("kind", dc.backends.base.ACTIVATIONS)
def test_numba_linear_bf16_epilogue_matches_reference(kind):
    be = _numba()
    ref = dc.get_backend("numpy")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 129)).astype(np.float32)
    w = rng.standard_normal((70, 129)).astype(np.float32) * 0.1
    bias = rng.standard_normal(70).astype(np.float32)
    pre = np.empty((37, 70), np.float32) if kind in ("gelu", "gelu_tanh") else None
    out = np.empty((37, 70), np.float32)
    y = be.linear_bf16(x, w, bias, kind, alpha=0.1, out=out, pre_out=pre)
    assert y is out
    pre_r = np.empty((37, 70), np.float32) if pre is not None else None
    y_r = ref.linear_bf16(x, w, bias, kind, alpha=0.1, pre_out=pre_r, out=np.empty_like(out))
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-5)
    if pre is not None:
        np.testing.assert_allclose(pre, pre_r, rtol=1e-5, atol=1e-5)
    # no out: the result is written in place of the GEMM output
    np.testing.assert_allclose(be.linear_bf16(x, w, bias, kind, alpha=0.1), y_r, rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_numba_bf16_gemm_with_in_kernel_sgd_update():
    """The kernel's optimizer epilogue (as the float32 kernel's): W -= lr * (dz.T @ x) applied
    to each row strip once final equals the GEMM followed by the update."""
    be, kern = _bf16_kernel()
    from deepcore.kernels.numba import optimizers

    rng = np.random.default_rng(6)
    dz = rng.standard_normal((64, 80)).astype(np.float32)
    x = rng.standard_normal((64, 150)).astype(np.float32)
    w = rng.standard_normal((80, 150)).astype(np.float32)
    g = be.gemm_bf16(dz, x, trans_a=True)
    expect = w - np.float32(0.1) * g
    m, n, k = 80, 150, 64
    ap = np.empty(kern.packed_a_shape(m, k), np.uint32)
    kern.pack_a(dz, True, ap)
    e = np.empty(0, np.float32)
    hp = np.zeros(9, np.float32)
    hp[0], hp[2] = 0.1, 1.0  # lr, 1 - dampening
    ep = (np.int64(optimizers.SGD), w.reshape(-1), e, e, e, hp, np.array([0, 0, 1]))
    _, fe = be._no_epilogues(np.dtype(np.float32))
    c = np.empty((m, n), np.float32)
    none = np.empty(0, np.uint32)
    kern.gemm_block(ap, x, False, none, none, c, np.float32(1), np.float32(0), 0, m, 0, n,
                    np.empty(kern.workspace_words(), np.uint32), ep, fe, True)  # fmt: skip
    np.testing.assert_array_equal(c, g)  # (streaming asked for, refused: the update reads C)
    np.testing.assert_array_equal(w, expect)


def _aligned(shape, misalign=0):
    """A float32 array starting `misalign` floats past a 64-byte boundary."""
    size = int(np.prod(shape))
    raw = np.empty(size + 32, np.float32)
    off = (-raw.ctypes.data // 4) % 16 + misalign
    return raw[off : off + size].reshape(shape)


@pytest.mark.parametrize("m,n,k", [(50, 192, 40), (13, 130, 64), (70, 256, 2100), (6, 64, 3)])
@pytest.mark.parametrize("misalign", [0, 1])
@pytest.mark.parametrize("tb", [False, True])
def test_numba_bf16_gemm_streaming_stores_give_the_same_bits(m, n, k, misalign, tb):
    """C written by non-temporal stores (one K block, beta 0, aligned) equals C written by the
    ordinary stores, on one thread and on a 1 x 2 and a 2 x 1 grid; where streaming is refused
    (misaligned C, n not a whole vector, several K blocks) the result is the same too."""
    be, kern = _bf16_kernel()
    rng = np.random.default_rng(11)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    src = np.ascontiguousarray(b.T) if tb else b  # op(src) == b
    ap = np.empty(kern.packed_a_shape(m, k), np.uint32)
    kern.pack_a(a, False, ap)
    ep, fe = be._no_epilogues(np.dtype(np.float32))
    ws = np.empty((2, kern.workspace_words()), np.uint32)
    t = np.float32
    no = np.empty(0, np.uint32)
    ref = _aligned((m, n))
    kern.gemm_block(ap, src, tb, no, no, ref, t(0.5), t(0), 0, m, 0, n, ws[0], ep, fe, False)
    exact = 0.5 * (round_bf16(a).astype(np.float64) @ round_bf16(b).astype(np.float64))
    np.testing.assert_allclose(ref, exact, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    for grid in [None, (1, 2), (2, 1)]:
        c = _aligned((m, n), misalign)
        c.fill(np.nan)
        if grid is None:
            kern.gemm_block(ap, src, tb, no, no, c, t(0.5), t(0), 0, m, 0, n, ws[0], ep, fe, True)
        else:
            kern.gemm_parallel(ap, src, tb, no, no, c, t(0.5), t(0), ws, *grid, ep, fe, True)
        np.testing.assert_array_equal(c, ref)


@pytest.mark.parametrize("m,n,k", [(24, 64, 128), (70, 192, 320), (5, 16, 64)])
def test_forward_gemm_packs_the_weight_for_the_input_gradient(m, n, k):
    """x @ w.T with wt writes w's own packed layout (pack_b_block of w), bit for bit, on one
    thread and on a 1 x 2 grid (streaming stores); d @ w from that packed w equals d @ w
    packing w itself; the backend refuses a misaligned or misshapen wt or bp."""
    be, kern = _bf16_kernel()
    from deepcore.kernels.numba import bf16_pack as kp

    rng = np.random.default_rng(12)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    d = rng.standard_normal((m, n)).astype(np.float32)
    shape = kern.packed_b_shape(n, k)  # op(B) = w: k = its n rows
    want = np.empty(int(np.prod(shape)), np.uint32)
    kp.pack_b_block(w.view(np.uint32), False, 0, shape[1], 0, k, kern.NR, want,
                    np.empty(256, np.uint32), want[:0])  # fmt: skip
    ep, fe = be._no_epilogues(np.dtype(np.float32))
    ws = np.empty((2, kern.workspace_words()), np.uint32)
    ap = np.empty(kern.packed_a_shape(m, k), np.uint32)
    kern.pack_a(x, False, ap)
    no = np.empty(0, np.uint32)
    t = np.float32
    z = be.gemm_bf16(x, w, trans_b=True)
    for grid in [None, (1, 2)]:
        wt = _aligned((want.size,)).view(np.uint32)
        wt.fill(7)
        c = np.empty((m, n), np.float32)
        if grid is None:
            kern.gemm_block(ap, w, True, no, wt, c, t(1), t(0), 0, m, 0, n, ws[0], ep, fe, False)
        else:
            kern.gemm_parallel(ap, w, True, no, wt, c, t(1), t(0), ws, *grid, ep, fe, False)
        np.testing.assert_array_equal(wt, want)
        np.testing.assert_array_equal(c, z)
    dx = be.gemm_bf16(d, w)
    got = np.empty((m, k), np.float32)
    be._bf16_matmul(d, False, w, False, got, bp=want.reshape(shape))
    np.testing.assert_array_equal(got, dx)
    with pytest.raises(ValueError, match="packed B has shape"):
        be._bf16_matmul(d, False, w, False, got, bp=want[:-64].reshape(-1, 64))
    bad = _aligned((want.size,), 1).view(np.uint32).reshape(shape)
    with pytest.raises(ValueError, match="64-byte aligned"):
        be._bf16_matmul_fused(x, False, w, True, np.empty((m, n), np.float32), 1, wt=bad)


def test_numba_backend_empty_is_cache_line_aligned_when_large():
    """Gradient buffers come from Backend.empty: large ones start on a 64-byte line (the bf16
    GEMM streams only there), small ones are plain arrays; shape and dtype as asked."""
    be = _numba()
    for shape, dtype in [((1024, 300), "float32"), ((70000,), "float64"), ((3, 4), "float32")]:
        x = be.empty(shape, dtype)
        assert x.shape == shape and x.dtype == np.dtype(dtype) and x.flags.c_contiguous
        x[...] = 1  # writable, the whole of it
        if x.nbytes >= (1 << 20):
            assert x.ctypes.data % 64 == 0


# ------------------------------------------------------------------ Linear under autocast
@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_linear_under_autocast_uses_bf16_gemms(name):
    if name == "numba":
        _numba()
    rng = np.random.default_rng(7)
    dc.seed(0)
    model = dc.nn.mlp([50, 64, 10], "relu", backend=name)
    x = rng.standard_normal((32, 50)).astype(np.float32)
    dy = rng.standard_normal((32, 10)).astype(np.float32)
    y32 = dc.to_numpy(model(x))
    model.backward(dy)
    g32 = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    with dc.autocast("bfloat16"):
        y16 = dc.to_numpy(model(x))
        model.backward(dy)
    g16 = [p.grad.copy() for p in model.parameters()]
    assert y16.dtype == np.float32
    assert all(g.dtype == np.float32 for g in g16)
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    d = np.abs(y16 - y32).max()
    assert 1e-5 < d < 0.05 * np.abs(y32).max()  # different (bf16), but close
    for a, b in zip(g16, g32, strict=True):  # relative in norm (a ReLU may flip on single elements)
        assert np.linalg.norm(a - b) <= 0.06 * np.linalg.norm(b)
    # the reference: the same layer maths by hand, operands rounded
    l1, l2 = model[0], model[2]
    h = np.maximum(round_bf16(x) @ round_bf16(l1.weight.numpy()).T + l1.bias.numpy(), 0)
    ref = round_bf16(h) @ round_bf16(l2.weight.numpy()).T + l2.bias.numpy()
    np.testing.assert_allclose(y16, ref, rtol=1e-4, atol=1e-4)
    dw2 = round_bf16(dy).T @ round_bf16(h)  # the last layer's weight gradient, likewise
    np.testing.assert_allclose(g16[2], dw2, rtol=1e-4, atol=1e-4)


def test_float64_layers_ignore_autocast():
    model = dc.nn.mlp([5, 4, 3], dtype="float64")
    x = np.random.default_rng(8).standard_normal((6, 5))
    y = model(x)
    with dc.autocast("bfloat16"):
        np.testing.assert_array_equal(model(x), y)


def test_no_warning_on_bf16_cpu():
    be = _numba()
    if be._bf16_kernels() is None:
        pytest.skip("this CPU has no AVX512_BF16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.gemm_bf16(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))
    assert "vdpbf16ps" in be.bf16_info()


@pytest.mark.parametrize(
    "shape", [(1, 1), (3, 33), (37, 70), (64, 129), (130, 31), (100, 200), (161, 67)]
)
def test_bf16_packs_round_to_nearest_even_bit_for_bit(shape):
    """The packs (vector bodies and scalar tails, all four layouts) give the bits of
    precision.round_bf16, including ties, NaN, infinities, signed zeros and subnormals."""
    _numba()
    from deepcore.kernels.numba import bf16_pack as kp

    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40, 1 + 2**-8, 1 + 3 * 2**-8,
                        np.float32(3.3895314e38), -np.nan], np.float32)  # fmt: skip
    x.reshape(-1)[:: max(1, x.size // special.size)][: special.size] = special[: x.size]
    bits = (round_bf16(x).view(np.uint32) >> 16).astype(np.uint32)  # (r, c) bf16 bits
    r, c = shape
    for t in (False, True):
        src = np.ascontiguousarray(x.T) if t else x  # op(src) == x
        m, k = r, c
        kq = -(-k // 2)
        pairs = np.zeros((m, 2 * kq), np.uint32)
        pairs[:, :k] = bits
        want_a = pairs[:, 0::2] | (pairs[:, 1::2] << 16)
        for pack in (kp.pack_a, kp.pack_a_serial):
            got = np.empty((m, kq), np.uint32)
            pack(src, t, got)
            np.testing.assert_array_equal(got, want_a)
        # B = x read as k x n (rows of x are k): strips of 64 columns; the whole of it as one
        # block, then a block of later pairs and columns (the GEMM's K and N blocks)
        kb, n = r, c
        kqb = -(-kb // 2)
        padded = np.zeros((2 * kqb, -(-n // 64) * 64 + 64), np.uint32)
        padded[:kb, :n] = bits
        words = padded[0::2] | (padded[1::2] << 16)  # kqb x n_pad
        buf = np.empty(256, np.uint32)
        for q0, j0 in [(0, 0), (kqb // 3, 64 * (n // 128))]:
            kc, nc = kqb - q0, n - j0
            ns = -(-nc // 64)
            want_b = words[q0:, j0 : j0 + 64 * ns].reshape(kc, ns, 64).transpose(1, 0, 2)
            got = np.full(want_b.size, 7, np.uint32)
            kp.pack_b_block(src.view(np.uint32), t, q0, kc, j0, nc, 64, got, buf, buf[:0])
            np.testing.assert_array_equal(got.reshape(want_b.shape), want_b)


def test_bf16_packs_refuse_a_strided_operand():
    _numba()
    from deepcore.kernels.numba import bf16_pack as kp

    x = np.ones((8, 64), np.float32)[:, ::2]  # 8 x 32, not contiguous
    with pytest.raises(ValueError, match="C-contiguous"):
        kp.pack_a_serial(x, False, np.empty((8, 16), np.uint32))


def test_serial_and_parallel_packs_have_their_own_cache_entries():
    """Numba keys its disk cache on the function's name and bytecode, not on `parallel`: two
    builds of one function shared an entry, and the parallel pack could load the serial one."""
    _numba()
    from deepcore.kernels.numba import bf16_pack as kp

    names = {f.py_func.__qualname__ for f in (kp.pack_a, kp.pack_a_serial)}
    assert len(names) == 2
    assert kp.pack_a.targetoptions.get("parallel") and not kp.pack_a_serial.targetoptions.get(
        "parallel"
    )
