"""Explicit SIMD vectors for Numba kernels: a `Vec` type held in an LLVM vector register, and the
handful of operations the GEMM micro-kernels need (load, store, broadcast, fma, add, mul).

Why not LLVM's auto-vectorizers: a register-blocked micro-kernel keeps 24 accumulators in
registers across its k loop. Written as scalar locals, the SLP vectorizer packs them into SIMD
registers only from ~1,200 generated lines and stops doing so when a store is written as a loop
(measured here: 40 clean AVX-512 instructions per k step vs. spills on every step). With vector
values the same loop is 24 lines and always compiles to 24 FMAs, 4 loads and 6 broadcasts.

What the kernels are compiled for (`TARGET`) is read from the compiled target itself: the
architecture, the CPU name and features exactly as Numba's codegen chooses them
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES included), and two facts probed once at import by letting
LLVM compile a few lines for that target:
- the vector width: 64 bytes where a 512-bit add stays whole in a zmm register (AVX-512), 32
  where a 256-bit one stays in a ymm register (AVX, AVX2), else 16 (SSE: the x86-64 baseline;
  NEON on ARM64). Explicit 512-bit vectors stay whole even for Intel AVX-512 targets whose
  auto-vectorizer prefers 256 bits (checked with NUMBA_CPU_NAME=skylake-avx512); the probe
  guards against a target that would split them;
- FMA: whether a vector fused multiply-add is one instruction or a call to libm's `fmaf`
  (x86 without FMA: the x86-64 baseline, Sandy Bridge, VMs exposing a baseline CPU model).
  There the micro-kernel runs ~65x slower than BLAS, so the backend keeps its GEMMs and its
  training step on BLAS (`TARGET.fma`, read by NumbaBackend.fma).
Vector registers: 32 on ARM64 (NEON v0-v31) and with AVX-512 (zmm0-31), else 16.

ARM64 uses NEON's 128-bit vectors, not SVE: SVE's length is fixed only by the chip (128 bits
on Neoverse N2/V2 and Graviton4, 256 on Graviton3, 512 on A64FX; Apple's cores have none), and
LLVM emits fixed-width vectors as SVE only when told one length for the whole program, which
compiled-once, cached machine code cannot promise. Nor would it pay on the cores named but
A64FX: on Neoverse N2/V2 SVE is NEON's width, and Neoverse V1's two 256-bit SVE pipes reach the
same peak as its four 128-bit NEON pipes.
Every fact depends only on the CPU name and features, which Numba's cache key already includes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, models, register_model


def _host_cpu() -> tuple[str, str]:
    """(cpu name, feature string) exactly as Numba's CPU codegen chooses them."""
    name = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return name, features


def host_cpu_id() -> str:
    """The CPU name and features the kernels are compiled for (they decide the machine code)."""
    name, features = _host_cpu()
    return f"{name} {features}"


@dataclass(frozen=True)
class Target:
    """What the kernels are compiled for, as the compiled code shows it (see the module doc)."""

    arch: str  # the process triple's first field: "x86_64", "aarch64" (macOS's arm64 too), ...
    cpu: str  # the LLVM CPU name Numba compiles for
    vector_bytes: int  # bytes per SIMD register the kernels use: 16, 32 or 64
    registers: int  # vector registers of that width: 16 or 32
    fma: bool  # a vector a*b+c is one instruction (False: a libm call per lane)

    def describe(self) -> str:
        fma = "FMA" if self.fma else "no FMA (fmaf calls)"
        bits = self.vector_bytes * 8
        return f"{self.arch} {self.cpu}: {bits}-bit vectors x {self.registers}, {fma}"


def _probe_asm(body: str, lanes: int) -> str:
    """The assembly LLVM emits for this target from `void probe(<lanes x float>* x, y, z)`
    whose body is built by `body` ("add": x = x + y; "fma": x = fma(x, y, z))."""
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    name, features = _host_cpu()
    mod = ir.Module(name="deepcore_target_probe")
    vty = ir.VectorType(ir.FloatType(), lanes)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [vty.as_pointer()] * 3), "probe")
    b = ir.IRBuilder(fn.append_basic_block())
    x, y, z = (b.load(p, align=4) for p in fn.args)
    if body == "fma":
        f = ir.Function(mod, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{lanes}f32")
        r = b.call(f, [x, y, z])
    else:
        r = b.fadd(x, y)
    b.store(r, fn.args[0], align=4)
    b.ret_void()
    tm = ll.Target.from_default_triple().create_target_machine(cpu=name, features=features, opt=3)
    return tm.emit_assembly(ll.parse_assembly(str(mod)))


@functools.lru_cache(maxsize=1)
def target() -> Target:
    """The compiled target's facts (probed once per process; see the module doc)."""
    arch = ll.get_process_triple().split("-")[0]
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)  # macOS says arm64
    x86 = arch == "x86_64"
    if x86 and "zmm" in _probe_asm("add", 16):
        width = 64
    elif x86 and "ymm" in _probe_asm("add", 8):
        width = 32
    else:
        width = 16
    registers = 32 if width == 64 or arch == "aarch64" else 16
    fma = "fmaf" not in _probe_asm("fma", 4)
    return Target(arch, _host_cpu()[0], width, registers, fma)


def host_vector_bytes() -> int:
    """Bytes per SIMD register the kernels use on this target (see `target`)."""
    return target().vector_bytes


#: The compiled target (see `target`).
TARGET = target()
#: Bytes per SIMD register the kernels use on this host (see `target`).
VECTOR_BYTES = TARGET.vector_bytes
#: Vector registers of that width: 32 on ARM64 (NEON) and with AVX-512, else 16. Sizes the
#: register blocks.
VECTOR_REGISTERS = TARGET.registers
#: Whether a vector FMA is one instruction here (False on x86 without FMA: see the module doc).
HAS_FMA = TARGET.fma


def lanes_of(dtype) -> int:  # type: ignore[no-untyped-def]
    """Elements of a NumPy/Numba float dtype per vector on this host (Python side)."""
    size = getattr(dtype, "itemsize", None) or dtype.bitwidth // 8
    return VECTOR_BYTES // size


class Vec(types.Type):
    """`lanes` elements of `dtype` in one SIMD register."""

    def __init__(self, dtype: types.Type, lanes: int) -> None:
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vec({dtype}, {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):  # type: ignore[no-untyped-def]
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


def _vec_of(arr: types.Array) -> Vec:
    return Vec(arr.dtype, VECTOR_BYTES // (arr.dtype.bitwidth // 8))


def _ptr(context, builder, arrty, arr, idx):  # type: ignore[no-untyped-def]
    """Address of the flat element `idx` of a C-contiguous array."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


@intrinsic
def lanes(typingctx, arr):  # type: ignore[no-untyped-def]
    """Elements of arr's dtype per vector: a compile-time constant."""
    n = _vec_of(arr).lanes

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return context.get_constant(types.intp, n)

    return types.intp(arr), codegen


@intrinsic
def vload(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """arr.flat[idx : idx + lanes] as one vector (unaligned load; no bounds check)."""
    vt = _vec_of(arr)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        vty = context.get_value_type(vt)
        return builder.load(builder.bitcast(p, vty.as_pointer()), align=vt.dtype.bitwidth // 8)

    return vt(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):  # type: ignore[no-untyped-def]
    """arr.flat[idx : idx + lanes] = v (unaligned store; no bounds check)."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        align = sig.args[0].dtype.bitwidth // 8
        builder.store(args[2], builder.bitcast(p, args[2].type.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


def _splat(builder, vty, scalar):  # type: ignore[no-untyped-def]
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(i32, 0))
    mask = ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


@intrinsic
def vbroadcast(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """arr.flat[idx] in every lane."""
    vt = _vec_of(arr)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        s = builder.load(_ptr(context, builder, sig.args[0], args[0], args[1]))
        return _splat(builder, context.get_value_type(vt), s)

    return vt(arr, idx), codegen


@intrinsic
def vsplat(typingctx, like, x):  # type: ignore[no-untyped-def]
    """The scalar x (of like's dtype) in every lane."""
    vt = _vec_of(like)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        s = context.cast(builder, args[1], sig.args[1], vt.dtype)
        return _splat(builder, context.get_value_type(vt), s)

    return vt(like, x), codegen


@intrinsic
def vzero(typingctx, like):  # type: ignore[no-untyped-def]
    """A vector of +0.0 in like's dtype."""
    vt = _vec_of(like)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return ir.Constant(context.get_value_type(vt), None)

    return vt(like), codegen


@intrinsic
def vfma(typingctx, a, b, c):  # type: ignore[no-untyped-def]
    """a * b + c, rounded once (llvm.fma)."""
    if not (isinstance(a, Vec) and a == b == c):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        vty = args[0].type
        name = f"llvm.fma.v{vty.count}f{sig.args[0].dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):  # type: ignore[no-untyped-def]
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fadd(*args)

    return a(a, b), codegen


@intrinsic
def vmul(typingctx, a, b):  # type: ignore[no-untyped-def]
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.fmul(*args)

    return a(a, b), codegen


@intrinsic
def vtranspose(typingctx, src, s_off, s_ld, dst, d_off, d_ld):  # type: ignore[no-untyped-def]
    """dst[d_off + e*d_ld + i] = src[s_off + i*s_ld + e] for i, e < lanes: a lanes x lanes
    block transposed in registers (lanes loads, log2(lanes) rounds of two-input shuffles that
    swap off-diagonal sub-blocks, lanes stores)."""
    vt = _vec_of(src)
    n = vt.lanes

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        s, so, sl, d, do, dl = args
        vty = context.get_value_type(vt)
        align = vt.dtype.bitwidth // 8
        rows = []
        for i in range(n):
            idx = builder.add(so, builder.mul(sl, context.get_constant(types.intp, i)))
            p = _ptr(context, builder, sig.args[0], s, idx)
            rows.append(builder.load(builder.bitcast(p, vty.as_pointer()), align=align))
        i32 = ir.IntType(32)
        h = n // 2
        while h >= 1:
            lo = [e if not e & h else n + e - h for e in range(n)]
            hi = [e + h if not e & h else n + e for e in range(n)]
            for i in range(n):
                if i & h:
                    continue
                x, y = rows[i], rows[i + h]
                rows[i] = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, n), lo))
                rows[i + h] = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, n), hi))
            h //= 2
        for e in range(n):
            idx = builder.add(do, builder.mul(dl, context.get_constant(types.intp, e)))
            p = _ptr(context, builder, sig.args[3], d, idx)
            builder.store(rows[e], builder.bitcast(p, vty.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.none(src, s_off, s_ld, dst, d_off, d_ld), codegen


@intrinsic
def vsum(typingctx, v):  # type: ignore[no-untyped-def]
    """The sum of v's lanes, added as a fixed pairwise tree (upper half onto lower half)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        x = args[0]
        i32 = ir.IntType(32)
        n = sig.args[0].lanes
        while n > 1:
            h = n // 2
            lo = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, h), list(range(h))))
            hi = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(i32, h), list(range(h, n))))
            x = builder.fadd(lo, hi)
            n = h
        return builder.extract_element(x, ir.Constant(i32, 0))

    return v.dtype(v), codegen
