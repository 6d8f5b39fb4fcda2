"""Per-layer output shapes, parameters and multiply-adds of a model, for ``lightnets summary``.

Layers are recorded by intercepting the model's own layer calls under ``jax.eval_shape``, so no
FLOP is spent and the table always reflects the module code. For each depthwise separable pair
(a depthwise conv followed by a 1×1 conv) the table gives its cost against the standard conv it
replaces, which is the note's 1/N + 1/Dk² exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightnets_jax import models
from lightnets_jax.models.layers import BatchNorm, Conv, Dense, DepthwiseConv


@dataclasses.dataclass
class Layer:
    path: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    separable_ratio: float | None = None  # (depthwise + pointwise) / standard conv MACs
    note_formula: float | None = None  # 1/N + 1/Dk^2


@dataclasses.dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]
    layers: list[Layer]
    params: int
    macs: int

    def to_json(self) -> str:
        return json.dumps(
            {"model": self.model, "input_shape": list(self.input_shape), "params": self.params, "macs": self.macs,
             "layers": len(self.layers)}
        )

    def to_table(self) -> str:
        header = f"{'layer':<28} {'kind':<10} {'output':<20} {'params':>10} {'MACs':>14}  separable/standard (1/N+1/Dk²)"
        lines = [f"{self.model}  input {self.input_shape}", header, "-" * len(header)]
        for layer in self.layers:
            ratio = ""
            if layer.separable_ratio is not None:
                ratio = f"{layer.separable_ratio:.4f} ({layer.note_formula:.4f})"
            shape = "x".join(map(str, layer.output_shape[1:]))
            lines.append(f"{layer.path:<28} {layer.kind:<10} {shape:<20} {layer.params:>10,} {layer.macs:>14,}  {ratio}")
        lines.append("-" * len(header))
        lines.append(f"{'total':<60} {self.params:>10,} {self.macs:>14,}")
        return "\n".join(lines)


_KINDS = {DepthwiseConv: "depthwise", Conv: "conv", Dense: "dense", BatchNorm: "batchnorm"}


def summarize(name: str, input_shape: tuple[int, ...] | None = None, **options: Any) -> Summary:
    """Layer table for one example (batch 1) of ``name`` built with ``options``."""
    return summarize_model(models.create(name, **options), input_shape, name)


def summarize_model(model: nn.Module, input_shape: tuple[int, ...] | None = None, name: str | None = None) -> Summary:
    """Layer table for one example (batch 1) of a built model."""
    input_shape = tuple(input_shape or models.example_shape(model))
    records: list[tuple[str, str, tuple]] = []  # (module path, kind, output shape)

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        kind = _KINDS.get(type(context.module))
        if kind is not None and context.method_name == "__call__":
            records.append(("/".join(context.module.path), kind, out.shape))
        return out

    def run():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)

    variables = jax.eval_shape(run)
    layers = []
    for path, kind, out_shape in records:
        if any(l.path == path for l in layers):  # init and apply both call; keep the first
            continue
        subtree = variables["params"]
        for part in path.split("/"):
            subtree = subtree[part]
        params = sum(math.prod(v.shape) for v in jax.tree.leaves(subtree))
        layers.append(Layer(path, kind, tuple(out_shape), params, _macs(kind, out_shape, subtree)))
    _annotate_separable(layers)
    total_params = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
    return Summary(name or type(model).__name__, input_shape, layers, total_params, sum(l.macs for l in layers))


def _macs(kind: str, out_shape, params) -> int:
    # Every output position of a conv, depthwise conv or dense layer takes one multiply-add per
    # kernel entry (a fold_depth conv's kernel spans the folded depth too); BatchNorm folds away.
    if kind == "batchnorm":
        return 0
    return math.prod(out_shape[:-1]) * math.prod(params["kernel"].shape)


def _annotate_separable(layers: list[Layer]) -> None:
    convs = [l for l in layers if l.kind in ("depthwise", "conv")]
    for depthwise, pointwise in zip(convs, convs[1:]):
        if depthwise.kind != "depthwise" or pointwise.kind != "conv":
            continue
        m, n = depthwise.output_shape[-1], pointwise.output_shape[-1]
        positions = math.prod(depthwise.output_shape[1:-1])
        dk2 = depthwise.macs // (positions * m)
        standard = dk2 * m * n * positions
        pointwise.separable_ratio = (depthwise.macs + pointwise.macs) / standard
        pointwise.note_formula = 1 / n + 1 / dk2
