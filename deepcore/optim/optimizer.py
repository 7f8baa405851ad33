"""Optimizer base: PyTorch's interface (param_groups, state, step, zero_grad, state_dict).

A subclass names its update `rule` (deepcore.backends.hyper.RULES) and exports, per parameter,
its state buffers and packed hyperparameters (`_prepare`); `step()` hands them all to the
backend's `multi_update`, one fused call for every parameter (like PyTorch's foreach/fused
paths), which the training-step engine reuses. State arrays live on their parameter's backend
and follow it: when a parameter has moved, its state moves at the next step (or at once with
`optimizer.to(backend)`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ..backends import Backend, get_backend, hyper
from ..backends.base import to_numpy as _to_host
from ..nn.module import Parameter, parameters_backend


class UpdateArgs(NamedTuple):
    """One update of every parameter with a gradient, as the backend's `multi_update` takes it."""

    rule: str
    params: list[Parameter]
    data: list[Any]
    grads: list[Any]
    state: list[list[Any]]
    hp: Any
    flags: Any
    #: Every row the same (one group, one step count): the rows' order does not matter.
    uniform: bool = False


class Optimizer:
    """Base class. `defaults` holds the hyperparameters every group starts from."""

    #: The update rule (hyper.RULES) this optimizer's `_prepare` packs for; None: `_update`.
    rule: str | None = None

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], defaults: dict):
        self.defaults = dict(defaults)
        self._validate(self.defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(param)
        items = list(params)
        if not items:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} takes deepcore Parameters, got {type(p).__name__}"
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        parameters_backend([*self._params(), *params])  # one optimizer, one backend
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter group contains a parameter more than once")
        merged = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._validate(merged)
        merged["params"] = params
        merged.setdefault("initial_lr", merged["lr"])
        self.param_groups.append(merged)

    def _validate(self, hp: dict[str, Any]) -> None:
        lr = hp.get("lr")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr >= 0.0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {lr!r} (need lr >= 0)")
        wd = hp.get("weight_decay", 0.0)
        if not wd >= 0.0:
            raise ValueError(f"{type(self).__name__}: invalid weight_decay {wd!r} (need >= 0)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every gradient: to None (PyTorch's default; buffers are kept for reuse) or,
        with set_to_none=False, to zeros in place."""
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad(set_to_none)

    def step(self) -> None:
        """One update of every parameter that has a gradient (one backend call)."""
        if self.rule is None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.requires_grad:
                        state = self.state.setdefault(id(p), {})
                        self._follow(p, state)
                        self._update(p, p.grad, state, group)
            return
        args = self.update_args()
        if args is not None:
            args.params[0].backend.multi_update(
                args.rule, args.data, args.grads, args.state, args.hp, args.flags
            )

    def update_args(self) -> UpdateArgs | None:
        """This step's kernel arguments: advances step counts and creates state buffers, so
        call it once per step, right before the update it describes (None: no gradients)."""
        fast = self.__dict__.get("_steady")
        if fast is not None:
            args = self._steady_args(fast)
            if args is not None:
                return args
        args = self._update_args()
        self._steady = self._steady_layout(args) if args is not None else None
        return args

    #: Whether the rule counts steps in each parameter's state["step"] (Adam, RMSprop).
    counts_steps = False

    def _steady_key(self, step: int) -> Any:
        """The row key of a step after the first, whose buffers all exist (see `_prepare`)."""
        return False

    def _steady_layout(self, args: UpdateArgs) -> Any:
        """What the steady state reuses: the parameters, their states and buffers, and per
        group its slice of the rows, a snapshot of its values and the row last written there."""
        where = {id(p): i for i, p in enumerate(args.params)}
        groups = []
        for g in self.param_groups:
            idx = [where[id(p)] for p in g["params"] if id(p) in where]
            if idx and idx != list(range(idx[0], idx[0] + len(idx))):
                return None  # not contiguous: no steady layout
            if idx:
                states = [self.state[id(args.params[i])] for i in idx]
                groups.append([g, idx[0], idx[-1] + 1, tuple(g.values()), states, None])
        p0 = args.params[0]
        return (args, groups, p0.backend, p0.data.dtype)

    def _steady_args(self, fast: Any) -> UpdateArgs | None:
        """update_args for a step like the last one (same live parameters, same buffers, same
        hyperparameters but the step count), without rebuilding anything; None otherwise."""
        args, groups, backend, dtype = fast
        params = args.params
        n = 0
        for g in self.param_groups:
            for p in g["params"]:
                if p._grad_live and p.requires_grad:
                    if n >= len(params) or params[n] is not p:
                        return None
                    n += 1
        p0 = params[0]
        if n != len(params) or p0.backend is not backend or p0.data.dtype != dtype:
            return None
        counts = self.counts_steps
        for g, lo, _, snap, states, _ in groups:
            if tuple(g.values()) != snap or self.state.get(id(params[lo])) is not states[0]:
                return None  # hyperparameters changed, or state replaced by hand
            if counts:
                s0 = states[0].get("step")
                if type(s0) is not int:
                    return None
                for st in states:
                    if st.get("step") != s0:
                        return None
        hp, flags = args.hp, args.flags
        for grp in groups:
            g, lo, hi, _, states, last = grp
            if counts:
                s1 = states[0]["step"] + 1
                for st in states:
                    st["step"] = s1
                h, f = self._pack(g, self._steady_key(s1))
            elif last is not None:
                continue  # the group equals its snapshot and the key is constant: same rows
            else:
                h, f = self._pack(g, self._steady_key(0))
            if last is None or h != last[0]:  # write what changed (a NumPy write costs ~1 us)
                hp[lo:hi, : len(h)] = h
            if last is None or f != last[1]:
                flags[lo:hi, : len(f)] = f
            grp[5] = (h, f)
        return UpdateArgs(args.rule, params, [p.data for p in params], [p._grad for p in params],
                          args.state, hp, flags, len(groups) == 1)  # fmt: skip

    def _update_args(self) -> UpdateArgs | None:
        """update_args built from scratch (the first step, or anything changed)."""
        params, packed, bufs = [], [], []
        rows: dict[Any, tuple] = {}  # (group, key) -> packed row, shared by a group's parameters
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if not (p._grad_live and p.requires_grad):
                    continue
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = {}
                elif state:
                    self._follow(p, state)
                key, buffers = self._prepare(p, state, group)
                row = rows.get((gi, key))
                if row is None:
                    row = rows[(gi, key)] = self._pack(group, key)
                params.append(p)
                packed.append(row)
                bufs.append(buffers)
        if not params:
            return None
        hp, flags = hyper.rows(packed, params[0].data.dtype)
        state = [list(b) for b in zip(*bufs, strict=True)]
        uniform = all(r is packed[0] for r in packed)
        return UpdateArgs(self.rule, params, [p.data for p in params], [p._grad for p in params],
                          state, hp, flags, uniform)  # fmt: skip

    def _prepare(self, p: Parameter, state: dict[str, Any], group: dict) -> tuple[Any, list]:
        """(row key, state buffers) of p for this step: the key selects `_pack`'s row (e.g.
        the step count); buffers follow hyper.STATE_KEYS[rule] (None where unused)."""
        raise NotImplementedError

    def _pack(self, group: dict, key: Any) -> tuple:
        """The packed hyperparameter row of `group` for row key `key`."""
        raise NotImplementedError

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict) -> None:
        raise NotImplementedError

    def _buffer(self, p: Parameter, state: dict[str, Any], key: str, zero: bool = True) -> Any:
        buf = state.get(key)
        if buf is None:
            make = p.backend.zeros if zero else p.backend.empty
            buf = state[key] = make(p.shape, p.dtype)
        return buf

    # ---- devices
    def _follow(self, p: Parameter, state: dict[str, Any]) -> None:
        """Move state arrays of `p` to p's backend and dtype if they are elsewhere (checked in
        full only when the parameter's backend or dtype changed: state is created, loaded and
        moved on the parameter's backend, and those paths forget what was checked)."""
        seen = self.__dict__.setdefault("_followed", {})
        key = (p.backend, p.data.dtype)
        if seen.get(id(p)) == key:
            return
        for k, v in state.items():
            if hasattr(v, "dtype") and hasattr(v, "shape") and v.ndim > 0:
                if not p.backend.owns(v) or v.dtype != p.data.dtype:  # dtype.name is slow
                    state[k] = p.backend.asarray(_to_host(v).astype(p.dtype))
        seen[id(p)] = key

    def to(self, backend: str | Backend) -> Optimizer:
        """Move all state to `backend` (parameters are moved by model.to)."""
        be = get_backend(backend)
        self.__dict__.pop("_followed", None)
        self.__dict__.pop("_steady", None)
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state.get(id(p))
                if st:
                    for k, v in st.items():
                        if hasattr(v, "shape") and v.ndim > 0:
                            st[k] = be.asarray(_to_host(v))
        return self

    # ---- state
    def _params(self) -> list[Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: {"state": {index: {name: host array or number}}, "param_groups":
        [{hyperparameters..., "params": [indices]}]}."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {}
        for pid, st in self.state.items():
            if pid in index:
                state[index[pid]] = {
                    k: (_to_host(v) if hasattr(v, "shape") and v.ndim > 0 else v)
                    for k, v in st.items()
                }
        groups = []
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state; shapes and group sizes must match."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        params = self._params()
        for mine, theirs in zip(self.param_groups, groups, strict=True):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError("optimizer state: a parameter group has a different size")
        new_state: dict[int, dict[str, Any]] = {}
        for key, st in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(f"optimizer state names parameter {i}, which does not exist")
            p = params[i]
            entry = {}
            for k, v in st.items():
                if hasattr(v, "shape") and len(getattr(v, "shape", ())) > 0:
                    host = _to_host(v)
                    if tuple(host.shape) != p.shape:
                        raise ValueError(
                            f"optimizer state {k!r} of parameter {i} has shape "
                            f"{tuple(host.shape)}, the parameter has {p.shape}"
                        )
                    entry[k] = p.backend.asarray(host.astype(p.dtype, copy=True))
                else:
                    entry[k] = _scalar(v)
            new_state[id(p)] = entry
        for mine, theirs in zip(self.param_groups, groups, strict=True):
            for k, v in theirs.items():
                if k != "params":
                    mine[k] = _scalar(v) if not isinstance(v, (tuple, list)) else tuple(v)
        self.state = new_state
        self.__dict__.pop("_followed", None)
        self.__dict__.pop("_steady", None)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k not in ("params", "initial_lr"):
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


def _scalar(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return v
