"""Cache hints for the Numba kernels: prefetches, and non-temporal stores with their fence.

The bf16 GEMM (bf16.py) uses them: it asks for a tile's C rows and the next tile's A rows
before its long sums, and writes a large weight gradient, which nothing reads soon, past the
caches.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from .simd import TARGET, _ptr


def _prefetch(context, builder, sig, args, write, locality):  # type: ignore[no-untyped-def]
    p = _ptr(context, builder, sig.args[0], args[0], args[1])
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fty, "llvm.prefetch.p0")
    builder.call(fn, [builder.bitcast(p, i8p), i32(write), i32(locality), i32(1)])


@intrinsic
def prefetch_write(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Hint that the cache line holding arr.flat[idx] is about to be written (llvm.prefetch:
    write, keep in all levels): a GEMM tile asks for its C rows before its long sum."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        _prefetch(context, builder, sig, args, 1, 3)
        return context.get_dummy_value()

    return types.none(arr, idx), codegen


@intrinsic
def prefetch_read(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Hint that the cache line holding arr.flat[idx] will be read soon: fetched into L2
    (llvm.prefetch: read, locality 2), where a GEMM wants its next tile's rows of A."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        _prefetch(context, builder, sig, args, 0, 2)
        return context.get_dummy_value()

    return types.none(arr, idx), codegen


@intrinsic
def vstream(typingctx, arr, idx, v):  # type: ignore[no-untyped-def]
    """arr.flat[idx : idx + lanes] = v by a non-temporal store: to memory without reading the
    line first or keeping it in cache. The address must be vector-aligned; `store_fence` after
    the last one, before another thread reads."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        vty = args[2].type
        size = vty.count * (sig.args[0].dtype.bitwidth // 8)
        st = builder.store(args[2], builder.bitcast(p, vty.as_pointer()), align=size)
        one = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        st.set_metadata("nontemporal", one)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def store_fence(typingctx):  # type: ignore[no-untyped-def]
    """Order this thread's non-temporal stores before everything after (x86 `sfence`; a full
    fence elsewhere)."""

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if TARGET.arch == "x86_64":
            fty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fty, "llvm.x86.sse.sfence")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen
