"""The CuPy test double's `cublas.gemmEx` (tests/cupy_double.py installs it): cuBLAS's
column-major GEMM on raw pointers, for the bf16 / fp16 GEMMs (16-bit A and B, float32 C,
CUBLAS_COMPUTE_32F). A TEST DOUBLE: it proves the arguments and the arithmetic they describe,
nothing about a GPU.

Every pointer must be the `.data.ptr` of a live device array of the double (`pointer_owner`),
on the current device, holding at least what (ld, rows, cols) address; alpha and beta are read
as float32 from host memory (CuPy's host pointer mode). The operands are decoded from their
bits (ml_dtypes' bfloat16, NumPy's float16), multiplied in float32 (cuBLAS's 32-bit compute;
its summation order is its own) and written into C through its leading dimension. Each call's
arguments are recorded in `STATE.gemmex_calls`. Stricter than cuBLAS: only the types deepcore
uses are accepted (anything else is CUBLAS_STATUS_NOT_SUPPORTED here).
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

import numpy as np

CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
CUBLAS_COMPUTE_32F = 68
CUBLAS_GEMM_DEFAULT, CUBLAS_GEMM_DEFAULT_TENSOR_OP = -1, 99
_ITEM = {CUDA_R_32F: 4, CUDA_R_16F: 2, CUDA_R_16BF: 2}

#: data pointer -> the device array it was taken from (weakly: a freed array's pointer is gone)
_OWNERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class MemoryPointer:
    """`ndarray.data` of the double: `.ptr` is the buffer's address (as cupy.cuda.MemoryPointer)."""

    def __init__(self, array: np.ndarray) -> None:
        self.ptr = array.ctypes.data
        _OWNERS[self.ptr] = array


def pointer_owner(ptr: int) -> Any:
    return _OWNERS.get(ptr)


def _decode(raw: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == CUDA_R_32F:
        return raw.view(np.float32)
    if dtype == CUDA_R_16F:
        return raw.view(np.float16).astype(np.float32)
    import ml_dtypes

    return raw.view(ml_dtypes.bfloat16).astype(np.float32)


def _matrix(ptr: int, dtype: int, rows: int, cols: int, ld: int, what: str, error: Any,
            device: int) -> np.ndarray:  # fmt: skip
    """The (rows x cols) column-major matrix at ptr with leading dimension ld, as a writable
    view of the owner's memory (raw bits: uint16 / uint32)."""
    owner = pointer_owner(ptr)
    if owner is None:
        raise error(f"CUBLAS_STATUS_INVALID_VALUE: gemmEx {what}: {ptr:#x} is no device array")
    if owner._device_id != device:
        raise ValueError(f"gemmEx {what}: array on device {owner._device_id}, current {device}")
    item = _ITEM[dtype]
    need = (ld * (cols - 1) + rows) * item
    if owner.nbytes < need or owner.itemsize != item:
        raise error(f"gemmEx {what}: needs {need} bytes of {item}-byte elements, the array has "
                    f"{owner.nbytes} of {owner.itemsize}")  # fmt: skip
    ctype = ctypes.c_uint16 if item == 2 else ctypes.c_uint32
    flat = np.ctypeslib.as_array((ctype * (ld * cols)).from_address(ptr)) if need else None
    if flat is None:
        return np.zeros((rows, cols), np.uint16 if item == 2 else np.uint32)
    return flat.reshape(cols, ld)[:, :rows].T  # a view: column j is flat[j*ld : j*ld+rows]


def gemm_ex(state: Any, error: Any, handle: int, transa: int, transb: int, m: int, n: int,
            k: int, alpha: int, A: int, Atype: int, lda: int, B: int, Btype: int, ldb: int,
            beta: int, C: int, Ctype: int, ldc: int, computeType: int,
            algo: int) -> None:  # fmt: skip  # noqa: N803 - cuBLAS's names
    """cublasGemmEx: C = alpha op(A) op(B) + beta C (column-major), float32 compute."""
    call = dict(transa=transa, transb=transb, m=m, n=n, k=k, Atype=Atype, lda=lda, Btype=Btype,
                ldb=ldb, Ctype=Ctype, ldc=ldc, computeType=computeType, algo=algo, A=A, B=B,
                C=C, handle=handle)  # fmt: skip
    state.gemmex_calls.append(call)
    if (
        computeType != CUBLAS_COMPUTE_32F
        or Atype != Btype
        or Atype not in (CUDA_R_16F, CUDA_R_16BF)
        or Ctype != CUDA_R_32F
        or algo not in (CUBLAS_GEMM_DEFAULT, CUBLAS_GEMM_DEFAULT_TENSOR_OP)
        or transa not in (0, 1)
        or transb not in (0, 1)
    ):
        raise error(f"CUBLAS_STATUS_NOT_SUPPORTED (in the double): gemmEx {call}")
    rows_a, cols_a = (m, k) if transa == 0 else (k, m)
    rows_b, cols_b = (k, n) if transb == 0 else (n, k)
    if min(m, n, k) < 0 or lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
        raise error(f"CUBLAS_STATUS_INVALID_VALUE: gemmEx(m={m}, n={n}, k={k}, lda={lda}, "
                    f"ldb={ldb}, ldc={ldc}): a leading dimension below max(1, rows)")  # fmt: skip
    if m == 0 or n == 0:
        return
    dev = state.current_device
    a = _decode(_matrix(A, Atype, rows_a, cols_a, lda, "A", error, dev), Atype)
    b = _decode(_matrix(B, Btype, rows_b, cols_b, ldb, "B", error, dev), Btype)
    c = _matrix(C, Ctype, m, n, ldc, "C", error, dev).view(np.float32)
    al = np.float32(ctypes.c_float.from_address(alpha).value)
    be = np.float32(ctypes.c_float.from_address(beta).value)
    a = a if transa == 0 else a.T
    b = b if transb == 0 else b.T
    prod = (a @ b) * al if k else np.zeros((m, n), np.float32)
    if be == 0:
        c[...] = prod  # C is not read when beta == 0 (NaN there is overwritten), as cuBLAS
    else:
        c[...] = be * c + prod
