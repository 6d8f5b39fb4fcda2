"""Depthwise 2D convolution (PyTorch's ``groups=channels``), kernel (kh, kw, 1, C).

XLA's CPU backend lowers ``feature_group_count == channels`` to a slow generic kernel (jax issue
#23713), so on CPU it runs as oneDNN's depthwise convolution (``"onednn"``) or as kh·kw shifted
multiply-adds that XLA fuses into one loop (``"gemm"``), both with the kernel gradient summed a
cache-sized chunk of samples at a time; oneDNN's applies a bias and activation in its kernel.
Each must equal ``reference.conv(..., groups=C)`` then ``epilogue.bias_activation``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from lightnets_jax.ops import config, epilogue, onednn, reference
from lightnets_jax.ops.chunks import chunk_samples, sum_over_chunks, windows

Array = jax.Array


def depthwise_conv(x: Array, kernel: Array, strides: int, padding: int, impl: str, bias: Array | None = None,
                   activation: str | None = None) -> Array:
    """``activation(depthwise conv + bias)`` in implementation ``impl`` (see ``ops.config.IMPLS``);
    no bias or no activation where None."""
    if impl == "onednn" and onednn.takes(x, kernel):
        return _depthwise_onednn(x, kernel, bias, strides, padding, activation)
    if impl == "reference":
        y = reference.conv(x, kernel, strides, padding, groups=x.shape[-1])
    else:
        y = depthwise_conv_shifted(x, kernel, strides, padding)
    return epilogue.bias_activation(y, bias, activation)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _depthwise_onednn(x: Array, kernel: Array, bias: Array | None, strides: int, padding: int,
                      activation: str | None) -> Array:
    return onednn.convolution(x, kernel, (padding, padding), strides, groups=x.shape[-1], bias=bias,
                              activation=activation)


def _depthwise_onednn_fwd(x, kernel, bias, strides, padding, activation):
    y = _depthwise_onednn(x, kernel, bias, strides, padding, activation)
    return y, (x, kernel, *epilogue.saved(y, bias, activation))


def _depthwise_onednn_bwd(strides, padding, activation, residuals, grad):
    x, kernel, has_bias, y = residuals
    grad, grad_bias = epilogue.backward(grad, y, activation, has_bias)
    if strides == 1:
        grad_x = onednn.input_gradient(grad, kernel, (padding, padding), groups=x.shape[-1])
    else:  # a strided transpose would need a dilated input, which the custom call does not take
        _, input_vjp = jax.vjp(lambda x_: _depthwise_shifted(x_, kernel, strides, padding), x)
        (grad_x,) = input_vjp(grad)
    return grad_x, _depthwise_kernel_grad(x, grad, kernel.shape, strides, padding), grad_bias


_depthwise_onednn.defvjp(_depthwise_onednn_fwd, _depthwise_onednn_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shifted(x: Array, kernel: Array, strides: int, padding: int) -> Array:
    """Depthwise conv as kh·kw shifted multiply-adds (elementwise work only), its kernel gradient
    from ``_depthwise_kernel_grad`` rather than autodiff."""
    return _depthwise_shifted(x, kernel, strides, padding)


def _depthwise_shifted(x: Array, kernel: Array, strides: int, padding: int) -> Array:
    kh, kw = kernel.shape[:2]
    # Windows come in row-major tap order, the order of the kernel's rows (and of the kernel gradient).
    taps = kernel.reshape(kh * kw, kernel.shape[-1])
    out = None
    for window, tap in zip(_depthwise_windows(x, kh, kw, strides, padding), taps):
        term = window * tap
        out = term if out is None else out + term
    return out


def _depthwise_windows(x: Array, kh: int, kw: int, strides: int, padding: int) -> list[Array]:
    """The kh·kw strided windows of the padded input that meet each kernel tap, row-major."""
    h, w = x.shape[1:3]
    out_sizes = {1: (h + 2 * padding - kh) // strides + 1, 2: (w + 2 * padding - kw) // strides + 1}
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return windows(padded, {1: kh, 2: kw}, out_sizes, {1: strides, 2: strides})


def _depthwise_shifted_fwd(x, kernel, strides, padding):
    return _depthwise_shifted(x, kernel, strides, padding), (x, kernel)


def _depthwise_shifted_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x_: _depthwise_shifted(x_, kernel, strides, padding), x)
    (grad_x,) = input_vjp(grad)
    return grad_x, _depthwise_kernel_grad(x, grad, kernel.shape, strides, padding)


depthwise_conv_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def _depthwise_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], strides: int,
                           padding: int) -> Array:
    """Sum over (N, H, W) of window × output gradient per tap and channel, a few samples at a time.

    Autodiff reduces the whole batch per tap: nine passes over arrays far larger than the caches.
    Chunks of ``depthwise_grad_chunk_bytes`` keep each chunk's reductions in cache; float32
    partial sums. The nine sums of a chunk are one variadic reduction, which reads the gradient
    once (measured faster on MobileNetV2's 96-960 channels), except for a power-of-two channel
    count: there its nine input streams collide in the cache, and nine separate reductions (XLA
    runs them as YNNPACK fusions) measured as fast or faster (docs/performance.md).
    """
    kh, kw = kernel_shape[:2]
    chunk = chunk_samples(x, config.get().depthwise_grad_chunk_bytes)
    channels = x.shape[-1]
    one_reduction = channels & (channels - 1) != 0

    def per_chunk(x_chunk, grad_chunk):
        products = tuple((window * grad_chunk).astype(jnp.float32)
                         for window in _depthwise_windows(x_chunk, kh, kw, strides, padding))
        if one_reduction:
            return jnp.stack(lax.reduce(products, (jnp.float32(0),) * len(products), _add_each, (0, 1, 2)))
        return jnp.stack([jnp.sum(product, axis=(0, 1, 2)) for product in products])

    total = sum_over_chunks(per_chunk, x, grad, chunk, (kh * kw, channels))
    return total.reshape(kernel_shape).astype(x.dtype)


def _add_each(a: tuple[Array, ...], b: tuple[Array, ...]) -> tuple[Array, ...]:
    return tuple(p + q for p, q in zip(a, b))
