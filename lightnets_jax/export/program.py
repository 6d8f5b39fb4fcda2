"""The one program both formats export: the eval-mode model with the portable kernels, and its input."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import export as jax_export

from lightnets_jax import models


def eval_program(model, variables: dict[str, Any], batch: int | None) -> tuple[Callable, jax.ShapeDtypeStruct]:
    """(forward function, float32 input spec with ``batch`` rows; None: a symbolic batch)."""
    portable = model.clone(conv_impl="reference")
    size = jax_export.symbolic_shape("batch")[0] if batch is None else batch
    spec = jax.ShapeDtypeStruct((size, *models.example_shape(portable)[1:]), jnp.float32)
    return (lambda x: portable.apply(variables, x, train=False)), spec
