"""1x1 convolutions and dense layers as oneDNN matmuls, forward and both gradients (XLA's dot ran
HybridSN's 18496 -> 256 fc1 at a fraction of the machine's rate). Must equal ``x @ kernel``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightnets_jax.ops import onednn, reference

Array = jax.Array


def dense(x: Array, kernel: Array, bias: Array, impl: str) -> Array:
    """``x @ kernel + bias`` in implementation ``impl`` (oneDNN's matmul for ``"onednn"``)."""
    if impl == "onednn" and onednn.takes(x, kernel):
        return onednn_pointwise(x, kernel) + bias
    return reference.dense(x, kernel, bias)


@jax.custom_vjp
def onednn_pointwise(x: Array, kernel: Array) -> Array:
    """A 1x1 convolution (kernel (..., C_in, C_out), any leading axes of 1) as oneDNN matmuls."""
    rows = x.reshape(-1, x.shape[-1])
    return onednn.matmul(rows, kernel.reshape(kernel.shape[-2:])).reshape(*x.shape[:-1], kernel.shape[-1])


def _onednn_pointwise_fwd(x, kernel):
    return onednn_pointwise(x, kernel), (x, kernel)


def _onednn_pointwise_bwd(residuals, grad):
    x, kernel = residuals
    rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    grad_x = onednn.matmul(grad_rows, kernel.reshape(kernel.shape[-2:]), transpose_b=True).reshape(x.shape)
    grad_kernel = onednn.matmul(rows, grad_rows, transpose_a=True, out_dtype=jnp.float32)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


onednn_pointwise.defvjp(_onednn_pointwise_fwd, _onednn_pointwise_bwd)
