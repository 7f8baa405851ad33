"""Fuzzing the checkpoint loader: mutated files give a CheckpointError or load correct data.

Two kinds of mutation. Raw ones (bit flips, truncation, edited header bytes, metadata edited
without fixing the checksums) must be refused, or load exactly what was saved. Re-signed ones
(a metadata value, a tensor's dtype, shape, name or values changed and the checksums
recomputed, as a buggy writer or a hand-edited file would) test the value checks: each must be
refused, or load a state that is sound (finite, in range, trainable). In every case nothing but
a CheckpointError escapes, through `dc.load`, `load_into` and `load_trainer`, and a refused
`load_into` leaves the model, optimizer and scheduler unchanged.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ckpt_tools import raw, rewrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepcore as dc
from deepcore import _checkpoint_format as fmt
from deepcore.errors import CheckpointError, NonFiniteError
from deepcore.io import load_into
from deepcore.train import Trainer, load_trainer

_DATA = dc.data.make_blobs(n_samples=24, n_features=4, n_classes=3, seed=0)

#: optimizer factory, scheduler factory, per base file
_BASES = {
    "adam": (
        lambda p: dc.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-4),
        lambda o: dc.optim.CosineAnnealingLR(o, T_max=5),
    ),
    "sgd": (
        lambda p: dc.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda o: dc.optim.StepLR(o, step_size=2, gamma=0.5),
    ),
    "rmsprop": (
        lambda p: dc.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
        lambda o: dc.optim.WarmupCosineLR(o, warmup=1, total=4),
    ),
}


def _objects(kind: str) -> tuple[dc.nn.Module, dc.optim.Optimizer, Any]:
    make_opt, make_sched = _BASES[kind]
    model = dc.nn.mlp([4, 5, 3], dropout=0.1)
    opt = make_opt(model.parameters())
    return model, opt, make_sched(opt)


@functools.cache
def _base_bytes(kind: str) -> bytes:
    dc.seed(0)
    model, opt, sched = _objects(kind)
    trainer = Trainer(model, "cross_entropy", opt, scheduler=sched, seed=1)
    trainer.fit(_DATA, epochs=2, batch_size=8, progress=False)
    return fmt.encode(*_encodable(trainer))


def _encodable(trainer: Trainer) -> tuple[dict, dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = dc.save(Path(d) / "b.safetensors", trainer=trainer, extra={"run": "fuzz"})
        tensors, meta = raw(p)
    return tensors, meta


def _base(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.safetensors"
    p.unlink(missing_ok=True)  # a new file: rewriting one in place can cost an ext4 flush
    p.write_bytes(_base_bytes(kind))
    return p


def _snapshot(model: Any, opt: Any, sched: Any) -> Any:
    return (
        {k: v.copy() for k, v in model.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(sched.state_dict()),
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _sound(ck: Any) -> None:
    """What a load that succeeded must give: finite weights and state, sane counters, a
    finite non-negative learning rate, a scheduler that computes one."""
    for name, w in ck.model.state_dict().items():
        assert np.isfinite(w).all(), name
    assert isinstance(ck.epoch, int) and ck.epoch >= 0
    assert isinstance(ck.step, int) and ck.step >= 0
    if ck.optimizer is not None:
        for i, st_ in ck.optimizer.state_dict()["state"].items():
            for k, v in st_.items():
                if isinstance(v, np.ndarray):
                    assert np.isfinite(v).all(), (i, k)
                    if k in ("exp_avg_sq", "max_exp_avg_sq", "square_avg"):
                        assert (v >= 0).all(), (i, k)
                else:
                    assert isinstance(v, int) and v >= 1, (i, k, v)
        for g in ck.optimizer.param_groups:
            assert math.isfinite(g["lr"]) and g["lr"] >= 0
    if ck.scheduler is not None:
        for lr in ck.scheduler.get_lr():
            assert math.isfinite(lr) and lr >= 0


def _try_everything(path: Path, kind: str, original: Any | None, train: bool = True) -> None:
    """Load `path` every way; only CheckpointError may escape. `original` (the unmutated
    checkpoint's loaded state) means the file must load exactly that or be refused."""
    refusal = ""
    try:
        ck = dc.load(path)
    except CheckpointError as exc:
        ck, refusal = None, str(exc)
    if ck is not None:
        _sound(ck)
        if original is not None:
            assert _same(_state(ck), original), "a mutated file loaded different data silently"
        try:
            trainer = load_trainer(path)
        except CheckpointError as exc:
            assert any(w in str(exc) for w in ("saved without a trainer", "unknown loss")), exc
        else:
            try:
                if train:
                    trainer.fit(_DATA, epochs=1, batch_size=24, progress=False)
            except NonFiniteError:
                pass  # a sound checkpoint may still hold a learning rate that diverges
    model, opt, sched = _objects(kind)
    before = _snapshot(model, opt, sched)
    try:
        load_into(path, model, opt, sched, restore_rng=False)
    except CheckpointError:
        assert _same(_snapshot(model, opt, sched), before), "load_into failed after writing"
    else:  # a model without a config is the one thing only load_into can load
        assert ck is not None or "has no config" in refusal, "load_into took what load refused"


def _state(ck: Any) -> Any:
    return (
        ck.model.state_dict(),
        ck.optimizer.state_dict() if ck.optimizer else None,
        ck.scheduler.state_dict() if ck.scheduler else None,
        ck.epoch,
        ck.step,
        ck.metadata,
        ck.trainer,
        ck.data_rng_state,
    )


@functools.cache
def _original(kind: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "o.safetensors"
        p.write_bytes(_base_bytes(kind))
        return _state(dc.load(p, restore_rng=False))


def test_unmutated_bases_load_and_are_sound(tmp_path: Path) -> None:
    for kind in _BASES:
        _try_everything(_base(tmp_path, kind), kind, _original(kind))


# ------------------------------------------------------------------ raw mutations
_FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_FUZZ
@given(kind=st.sampled_from(sorted(_BASES)), data=st.data())
def test_bit_flips_anywhere_are_refused(tmp_path: Path, kind: str, data: Any) -> None:
    blob = bytearray(_base_bytes(kind))
    n_header = 8 + int.from_bytes(blob[:8], "little")
    # half the flips in the header (metadata, dtypes, shapes, offsets), half in tensor data
    where = data.draw(st.sampled_from(["header", "data"]))
    lo, hi = (0, n_header) if where == "header" else (n_header, len(blob))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(lo, hi - 1))
        blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(blob))
    _try_everything(p, kind, _original(kind))


def test_every_single_bit_flip_in_tensor_data_is_detected(tmp_path: Path) -> None:
    """Exhaustive over one tensor's bytes: a CRC-32 detects every single-bit error."""
    blob = _base_bytes("sgd")
    n_header = 8 + int.from_bytes(blob[:8], "little")
    p = tmp_path / "flip.safetensors"
    for pos in range(n_header, min(len(blob), n_header + 48)):
        for bit in (0, 5, 7):
            b = bytearray(blob)
            b[pos] ^= 1 << bit
            p.write_bytes(bytes(b))
            with pytest.raises(CheckpointError, match="checksum mismatch"):
                dc.load(p)


@_FUZZ
@given(kind=st.sampled_from(sorted(_BASES)), cut=st.floats(0.0, 0.9999))
def test_truncation_is_refused(tmp_path: Path, kind: str, cut: float) -> None:
    blob = _base_bytes(kind)
    p = tmp_path / "cut.safetensors"
    p.write_bytes(blob[: int(len(blob) * cut)])
    with pytest.raises(CheckpointError):
        dc.load(p)


def _header(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@_FUZZ
@given(kind=st.sampled_from(sorted(_BASES)), data=st.data())
def test_edited_tensor_entries_are_refused(tmp_path: Path, kind: str, data: Any) -> None:
    """dtype, shape and data_offsets edited in the header (checksums not fixed)."""
    header, body = _header(_base_bytes(kind))
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    entry = header[name]
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "rename"]))
    if field == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["I32", "U32", "F64", "F16", "BF16", "X", 3]))
    elif field == "shape":
        entry["shape"] = data.draw(
            st.one_of(
                st.just(entry["shape"][::-1]),
                st.lists(st.integers(-2, 70000), max_size=4),
                st.just([1, *entry["shape"]]),
                st.just("big"),
            )
        )
    elif field == "data_offsets":
        b, e = entry["data_offsets"]
        delta = data.draw(st.integers(-16, 16).filter(bool))
        entry["data_offsets"] = data.draw(
            st.sampled_from([[b + delta, e + delta], [b, e + delta], [b + delta, e], [e, b]])
        )
    elif field == "drop":
        del header[name]
    else:
        header[name + "x"] = header.pop(name)
    p = tmp_path / "edit.safetensors"
    p.write_bytes(_with_header(header, body))
    _try_everything(p, kind, _original(kind))


# ------------------------------------------------------------------ re-signed metadata values
def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value (lists: the first three items)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += _paths(v, (*prefix, i))
    return out


def _set(info: dict, path: tuple, value: Any, action: str) -> None:
    parent = info
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif action == "rename" and isinstance(parent, dict):
        parent[f"{last}_"] = parent.pop(last)


_ODD = [
    float("nan"),
    float("inf"),
    -float("inf"),
    "NaN",
    "null",
    "1e400",
    None,
    -1,
    0,
    1,
    1.5,
    -0.5,
    True,
    False,
    [],
    {},
    "x",
    10**30,
    -(10**30),
    2**63,
    [1, 2],
    {"type": "Linear", "in_features": 16384, "out_features": 16384},
]


def _meta_fields(kind: str) -> list[tuple]:
    _, meta = raw_from_bytes(_base_bytes(kind))
    plain = ("format", "format_version", "deepcore_version", fmt.CHECKSUM)
    info = {k: json.loads(v) for k, v in meta.items() if k not in plain}
    return _paths(info)


def raw_from_bytes(blob: bytes) -> tuple[dict, dict]:
    header, _ = _header(blob)
    return header, header["__metadata__"]


@_FUZZ
@given(kind=st.sampled_from(sorted(_BASES)), data=st.data())
def test_resigned_metadata_values_are_refused_or_sound(
    tmp_path: Path, kind: str, data: Any
) -> None:
    path = data.draw(st.sampled_from(_meta_fields(kind)))
    action = data.draw(st.sampled_from(["set", "set", "set", "delete", "rename"]))
    value = data.draw(st.sampled_from(_ODD))
    p = _base(tmp_path, kind)
    rewrite(p, lambda t, info: _set(info, path, value, action))
    _try_everything(p, kind, None)


def test_resigned_metadata_corpus(tmp_path: Path) -> None:
    """Deterministic sweep: every metadata field of the Adam checkpoint set to each odd value
    the issue lists (plus a few), each refused or sound."""
    kind, count = "adam", 0
    odd = [float("nan"), "NaN", "1e400", -1, 1.5, True, None]
    for path in _meta_fields(kind):
        for value in odd:
            p = _base(tmp_path, kind)
            rewrite(p, lambda t, info, path=path, value=value: _set(info, path, value, "set"))
            _try_everything(p, kind, None, train=False)
            count += 1
    assert count > 250


@pytest.mark.parametrize("field", ["extra", "model", "optimizer", "trainer"])
def test_deeply_nested_metadata_is_a_checkpoint_error(tmp_path: Path, field: str) -> None:
    from ckpt_tools import raw as read_raw

    p = _base(tmp_path, "adam")
    tensors, meta = read_raw(p)
    meta[field] = "[" * 100_000 + "]" * 100_000
    for resign in (False, True):
        if resign:
            meta.pop(fmt.CHECKSUM)
        p.write_bytes(fmt.encode(tensors, meta) if resign else _raw_encode(tensors, meta))
        _try_everything(p, "adam", None)


def _raw_encode(tensors: dict, meta: dict) -> bytes:
    """Like fmt.encode but keeping the given (now stale) checksum."""
    blob = fmt.encode(tensors, meta)
    header, body = _header(blob)
    header["__metadata__"][fmt.CHECKSUM] = meta.get(fmt.CHECKSUM, "")
    return _with_header(header, body)


# ------------------------------------------------------------------ re-signed tensors
def _tensor_edit(kind: str, data: Any) -> Any:
    names = sorted(raw_from_bytes(_base_bytes(kind))[0])
    names.remove("__metadata__")
    name = data.draw(st.sampled_from(names))
    what = data.draw(
        st.sampled_from(["nan", "inf", "negative", "i32", "u32", "f64", "shape", "rename", "drop"])
    )

    if what == "negative" and not name.endswith(("exp_avg_sq", "square_avg")):
        what = "nan"  # negative weights or momenta are fine; squares' running means are not

    def edit(tensors: dict, info: dict) -> None:
        a = tensors[name]
        if what in ("nan", "inf"):
            a = a.copy()
            a.reshape(-1)[0] = np.nan if what == "nan" else np.inf
        elif what == "negative":
            a = -np.abs(a) - 1
        elif what == "i32":
            a = a.view(np.int32)
        elif what == "u32":
            a = a.view(np.uint32)
        elif what == "f64":
            a = a.astype(np.float64)
        elif what == "shape":
            a = a.reshape(-1)[:-1] if a.size > 1 else np.zeros(2, a.dtype)
        elif what == "rename":
            tensors[name + "_"] = tensors.pop(name)
            return
        elif what == "drop":
            del tensors[name]
            return
        tensors[name] = a

    edit.valid = what == "drop" and name.endswith("momentum_buffer") and kind == "sgd"
    return edit


@_FUZZ
@given(kind=st.sampled_from(sorted(_BASES)), data=st.data())
def test_resigned_tensor_edits_are_refused(tmp_path: Path, kind: str, data: Any) -> None:
    p = _base(tmp_path, kind)
    edit = _tensor_edit(kind, data)
    rewrite(p, edit)
    if edit.valid:  # SGD's momentum buffer of one parameter dropped: that one never stepped
        _try_everything(p, kind, None)
        return
    with pytest.raises(CheckpointError) as info:
        dc.load(p)
    assert str(p) in str(info.value)
    _try_everything(p, kind, None)
