"""Batch normalization over the last axis as PyTorch computes it (biased batch variance, float32
statistics), the train-mode BatchNorm + ReLU as one op with a hand-written backward, and the
eval-mode BatchNorm folded into the convolution before it.

``batch_norm_train`` is the plain version, differentiated by autodiff; ``batch_norm_relu`` must equal
``relu(batch_norm_train(...))`` in values and statistics bitwise and in gradients to float rounding
(tests/test_ops.py).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from lightnets_jax.ops import epilogue

Array = jax.Array


def moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and biased variance over all but the last axis, in float32."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    return mean, jnp.mean(jnp.square(x32 - mean), axes)


def affine(scale: Array, bias: Array, mean: Array, var: Array, epsilon: float) -> tuple[Array, Array]:
    """Normalization and its scale and shift as one per-channel (multiplier, shift)."""
    multiplier = scale * lax.rsqrt(var + epsilon)
    return multiplier, bias - mean * multiplier


def fold_into_conv(kernel: Array, bias: Array | None, multiplier: Array, shift: Array) -> tuple[Array, Array]:
    """The (kernel, bias) of a conv whose output is ``output * multiplier + shift`` of the conv
    with ``kernel`` and ``bias`` (None: no bias): eval-mode BatchNorm folded into the conv before
    it. Output channels on the kernel's last axis."""
    return kernel * multiplier, shift if bias is None else bias * multiplier + shift


def affine_activation(x: Array, multiplier: Array, shift: Array, activation: str | None) -> Array:
    y = (x * multiplier.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)
    return epilogue.bias_activation(y, None, activation)


def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float,
                     activation: str | None = None) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm, then ``activation`` (None, "relu" or "relu6"): (output, batch mean,
    biased batch variance)."""
    mean, var = moments(x)
    return affine_activation(x, *affine(scale, bias, mean, var, epsilon), activation), mean, var


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """``batch_norm_train(x, scale, bias, epsilon, "relu")`` with a backward that makes fewer passes
    over the activations: the ReLU mask is recomputed inside each reduction and the input gradient
    is one elementwise pass, using sum(g * x_hat) = rstd * (sum(g * x) - mean * sum(g)). The mean
    and variance are for the running statistics only: their cotangents are ignored, so callers
    stop their gradients.
    """
    return _batch_norm_relu_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
    mean, var = moments(x)
    rstd = lax.rsqrt(var + epsilon)
    multiplier = scale * rstd
    y = affine_activation(x, multiplier, bias - mean * multiplier, "relu")
    return (y, mean, var), (x, y, scale, mean, rstd)


def _batch_norm_relu_bwd(epsilon, residuals, cotangents):
    x, y, scale, mean, rstd = residuals
    grad = cotangents[0]  # mean and var feed only the running statistics (stop_gradient)
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    live = y > 0
    grad32, x32 = grad.astype(jnp.float32), x.astype(jnp.float32)
    grad_bias = jnp.sum(jnp.where(live, grad32, 0), axes)
    grad_scale = rstd * (jnp.sum(jnp.where(live, grad32 * x32, 0), axes) - mean * grad_bias)
    # dx = scale * rstd * (g - mean(g) - x_hat * mean(g * x_hat)), with x_hat = (x - mean) * rstd
    multiplier = scale * rstd
    x_coefficient = multiplier * rstd * grad_scale / count
    constant = multiplier * grad_bias / count - mean * x_coefficient
    grad_x = jnp.where(live, multiplier * grad32, 0) - constant - x32 * x_coefficient
    return grad_x.astype(x.dtype), grad_scale, grad_bias


batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)
