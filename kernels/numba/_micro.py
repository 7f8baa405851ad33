"""GEMM micro-kernel: an MR x NR block of C accumulated in scalar locals (register blocking).

The body between the GENERATED markers is written by `_generate()` (run this file to refresh it):
explicit locals are the only way to keep 128 accumulators in registers under Numba, and the SLP
vectorizer (see _config.slp_vectorize) turns each row of them into 4 AVX FMAs per k step.
"""
# ruff: noqa: E501
# fmt: off

from __future__ import annotations

from pathlib import Path

from numba import njit

from ._config import GEMM_OPTS

#: Rows and columns of the register block; packed panels are laid out in strips of these widths.
MR = 4
NR = 32


@njit(**GEMM_OPTS)
def store_row(c, i, j0, nr, alpha, beta, first, row):
    """c[i, j0:j0+nr] (=|+=) alpha * row (+ beta * c on the first K block; beta == 0 never reads c)."""
    if not first:
        for j in range(nr):
            c[i, j0 + j] += alpha * row[j]
    elif beta == 0:
        for j in range(nr):
            c[i, j0 + j] = alpha * row[j]
    else:
        for j in range(nr):
            c[i, j0 + j] = alpha * row[j] + beta * c[i, j0 + j]


# BEGIN GENERATED
@njit(inline="always", **GEMM_OPTS)
def micro(pa, ao, pb, bo, kc, c, i0, j0, mr, nr, alpha, beta, first):
    """C[i0:i0+mr, j0:j0+nr] from kc steps of the packed strips pa[ao:] (MR wide), pb[bo:] (NR wide)."""
    z = alpha - alpha
    c0_0 = c0_1 = c0_2 = c0_3 = c0_4 = c0_5 = c0_6 = c0_7 = c0_8 = c0_9 = c0_10 = c0_11 = c0_12 = c0_13 = c0_14 = c0_15 = c0_16 = c0_17 = c0_18 = c0_19 = c0_20 = c0_21 = c0_22 = c0_23 = c0_24 = c0_25 = c0_26 = c0_27 = c0_28 = c0_29 = c0_30 = c0_31 = z
    c1_0 = c1_1 = c1_2 = c1_3 = c1_4 = c1_5 = c1_6 = c1_7 = c1_8 = c1_9 = c1_10 = c1_11 = c1_12 = c1_13 = c1_14 = c1_15 = c1_16 = c1_17 = c1_18 = c1_19 = c1_20 = c1_21 = c1_22 = c1_23 = c1_24 = c1_25 = c1_26 = c1_27 = c1_28 = c1_29 = c1_30 = c1_31 = z
    c2_0 = c2_1 = c2_2 = c2_3 = c2_4 = c2_5 = c2_6 = c2_7 = c2_8 = c2_9 = c2_10 = c2_11 = c2_12 = c2_13 = c2_14 = c2_15 = c2_16 = c2_17 = c2_18 = c2_19 = c2_20 = c2_21 = c2_22 = c2_23 = c2_24 = c2_25 = c2_26 = c2_27 = c2_28 = c2_29 = c2_30 = c2_31 = z
    c3_0 = c3_1 = c3_2 = c3_3 = c3_4 = c3_5 = c3_6 = c3_7 = c3_8 = c3_9 = c3_10 = c3_11 = c3_12 = c3_13 = c3_14 = c3_15 = c3_16 = c3_17 = c3_18 = c3_19 = c3_20 = c3_21 = c3_22 = c3_23 = c3_24 = c3_25 = c3_26 = c3_27 = c3_28 = c3_29 = c3_30 = c3_31 = z
    for p in range(kc):
        a = ao + p * 4
        b = bo + p * 32
        b0 = pb[b + 0]
        b1 = pb[b + 1]
        b2 = pb[b + 2]
        b3 = pb[b + 3]
        b4 = pb[b + 4]
        b5 = pb[b + 5]
        b6 = pb[b + 6]
        b7 = pb[b + 7]
        b8 = pb[b + 8]
        b9 = pb[b + 9]
        b10 = pb[b + 10]
        b11 = pb[b + 11]
        b12 = pb[b + 12]
        b13 = pb[b + 13]
        b14 = pb[b + 14]
        b15 = pb[b + 15]
        b16 = pb[b + 16]
        b17 = pb[b + 17]
        b18 = pb[b + 18]
        b19 = pb[b + 19]
        b20 = pb[b + 20]
        b21 = pb[b + 21]
        b22 = pb[b + 22]
        b23 = pb[b + 23]
        b24 = pb[b + 24]
        b25 = pb[b + 25]
        b26 = pb[b + 26]
        b27 = pb[b + 27]
        b28 = pb[b + 28]
        b29 = pb[b + 29]
        b30 = pb[b + 30]
        b31 = pb[b + 31]
        a0 = pa[a + 0]
        c0_0 += a0 * b0
        c0_1 += a0 * b1
        c0_2 += a0 * b2
        c0_3 += a0 * b3
        c0_4 += a0 * b4
        c0_5 += a0 * b5
        c0_6 += a0 * b6
        c0_7 += a0 * b7
        c0_8 += a0 * b8
        c0_9 += a0 * b9
        c0_10 += a0 * b10
        c0_11 += a0 * b11
        c0_12 += a0 * b12
        c0_13 += a0 * b13
        c0_14 += a0 * b14
        c0_15 += a0 * b15
        c0_16 += a0 * b16
        c0_17 += a0 * b17
        c0_18 += a0 * b18
        c0_19 += a0 * b19
        c0_20 += a0 * b20
        c0_21 += a0 * b21
        c0_22 += a0 * b22
        c0_23 += a0 * b23
        c0_24 += a0 * b24
        c0_25 += a0 * b25
        c0_26 += a0 * b26
        c0_27 += a0 * b27
        c0_28 += a0 * b28
        c0_29 += a0 * b29
        c0_30 += a0 * b30
        c0_31 += a0 * b31
        a1 = pa[a + 1]
        c1_0 += a1 * b0
        c1_1 += a1 * b1
        c1_2 += a1 * b2
        c1_3 += a1 * b3
        c1_4 += a1 * b4
        c1_5 += a1 * b5
        c1_6 += a1 * b6
        c1_7 += a1 * b7
        c1_8 += a1 * b8
        c1_9 += a1 * b9
        c1_10 += a1 * b10
        c1_11 += a1 * b11
        c1_12 += a1 * b12
        c1_13 += a1 * b13
        c1_14 += a1 * b14
        c1_15 += a1 * b15
        c1_16 += a1 * b16
        c1_17 += a1 * b17
        c1_18 += a1 * b18
        c1_19 += a1 * b19
        c1_20 += a1 * b20
        c1_21 += a1 * b21
        c1_22 += a1 * b22
        c1_23 += a1 * b23
        c1_24 += a1 * b24
        c1_25 += a1 * b25
        c1_26 += a1 * b26
        c1_27 += a1 * b27
        c1_28 += a1 * b28
        c1_29 += a1 * b29
        c1_30 += a1 * b30
        c1_31 += a1 * b31
        a2 = pa[a + 2]
        c2_0 += a2 * b0
        c2_1 += a2 * b1
        c2_2 += a2 * b2
        c2_3 += a2 * b3
        c2_4 += a2 * b4
        c2_5 += a2 * b5
        c2_6 += a2 * b6
        c2_7 += a2 * b7
        c2_8 += a2 * b8
        c2_9 += a2 * b9
        c2_10 += a2 * b10
        c2_11 += a2 * b11
        c2_12 += a2 * b12
        c2_13 += a2 * b13
        c2_14 += a2 * b14
        c2_15 += a2 * b15
        c2_16 += a2 * b16
        c2_17 += a2 * b17
        c2_18 += a2 * b18
        c2_19 += a2 * b19
        c2_20 += a2 * b20
        c2_21 += a2 * b21
        c2_22 += a2 * b22
        c2_23 += a2 * b23
        c2_24 += a2 * b24
        c2_25 += a2 * b25
        c2_26 += a2 * b26
        c2_27 += a2 * b27
        c2_28 += a2 * b28
        c2_29 += a2 * b29
        c2_30 += a2 * b30
        c2_31 += a2 * b31
        a3 = pa[a + 3]
        c3_0 += a3 * b0
        c3_1 += a3 * b1
        c3_2 += a3 * b2
        c3_3 += a3 * b3
        c3_4 += a3 * b4
        c3_5 += a3 * b5
        c3_6 += a3 * b6
        c3_7 += a3 * b7
        c3_8 += a3 * b8
        c3_9 += a3 * b9
        c3_10 += a3 * b10
        c3_11 += a3 * b11
        c3_12 += a3 * b12
        c3_13 += a3 * b13
        c3_14 += a3 * b14
        c3_15 += a3 * b15
        c3_16 += a3 * b16
        c3_17 += a3 * b17
        c3_18 += a3 * b18
        c3_19 += a3 * b19
        c3_20 += a3 * b20
        c3_21 += a3 * b21
        c3_22 += a3 * b22
        c3_23 += a3 * b23
        c3_24 += a3 * b24
        c3_25 += a3 * b25
        c3_26 += a3 * b26
        c3_27 += a3 * b27
        c3_28 += a3 * b28
        c3_29 += a3 * b29
        c3_30 += a3 * b30
        c3_31 += a3 * b31
    store_row(c, i0, j0, nr, alpha, beta, first, (c0_0, c0_1, c0_2, c0_3, c0_4, c0_5, c0_6, c0_7, c0_8, c0_9, c0_10, c0_11, c0_12, c0_13, c0_14, c0_15, c0_16, c0_17, c0_18, c0_19, c0_20, c0_21, c0_22, c0_23, c0_24, c0_25, c0_26, c0_27, c0_28, c0_29, c0_30, c0_31))
    if mr > 1:
        store_row(c, i0 + 1, j0, nr, alpha, beta, first, (c1_0, c1_1, c1_2, c1_3, c1_4, c1_5, c1_6, c1_7, c1_8, c1_9, c1_10, c1_11, c1_12, c1_13, c1_14, c1_15, c1_16, c1_17, c1_18, c1_19, c1_20, c1_21, c1_22, c1_23, c1_24, c1_25, c1_26, c1_27, c1_28, c1_29, c1_30, c1_31))
    if mr > 2:
        store_row(c, i0 + 2, j0, nr, alpha, beta, first, (c2_0, c2_1, c2_2, c2_3, c2_4, c2_5, c2_6, c2_7, c2_8, c2_9, c2_10, c2_11, c2_12, c2_13, c2_14, c2_15, c2_16, c2_17, c2_18, c2_19, c2_20, c2_21, c2_22, c2_23, c2_24, c2_25, c2_26, c2_27, c2_28, c2_29, c2_30, c2_31))
    if mr > 3:
        store_row(c, i0 + 3, j0, nr, alpha, beta, first, (c3_0, c3_1, c3_2, c3_3, c3_4, c3_5, c3_6, c3_7, c3_8, c3_9, c3_10, c3_11, c3_12, c3_13, c3_14, c3_15, c3_16, c3_17, c3_18, c3_19, c3_20, c3_21, c3_22, c3_23, c3_24, c3_25, c3_26, c3_27, c3_28, c3_29, c3_30, c3_31))
# END GENERATED


def _generate() -> str:
    """Source of `micro` for the current MR, NR (between the GENERATED markers)."""
    row = lambda i: ", ".join(f"c{i}_{j}" for j in range(NR))  # noqa: E731
    out = [
        '@njit(inline="always", **GEMM_OPTS)',
        "def micro(pa, ao, pb, bo, kc, c, i0, j0, mr, nr, alpha, beta, first):",
        '    """C[i0:i0+mr, j0:j0+nr] from kc steps of the packed strips pa[ao:] (MR wide), pb[bo:] (NR wide)."""',
        "    z = alpha - alpha",
    ]
    out += ["    " + " = ".join(f"c{i}_{j}" for j in range(NR)) + " = z" for i in range(MR)]
    out += ["    for p in range(kc):", f"        a = ao + p * {MR}", f"        b = bo + p * {NR}"]
    out += [f"        b{j} = pb[b + {j}]" for j in range(NR)]
    for i in range(MR):
        out.append(f"        a{i} = pa[a + {i}]")
        out += [f"        c{i}_{j} += a{i} * b{j}" for j in range(NR)]
    out.append(f"    store_row(c, i0, j0, nr, alpha, beta, first, ({row(0)}))")
    for i in range(1, MR):
        out.append(f"    if mr > {i}:")
        out.append(f"        store_row(c, i0 + {i}, j0, nr, alpha, beta, first, ({row(i)}))")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    path = Path(__file__)
    text = path.read_text()
    head, rest = text.split("# BEGIN GENERATED\n")
    _, tail = rest.split("# END GENERATED\n")
    path.write_text(head + "# BEGIN GENERATED\n" + _generate() + "# END GENERATED\n" + tail)
