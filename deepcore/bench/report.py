"""Presenting results: one table (rich when installed, else aligned plain text), JSON, and a
PNG bar chart of samples/s per runner and workload on a log scale (matplotlib, optional)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import IO, Any

from .timing import DISTURBED

ANCHOR_ORDER = ("loop", "torch-cpu", "torch-cpu-bf16", "torch-cuda", "jax", "sklearn", "numpy-loop")
BASE_COLUMNS = (
    "backend",
    "workload",
    "optimizer",
    "dtype",
    "gate",
    "samples/s",
    "warm-up s",
    "GFLOP/s",
    "% gemm",
    "% peak",
    "peak MB",
)


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def ratio_anchors(rows: list[dict[str, Any]]) -> list[str]:
    """Anchors with a ranked row (a ratio column each), in a fixed order; 'loop' when a backend
    row has its hand-written loop's ratio."""
    ranked = ("ok", "not gated")
    seen = {r["runner"] for r in rows if r.get("kind") == "anchor" and r.get("status") in ranked}
    seen |= {"loop" for r in rows if "loop" in r.get("ratios", {})}
    return [a for a in ANCHOR_ORDER if a in seen] + sorted(seen - set(ANCHOR_ORDER))


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(column headers, cells): one line per row; ratios as 'N.NNx' against each anchor."""
    anchors = ratio_anchors(rows)
    headers = [*BASE_COLUMNS, *(f"x {a}" for a in anchors)]
    cells = []
    for r in rows:
        status = r.get("status", "?")
        failed = status not in ("ok", "not gated")
        line = [
            r["runner"] + (" *" if r.get("kind") in ("anchor", "loop") else ""),
            r["workload"],
            r["optimizer"],
            r["dtype"],
            status,
            _num(r.get("samples_per_s"), ",.0f") + (" ~" if r.get("disturbed") else ""),
            _num(r.get("warmup_s"), ".2f"),
            "-" if failed else _num(r.get("gflops"), ".1f"),
            "-" if failed or r.get("gemm_share") is None else f"{100 * r['gemm_share']:.0f}%",
            "-" if failed or r.get("peak_share") is None else f"{100 * r['peak_share']:.0f}%",
            _num(r.get("peak_mem_mb"), ".0f"),
        ]
        ratios = r.get("ratios", {})
        line += [f"{ratios[a]:.2f}x" if a in ratios else "" for a in anchors]
        cells.append(line)
    return headers, cells


def plain_table(
    headers: list[str], cells: list[list[str]], left: frozenset[int] = frozenset(range(5))
) -> str:
    """Aligned text: the `left` columns (names) left, the others (numbers) right."""
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def fmt(items: list[str]) -> str:
        return "  ".join(
            s.ljust(w) if i in left else s.rjust(w)
            for i, (s, w) in enumerate(zip(items, widths, strict=True))
        ).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(c) for c in cells]
    return "\n".join(lines)


def footnotes(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    methods = sorted({r["mem_method"] for r in rows if r.get("mem_method")})
    own = any(r.get("own_process") for r in rows)
    gemm = ", ".join(f"{k} {v:.1f}" for k, v in result["gemm_gflops"].items())
    samples = result.get("gemm_gflops_samples", [])
    lo = min((min(g.values()) for g in samples), default=0.0)
    notes = [
        "* anchor (loop-NAME: deepcore's hand-written loop on backend NAME). samples/s: median of "
        "timed windows after warm-up, the runners of a row taking turns window by window "
        f"(~ a window more than {DISTURBED}x off the median: disturbed); warm-up s: compile + "
        "first step; GFLOP/s = 6 x params x samples/s.",
        f"% gemm: share of the machine's matmul rate at {result['gemm_size']}^3 in this run"
        + (
            " (NumPy's BLAS; -jit: the numba backend's JIT GEMM; -mkl: MKL, which the numba "
            "backend can use; the fastest counts)"
            if any(k.endswith(("-mkl", "-jit")) for k in result["gemm_gflops"])
            else " (np.matmul)"
        )
        + f": {gemm} GFLOP/s, the best of {len(samples)} samples (lowest {lo:.1f}), one per row.",
        f"peak MB: {', '.join(methods) or 'n/a'}, over the row (model, optimizer state, "
        "activations and library workspaces)"
        + ("; torch rows run in their own process and report its peak." if own else "."),
        "x anchor: this row's samples/s over the anchor's (same workload, optimizer, dtype); "
        "x loop: a backend's row over its own hand-written loop. FAILED rows disagree with the "
        "numpy backend's losses and are not ranked.",
        *machine_notes(result),
    ]
    m = result.get("machine", {})
    load, cores = m.get("loadavg_1_5_15"), m.get("cores_usable") or m.get("cores_logical")
    if load and cores:
        start = m.get("loadavg_start") or load
        notes.append(
            f"load average {start[0]:.1f} at start, {load[0]:.1f} at end, on {cores} usable cores."
        )
        if max(start[0], load[0]) > cores:
            notes.append(
                "WARNING: other processes compete for the cores: multi-threaded runners (torch "
                "most) stall at every parallel barrier, so their ratios are unreliable; rerun on "
                "a quiet machine, or with --threads 1 for a like-for-like single-thread run."
            )
    for r in rows:
        if r.get("status") == "not gated":
            notes.append(
                f"not gated: {r['runner']} {r['workload']} {r['optimizer']} "
                f"{r['dtype']}: {r.get('gate_note')}"
            )
        if r.get("status") == "error":
            notes.append(f"error: {r['runner']} {r['workload']}: {r.get('error')}")
    return notes + list(result.get("notes", []))


def machine_notes(result: dict[str, Any]) -> list[str]:
    """The peak and its formula, each BLAS library's kernels, and any BLAS warning."""
    m = result.get("machine", {})
    out = []
    peak = result.get("peak_gflops")
    if peak:
        bf16 = f", bf16 {peak['bf16']:.0f}" if peak.get("bf16") else ""
        gpu = "".join(f", {g['device']} {g['float32']:.0f}" for g in peak.get("gpu", []))
        out.append(
            f"% peak: share of the peak estimate, float32 {peak['float32']:.0f} GFLOP/s, "
            f"float64 {peak['float64']:.0f}{bf16}{gpu} = {peak['formula']}"
            + (f"; bf16 = {peak['bf16_formula']}" if peak.get("bf16_formula") else "")
            + f"; the best of {len(result.get('peak_gflops_samples') or [1])} samples, one per "
            "row."
        )
    else:
        out.append("% peak: no peak estimate (--no-peak, or no numba to measure it).")
    blas = m.get("blas") or []
    if blas:
        out.append("BLAS: " + "; ".join(_describe_blas(b) for b in blas) + ".")
    env = m.get("blas_env") or {}
    if env:
        out.append("BLAS environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
    out += list(m.get("blas_warnings") or [])
    return out


def _describe_blas(lib: dict[str, Any]) -> str:
    from ..machine import describe_blas

    return describe_blas(lib)


def render(result: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Print the table (rich if installed) and its footnotes."""
    stream = stream or sys.stdout
    headers, cells = table(result["rows"])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain_table(headers, cells), file=stream)
    else:
        t = Table(title="deepcore bench", show_lines=False)
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i < 5 else "right", no_wrap=True)
        for c in cells:
            style = "red" if c[4] not in ("ok", "not gated") else None
            t.add_row(*c, style=style)
        Console(file=stream, width=max(120, 14 * len(headers))).print(t)
    for n in footnotes(result):
        print(n, file=stream)
    extra = result.get("sklearn_compare")
    if extra:
        print("\nscikit-learn comparison (deepcore.bench.sklearn_compare):", file=stream)
        keys = list(dict.fromkeys(k for row in extra for k in row))
        body = [[_cell(row.get(k)) for k in keys] for row in extra]
        print(plain_table(keys, body), file=stream)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Rows, machine info and configuration as JSON (non-finite numbers become null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and callable(v.item):  # numpy scalars
            return clean(v.item())
        return v

    Path(path).write_text(json.dumps(clean(result), indent=2, default=str) + "\n")


def _short(v: float) -> str:
    """12,345 -> '12.3k': labels that fit above a bar."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def plot_title(result: dict[str, Any]) -> str:
    """Machine, BLAS kernels and date: what a reader needs to trust (or not) the bars."""
    m = result.get("machine", {})
    blas = ", ".join(
        " ".join(str(b[k]) for k in ("library", "version", "architecture") if b.get(k))
        for b in m.get("blas") or []
    )
    env = " ".join(f"{k}={v}" for k, v in (m.get("blas_env") or {}).items())
    load = m.get("loadavg_1_5_15")
    parts = [
        f"deepcore bench: {m.get('cpu', '?')}, {m.get('cores_usable', '?')} cores",
        f"BLAS {blas or 'unknown'}" + (f" [{env}]" if env else ""),
        f"{m.get('date', '')}" + (f", load {load[0]:.1f}" if load else ""),
    ]
    return "\n".join(parts)


def plot(path: str | Path, result: dict[str, Any]) -> None:
    """Grouped bars: one group per workload/optimizer/dtype, one bar per runner, log scale, the
    value on each bar; hatched: FAILED the gate; dotted edge and '~': a disturbed window."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter, LogLocator
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib: pip install matplotlib (or 'deepcore[plot]')"
        ) from None
    rows = [r for r in result["rows"] if r.get("samples_per_s")]
    groups = list(dict.fromkeys((r["workload"], r["optimizer"], r["dtype"]) for r in rows))
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    width = 0.84 / max(1, len(runners))
    bars_n = len(groups) * len(runners)
    fig, ax = plt.subplots(figsize=(min(16.0, max(9.0, 0.22 * bars_n + 4)), 6.4), dpi=110)
    cmap = plt.get_cmap("tab20" if len(runners) > 10 else "tab10")
    handles: list[Any] = []
    for j, name in enumerate(runners):
        xs, ys, marks = [], [], []
        for g, key in enumerate(groups):
            for r in rows:
                if r["runner"] == name and (r["workload"], r["optimizer"], r["dtype"]) == key:
                    xs.append(g + (j - (len(runners) - 1) / 2) * width)
                    ys.append(r["samples_per_s"])
                    marks.append((r.get("status") not in ("ok", "not gated"), r.get("disturbed")))
        kind = next((r.get("kind") for r in rows if r["runner"] == name), "backend")
        label = name + {"anchor": " (anchor)", "loop": " (hand-written loop)"}.get(kind, "")
        color = cmap(j % cmap.N)
        handles.append(Patch(facecolor=color, edgecolor="black", linewidth=0.4, label=label))
        bars = ax.bar(xs, ys, width, color=color, edgecolor="black", linewidth=0.4)
        labels = []
        for bar, (bad, noisy), y in zip(bars, marks, ys, strict=True):
            if bad:
                bar.set_hatch("xx")
                bar.set_alpha(0.4)
            if noisy:
                bar.set_linestyle(":")
                bar.set_linewidth(1.2)
            labels.append(_short(y) + ("~" if noisy else ""))
        ax.bar_label(bars, labels=labels, rotation=90, fontsize=6.5, padding=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    top = max((r["samples_per_s"] for r in rows), default=1.0)
    ax.set_ylim(top=top * 4)  # room for the labels above the tallest bar
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\n{o} {d}" for w, o, d in groups])
    ax.set_ylabel("training samples / s (log scale; higher is better)")
    ax.set_title(plot_title(result), fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)  # fmt: skip
    notes = []
    if any(r.get("status") == "FAILED" for r in rows):
        notes.append("hatched = FAILED the correctness gate")
    if any(r.get("disturbed") for r in rows):
        notes.append("~ and dotted edge = a timed window far from the median (disturbed)")
    if notes:
        ax.text(0.99, 0.99, "\n".join(notes), transform=ax.transAxes, ha="right", va="top",
                fontsize=7)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    """The table and footnotes as markdown, for BENCHMARKS.md (`python -m deepcore.bench.report
    bench.json`)."""
    headers, cells = table(result["rows"])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join([*lines, "", *footnotes(result)])


def main(argv: list[str] | None = None) -> int:
    """`python -m deepcore.bench.report bench.json`: the table of a `--json` run as markdown."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deepcore.bench.report", description=main.__doc__)
    ap.add_argument("json", help="a file written by `deepcore bench --json`")
    args = ap.parse_args(argv)
    try:
        result = json.loads(Path(args.json).read_text())
        text = markdown(result)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {args.json}: not a readable `deepcore bench --json` file ({exc})",
              file=sys.stderr)  # fmt: skip
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
