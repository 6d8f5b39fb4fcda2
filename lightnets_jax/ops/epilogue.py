"""What follows a convolution or matmul inside the fast kernels: a per-channel bias and an
activation, the plain version (``bias_activation``, what every fused kernel must equal) and
the backward through them that the kernels' custom VJPs share."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# The note's networks use ReLU; the paper's MobileNets and timm's weights ReLU6.
ACTIVATIONS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6}


def check_activation(activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of "
                         f"{', '.join(map(repr, sorted(ACTIVATIONS)))} or None")


def bias_activation(y: Array, bias: Array | None, activation: str | None) -> Array:
    """``activation(y + bias)``; no bias if None, no activation if None."""
    check_activation(activation)
    y = y if bias is None else y + bias
    return y if activation is None else ACTIVATIONS[activation](y)


def saved(y: Array, bias: Array | None, activation: str | None) -> tuple[bool, Array | None]:
    """What ``backward`` needs of a fused kernel's forward: whether it had a bias, and its output
    ``y`` when an activation was fused (None otherwise, so nothing is kept)."""
    return bias is not None, None if activation is None else y


def backward(grad: Array, y: Array | None, activation: str | None, with_bias: bool) -> tuple[Array, Array | None]:
    """The gradient before a fused ``activation`` (``y``, its saved output; None without one)
    and, if ``with_bias``, the bias gradient (the sum over every axis but the channels), else
    None. Zero where the activation is flat, as ``jax.nn.relu``/``relu6`` differentiate."""
    if activation is not None:
        live = y > 0 if activation == "relu" else (y > 0) & (y < 6)
        grad = jnp.where(live, grad, 0)
    return grad, jnp.sum(grad, axis=tuple(range(grad.ndim - 1))) if with_bias else None
