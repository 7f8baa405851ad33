"""Launch geometry for the CUDA kernels: the one place grid and block sizes are chosen.

The CuPy backend launches with these, and the host emulation (tests) is driven with the very
same numbers, so emulated runs exercise the real configuration. Grids are capped and the kernels
loop (grid-stride), so any size works; results depend only on the shape, never on the GPU model,
which keeps reductions bitwise reproducible on one machine.
"""

from __future__ import annotations

#: Threads per block for 1-D kernels; static shared arrays are sized by it (DC_MAX_BLOCK).
MAX_BLOCK = 256
#: Column-sum blocks are (COL_TILE, COL_ROWS) threads (DC_COL_TILE, DC_COL_ROWS in common.cuh).
COL_TILE = 32
COL_ROWS = 8
#: Most blocks an elementwise launch uses before threads loop over further elements.
MAX_GRID = 4096
#: Most blocks a partial-sum reduction uses (also the length of its partials buffer).
MAX_REDUCE_GRID = 256
#: Most blocks a row kernel uses (a block loops over rows beyond it).
MAX_ROW_GRID = 8192

Dim3 = tuple[int, int, int]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def elementwise(n: int) -> tuple[Dim3, Dim3]:
    """(grid, block) for a grid-stride loop over n elements (n >= 1)."""
    return (max(1, min(_cdiv(n, MAX_BLOCK), MAX_GRID)), 1, 1), (MAX_BLOCK, 1, 1)


def reduction(n: int) -> tuple[Dim3, Dim3]:
    """(grid, block) for a partial-sum kernel over n elements; grid[0] partials come out."""
    return (max(1, min(_cdiv(n, MAX_BLOCK), MAX_REDUCE_GRID)), 1, 1), (MAX_BLOCK, 1, 1)


def rows(n_rows: int, n_cols: int) -> tuple[Dim3, Dim3]:
    """(grid, block) for one block per row: a power-of-two block, 32..MAX_BLOCK threads."""
    block = min(MAX_BLOCK, max(32, _pow2_at_least(n_cols)))
    return (max(1, min(n_rows, MAX_ROW_GRID)), 1, 1), (block, 1, 1)


def columns(n_cols: int) -> tuple[Dim3, Dim3]:
    """(grid, block) for column sums: one (COL_TILE, COL_ROWS) block per COL_TILE columns."""
    return (max(1, _cdiv(n_cols, COL_TILE)), 1, 1), (COL_TILE, COL_ROWS, 1)


def finisher() -> tuple[Dim3, Dim3]:
    """(grid, block) of the single-block kernel that sums partials into a 0-d result."""
    return (1, 1, 1), (MAX_BLOCK, 1, 1)
