"""Load a user's own tabular data from CSV or NPZ into a :class:`Dataset`.

Labels may be ints, floats or strings. ``task="auto"`` treats integer-valued or string labels as
classes (kept in ``Dataset.classes`` so predictions map back) and non-integer floats as a
regression target. Errors name the file, row and column at fault.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset

__all__ = ["load_csv", "load_npz", "encode_labels"]

_TASKS = ("auto", "classification", "regression")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def encode_labels(
    values: np.ndarray,
    task: str = "auto",
    source: str = "labels",
    dtype: np.dtype | type = np.float64,
    row_numbers: Sequence[int] | None = None,
) -> tuple[np.ndarray, int | None, np.ndarray | None]:
    """Turn raw labels into ``(y, n_classes, classes)`` for ``task``.

    Classification gives int64 indices into the sorted unique labels ``classes``; regression
    gives float ``y`` of ``dtype`` with ``n_classes`` and ``classes`` None. ``row_numbers`` maps
    positions to the row numbers quoted in error messages (e.g. file lines).
    """

    def row(i: int) -> int:
        return int(row_numbers[i]) if row_numbers is not None else int(i)

    if task not in _TASKS:
        raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{source}: labels must be 1-D, got shape {values.shape}")
    if values.dtype.kind in "US":
        stripped = np.char.strip(values.astype(str))
        numeric = all(_is_number(v) for v in stripped)
        values = stripped.astype(np.float64) if numeric else stripped
    elif values.dtype.kind == "b":
        values = values.astype(np.int64)
    elif values.dtype.kind not in "iuf":
        raise ValueError(f"{source}: unsupported label dtype {values.dtype}")

    if values.dtype.kind == "U":  # strings that are not all numbers: class names
        if task == "regression":
            bad = next(i for i, v in enumerate(values) if not _is_number(v))
            raise ValueError(
                f"{source}: task='regression' needs numeric labels, "
                f"found {str(values[bad])!r} at row {row(bad)}"
            )
        classes, y = np.unique(values, return_inverse=True)
        return y.astype(np.int64).ravel(), len(classes), classes

    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{source}: label at row {row(int(bad[0]))} is {values[bad[0]]} (not finite)"
            )
        integral = bool(np.all(values == np.round(values))) and (
            values.size == 0 or np.abs(values).max() < 2**53
        )
        if task == "regression" or (task == "auto" and not integral):
            return values.astype(dtype), None, None
        if integral:
            values = values.astype(np.int64)
    elif task == "regression":
        return values.astype(dtype), None, None
    classes, y = np.unique(values, return_inverse=True)
    return y.astype(np.int64).ravel(), len(classes), classes


def _check_finite(
    X: np.ndarray,
    names: Sequence[str],
    source: str,
    row_numbers: Sequence[int] | None = None,
    dtype: np.dtype | None = None,
    col_numbers: Sequence[int] | None = None,
) -> None:
    """Reject NaN/Inf features, and values that overflow `dtype` (a 1e39 in float32), naming
    the first offending cell: its line in a CSV (row_numbers) or its row, and its column."""
    unit = "line" if row_numbers is not None else "row"

    def where(r: int, k: int) -> str:
        line = row_numbers[r] if row_numbers is not None else r
        col = col_numbers[k] if col_numbers is not None else k + 1
        return f"{unit} {line}, column {col} ({names[k]!r})"

    bad = ~np.isfinite(X)
    if bad.any():
        r, k = (int(i) for i in np.argwhere(bad)[0])
        line = row_numbers[r] if row_numbers is not None else r
        raise ValueError(
            f"{source}: feature column {names[k]!r} has a non-finite value {X[r, k]} "
            f"at row {line}; NaN/Inf are not allowed in features"
        )
    if dtype is not None and dtype != X.dtype:
        limit = np.finfo(dtype).max
        over = np.abs(X) > limit
        if over.any():
            r, k = (int(i) for i in np.argwhere(over)[0])
            raise ValueError(
                f"{source}: {where(r, k)}: value {X[r, k]:g} overflows {dtype} (largest "
                f"{limit:.4g}); scale the column or load with dtype=float64"
            )


def _resolve_label(label: str | int, columns: Sequence[str], source: str) -> int:
    n = len(columns)
    if isinstance(label, bool) or not isinstance(label, str | int | np.integer):
        raise TypeError(f"label must be a column name or index, got {label!r}")
    if isinstance(label, str):
        if label in columns:
            return list(columns).index(label)
        raise ValueError(
            f"{source}: label column {label!r} not found; columns are: "
            f"{', '.join(repr(c) for c in columns)}"
        )
    if not -n <= label < n:
        raise ValueError(
            f"{source}: label column index {label} out of range for {n} columns: "
            f"{', '.join(repr(c) for c in columns)}"
        )
    return int(label) % n


def _check_dtype_task(dtype: np.dtype | type, task: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if task not in _TASKS:
        raise ValueError(f"task must be one of {', '.join(_TASKS)}, got {task!r}")
    return dtype


def load_csv(
    path: str | os.PathLike,
    label: str | int = "label",
    delimiter: str = ",",
    header: bool | str = "auto",
    task: str = "auto",
    dtype: np.dtype | type = np.float32,
    name: str | None = None,
) -> Dataset:
    """Load a CSV whose column ``label`` (name or index) is the target and the rest features.

    ``header="auto"`` takes the first row as column names when it contains the label name or no
    numeric cell at all. Blank lines are skipped; every other row must have the same length.
    """
    path = Path(path)
    dtype = _check_dtype_task(dtype, task)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(_numbered_rows(csv.reader(fh, delimiter=delimiter)))
    if not rows:
        raise ValueError(f"{path}: empty file, no header or data rows")
    first = [c.strip() for c in rows[0][1]]
    if header == "auto":
        has_header = (isinstance(label, str) and label in first) or not any(
            _is_number(c) for c in first
        )
    elif isinstance(header, bool):
        has_header = header
    else:
        raise ValueError(f"header must be True, False or 'auto', got {header!r}")
    if has_header:
        columns, rows = first, rows[1:]
    else:
        columns = [str(i) for i in range(len(first))]
        if isinstance(label, str) and label not in columns:
            raise ValueError(
                f"{path}: label column {label!r} not found: the file has no header row, so "
                f"columns are indices 0..{len(first) - 1}; pass label as an int index"
            )
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    li = _resolve_label(label, columns, str(path))
    if len(columns) < 2:
        raise ValueError(f"{path}: need at least one feature column besides the label")
    feat_cols = [j for j in range(len(columns)) if j != li]
    X = np.empty((len(rows), len(feat_cols)), dtype=np.float64)
    raw_labels = []
    for r, (line, row) in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"{path}: row {line} has {len(row)} fields, expected {len(columns)}")
        for k, j in enumerate(feat_cols):
            cell = row[j].strip()
            try:
                X[r, k] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: non-numeric value {cell!r} in feature column {columns[j]!r} "
                    f"at row {line}"
                ) from None
        raw_labels.append(row[li].strip())
        if not raw_labels[-1]:
            raise ValueError(f"{path}: line {line}: empty label in column {columns[li]!r}")
    names = [columns[j] for j in feat_cols]
    lines = [line for line, _ in rows]
    _check_finite(X, names, str(path), lines, dtype, [j + 1 for j in feat_cols])
    y, n_classes, classes = encode_labels(
        np.array(raw_labels, dtype=str), task, f"{path}: label column {columns[li]!r}", dtype, lines
    )
    return Dataset(
        X=X.astype(dtype),
        y=y,
        name=name or path.stem,
        n_classes=n_classes,
        feature_names=tuple(names) if has_header else None,
        classes=classes,
    )


def _numbered_rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, row) for non-blank rows."""
    for row in reader:
        if any(cell.strip() for cell in row):
            yield reader.line_num, row


def load_npz(
    path: str | os.PathLike,
    label: str | int | None = None,
    task: str = "auto",
    dtype: np.dtype | type = np.float32,
    name: str | None = None,
) -> Dataset:
    """Load an ``.npz`` holding either arrays ``X`` and ``y``, or one 2-D array with a label column.

    In the second form ``label`` is a column index, or a name looked up in an optional 1-D string
    array stored under ``columns``; ``label`` may also name the key that holds ``y``.
    Read with ``allow_pickle=False``: object arrays are rejected.
    """
    path = Path(path)
    dtype = _check_dtype_task(dtype, task)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise ValueError(f"{path}: cannot read without pickle ({exc})") from exc
    if not arrays:
        raise ValueError(f"{path}: empty archive, no arrays")
    columns = arrays.pop("columns", None)
    if columns is None:
        columns = arrays.pop("feature_names", None)
    if "X" in arrays and "y" in arrays and label in (None, "y"):
        X, y_raw, names = arrays["X"], arrays["y"], None
        if columns is not None and len(columns) == np.shape(X)[-1]:
            names = [str(c) for c in columns]
    elif isinstance(label, str) and label in arrays and len(arrays) == 2:
        y_raw = arrays.pop(label)
        (X,) = arrays.values()
        names = [str(c) for c in columns] if columns is not None else None
    elif len(arrays) == 1:
        (data,) = arrays.values()
        if data.ndim != 2:
            raise ValueError(f"{path}: single array must be 2-D (rows x columns), got {data.shape}")
        cols = [str(c) for c in columns] if columns is not None else None
        if cols is not None and len(cols) != data.shape[1]:
            raise ValueError(f"{path}: 'columns' has {len(cols)} names for {data.shape[1]} columns")
        if label is None:
            raise ValueError(
                f"{path}: holds one 2-D array; pass label= as a column index"
                + (f" or one of: {', '.join(map(repr, cols))}" if cols else "")
            )
        li = _resolve_label(label, cols or [str(i) for i in range(data.shape[1])], str(path))
        y_raw = data[:, li]
        X = np.delete(data, li, axis=1)
        names = [c for j, c in enumerate(cols) if j != li] if cols else None
    else:
        raise ValueError(
            f"{path}: expected keys 'X' and 'y', or a single 2-D array with label=<column>; "
            f"found keys: {', '.join(repr(k) for k in arrays)}"
            + (f" (label={label!r} does not match)" if label is not None else "")
        )
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: features must be numeric, got dtype {X.dtype}")
    if len(X) == 0:
        raise ValueError(f"{path}: no samples")
    if len(X) != len(y_raw):
        raise ValueError(f"{path}: X has {len(X)} rows but y has {len(y_raw)}")
    names_or_idx = names or [str(j) for j in range(X.shape[1])]
    X = X.astype(np.float64)
    _check_finite(X, names_or_idx, str(path), dtype=dtype)
    y, n_classes, classes = encode_labels(np.asarray(y_raw), task, f"{path}: labels", dtype)
    return Dataset(
        X=X.astype(dtype),
        y=y,
        name=name or path.stem,
        n_classes=n_classes,
        feature_names=tuple(names) if names else None,
        classes=classes,
    )
