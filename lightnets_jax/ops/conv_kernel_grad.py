"""Kernel gradients of stride-1 convolutions as oneDNN convolutions, for ``ops.conv``'s oneDNN path.

    dK[t, c, o] = sum over samples n and positions p of x[n, p + t, c] * grad[n, p, o]

is itself a convolution whose kernel is the output gradient. Run naively (all axes spatial, the
samples as its batch) oneDNN is slower than GEMMs; each function below arranges the operands so
that oneDNN's vector kernels block over a long axis, a few samples at a time so the operands stay
in cache (docs/performance.md, "Kernel gradients"). Each must equal autodiff of ``reference.conv``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from lightnets_jax.ops import config, onednn
from lightnets_jax.ops.chunks import chunk_samples, pad_spatial, sum_over_chunks

Array = jax.Array


def conv3d_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int,
                       with_bias: bool = False) -> tuple[Array, Array | None]:
    """The kernel gradient of a stride-1 3D convolution and, ``with_bias``, its bias gradient
    (else None): ``merged_axis_kernel_grad`` where kw · C_in fills oneDNN's 16-wide vectors
    (HybridSN's conv2, conv3), else ``unfolded_kernel_grad`` (conv1, one input channel)."""
    merge = kernel_shape[2] * kernel_shape[3] >= onednn.PACKED_CHANNELS
    kernel_grad = merged_axis_kernel_grad if merge else unfolded_kernel_grad
    return kernel_grad(x, grad, kernel_shape, padding, with_bias)


def _bias_sum(grad_chunk: Array, with_bias: bool) -> tuple[Array, ...]:
    return (jnp.sum(grad_chunk, axis=tuple(range(grad_chunk.ndim - 1)), dtype=jnp.float32),) if with_bias else ()


def unfolded_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int,
                         with_bias: bool = False) -> tuple[Array, Array | None]:
    """Trailing spatial axes unfolded (their taps times C_in become the conv's batch, their output
    positions times the chunk's samples its input channels): the last, and more while that batch
    is below ``kernel_grad_min_batch``; the other axes stay spatial, in order of taps (oneDNN
    blocks along the last). ``kernel_grad_chunk_bytes`` of output gradient per chunk. 8 output
    channels run at half vector width, so pairs of positions along the last kept axis are packed
    as 16 channels, the kernel's taps there 2 apart, and the two shifts summed after the loop.
    """
    settings = config.get()
    spatial = x.ndim - 2
    x = pad_spatial(x, padding)
    cin, cout = kernel_shape[-2:]
    unfolded = [spatial - 1]
    while unfolded[0] > 1 and math.prod(kernel_shape[a] for a in unfolded) * cin < settings.kernel_grad_min_batch:
        unfolded.insert(0, unfolded[0] - 1)
    kept = sorted((a for a in range(spatial) if a not in unfolded), key=lambda a: kernel_shape[a])
    out_sizes = grad.shape[1:-1]
    last = kept[-1]
    pack = 2 if 2 * cout == onednn.PACKED_CHANNELS and out_sizes[last] % 2 == 0 else 1
    batch = math.prod(kernel_shape[a] for a in unfolded) * cin

    def per_chunk(x_chunk, grad_chunk):
        return (kernel_chunk(x_chunk, conv_kernel(grad_chunk)), *_bias_sum(grad_chunk, with_bias))

    def kernel_chunk(x_chunk, weights):
        # (chunk, *spatial, C_in) -> (C_in, *kept, chunk, *unfolded): the conv's channels innermost.
        image = jnp.transpose(x_chunk, [spatial + 1, *(1 + a for a in kept), 0, *(1 + a for a in unfolded)])
        windows = [image[(Ellipsis, *(slice(t, t + out_sizes[a]) for t, a in zip(taps, unfolded)))]
                   for taps in itertools.product(*(range(kernel_shape[a]) for a in unfolded))]
        image = jnp.stack(windows).reshape(batch, *(x.shape[1 + a] for a in kept), -1)
        dilations = (1,) * (len(kept) - 1) + (pack,)
        # -> (unfolded taps · C_in, *kept taps (the last pack - 1 more), pack · C_out)
        return onednn.convolution(image, weights, (0,) * len(dilations), out_dtype=jnp.float32, dilations=dilations)

    def conv_kernel(grad_chunk):
        """Taps *kept, channels chunk · unfolded positions -> pack · C_out."""
        weights = jnp.transpose(grad_chunk, [*(1 + a for a in kept), 0, *(1 + a for a in unfolded), spatial + 1])
        weights = weights.reshape(*(out_sizes[a] for a in kept[:-1]), out_sizes[last] // pack, pack, -1, cout)
        return jnp.swapaxes(weights, -3, -2).reshape(*weights.shape[:-3], -1, pack * cout)

    chunk = chunk_samples(grad, settings.kernel_grad_chunk_bytes)
    kept_taps = [kernel_shape[a] for a in kept]
    total_shape = (batch, *kept_taps[:-1], kept_taps[-1] + pack - 1, pack * cout)
    total, *bias = sum_over_chunks(per_chunk, x, grad, chunk, (total_shape, (cout,))[:1 + with_bias])
    total = total.reshape(*total_shape[:-1], pack, cout)
    # Shift j of the packed positions sits j taps further along the last kept axis.
    total = sum(total[..., j:j + kept_taps[-1], j, :] for j in range(pack))
    total = total.reshape(*(kernel_shape[a] for a in unfolded), cin, *kept_taps, cout)
    # Axes (*unfolded, C_in, *kept, C_out) -> the kernel's (*spatial, C_in, C_out).
    order = [*unfolded, spatial, *kept]
    total = jnp.transpose(total, [order.index(a) for a in range(spatial)] + [len(unfolded), spatial + 1])
    return total.astype(x.dtype), (bias[0].astype(x.dtype) if with_bias else None)


def merged_axis_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int,
                            with_bias: bool = False) -> tuple[Array, Array | None]:
    """``sample_channels_chunk`` samples at a time as the input channels: the chunk moved to
    (D, H, W · C_in, N) by one 2D transpose, convolved with the output gradient as it lies
    (``kernel_axes``: taps (OD, OH, OW), the last C_in apart along the merged axis, N -> O
    channels). The output (kd, kh, kw · C_in, O) is the kernel gradient, with kw · C_in positions
    for oneDNN to block over and no multiply-adds on zeros.
    """
    x = pad_spatial(x, padding)
    _, depth, height, width, cin = x.shape
    cout = kernel_shape[-1]

    def per_chunk(x_chunk, grad_chunk):
        image = jnp.transpose(x_chunk, (1, 2, 3, 4, 0)).reshape(1, depth, height, width * cin, -1)
        kernel = onednn.convolution(image, grad_chunk, (0, 0, 0), out_dtype=jnp.float32, dilations=(1, 1, cin),
                                    kernel_axes=(1, 2, 3, 0, 4))
        return (kernel, *_bias_sum(grad_chunk, with_bias))

    chunk = math.gcd(x.shape[0], config.get().sample_channels_chunk)
    total_shape = (1, *kernel_shape[:2], kernel_shape[2] * cin, cout)
    total, *bias = sum_over_chunks(per_chunk, x, grad, chunk, (total_shape, (cout,))[:1 + with_bias])
    return total.reshape(kernel_shape).astype(x.dtype), (bias[0].astype(x.dtype) if with_bias else None)


def folded_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int) -> Array:
    """The kernel gradient of the stride-1 2D convolution of ``fold_depth(x)`` (HybridSN's conv4),
    ``sample_channels_chunk`` samples at a time as the input channels:

        dK[a, b, (c, d), o] = sum over n, h, w of x[n, d, h + a, w + b, c] * grad[n, h, w, o]

    is a 3D convolution of the chunk moved to (D, H, W, C, N) with the output gradient as its
    kernel (taps (OH, OW, 1), N -> O channels, as it lies). Output (D, kh, kw, C, O).
    """
    kh, kw, _, cout = kernel_shape
    _, depth, _, _, cin = x.shape

    def per_chunk(x_chunk, grad_chunk):
        image = jnp.transpose(x_chunk, (1, 2, 3, 4, 0))
        return onednn.convolution(image, grad_chunk[:, :, :, None], (padding, padding, 0), out_dtype=jnp.float32,
                                  kernel_axes=(1, 2, 3, 0, 4))

    chunk = math.gcd(x.shape[0], config.get().sample_channels_chunk)
    total = sum_over_chunks(per_chunk, x, grad, chunk, (depth, kh, kw, cin, cout))
    # (D, kh, kw, C, O) -> (kh, kw, C * D, O), the folded channel c * D + d.
    return jnp.transpose(total, (1, 2, 3, 0, 4)).reshape(kh, kw, cin * depth, cout).astype(x.dtype)
