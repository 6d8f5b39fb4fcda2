"""The plain XLA versions every fast kernel in ``ops`` must equal: convolutions (grouped and 3D
included) by ``lax.conv_general_dilated``, dense layers by ``@``. Portable to every backend; the
``"reference"`` implementation and the parity tests use them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_DIMENSIONS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def conv(x: Array, kernel: Array, strides: int, padding: int, groups: int = 1) -> Array:
    """Channels-last convolution, zero-padded by ``padding`` on both sides of each spatial axis
    (PyTorch's padding, not Flax's "SAME")."""
    spatial = x.ndim - 2
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides,) * spatial,
        padding=[(padding, padding)] * spatial,
        dimension_numbers=_DIMENSIONS[spatial],
        feature_group_count=groups,
    )


def fold_depth(x: Array) -> Array:
    """(N, D, H, W, C) -> (N, H, W, C * D), channel c * D + d: PyTorch's ``reshape(N, C * D, H, W)``
    of the (N, C, D, H, W) tensor, channels last."""
    n, depth, h, w, c = x.shape
    return jnp.transpose(x, (0, 2, 3, 4, 1)).reshape(n, h, w, c * depth)


def dense(x: Array, kernel: Array, bias: Array) -> Array:
    return x @ kernel + bias
