"""The 16-bit CUDA kernels (kernels/cuda/half.cu) under the host emulation, bit for bit against
ml_dtypes (bfloat16) and NumPy (float16), an implementation independent of emulate.h's.

`__float2bfloat16_rn` / `__float2half_rn` round to nearest, ties to even; half overflows to inf
from 65520 up; float32 denormals and half/bf16 denormals are kept. A NaN becomes CUDA's canonical
NaN 0x7fff (cuda_bf16.hpp / cuda_fp16.hpp do so on the host and sm_80's cvt on the device), where
ml_dtypes and NumPy keep the payload: NaN inputs are checked against 0x7fff, everything else
against the references. Widening is checked on all 65536 bit patterns of each type. Both host
builds run (the "gpu" one with float32 flush-to-zero flags: the conversions use integer
arithmetic, so the flags must not change a bit).
"""

from __future__ import annotations

import numpy as np
import pytest
from deepcore.kernels.cuda import geometry, host

ml_dtypes = pytest.importorskip("ml_dtypes")
ok, why = host.available()
pytestmark = pytest.mark.skipif(not ok, reason=f"host emulation needs a C++ compiler: {why}")

REF = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
PAD = 16
SENTINEL = 0xABCD


@pytest.fixture(scope="module", params=host.VARIANTS)
def hk(request: pytest.FixtureRequest) -> host.HostKernels:
    if request.param == "gpu" and not host.fma_available()[0]:
        pytest.skip(f"the gpu build needs FMA instructions: {host.fma_available()[1]}")
    return host.build(request.param)


def run_round16(hk: host.HostKernels, dt: str, x: np.ndarray) -> np.ndarray:
    """dc_round16<dt> over x with the backend's geometry; guard bands catch stray writes."""
    buf = np.full(x.size + 2 * PAD, SENTINEL, np.uint16)
    grid, block = geometry.elementwise(x.size)
    hk.launch("dc_round16", dt, grid, block, (x, buf[PAD:-PAD], np.int64(x.size)))
    assert (buf[:PAD] == SENTINEL).all() and (buf[-PAD:] == SENTINEL).all()
    return buf[PAD:-PAD]


def inputs(dt: str) -> np.ndarray:
    """float32 values that probe every rounding case of dt: each representable value, the exact
    midpoints between neighbours (ties) and one float32 ulp either side of them, float32
    denormals, the overflow boundary, signed zeros, infinities and random bits."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    vals = bits.view(REF[dt])
    vals = vals[np.isfinite(vals)].astype(np.float64)
    vals = np.unique(vals)
    mids = (vals[:-1] + vals[1:]) / 2  # exact in float64, and in float32 (one more bit)
    mid32 = mids.astype(np.float32)
    assert (mid32.astype(np.float64) == mids).all()
    up = np.nextafter(mid32, np.float32(np.inf))
    down = np.nextafter(mid32, np.float32(-np.inf))
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 1 << 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FA00000], np.uint32)
    f32_denormals = np.array([1e-45, 1.4e-40, 1.1754942e-38, 5e-39], np.float32)
    big = np.finfo(np.float32).max
    special = [0.0, -0.0, np.inf, -np.inf, 65504, 65519.996, 65520, 65536, 1e30, -65520,
               2.0**-25, 2.0**-24, 3 * 2.0**-26, 2.0**-26, big, -big]  # fmt: skip
    parts = [vals, mid32, up, down, rand, f32_denormals, -f32_denormals, special]
    return np.concatenate([np.asarray(p, np.float32) for p in parts] + [nans.view(np.float32)])


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_round16_matches_the_reference_bit_for_bit(hk, dt):
    x = inputs(dt)
    got = run_round16(hk, dt, x)
    nan = np.isnan(x)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(REF[dt]).view(np.uint16)
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, [(float(x[i]), hex(got[i]), hex(want[i])) for i in bad[:8]]
    assert nan.sum() >= 5 and (got[nan] == 0x7FFF).all()  # CUDA's canonical NaN


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_round16_cases_named(hk, dt):
    """The cases by name, so a failure reads as what broke."""
    ties = {"bfloat16": ([1 + 2.0**-8, 1 + 3 * 2.0**-8], [0x3F80, 0x3F82]),
            "float16": ([1 + 2.0**-11, 1 + 3 * 2.0**-11], [0x3C00, 0x3C02])}  # fmt: skip
    x, want = ties[dt]
    assert list(run_round16(hk, dt, np.array(x, np.float32))) == want  # ties to even
    if dt == "float16":
        got = run_round16(hk, dt, np.array([65519.996, 65520, -1e9, 2.0**-24, 2.0**-25,
                                            1.5 * 2.0**-24], np.float32))  # fmt: skip
        assert list(got) == [0x7BFF, 0x7C00, 0xFC00, 0x0001, 0x0000, 0x0002]
    else:
        got = run_round16(hk, dt, np.array([np.finfo(np.float32).max, 1e-45], np.float32))
        assert list(got) == [0x7F80, 0x0000]  # rounds up to inf; the smallest denormal to 0
        got = run_round16(hk, dt, np.array([9.2e-41], np.float32))  # a bf16 denormal stays
        assert got[0] == np.array([9.2e-41], np.float32).astype(REF[dt]).view(np.uint16)[0] != 0


@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_widen16_is_exact_on_every_bit_pattern(hk, dt):
    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.full(bits.size + 2 * PAD, -7.0, np.float32)
    grid, block = geometry.elementwise(bits.size)
    hk.launch("dc_widen16", dt, grid, block, (bits, out[PAD:-PAD], np.int64(bits.size)))
    assert (out[:PAD] == -7.0).all() and (out[-PAD:] == -7.0).all()
    got = out[PAD:-PAD]
    want = bits.view(REF[dt]).astype(np.float32)
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all()
    assert (got[~nan].view(np.uint32) == want[~nan].view(np.uint32)).all()  # -0.0 included


def test_round16_checks_its_arguments(hk):
    """A float32 array where the bits belong is refused, as a real launch would not."""
    x = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="uint16"):
        hk.launch("dc_round16", "bfloat16", 1, 32, (x, np.ones(4, np.float32), np.int64(4)))
