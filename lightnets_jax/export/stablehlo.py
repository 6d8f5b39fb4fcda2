"""StableHLO through ``jax.export``, serialized with the weights inside and the
batch size symbolic, so any runtime with XLA (or a later JAX, within jax.export's compatibility
window) runs it without this package. Export always uses the portable kernels (XLA's own
convolutions, ``conv_impl="reference"``), never the CPU runtime's oneDNN custom calls."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import export as jax_export

from lightnets_jax import models


def to_stablehlo(model, variables: dict[str, Any], batch: int | None = None) -> bytes:
    """The eval-mode model as a serialized ``jax.export.Exported`` taking float32 inputs of
    ``models.example_shape(model)`` with ``batch`` rows (None: any batch size)."""
    portable = model.clone(conv_impl="reference")
    size = jax_export.symbolic_shape("batch")[0] if batch is None else batch
    shape = (size, *models.example_shape(portable)[1:])
    forward = jax.jit(lambda x: portable.apply(variables, x, train=False))
    return bytes(jax_export.export(forward)(jax.ShapeDtypeStruct(shape, jnp.float32)).serialize())


def from_stablehlo(blob: bytes) -> Callable[[jax.Array], jax.Array]:
    """The exported model as a function of its input batch (trusted input only: it runs what it holds)."""
    return jax_export.deserialize(bytearray(blob)).call
