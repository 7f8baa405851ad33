"""Sequential: modules applied in order.

A Sequential that is a plain MLP (Linear, then optionally a fusable activation, then optionally
Dropout, repeated) runs its forward as one `backend.mlp_forward` call and its backward as one
`backend.mlp_backward` call: one compiled call each on the numba backend. Any other stack runs
module by module, a Linear followed by an elementwise activation still fused into one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BackendMismatchError
from ..precision import get_precision
from .activation import Activation, Dropout
from .linear import Linear
from .module import Module, Parameter, Recent


class MLPLayers:
    """A Sequential seen as an MLP: per layer its Linear, activation kind and Dropout."""

    __slots__ = ("linears", "acts", "dropouts", "alpha", "params")

    def __init__(self, linears: list[Linear], acts: list[str], dropouts: list[Dropout | None],
                 alpha: float) -> None:  # fmt: skip
        self.linears, self.acts, self.dropouts, self.alpha = linears, tuple(acts), dropouts, alpha
        self.params: list[Parameter] = [
            *(lin.weight for lin in linears),
            *(lin.bias for lin in linears if lin.bias is not None),
        ]

    def masks(self, n: int, training: bool) -> list[Any] | None:
        """This forward's dropout masks (None where a layer has none), or None for no masks."""
        if not training or not any(d is not None and d.p > 0.0 for d in self.dropouts):
            return None
        return [
            d.mask((n, lin.out_features)) if d is not None and d.p > 0.0 else None
            for lin, d in zip(self.linears, self.dropouts, strict=True)
        ]


def mlp_layers(layers: list[Module]) -> MLPLayers | None:
    """`layers` as an MLPLayers when they form a plain MLP, else None (whether its parameters
    are trainable is checked per use, by `Sequential.mlp`: it may change after this is cached)."""
    linears: list[Linear] = []
    acts: list[str] = []
    drops: list[Dropout | None] = []
    alphas = set()
    i = 0
    while i < len(layers):
        lin = layers[i]
        if type(lin) is not Linear:
            return None
        i += 1
        kind = "identity"
        if i < len(layers) and isinstance(layers[i], Activation) and layers[i].fusable:
            kind = layers[i].kind
            if kind == "leaky_relu":
                alphas.add(layers[i].alpha)
            i += 1
        drop = None
        if i < len(layers) and type(layers[i]) is Dropout:
            drop = layers[i]
            i += 1
        linears.append(lin)
        acts.append(kind)
        drops.append(drop)
    if not linears or len(alphas) > 1:
        return None
    return MLPLayers(linears, acts, drops, alphas.pop() if alphas else 0.01)


class Sequential(Module):
    """Modules applied in order (see the module docstring for how they are fused)."""

    def __init__(self, *layers: Module) -> None:
        first = layers[0] if layers else None
        super().__init__(
            backend=first.backend if first else None, dtype=first.dtype if first else None
        )
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential item {i} is a {type(layer).__name__}, not a Module")
            if layer.backend is not self.backend or layer.dtype != self.dtype:
                raise BackendMismatchError(
                    f"Sequential item {i} ({layer._label()}) is on {layer.backend.name}/"
                    f"{layer.dtype} but item 0 is on {self.backend.name}/{self.dtype}; "
                    f"build them under one backend or call .to() on the Sequential"
                )
            self._modules[str(i)] = layer
        self._plan: list[tuple[Module, Module | None]] = []
        self._tape: Any = None
        self._mlp: tuple[int, MLPLayers | None] | None = None
        #: False: run module by module even when the stack is a plain MLP.
        self.fuse = True

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def mlp(self) -> MLPLayers | None:
        """This stack as a plain MLP (what the fused stages and the step engine run), or None."""
        cached = self._mlp
        if cached is None or cached[0] != len(self._modules):
            cached = self._mlp = (len(self._modules), mlp_layers(list(self._modules.values())))
        spec = cached[1]
        if spec is not None and not all(p.requires_grad for p in spec.params):
            return None
        return spec

    def forward(self, x: Any) -> Any:
        Recent.backend = self.backend
        prec = get_precision() if self.dtype == "float32" else "float32"  # as Linear._half
        fused = self.fuse and prec in self.backend.fused_precisions  # else Linear by Linear
        spec = self.mlp() if fused else None
        if spec is not None:
            lins = spec.linears
            x = lins[0]._input(x, lins[0].in_features)
            out, self._tape = self.backend.mlp_forward(
                [lin.weight.data for lin in lins],
                [lin.bias.data if lin.bias is not None else None for lin in lins],
                spec.acts,
                x,
                alpha=spec.alpha,
                masks=spec.masks(x.shape[0], self.training),
                precision=prec,
            )
            self._plan = []
            return out
        self._tape = None
        layers = list(self._modules.values())
        plan: list[tuple[Module, Module | None]] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if (
                self.fuse
                and isinstance(layer, Linear)
                and isinstance(nxt, Activation)
                and nxt.fusable
            ):
                x = layer.forward(x, activation=nxt)
                plan.append((layer, nxt))
                i += 2
            else:
                x = layer.forward(x)
                plan.append((layer, None))
                i += 1
        self._plan = plan
        return x

    def backward(
        self,
        grad_output: Any,
        *,
        need_input_grad: bool = True,
        grad_ready: Callable[[list[Parameter]], None] | None = None,
    ) -> Any:
        """Backpropagate through every layer; returns d(loss)/d(input) unless told not to
        (the first Linear then skips its input-gradient GEMM). `grad_ready(params)` is called
        as each layer's parameter gradients are complete (last layer first)."""
        if self._tape is not None:
            return self._fused_backward(grad_output, need_input_grad, grad_ready)
        if not self._plan:
            raise RuntimeError("Sequential.backward called before a forward")
        g = grad_output
        last = len(self._plan) - 1
        for i, (layer, act) in enumerate(reversed(self._plan)):
            kw: dict[str, Any] = {}
            if act is not None:
                kw["activation"] = act
            if i == last and isinstance(layer, Linear):
                kw["need_input_grad"] = need_input_grad
            g = layer.backward(g, **kw)
            if grad_ready is not None:
                done = [p for p in layer.parameters() if p.requires_grad]
                if done:
                    grad_ready(done)
        return g

    def _fused_backward(self, grad_output: Any, need_input_grad: bool,
                        grad_ready: Any = None) -> Any:  # fmt: skip
        """One `backend.mlp_backward` call; gradients overwrite, or add to live ones."""
        spec = self.mlp()
        if spec is None:
            raise RuntimeError("Sequential.backward: the model changed since its forward")
        lins = spec.linears
        g = self._input(grad_output)
        accumulate = any(p._grad_live for p in spec.params)
        if accumulate:  # PyTorch semantics: add to every live gradient (zeros where none)
            wg = [lin.weight.grad_buffer() for lin in lins]
            bg = [lin.bias.grad_buffer() if lin.bias is not None else None for lin in lins]
        else:
            wg = [lin.weight.grad_target()[0] for lin in lins]
            bg = [lin.bias.grad_target()[0] if lin.bias is not None else None for lin in lins]
        on_layer = None
        if grad_ready is not None:

            def on_layer(l: int) -> None:
                lin = lins[l]
                lin.weight._grad_live = True
                done = [lin.weight]
                if lin.bias is not None:
                    lin.bias._grad_live = True
                    done.append(lin.bias)
                grad_ready(done)

        dx = self.backend.mlp_backward(
            self._tape, g, wg, bg, accumulate=accumulate, need_input_grad=need_input_grad,
            on_layer=on_layer,
        )  # fmt: skip
        for p in spec.params:
            p._grad_live = True
        return dx

    def append(self, layer: Module) -> Sequential:
        self._modules[str(len(self._modules))] = layer
        return self

    def config(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [m.config() for m in self]}

    def _clear_cache(self) -> None:
        super()._clear_cache()
        self._tape = None
