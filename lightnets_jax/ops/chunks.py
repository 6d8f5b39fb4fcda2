"""Loops over a batch a few samples at a time, and the shifted windows the GEMM and depthwise
kernels are built from. Working on chunks that fit in a core's cache instead of whole batches is
most of what makes the CPU kernels fast (docs/performance.md)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def chunk_samples(array: Array, budget_bytes: int) -> int:
    """Samples per chunk: the largest power of two whose samples of ``array`` fit in
    ``budget_bytes`` (at least one), made to divide the batch."""
    per_sample = math.prod(array.shape[1:]) * array.dtype.itemsize
    return math.gcd(array.shape[0], 1 << max(0, (budget_bytes // per_sample).bit_length() - 1))


def sum_over_chunks(per_chunk: Callable[[Array, Array], Any], x: Array, grad: Array, chunk: int, shape: Any) -> Any:
    """The float32 sum of ``per_chunk(x_chunk, grad_chunk)`` over the batch, ``chunk`` samples at a
    time, so only one chunk's temporaries live at once. ``shape``: the sum's shape, or a tuple of
    shapes when ``per_chunk`` returns a tuple of arrays.

    A ``fori_loop`` slicing ``x`` and ``grad`` where they lie (a ``lax.scan`` over reshapes made
    XLA copy both whole arrays first), unrolled twice to halve the loop's overhead.
    """
    def add_chunk(i, total):
        x_chunk, grad_chunk = (lax.dynamic_slice_in_dim(a, i * chunk, chunk) for a in (x, grad))
        return jax.tree.map(jnp.add, total, per_chunk(x_chunk, grad_chunk))

    several = isinstance(shape[0], tuple)
    zeros = tuple(jnp.zeros(s, jnp.float32) for s in shape) if several else jnp.zeros(shape, jnp.float32)
    return lax.fori_loop(0, x.shape[0] // chunk, add_chunk, zeros, unroll=2)


def chunked(fn: Callable, x: Array, out_sizes: tuple[int, ...], cout: int, chunk: int | None,
            remat: bool = True) -> Array:
    """``fn`` over ``chunk`` samples at a time (``lax.map``; None: the whole batch at once),
    rematerialized in the backward."""
    batch = x.shape[0]
    chunk = batch if chunk is None else math.gcd(batch, chunk)
    fn = jax.checkpoint(fn) if remat else fn
    out = lax.map(fn, x.reshape(batch // chunk, chunk, *x.shape[1:]))
    return out.reshape(batch, *out_sizes, cout)


def windows(x: Array, axes_taps: dict[int, int], out_sizes: dict[int, int], strides: dict[int, int]) -> list[Array]:
    """Every shifted window of ``x`` over the given axes, in row-major tap order."""
    axes = sorted(axes_taps)
    found = []
    for offsets in itertools.product(*(range(axes_taps[a]) for a in axes)):
        start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
        for a, o in zip(axes, offsets):
            start[a], limit[a], step[a] = o, o + (out_sizes[a] - 1) * strides[a] + 1, strides[a]
        found.append(lax.slice(x, start, limit, step))
    return found


def unfold(x: Array, axes_taps: dict[int, int], out_sizes: dict[int, int], strides: dict[int, int]) -> Array:
    """The windows of ``windows`` side by side on the channel axis (tap-major, channel-minor)."""
    return jnp.concatenate(windows(x, axes_taps, out_sizes, strides), axis=-1)


def pad_spatial(x: Array, padding: int) -> Array:
    """Zero padding on both sides of every spatial axis of a channels-last batch."""
    if not padding:
        return x
    return jnp.pad(x, ((0, 0),) + ((padding, padding),) * (x.ndim - 2) + ((0, 0),))
