"""StableHLO through ``jax.export``, serialized with the weights inside and the
batch size symbolic, so any runtime with XLA (or a later JAX, within jax.export's compatibility
window) runs it without this package. Export always uses the portable kernels (XLA's own
convolutions, ``conv_impl="reference"``), never the CPU runtime's oneDNN custom calls."""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax import export as jax_export

from lightnets_jax.export.program import eval_program


def to_stablehlo(model, variables: dict[str, Any], batch: int | None = None) -> bytes:
    """The eval-mode model as a serialized ``jax.export.Exported`` taking float32 inputs of
    ``models.example_shape(model)`` with ``batch`` rows (None: any batch size)."""
    forward, spec = eval_program(model, variables, batch)
    return bytes(jax_export.export(jax.jit(forward))(spec).serialize())


def from_stablehlo(blob: bytes) -> Callable[[jax.Array], jax.Array]:
    """The exported model as a function of its input batch (trusted input only: it runs what it holds)."""
    return jax_export.deserialize(bytearray(blob)).call
