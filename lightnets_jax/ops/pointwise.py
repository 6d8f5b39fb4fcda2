"""1x1 convolutions and dense layers as oneDNN matmuls, forward and both gradients (XLA's dot ran
HybridSN's 18496 -> 256 fc1 at a fraction of the machine's rate). Must equal ``x @ kernel``
(then ``epilogue.bias_activation`` for the 1x1 convs' fused bias and activation)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from lightnets_jax.ops import epilogue, onednn, reference

Array = jax.Array


def dense(x: Array, kernel: Array, bias: Array, impl: str) -> Array:
    """``x @ kernel + bias`` in implementation ``impl`` (oneDNN's matmul for ``"onednn"``)."""
    if impl == "onednn" and onednn.takes(x, kernel):
        return onednn_pointwise(x, kernel) + bias
    return reference.dense(x, kernel, bias)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def onednn_pointwise(x: Array, kernel: Array, bias: Array | None = None, activation: str | None = None) -> Array:
    """A 1x1 convolution (kernel (..., C_in, C_out), any leading axes of 1) as oneDNN matmuls,
    then ``bias`` and ``activation`` (either may be None) inside oneDNN's kernel."""
    rows = x.reshape(-1, x.shape[-1])
    y = onednn.matmul(rows, kernel.reshape(kernel.shape[-2:]), bias=bias, activation=activation)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def _onednn_pointwise_fwd(x, kernel, bias, activation):
    y = onednn_pointwise(x, kernel, bias, activation)
    return y, (x, kernel, *epilogue.saved(y, bias, activation))


def _onednn_pointwise_bwd(activation, residuals, grad):
    x, kernel, has_bias, y = residuals
    grad, grad_bias = epilogue.backward(grad, y, activation, has_bias)
    rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    grad_x = onednn.matmul(grad_rows, kernel.reshape(kernel.shape[-2:]), transpose_b=True).reshape(x.shape)
    grad_kernel = onednn.matmul(rows, grad_rows, transpose_a=True, out_dtype=jnp.float32)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype), grad_bias


onednn_pointwise.defvjp(_onednn_pointwise_fwd, _onednn_pointwise_bwd)
