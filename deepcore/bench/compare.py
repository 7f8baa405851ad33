"""`deepcore bench --compare old.json`: each row's speed over the same row of an earlier run, with
rows more than `SLOWER` slower flagged, so a slower change is seen before it lands.

Rows match on runner, workload (name, sizes, batch), optimizer and dtype. The ratio of the two
runs' machine GEMM rates is printed beside them: when it is far from 1 the machine (or its load)
changed, not only the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

#: A row whose samples/s fell below (1 - SLOWER) x the earlier run's is flagged.
SLOWER = 0.10


def load_previous(path: str | Path) -> dict[str, Any]:
    """An earlier `--json` result; ValueError naming the file and what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"--compare {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ValueError(f"--compare {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"--compare {path}: not a `deepcore bench --json` file (no 'rows' list)")
    return data


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r.get("runner"),
        r.get("workload"),
        tuple(r.get("sizes") or ()),
        r.get("batch"),
        r.get("optimizer"),
        r.get("dtype"),
    )


def compare(
    new: dict[str, Any], old: dict[str, Any], slower: float = SLOWER
) -> list[dict[str, Any]]:
    """One entry per row timed in both runs: key fields, both rates, ratio new/old, `slower`."""
    before = {row_key(r): r for r in old["rows"] if r.get("samples_per_s")}
    out = []
    for r in new["rows"]:
        o = before.get(row_key(r))
        if not r.get("samples_per_s") or o is None:
            continue
        ratio = r["samples_per_s"] / o["samples_per_s"]
        out.append(
            {
                "runner": r["runner"],
                "workload": r["workload"],
                "optimizer": r["optimizer"],
                "dtype": r["dtype"],
                "old": o["samples_per_s"],
                "new": r["samples_per_s"],
                "ratio": ratio,
                "slower": ratio < 1 - slower,
                "disturbed": bool(r.get("disturbed") or o.get("disturbed")),
            }
        )
    return out


def gemm_ratio(new: dict[str, Any], old: dict[str, Any]) -> float | None:
    """This run's best float32 CPU GEMM rate over the earlier run's (None if either lacks it)."""
    a = (new.get("gemm_gflops") or {}).get("cpu-float32")
    b = (old.get("gemm_gflops") or {}).get("cpu-float32")
    return a / b if a and b else None


def render(result: dict[str, Any], stream: IO[str]) -> None:
    """The comparison table and a one-line verdict."""
    from .report import plain_table

    cmp = result.get("compare")
    if not cmp:
        return
    rows = cmp["rows"]
    print(f"\ncompared with {cmp['against']} ({cmp.get('against_date') or 'undated'}):",
          file=stream)  # fmt: skip
    if not rows:
        print("  no row of this run was timed in that one", file=stream)
        return
    headers = ["backend", "workload", "optimizer", "dtype", "old samples/s", "new samples/s",
               "ratio", ""]  # fmt: skip
    cells = [
        [
            r["runner"],
            r["workload"],
            r["optimizer"],
            r["dtype"],
            f"{r['old']:,.0f}",
            f"{r['new']:,.0f}",
            f"{r['ratio']:.2f}x",
            ("SLOWER" if r["slower"] else "") + (" ~" if r["disturbed"] else ""),
        ]  # fmt: skip
        for r in rows
    ]
    print(plain_table(headers, cells), file=stream)
    bad = [r for r in rows if r["slower"]]
    g = cmp.get("gemm_ratio")
    machine = f"; the machine's GEMM rate changed {g:.2f}x" if g else ""
    print(
        f"{len(bad)} of {len(rows)} rows more than {100 * cmp['threshold']:.0f}% slower{machine}"
        + ("; ~ a disturbed window in either run" if any(r["disturbed"] for r in rows) else ""),
        file=stream,
    )
