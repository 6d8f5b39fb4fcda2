"""2D and 3D convolutions with an optional bias and activation, in the implementation a model was
built with: XLA's (``"reference"``), GEMM formulations (``"gemm"``, ``ops.gemm_conv``) or oneDNN's
(``"onednn"``: forward and input gradient by oneDNN with bias and activation fused, kernel
gradient by ``ops.conv_kernel_grad``; 1x1 convs as oneDNN matmuls, bias and activation fused too;
GEMMs where oneDNN does not apply, e.g. strided convs). Every path must equal ``reference.conv``
followed by ``epilogue.bias_activation`` (tests/test_ops.py).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from lightnets_jax.ops import conv_kernel_grad, epilogue, onednn, reference
from lightnets_jax.ops.gemm_conv import conv_gemm
from lightnets_jax.ops.pointwise import onednn_pointwise

Array = jax.Array


def conv(x: Array, kernel: Array, bias: Array | None, *, strides: int, padding: int, impl: str,
         activation: str | None = None, train: bool = False, fold_depth: bool = False) -> Array:
    """``activation(conv(x, kernel) + bias)`` (no bias if None; no activation if None, else
    "relu" or "relu6").

    ``fold_depth``: a 2D kernel applied to a 3D map (N, D, H, W, C) as PyTorch's
    ``reshape(N, C * D, H, W)`` of it (``reference.fold_depth``); on oneDNN's path without moving
    the map. ``train`` picks the GEMM formulations' chunking (whole batch in training).
    """
    spatial = kernel.ndim - 2
    use_onednn = impl == "onednn" and strides == 1 and onednn.takes(x, kernel)
    if fold_depth and use_onednn:
        return _onednn_depth_folded(x, kernel, bias, padding, activation)
    if fold_depth:
        x = reference.fold_depth(x)
    if impl == "reference":
        return epilogue.bias_activation(reference.conv(x, kernel, strides, padding), bias, activation)
    if use_onednn and math.prod(kernel.shape[:spatial]) > 1:
        return _onednn_conv(x, kernel, bias, padding, activation)
    if use_onednn and not padding:
        return onednn_pointwise(x, kernel, bias, activation)
    return epilogue.bias_activation(conv_gemm(x, kernel, strides, padding, train), bias, activation)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_conv(x: Array, kernel: Array, bias: Array | None, padding: int, activation: str | None) -> Array:
    return onednn.convolution(x, kernel, (padding,) * (x.ndim - 2), bias=bias, activation=activation)


def _onednn_conv_fwd(x, kernel, bias, padding, activation):
    y = _onednn_conv(x, kernel, bias, padding, activation)
    return y, (x, kernel, *epilogue.saved(y, bias, activation))


def _onednn_conv_bwd(padding, activation, residuals, grad):
    # Input gradient: another oneDNN convolution (XLA drops it when nobody needs it, e.g. for the
    # network's input). Kernel gradient: oneDNN convolutions in 3D; in 2D (the RGB stems, thin
    # contractions) autodiff of ``conv_gemm``, which measured faster there.
    x, kernel, has_bias, y = residuals
    spatial = x.ndim - 2
    # Behind a fused 3D activation the bias gradient is summed inside the kernel gradient's loop,
    # from data already in cache; behind BatchNorm (none fused) a separate pass measured faster.
    bias_in_loop = has_bias and spatial == 3 and y is not None
    grad, grad_bias = epilogue.backward(grad, y, activation, has_bias and not bias_in_loop)
    grad_x = onednn.input_gradient(grad, kernel, (padding,) * spatial)
    if spatial == 3:
        grad_kernel, loop_bias = conv_kernel_grad.conv3d_kernel_grad(x, grad, kernel.shape, padding, bias_in_loop)
        return grad_x, grad_kernel, loop_bias if bias_in_loop else grad_bias
    _, kernel_vjp = jax.vjp(lambda k: conv_gemm(x, k, 1, padding, train=True), kernel)
    return grad_x, kernel_vjp(grad)[0], grad_bias


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_depth_folded(x: Array, kernel: Array, bias: Array | None, padding: int,
                         activation: str | None) -> Array:
    """The 2D conv of ``fold_depth(x)`` without moving ``x``: a 3D convolution whose kernel spans
    the whole depth (its taps reordered from the folded channels), output depth 1. Saves two
    whole-batch transposes and the kernel gradient's copy of the folded input."""
    y = onednn.convolution(x, _depth_kernel(x, kernel), (0, padding, padding), bias=bias, activation=activation)
    return y.reshape(y.shape[0], *y.shape[2:])


def _depth_kernel(x: Array, kernel: Array) -> Array:
    """The folded 2D kernel (kh, kw, C * D, O) as the 3D one (D, kh, kw, C, O)."""
    depth, channels = x.shape[1], x.shape[-1]
    kh, kw, _, features = kernel.shape
    return jnp.transpose(kernel.reshape(kh, kw, channels, depth, features), (3, 0, 1, 2, 4))


def _onednn_depth_folded_fwd(x, kernel, bias, padding, activation):
    y = _onednn_depth_folded(x, kernel, bias, padding, activation)
    return y, (x, kernel, *epilogue.saved(y, bias, activation))


def _onednn_depth_folded_bwd(padding, activation, residuals, grad):
    x, kernel, has_bias, y = residuals
    grad, grad_bias = epilogue.backward(grad, y, activation, has_bias)
    grad_x = onednn.input_gradient(grad[:, None], _depth_kernel(x, kernel), (0, padding, padding))
    return grad_x, conv_kernel_grad.folded_kernel_grad(x, grad, kernel.shape, padding), grad_bias


_onednn_depth_folded.defvjp(_onednn_depth_folded_fwd, _onednn_depth_folded_bwd)
