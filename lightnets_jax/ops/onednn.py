"""oneDNN's convolutions and matmuls, called from JAX through the custom calls XLA's CPU runtime has.

jaxlib's x86-64 CPU backend is built with oneDNN (the library behind PyTorch's CPU convolutions)
and runs custom calls named ``__onednn$convolution`` and ``__onednn$matmul`` with it, configured
by a ``BackendConfig`` proto given as JSON. XLA's own passes no longer emit them, so this module
emits them with ``jax.ffi.ffi_call`` (docs/performance.md, "oneDNN").

The convolution is a forward primitive only: ``ops.conv`` and ``ops.depthwise`` build the input
gradient from it (the output gradient convolved with the flipped kernel) and the kernel gradient
(``ops.conv_kernel_grad``). ``available()`` compiles and runs a tiny program to find out whether
this jaxlib, on this backend, has both (False off CPU, on builds without oneDNN, with more than
one device, and when ``ops.config`` says no).
"""

from __future__ import annotations

import functools
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lightnets_jax.ops import config, epilogue

TARGET = "__onednn$convolution"
MATMUL_TARGET = "__onednn$matmul"
# ``ops.epilogue``'s activations as the post-ops of oneDNN's kernels (names of XLA's proto enum).
POST_OPS = {"relu": "RELU", "relu6": "RELU6"}


def _post_ops(bias: jax.Array | None, activation: str | None) -> list[str]:
    epilogue.check_activation(activation)
    return ["BIAS"] * (bias is not None) + ([] if activation is None else [POST_OPS[activation]])


def _config(rank: int, taps: Sequence[int], padding: Sequence[int], strides: Sequence[int], groups: int,
            post_ops: Sequence[str], dilations: Sequence[int], kernel_axes: Sequence[int]) -> str:
    """The ``BackendConfig`` JSON of a convolution over channels-last (N, *spatial, C) input and
    output and a kernel whose axes ``kernel_axes`` hold (*taps, C_in / groups, C_out), then
    ``post_ops`` ("BIAS": add the third operand per channel, then "RELU" or "RELU6"). Axis
    numbers are 0-based, dilations 1-based (the encoding of jaxlib 0.10's
    ``onednn_convolution.cc``)."""
    spatial = rank - 2
    kernel_axes = list(kernel_axes)
    data = {"batch_dim": 0, "feature_dim": rank - 1, "spatial_dims": list(range(1, spatial + 1))}
    return json.dumps({"onednn_conv_config": {
        "dims": rank,
        "input": {"dims": rank, "data": data},
        "kernel": {"dims": rank, "filter": {"input_feature_dim": kernel_axes[-2], "output_feature_dim": kernel_axes[-1],
                                            "spatial_dims": kernel_axes[:-2]}},
        "output": {"dims": rank, "data": data},
        "window": {"size": list(taps), "pad_left": list(padding), "pad_right": list(padding),
                   "strides": list(strides), "window_dilations": list(dilations)},
        "feature_groups": groups,
        "fusions": {"ops": list(post_ops)},
    }})


def convolution(x: jax.Array, kernel: jax.Array, padding: Sequence[int], strides: int | Sequence[int] = 1,
                groups: int = 1, bias: jax.Array | None = None, activation: str | None = None,
                out_dtype: jnp.dtype | None = None, dilations: Sequence[int] | None = None,
                kernel_axes: Sequence[int] | None = None) -> jax.Array:
    """Convolution of channels-last ``x`` (N, *spatial, C_in) with a (*taps, C_in / groups, C_out)
    kernel, zero-padded by ``padding[i]`` on both sides of spatial axis i, strided by ``strides``
    (one for every axis, or one per axis) and its kernel taps ``dilations[i]`` apart (default 1,
    adjacent); 1-3 spatial axes.
    ``groups == C_in == C_out`` is a depthwise convolution. ``bias`` (C_out,) and an ``activation``
    after it ("relu", "relu6") are applied inside oneDNN's kernel, saving XLA a pass over the
    output. float32 or bfloat16 operands (oneDNN accumulates in float32); the result is
    ``out_dtype`` (default ``x.dtype``).

    ``kernel_axes``: which of the kernel's axes hold (*taps, C_in / groups, C_out), for a kernel
    stored in another order. oneDNN copies every kernel into its own blocked layout anyway, so
    this saves XLA a transpose (``ops.conv_kernel_grad``, whose kernel is an output gradient). The
    input and output stay channels-last: in another order oneDNN falls back to its slow
    reference kernel."""
    spatial = x.ndim - 2
    kernel_axes = tuple(kernel_axes or range(kernel.ndim))
    if sorted(kernel_axes) != list(range(kernel.ndim)):
        raise ValueError(f"kernel_axes must be a permutation of the kernel's {kernel.ndim} axes, got {kernel_axes}")
    taps = tuple(kernel.shape[a] for a in kernel_axes[:spatial])
    strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
    dilations = tuple(dilations or (1,) * spatial)
    out_sizes = tuple((x.shape[1 + i] + 2 * padding[i] - (taps[i] - 1) * dilations[i] - 1) // strides[i] + 1
                      for i in range(spatial))
    out = jax.ShapeDtypeStruct((x.shape[0], *out_sizes, kernel.shape[kernel_axes[-1]]), out_dtype or x.dtype)
    config = _config(x.ndim, taps, padding, strides, groups, _post_ops(bias, activation), dilations, kernel_axes)
    call = jax.ffi.ffi_call(TARGET, out, custom_call_api_version=1, vmap_method="sequential",
                            legacy_backend_config=config)
    return call(x, kernel) if bias is None else call(x, kernel, bias)


def input_gradient(grad: jax.Array, kernel: jax.Array, padding: Sequence[int], groups: int = 1) -> jax.Array:
    """The gradient of ``convolution(x, kernel, padding, 1, groups)`` with respect to ``x`` (plain
    or depthwise): the output gradient convolved with the spatially flipped kernel, its in and out
    channels swapped (a depthwise kernel keeps its shape). 8 float32 input channels (half of
    oneDNN's 16-wide blocks; the one case measured) go through ``_depth_packed``."""
    spatial = grad.ndim - 2
    flipped = jnp.flip(kernel, axis=tuple(range(spatial)))
    padding = [t - 1 - p for t, p in zip(kernel.shape[:spatial], padding)]
    if groups > 1:
        return convolution(grad, flipped, padding, 1, groups)
    flipped = flipped.swapaxes(-1, -2)
    channels = flipped.shape[-1]
    depth = grad.shape[1] + 2 * padding[0] - flipped.shape[0] + 1
    if grad.dtype == jnp.float32 and 2 * channels == PACKED_CHANNELS and depth % 2 == 0:
        return _depth_packed(grad, flipped, padding, 2)
    return convolution(grad, flipped, padding)


# float32 lanes of an AVX-512 register: oneDNN's kernels block output channels by 16, and a
# convolution with 8 runs at half speed.
PACKED_CHANNELS = 16


def _depth_packed(x: jax.Array, kernel: jax.Array, padding: Sequence[int], pack: int) -> jax.Array:
    """``convolution(x, kernel, padding)`` for a kernel with few output channels C, as one with
    ``pack`` * C: output depths d = pack * e + j, j < pack, computed together as channel group j of
    output depth e, by a kernel ``pack - 1`` taps deeper (group j's taps shifted by j, zeros around
    them) strided by ``pack`` along the depth: ``pack`` - 1 extra taps of multiply-adds on zeros
    and a transpose of the result for full-width vector kernels. Depth divisible by ``pack``."""
    packed = depth_banded(kernel, pack)
    packed = packed.reshape(*packed.shape[:-2], pack * kernel.shape[-1])
    y = convolution(x, packed, padding, (pack,) + (1,) * (x.ndim - 3))
    n, depth, *rest, _ = y.shape
    y = jnp.moveaxis(y.reshape(n, depth, *rest, pack, kernel.shape[-1]), -2, 2)
    return y.reshape(n, depth * pack, *rest, kernel.shape[-1])


def depth_banded(kernel: jax.Array, count: int) -> jax.Array:
    """A (taps, ..., C_in, C_out) kernel as the banded one that computes ``count`` consecutive
    output depths at once: (taps + count - 1, ..., C_in, count, C_out), slice j of the new axis the
    kernel shifted j taps deeper, zeros around it (``_depth_packed`` here, the GEMM fallback's
    depth-Toeplitz conv in ``ops.gemm_conv``)."""
    widths = [(0, 0)] * (kernel.ndim - 1)
    return jnp.stack([jnp.pad(kernel, [(j, count - 1 - j)] + widths) for j in range(count)], axis=-2)


def matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False, transpose_b: bool = False,
           out_dtype: jnp.dtype | None = None, bias: jax.Array | None = None,
           activation: str | None = None) -> jax.Array:
    """``activation(a @ b + bias)`` for 2D float32 or bfloat16 arrays, by oneDNN's matmul, the
    result ``out_dtype`` (default ``a.dtype``); ``transpose_a`` / ``transpose_b`` take ``a.T`` /
    ``b.T`` instead (no copy). The bias (one per column) and the activation ("relu", "relu6"),
    when given, are applied inside oneDNN's kernel."""
    rows = a.shape[1] if transpose_a else a.shape[0]
    cols = b.shape[0] if transpose_b else b.shape[1]
    out = jax.ShapeDtypeStruct((rows, cols), out_dtype or a.dtype)
    config = json.dumps({"onednn_matmul_config": {"transpose_a": transpose_a, "transpose_b": transpose_b,
                                                  "fusions": {"ops": _post_ops(bias, activation)}}})
    call = jax.ffi.ffi_call(MATMUL_TARGET, out, custom_call_api_version=1, vmap_method="sequential",
                            legacy_backend_config=config)
    # oneDNN's matmul takes the bias with the output's rank.
    return call(a, b) if bias is None else call(a, b, bias.reshape(1, cols))


def available(dtype: jnp.dtype = jnp.float32) -> bool:
    """Whether the default backend runs ``convolution`` and ``matmul`` on ``dtype`` operands
    (float32 or bfloat16; compiled and checked once per process and dtype)."""
    return config.get().onednn and _available(jnp.dtype(dtype).name)


# oneDNN's bfloat16 kernels need AVX-512 (its "avx512_core": F, BW, VL, DQ). Without it XLA's call
# dies of an illegal instruction instead of raising (seen on an AVX2 EPYC), so no probe may run.
BFLOAT16_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


# Where bfloat16 arithmetic is native; elsewhere it is emulated and slower than float32.
NATIVE_BFLOAT16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the kernel lists for this CPU (empty where there is no such file)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _available(dtype: str) -> bool:
    if dtype not in ("float32", "bfloat16"):
        return False
    if dtype == "bfloat16" and not BFLOAT16_CPU_FLAGS <= cpu_flags():
        return False
    if jax.default_backend() != "cpu":
        return False
    if jax.device_count() > 1:
        # Data-parallel over several CPU devices (or processes), XLA's partitioner runs these
        # custom calls on gathered operands, and MobileNetV1's gradients came out 2e-3 off the
        # one-device ones: until that is understood, several devices keep the GEMM formulations.
        return False
    rng = np.random.default_rng(0)
    # Values bfloat16 holds exactly, so both dtypes are checked against the same float32 sums
    # (NumPy throughout: this may first run while a caller is being traced).
    x = rng.standard_normal((2, 5, 6, 3)).astype(jnp.bfloat16).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(jnp.bfloat16).astype(np.float32)

    def probe(x, kernel):
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        return (convolution(x, kernel, (1, 1), out_dtype=jnp.float32),
                matmul(x.reshape(-1, 3), x.reshape(-1, 3), transpose_a=True, out_dtype=jnp.float32))

    # Compiled ahead and fed NumPy arrays, so that a first call from inside a trace runs for real.
    try:
        y, gram = (np.asarray(a) for a in jax.jit(probe).lower(x, kernel).compile()(x, kernel))
    except Exception:  # noqa: BLE001 - XLA raises several kinds (unimplemented, not built with oneDNN)
        return False
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + 5, j:j + 6], kernel[i, j])
                   for i in range(3) for j in range(3))
    rows = x.reshape(-1, 3)
    return bool(np.allclose(y, expected, rtol=1e-4, atol=1e-4)
                and np.allclose(gram, rows.T @ rows, rtol=1e-4, atol=1e-4))


def describe() -> str:
    """For benchmark records: which convolutions the fast layers use here."""
    return "oneDNN convs" if available() else "GEMM convs"


def takes(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether the oneDNN kernels run these operands: the same dtype, float32 or bfloat16, on a
    runtime whose custom calls pass the check for it (kernel gradients accumulate in float32)."""
    return x.dtype == kernel.dtype and available(x.dtype)
