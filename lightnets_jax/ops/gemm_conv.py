"""Convolutions as matrix products (GEMMs over partly unfolded input), which XLA's CPU backend runs
far faster than its own convolutions, worst for 3D convs with few channels (jax issue #13800).

``conv_gemm`` chooses the formulation; each runs a few samples at a time under ``jax.checkpoint``
so the backward recomputes the unfolded chunk instead of storing gigabytes of it. The
``"gemm"`` implementation uses them for every convolution; ``"onednn"`` for strided ones and a few
kernel gradients. Each must equal ``reference.conv`` (tests/test_ops.py).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from lightnets_jax.ops import config, onednn
from lightnets_jax.ops.chunks import chunked, pad_spatial, unfold

Array = jax.Array


def conv_gemm(x: Array, kernel: Array, strides: int, padding: int, train: bool = False) -> Array:
    """The convolution ``reference.conv(x, kernel, strides, padding)`` in the formulation XLA runs
    fastest on CPU:

    * 1x1: one GEMM, nothing to unfold;
    * stride 1, 3D, few input channels: depth-Toeplitz (``_depth_toeplitz``);
    * stride 1, enough channels: unfold the trailing spatial axes, shift-and-add over the first
      (``_unfold_shift_add``);
    * strided, or 2D with few channels (an RGB stem): full im2col (``_im2col``), in chunks only
      at inference.
    """
    settings = config.get()
    spatial = x.ndim - 2
    taps = kernel.shape[:spatial]
    cin, cout = kernel.shape[-2:]
    x = pad_spatial(x, padding)
    out_sizes = tuple((x.shape[1 + a] - taps[a]) // strides + 1 for a in range(spatial))
    if math.prod(taps) == 1:
        cols = x[(slice(None),) + (slice(None, None, strides),) * spatial]
        return (cols.reshape(-1, cin) @ kernel.reshape(cin, cout)).reshape(x.shape[0], *out_sizes, cout)
    # im2col without remat: the whole batch in training, a few samples at a time in inference.
    im2col_chunk = None if train else settings.im2col_chunk
    if strides != 1:
        return chunked(partial(_im2col, kernel=kernel, strides=strides, out_sizes=out_sizes), x,
                       out_sizes, cout, im2col_chunk, remat=False)
    chunk = settings.unfold_chunk
    # Unfolding all but the first axis gives a contraction of taps[1:]·C; below min_contraction the
    # GEMMs are too thin to run well (HybridSN's conv1: 3·3·1 = 9).
    thin = math.prod(taps[1:]) * cin < settings.min_contraction
    if spatial == 3 and thin:
        return chunked(partial(_depth_toeplitz, kernel=kernel, out_sizes=out_sizes), x, out_sizes, cout, chunk)
    if not thin:
        return chunked(partial(_unfold_shift_add, kernel=kernel, out_sizes=out_sizes), x, out_sizes, cout, chunk)
    return chunked(partial(_im2col, kernel=kernel, strides=1, out_sizes=out_sizes), x, out_sizes, cout,
                   im2col_chunk, remat=False)


def _im2col(chunk: Array, kernel: Array, strides: int, out_sizes: tuple[int, ...]) -> Array:
    """Every tap into the contraction axis (order (kd, kh, kw, C), the kernel's), one GEMM."""
    spatial = chunk.ndim - 2
    axes = range(1, spatial + 1)
    cols = unfold(chunk, dict(zip(axes, kernel.shape[:spatial])), dict(zip(axes, out_sizes)),
                  dict.fromkeys(axes, strides))
    cout = kernel.shape[-1]
    return (cols.reshape(-1, cols.shape[-1]) @ kernel.reshape(-1, cout)).reshape(chunk.shape[0], *out_sizes, cout)


def _unfold_shift_add(chunk: Array, kernel: Array, out_sizes: tuple[int, ...]) -> Array:
    """Unfold the trailing spatial axes only, multiply by every first-axis tap at once, shift-add.

    Full im2col copies the input once per tap; leaving the first spatial axis folded makes the
    unfolded matrix (and its gradient) ``taps[0]`` times smaller, and the first-axis taps become
    extra GEMM outputs that are summed at their offsets: z[..., t, :] shifted by t.
    """
    spatial = chunk.ndim - 2
    first, rest = kernel.shape[0], kernel.shape[1:spatial]
    cin, cout = kernel.shape[-2:]
    axes = range(2, spatial + 1)
    cols = unfold(chunk, dict(zip(axes, rest)), dict(zip(axes, out_sizes[1:])), dict.fromkeys(axes, 1))
    # (first, *rest, C, O) -> (*rest, C, first, O): one column block per first-axis tap.
    matrix = jnp.moveaxis(kernel, 0, -2).reshape(math.prod(rest) * cin, first * cout)
    z = (cols.reshape(-1, cols.shape[-1]) @ matrix).reshape(*cols.shape[:-1], first, cout)
    return _shift_add(z, out_sizes[0], first)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _shift_add(z: Array, out_size: int, taps: int) -> Array:
    """out[:, d] = sum over t of z[:, d + t, ..., t, :] (axis 1 is the shifted axis)."""
    out = None
    for t in range(taps):
        term = lax.slice_in_dim(z, t, t + out_size, axis=1)[..., t, :]
        out = term if out is None else out + term
    return out


def _shift_add_fwd(z, out_size, taps):
    return _shift_add(z, out_size, taps), None


def _shift_add_bwd(out_size, taps, _, grad):
    # Autodiff's sum of ``taps`` padded copies compiles to a slow loop.
    return (_shifted_taps(grad, out_size, taps),)


def _shifted_taps(grad: Array, out_size: int, taps: int) -> Array:
    """``_shift_add``'s transpose: z[:, d, ..., t, :] = grad[:, d - t], zero outside, i.e. windows
    of the zero-padded gradient stacked on a new tap axis before the channels."""
    pad = ((0, 0), (taps - 1, taps - 1)) + ((0, 0),) * (grad.ndim - 2)
    padded = jnp.pad(grad, pad)
    depth = out_size + taps - 1
    windows = [lax.slice_in_dim(padded, taps - 1 - t, taps - 1 - t + depth, axis=1) for t in range(taps)]
    return jnp.stack(windows, axis=-2)


_shift_add.defvjp(_shift_add_fwd, _shift_add_bwd)


def _depth_toeplitz(chunk: Array, kernel: Array, out_sizes: tuple[int, ...]) -> Array:
    """3D conv with few input channels as one GEMM per block of ``depth_block`` output depths.

    With one input channel (HybridSN's conv1) im2col gives a contraction of only 7·3·3 = 63 and
    copies the input 63 times. Here each row holds a block's whole input depth span (block + kd - 1
    planes of 3x3 windows), and a banded (Toeplitz) kernel maps it to all the block's output
    depths at once: about twice the multiplications, far less memory traffic.
    """
    kd, kh, kw, cin, cout = kernel.shape
    od = out_sizes[0]
    block = min(config.get().depth_block, od)
    blocks = -(-od // block)
    span = block + kd - 1
    needed = blocks * block + kd - 1
    if needed > chunk.shape[1]:
        chunk = jnp.pad(chunk, ((0, 0), (0, needed - chunk.shape[1]), (0, 0), (0, 0), (0, 0)))
    # Rows: (depth within the span, kh, kw, C) for every block start (depth stride = block).
    cols = unfold(chunk, {1: span, 2: kh, 3: kw}, {1: blocks, 2: out_sizes[1], 3: out_sizes[2]},
                  {1: block, 2: 1, 3: 1})
    # toeplitz[j, i, k, c, b, o] = kernel[j - b, i, k, c, o] for 0 <= j - b < kd, else 0.
    toeplitz = onednn.depth_banded(kernel, block)
    y = cols.reshape(-1, cols.shape[-1]) @ toeplitz.reshape(span * kh * kw * cin, block * cout)
    y = y.reshape(chunk.shape[0], blocks, *out_sizes[1:], block, cout)
    return jnp.moveaxis(y, -2, 2).reshape(chunk.shape[0], blocks * block, *out_sizes[1:], cout)[:, :od]
