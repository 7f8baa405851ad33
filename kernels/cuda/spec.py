"""Kernel signatures: the single table the backend marshals by and the emulation is built from.

Each kernel is a `template <typename T> __global__` function in one .cu file, instantiated for
float and double, or (the 16-bit kernels, `dtypes=HALF_DTYPES`) for __nv_bfloat16 and __half. A
parameter type is written in a tiny C-like notation: `T` (the dtype's scalar), `T*` / `const T*`
(device arrays of the dtype; a 16-bit dtype's arrays hold its bits, numpy uint16),
`const i64*` (int64 labels), `i64`, `i32`, `f32` (float, whatever T is). The host emulation
static_asserts that these match the C++ declarations, so the table cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = ("float32", "float64")
#: The 16-bit storage types of the bf16 / fp16 GEMM operands (arrays of their bits: uint16).
HALF_DTYPES = ("bfloat16", "float16")
C_SCALAR = {"float32": "float", "float64": "double", "bfloat16": "__nv_bfloat16",
            "float16": "__half"}  # fmt: skip
#: Itanium mangling of each C_SCALAR as a template argument (what NVRTC and nvcc emit).
MANGLED = {"float32": "f", "float64": "d", "bfloat16": "13__nv_bfloat16", "float16": "6__half"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its name and type in the notation above."""

    name: str
    ctype: str

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    def element_dtype(self, dtype: str) -> np.dtype:
        """The numpy dtype of the array (pointers) or scalar this parameter takes."""
        base = self.ctype.replace("const ", "").rstrip("*").strip()
        t = "uint16" if dtype in HALF_DTYPES else dtype
        return np.dtype({"T": t, "i64": "int64", "i32": "int32", "f32": "float32"}[base])

    def c_decl(self, dtype: str) -> str:
        """The C++ type for `dtype` (float32 -> float)."""
        c = self.ctype.replace("i64", "long long").replace("i32", "int").replace("f32", "float")
        return c.replace("T", C_SCALAR[dtype])


@dataclass(frozen=True)
class Kernel:
    """A templated kernel: its name, source file and parameters."""

    name: str
    source: str
    params: tuple[Param, ...]
    dtypes: tuple[str, ...] = DTYPES

    def name_expression(self, dtype: str) -> str:
        """The C++ name NVRTC instantiates, e.g. 'dc_mse<float>'."""
        return f"{self.name}<{C_SCALAR[dtype]}>"


def _kernel(name: str, source: str, signature: str, dtypes: tuple[str, ...] = DTYPES) -> Kernel:
    params = []
    for item in signature.split(","):
        ctype, _, pname = item.strip().rpartition(" ")
        params.append(Param(pname, ctype.strip()))
    return Kernel(name, source, tuple(params), dtypes)


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        _kernel(
            "dc_bias_act",
            "elementwise.cu",
            "const T* z, const T* b, T* pre, T* out, i64 rows, i64 cols, i32 kind, T alpha,"
            " i32 flags",
        ),
        _kernel(
            "dc_act_backward",
            "elementwise.cu",
            "const T* dy, const T* x, const T* y, T* dx, i64 n, i32 kind, T alpha",
        ),
        _kernel(
            "dc_col_sum_act",
            "reduce.cu",
            "const T* dy, const T* x, const T* y, T* dz, T* db, i64 rows, i64 cols, i32 kind,"
            " T alpha, i32 flags",
        ),
        _kernel("dc_softmax", "reduce.cu", "const T* x, T* out, i64 rows, i64 cols"),
        _kernel("dc_sum_finish", "reduce.cu", "const T* partials, i64 n, T divisor, T* out"),
        _kernel(
            "dc_softmax_xent",
            "losses.cu",
            "const T* z, const i64* labels, T* grad, T* row_loss, i64 rows, i64 cols, T n",
        ),
        _kernel(
            "dc_bce_logits",
            "losses.cu",
            "const T* z, const T* t, T* grad, T* partials, i64 n, T size",
        ),
        _kernel(
            "dc_mse", "losses.cu", "const T* p, const T* t, T* grad, T* partials, i64 n, T scale"
        ),
        _kernel(
            "dc_sgd",
            "optim.cu",
            "T* param, const T* grad, T* buf, i64 n, T lr, T momentum, T one_minus_dampening,"
            " T weight_decay, i32 flags",
        ),
        _kernel(
            "dc_adam",
            "optim.cu",
            "T* param, const T* grad, T* m, T* v, T* vmax, i64 n, T decay_factor,"
            " T weight_decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,"
            " T step_size, T bc2_sqrt, T eps, i32 flags",
        ),
        _kernel("dc_round16", "half.cu", "const f32* x, T* y, i64 n", HALF_DTYPES),
        _kernel("dc_widen16", "half.cu", "const T* x, f32* y, i64 n", HALF_DTYPES),
        _kernel(
            "dc_rmsprop",
            "optim.cu",
            "T* param, const T* grad, T* square_avg, T* gavg, T* buf, i64 n, T lr, T alpha,"
            " T one_minus_alpha, T eps, T weight_decay, T momentum, i32 flags",
        ),
    )
}


def kernels_in(source: str) -> list[Kernel]:
    """The kernels defined in one .cu file."""
    return [k for k in KERNELS.values() if k.source == source]


def marshal(kernel: Kernel, dtype: str, args: tuple) -> tuple:
    """Arguments as a raw launch needs them: arrays as given, scalars as exact numpy scalars.

    A Python float handed to a `float` parameter would be passed as 8 bytes by CuPy and read as
    garbage by the kernel; converting here, from the table, makes that impossible.
    """
    if len(args) != len(kernel.params):
        raise TypeError(f"{kernel.name} takes {len(kernel.params)} arguments, got {len(args)}")
    out = []
    for p, a in zip(kernel.params, args, strict=True):
        out.append(a if p.is_pointer else p.element_dtype(dtype).type(a))
    return tuple(out)
