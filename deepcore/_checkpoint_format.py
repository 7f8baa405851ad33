"""The checkpoint file: safetensors bytes, written atomically from the arrays, read with checks.

A checkpoint is one safetensors file: an 8-byte little-endian header length, a JSON header
(tensor dtypes, shapes and byte ranges, plus ``__metadata__``: str -> str) and the raw
little-endian tensor data. Nothing is ever unpickled. The layout is written and read here, not
through the safetensors package, so that neither side holds a second full copy of the data: the
writer streams each array's own buffer to disk, the reader reads each tensor straight into the
array that is returned. Files stay plain safetensors (tests read them with safetensors and
PyTorch).

Format 2 adds ``__metadata__["checksum"]``: a CRC-32 of every other metadata field and one per
tensor (over its name, dtype, shape and bytes), so a flipped bit anywhere is refused.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn

import numpy as np

from ._atomic import atomic_write
from .errors import CheckpointError

#: Value of the "format" metadata key that marks a deepcore checkpoint.
FORMAT = "deepcore.checkpoint"
#: Bumped when the layout changes incompatibly; readers refuse newer versions.
#: 1: no checksums (still read); 2: the "checksum" metadata field.
FORMAT_VERSION = 2
CHECKSUM = "checksum"
#: A header larger than this is refused before it is read (safetensors' own limit).
MAX_HEADER = 100 * 1024 * 1024
_MAX_NDIM = 8
#: safetensors dtype codes this reader maps to NumPy (little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_CODES = {dt.str.lstrip("<|=").lower(): code for code, dt in DTYPES.items()}


def dtype_code(dtype: np.dtype) -> str:
    """The safetensors code of a NumPy dtype (TypeError for one safetensors cannot hold)."""
    key = np.dtype(dtype).str.lstrip("<>|=").lower()
    if key not in _CODES:
        raise TypeError(f"cannot store a {np.dtype(dtype)} array in a checkpoint")
    return _CODES[key]


# ---------------------------------------------------------------------------------------- write
def _tensor_crc(name: str, code: str, shape: tuple[int, ...], data: Any) -> int:
    crc = zlib.crc32(f"{name}|{code}|{list(shape)}".encode())
    return zlib.crc32(data, crc) if len(data) else crc


def metadata_crc(metadata: Mapping[str, str]) -> int:
    """CRC-32 of every metadata field but the checksum itself, in key order."""
    items = sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)
    return zlib.crc32(json.dumps(items).encode())


def _bytes_view(a: np.ndarray) -> memoryview:
    return memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")


def encode_header(tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and JSON header for `tensors` (C-contiguous little-endian host arrays),
    with the checksum field added to `metadata`."""
    entries: dict[str, Any] = {}
    crcs: dict[str, int] = {}
    offset = 0
    for name, a in tensors.items():
        code = dtype_code(a.dtype)
        entries[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, 0]}
        offset += a.nbytes
        entries[name]["data_offsets"][1] = offset
        crcs[name] = _tensor_crc(name, code, a.shape, _bytes_view(a))
    meta = dict(metadata)
    meta.pop(CHECKSUM, None)
    meta[CHECKSUM] = json.dumps({"metadata": metadata_crc(meta), "tensors": crcs})
    text = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text


def host_layout(a: np.ndarray) -> np.ndarray:
    """`a` as a C-contiguous little-endian array (no copy when it already is one)."""
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def write(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a checkpoint atomically from the arrays themselves (no serialised copy)."""
    arrays = {k: host_layout(v) for k, v in tensors.items()}
    header = encode_header(arrays, metadata)  # every check and checksum before the disk
    atomic_write(path, [header, *(_bytes_view(a) for a in arrays.values())])


def encode(tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The whole file as bytes (tests and small files; `write` streams instead)."""
    arrays = {k: host_layout(v) for k, v in tensors.items()}
    return b"".join([encode_header(arrays, metadata), *(_bytes_view(a) for a in arrays.values())])


# ---------------------------------------------------------------------------------------- read
def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(b in b"\t\n\r" or 32 <= b < 127 for b in head)


def _explain_unreadable(path: Path, head: bytes, size: int, n: int) -> NoReturn:
    """Raise the CheckpointError that best says why the file is not a safetensors file."""
    if size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes), not a checkpoint")
    if head[:1] == b"\x80" and len(head) > 2 and 2 <= head[1] <= 5 and head[2] != 0:
        raise CheckpointError(
            f"{path}: is a Python pickle, not a safetensors checkpoint; deepcore never loads "
            f"pickles (they can run code)"
        )
    if _looks_like_text(head[:64]):
        raise CheckpointError(f"{path}: is a text file, not a safetensors checkpoint")
    if size < 8:
        raise CheckpointError(f"{path}: only {size} bytes; truncated or not a checkpoint")
    if n > size - 8:
        raise CheckpointError(
            f"{path}: truncated or not a safetensors file (header claims {n} bytes, "
            f"the file has {size})"
        )
    raise CheckpointError(f"{path}: corrupt or not a safetensors file (no JSON header)")


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _read_exact(f: IO[bytes], view: memoryview, path: Path) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CheckpointError(f"{path}: truncated while reading (file changed under us?)")
        got += n


def _header(path: Path, f: IO[bytes]) -> tuple[dict[str, Any], dict[str, str], int, int]:
    """(tensor entries, metadata, header length, file size), every structural fact checked."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(64)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not 0 <= n <= size - 8 or head[8:9] != b"{":
        _explain_unreadable(path, head, size, n)
    if n > MAX_HEADER:
        raise CheckpointError(f"{path}: header of {n} bytes is larger than any checkpoint's")
    f.seek(8)
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file but not a deepcore checkpoint (its metadata has no "
            f"format={FORMAT!r}); read plain weights with safetensors.numpy.load_file and "
            f"Module.load_state_dict"
        )
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise CheckpointError(f"{path}: metadata field {bad[0]!r} is not a string")
    version = _check_version(path, meta)
    _check_entries(path, header, size - 8 - n)
    if version >= 2:
        _check_metadata_crc(path, meta)
    return header, meta, n, size


def _check_version(path: Path, meta: dict[str, str]) -> int:
    text = meta.get("format_version", "")
    if not (text.isascii() and text.isdigit() and len(text) < 6):
        raise CheckpointError(f"{path}: missing or bad format_version in metadata ({text!r})")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this deepcore reads "
            f"({FORMAT_VERSION}); upgrade deepcore"
        )
    if version < 1:
        raise CheckpointError(f"{path}: bad format_version {version} in metadata")
    return version


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_entries(path: Path, header: dict[str, Any], available: int) -> None:
    """Each tensor entry is well formed, the byte ranges tile the data exactly, and they lie
    inside the file (catches truncation and forged offsets before any data is read)."""
    spans = []
    for name, info in header.items():
        where = f"{path}: header entry for tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where} is corrupt (needs dtype, shape and data_offsets)")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {code!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise CheckpointError(f"{where}: bad shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
        nbytes = int(np.prod(shape, dtype=object)) * DTYPES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(
                f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, "
                f"dtype {code} and shape {shape} need {nbytes}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at byte {begin} of the data, expected {end} "
                f"(overlapping or gapped data_offsets)"
            )
        end = stop
    if end > available:
        raise CheckpointError(
            f"{path}: truncated: the header needs {end} bytes of tensor data, the file holds "
            f"{available}"
        )
    if end < available:
        raise CheckpointError(
            f"{path}: corrupt: {available - end} bytes after the last tensor's data"
        )


def _checksums(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    try:
        sums = json.loads(meta.get(CHECKSUM, ""))
    except ValueError:
        sums = None
    if not (
        isinstance(sums, dict)
        and _is_int(sums.get("metadata"))
        and isinstance(sums.get("tensors"), dict)
        and all(_is_int(v) for v in sums["tensors"].values())
    ):
        raise CheckpointError(f"{path}: metadata field 'checksum' is missing or corrupt")
    return sums


def _check_metadata_crc(path: Path, meta: dict[str, str]) -> None:
    if _checksums(path, meta)["metadata"] != metadata_crc(meta):
        raise CheckpointError(
            f"{path}: metadata checksum mismatch: the header was changed or corrupted after saving"
        )


def read_metadata(path: Path) -> dict[str, str]:
    """The checked string metadata of the checkpoint at `path`, reading only its header."""
    with _open(path) as f:
        return _header(path, f)[1]


class Spec(NamedTuple):
    """A tensor as the header describes it (its data not read yet)."""

    shape: tuple[int, ...]
    dtype: np.dtype


class Reader:
    """An open checkpoint whose header is checked; tensors are read one at a time, each straight
    into its destination array, and checked against its checksum as it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = _open(path)
        try:
            self.entries, self.meta, n, _ = _header(path, self._f)
            self._base = 8 + n
            self._sums = (
                _checksums(path, self.meta)["tensors"]
                if int(self.meta["format_version"]) >= 2
                else None
            )
            if self._sums is not None and set(self._sums) != set(self.entries):
                raise CheckpointError(
                    f"{path}: the checksums name tensors "
                    f"{sorted(set(self._sums) ^ set(self.entries))} that the header does not "
                    f"(or the other way round)"
                )
        except BaseException:
            self._f.close()
            raise
        #: name -> Spec, in the order the data lies in the file
        self.specs = {
            name: Spec(tuple(info["shape"]), DTYPES[info["dtype"]])
            for name, info in sorted(self.entries.items(), key=lambda kv: kv[1]["data_offsets"])
        }

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Tensor `name`, read into `out` (a C-contiguous array of its shape and dtype) or a
        new array; CheckpointError if its checksum does not match."""
        info, spec = self.entries[name], self.specs[name]
        a = np.empty(spec.shape, spec.dtype) if out is None else out
        if a.shape != spec.shape or a.dtype != spec.dtype or not a.flags.c_contiguous:
            raise ValueError(f"read({name!r}): out must be a C-contiguous {spec}")
        view = _bytes_view(a)
        self._f.seek(self._base + info["data_offsets"][0])
        _read_exact(self._f, view, self.path)
        if self._sums is not None and self._sums[name] != _tensor_crc(
            name, info["dtype"], a.shape, view
        ):
            raise CheckpointError(
                f"{self.path}: checksum mismatch in tensor {name!r}: its data, dtype or shape "
                f"changed after saving (a flipped bit or an edited file)"
            )
        return a

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (host NumPy) and string metadata of the deepcore checkpoint at `path`, with
    structure, offsets and checksums checked."""
    with Reader(path) as r:
        return {name: r.read(name) for name in r.specs}, r.meta


def dumps(value: Any) -> str:
    """JSON text of `value` (NumPy scalars and tuples allowed)."""
    return json.dumps(value, default=_jsonable, allow_nan=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    raise TypeError(f"cannot store a {type(v).__name__} in checkpoint metadata")


def loads(path: Path, meta: dict[str, str], key: str, default: Any = None) -> Any:
    """The JSON value of metadata field `key` (default when absent)."""
    text = meta.get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path}: metadata field {key!r} is not valid JSON ({str(exc)[:80]})"
        ) from None
