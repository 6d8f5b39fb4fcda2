"""Building blocks shared by the models, numerically interchangeable with PyTorch's layers.

Every layer here keeps PyTorch's conventions where they change numbers:

* initialization as ``torch.nn`` does it (``kaiming_uniform(a=sqrt(5))``, i.e. U(±1/sqrt(fan_in))
  for weights and biases), or Glorot-uniform/zero bias as the HybridSN paper's Keras code;
* explicit symmetric padding (Flax's ``"SAME"`` pads stride-2 convs differently from PyTorch);
* BatchNorm with PyTorch's momentum (0.1) and epsilon (1e-5), normalizing by the biased batch
  variance but tracking the *unbiased* one in ``batch_stats`` as ``torch.nn.BatchNorm*d`` does.

Convolutions have two implementations with the same parameters and the same numbers:
``"reference"`` (XLA's convolutions) and ``"fast"``, chosen per backend (``resolve_impl``): on
CPU, oneDNN's convolutions through the custom call XLA's CPU runtime has
(``lightnets_jax.onednn``), else formulations that XLA compiles to much faster code than its own
convolutions there; on GPU and TPU, XLA's own (cuDNN on a GPU), which on an H200 trained HybridSN
1.8x and evaluated it 2.8x faster than those CPU formulations (docs/performance.md has the
measurements).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lightnets_jax import onednn

Array = jax.Array
Initializer = Callable[..., Array]

CONV_IMPLS = ("fast", "reference")
INIT_SCHEMES = ("torch", "glorot")


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(repr, choices))}")


def resolve_impl(impl: str) -> str:
    """The implementation that ``impl`` means on the default backend: ``"fast"`` is the CPU
    formulations on CPU and XLA's own convolutions (``"reference"``) elsewhere.

    On an H200 the CPU formulations (GEMMs over unfolded patches, shifted multiply-adds) trained
    HybridSN at 8.2k images/s against cuDNN's 14.9k and evaluated it at 23k against 64k; the
    MobileNets ran within 8 % either way (docs/performance.md, "GPU")."""
    _check_choice("conv impl", impl, CONV_IMPLS)
    return "reference" if impl == "fast" and jax.default_backend() != "cpu" else impl


def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def kernel_init(scheme: str, fan_in: int) -> Initializer:
    """Weight initializer: PyTorch's default or Glorot uniform (the HybridSN paper's Keras code)."""
    _check_choice("init scheme", scheme, INIT_SCHEMES)
    if scheme == "torch":
        return _uniform(1.0 / math.sqrt(fan_in))
    return nn.initializers.glorot_uniform()


def bias_init(scheme: str, fan_in: int) -> Initializer:
    _check_choice("init scheme", scheme, INIT_SCHEMES)
    if scheme == "torch":
        return _uniform(1.0 / math.sqrt(fan_in))
    return nn.initializers.zeros


class Conv(nn.Module):
    """A 2D or 3D convolution with PyTorch's padding and initialization (channels last).

    ``relu`` applies a ReLU after the bias; oneDNN's path fuses both into the convolution. A
    per-channel ``affine`` (multiplier, shift) given to the call, e.g. a following BatchNorm's in
    eval mode, is folded into the kernel and bias. ``fold_depth`` makes a 2D conv take a 3D
    feature map (N, D, H, W, C) as PyTorch's ``reshape(N, C * D, H, W)`` of it (HybridSN's step
    from 3D to 2D): the kernel is (kh, kw, C * D, features) in that channel order.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: int = 1
    padding: int = 0
    use_bias: bool = False
    relu: bool = False
    init_scheme: str = "torch"
    impl: str = "fast"
    dtype: jnp.dtype | None = None
    fold_depth: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False, affine: tuple[Array, Array] | None = None) -> Array:
        if self.fold_depth and (x.ndim != 5 or len(self.kernel_size) != 2):
            raise ValueError(f"Conv(fold_depth=True) is a 2D conv of a (N, D, H, W, C) input: got input shape "
                             f"{x.shape} and kernel_size {self.kernel_size}; pass a 5D input and a 2D kernel_size")
        in_features = x.shape[-1] * (x.shape[1] if self.fold_depth else 1)
        fan_in = in_features * math.prod(self.kernel_size)
        kernel = self.param(
            "kernel",
            kernel_init(self.init_scheme, fan_in),
            (*self.kernel_size, in_features, self.features),
        )
        bias = self.param("bias", bias_init(self.init_scheme, fan_in), (self.features,)) if self.use_bias else None
        if affine is not None:
            multiplier, shift = affine
            kernel, bias = kernel * multiplier, shift if bias is None else bias * multiplier + shift
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
        fast = resolve_impl(self.impl) == "fast"
        if self.fold_depth and fast and self.strides == 1 and _onednn_takes(x, kernel):
            return _onednn_depth_folded(x, kernel, bias, self.padding, self.relu)
        if self.fold_depth:
            x = fold_depth(x)
        if fast:
            return conv_fast(x, kernel, self.strides, self.padding, train, bias, self.relu)
        return _bias_relu(_conv(x, kernel, self.strides, self.padding, groups=1), bias, self.relu)


def fold_depth(x: Array) -> Array:
    """(N, D, H, W, C) -> (N, H, W, C * D), channel c * D + d: PyTorch's ``reshape(N, C * D, H, W)``
    of the (N, C, D, H, W) tensor, channels last."""
    n, depth, h, w, c = x.shape
    return jnp.transpose(x, (0, 2, 3, 4, 1)).reshape(n, h, w, c * depth)


def _bias_relu(y: Array, bias: Array | None, relu: bool) -> Array:
    y = y if bias is None else y + bias
    return jax.nn.relu(y) if relu else y


class DepthwiseConv(nn.Module):
    """A depthwise 2D convolution (PyTorch ``groups=in_channels``), kernel shaped (kh, kw, 1, C)."""

    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    padding: int = 1
    init_scheme: str = "torch"
    impl: str = "fast"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fast = resolve_impl(self.impl) == "fast"
        channels = x.shape[-1]
        kernel = self.param(
            "kernel",
            kernel_init(self.init_scheme, math.prod(self.kernel_size)),
            (*self.kernel_size, 1, channels),
        )
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if fast:
            return depthwise_conv_fast(x, kernel, self.strides, self.padding)
        return _conv(x, kernel, self.strides, self.padding, groups=channels)


class Dense(nn.Module):
    """``torch.nn.Linear``: kernel (in, out) and bias, PyTorch's or Glorot initialization.

    ``impl="fast"`` multiplies by oneDNN's matmul where it runs (``onednn``), forward and both
    gradients: with XLA's dot HybridSN's fc1 (18496 -> 256) ran at 80-170 GFLOP/s, and the training
    step is 2 % faster without it (docs/performance.md, tenth round); ``"reference"`` is XLA's dot."""

    features: int
    init_scheme: str = "torch"
    impl: str = "fast"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", kernel_init(self.init_scheme, fan_in), (fan_in, self.features))
        bias = self.param("bias", bias_init(self.init_scheme, fan_in), (self.features,))
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if resolve_impl(self.impl) == "fast" and _onednn_takes(x, kernel):
            return _onednn_pointwise(x, kernel) + bias.astype(dtype)
        return x @ kernel + bias.astype(dtype)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm{1,2,3}d`` over the last axis, running statistics in ``batch_stats``;
    ``relu=True`` applies a ReLU after it (in training as one op with a hand-written backward).

    Train mode normalizes with the biased batch variance and folds the *unbiased* variance into
    the running estimate, exactly as PyTorch does, so converted checkpoints keep evolving alike.
    Statistics are computed in float32 whatever the compute dtype.
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    relu: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        if self.use_running_average:
            return _affine_relu(x, *self._affine(scale, bias, running_mean.value, running_var.value), self.relu)
        if self.relu:
            y, mean, var = batch_norm_relu(x, scale, bias, self.epsilon)
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        else:
            mean, var = _batch_moments(x)
            y = _affine_relu(x, *self._affine(scale, bias, mean, var), relu=False)
        if not self.is_initializing():
            count = math.prod(x.shape[:-1])
            unbiased = var * (count / max(count - 1, 1))
            running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
            running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        return y

    def inference_affine(self) -> tuple[Array, Array]:
        """What eval mode applies, as a per-channel (multiplier, shift) from the stored parameters
        and running statistics: for folding into the convolution before it."""
        return self._affine(self.get_variable("params", "scale"), self.get_variable("params", "bias"),
                            self.get_variable("batch_stats", "mean"), self.get_variable("batch_stats", "var"))

    def _affine(self, scale: Array, bias: Array, mean: Array, var: Array) -> tuple[Array, Array]:
        multiplier = scale * lax.rsqrt(var + self.epsilon)
        return multiplier, bias - mean * multiplier


def _batch_moments(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and biased variance over all but the last axis, in float32."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    return mean, jnp.mean(jnp.square(x32 - mean), axes)


def _affine_relu(x: Array, multiplier: Array, shift: Array, relu: bool) -> Array:
    y = (x * multiplier.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)
    return jax.nn.relu(y) if relu else y


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm followed by ReLU: (output, batch mean, biased batch variance).

    The same numbers as autodiff of the two, with a backward that makes fewer passes over the
    activations: autodiff materializes the ReLU's masked gradient and reduces it, and the
    gradient times the normalized input, in separate passes; here the mask is recomputed inside
    each reduction and the input gradient is one elementwise pass, using
    sum(g * x_hat) = rstd * (sum(g * x) - mean * sum(g)). The mean and variance are for the running
    statistics only: their cotangents are ignored, so callers stop their gradients.
    """
    return _batch_norm_relu_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
    mean, var = _batch_moments(x)
    rstd = lax.rsqrt(var + epsilon)
    multiplier = scale * rstd
    y = _affine_relu(x, multiplier, bias - mean * multiplier, relu=True)
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


def _conv(x: Array, kernel: Array, strides: int, padding: int, groups: int) -> Array:
    spatial = x.ndim - 2
    dims = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides,) * spatial,
        padding=[(padding, padding)] * spatial,
        dimension_numbers=dims[spatial],
        feature_group_count=groups,
    )


# Bytes of input per chunk of the depthwise kernel gradient: a chunk that stays in this CPU's
# L2 cache (512 KiB-1 MiB per core) reduces 3-5x faster than the whole batch (docs/performance.md).
DEPTHWISE_GRAD_CHUNK_BYTES = 1 << 20


def depthwise_conv_fast(x: Array, kernel: Array, strides: int, padding: int) -> Array:
    """oneDNN's depthwise convolution where XLA's CPU runtime takes these operands
    (``_onednn_takes``), else the shifted multiply-adds (``depthwise_conv_shifted``); both take the
    kernel gradient from ``_depthwise_kernel_grad``."""
    if _onednn_takes(x, kernel):
        return _depthwise_onednn(x, kernel, strides, padding)
    return depthwise_conv_shifted(x, kernel, strides, padding)


def _onednn_takes(x: Array, kernel: Array) -> bool:
    """Whether the oneDNN paths run these operands: float32, or bfloat16 (``dtype=jnp.bfloat16``;
    AMX on CPUs that have it), on a runtime whose custom calls pass the check for that dtype.
    Kernel gradients are accumulated in float32 either way."""
    return x.dtype == kernel.dtype and onednn.available(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_onednn(x: Array, kernel: Array, strides: int, padding: int) -> Array:
    return onednn.convolution(x, kernel, (padding, padding), strides, groups=x.shape[-1])


def _depthwise_onednn_fwd(x, kernel, strides, padding):
    return _depthwise_onednn(x, kernel, strides, padding), (x, kernel)


def _depthwise_onednn_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    if strides == 1:
        grad_x = onednn.input_gradient(grad, kernel, (padding, padding), groups=x.shape[-1])
    else:  # a strided transpose would need a dilated input, which the custom call does not take
        _, input_vjp = jax.vjp(lambda x_: _depthwise_shifted(x_, kernel, strides, padding), x)
        (grad_x,) = input_vjp(grad)
    return grad_x, _depthwise_kernel_grad(x, grad, kernel.shape, strides, padding)


_depthwise_onednn.defvjp(_depthwise_onednn_fwd, _depthwise_onednn_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shifted(x: Array, kernel: Array, strides: int, padding: int) -> Array:
    """Depthwise conv as kh·kw shifted multiply-adds, which XLA fuses into one loop.

    XLA's CPU backend lowers ``feature_group_count == channels`` to a slow generic kernel
    (jax issue #23713); this formulation is elementwise work only and several times faster,
    forward and backward, with the same numbers up to float rounding. The kernel gradient is
    computed a few samples at a time (``_depthwise_kernel_grad``) rather than by autodiff.
    """
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
    return _windows(padded, {1: kh, 2: kw}, out_sizes, {1: strides, 2: strides})


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

    Autodiff reduces the whole batch per tap: nine passes over arrays far larger than the caches,
    at a few GB/s (3-6x PyTorch's whole depthwise layer). Scanning over chunks of
    ``DEPTHWISE_GRAD_CHUNK_BYTES`` keeps each chunk's nine reductions in cache; float32 partial sums.
    Accelerators reduce the whole batch at once (a sequential loop of small kernels would idle them).
    """
    kh, kw = kernel_shape[:2]
    batch = x.shape[0]
    chunk = _chunk_samples(x, DEPTHWISE_GRAD_CHUNK_BYTES)
    if jax.default_backend() != "cpu":
        chunk = batch

    def per_chunk(x_chunk, grad_chunk):
        return jnp.stack([jnp.sum((window * grad_chunk).astype(jnp.float32), axis=(0, 1, 2))
                          for window in _depthwise_windows(x_chunk, kh, kw, strides, padding)])

    total = _sum_over_chunks(per_chunk, x, grad, chunk, (kh * kw, x.shape[-1]))
    return total.reshape(kernel_shape).astype(x.dtype)


def _chunk_samples(array: Array, budget_bytes: int) -> int:
    """Samples per chunk: the largest power of two whose samples of ``array`` fit in
    ``budget_bytes`` (at least one), made to divide the batch."""
    per_sample = math.prod(array.shape[1:]) * array.dtype.itemsize
    return math.gcd(array.shape[0], 1 << max(0, (budget_bytes // per_sample).bit_length() - 1))


def _sum_over_chunks(per_chunk: Callable[[Array, Array], Any], x: Array, grad: Array, chunk: int, shape: Any) -> Any:
    """The float32 sum of ``per_chunk(x_chunk, grad_chunk)`` over the batch, ``chunk`` samples at a
    time, so only one chunk's temporaries live at once. ``shape``: the sum's shape, or a tuple of
    shapes when ``per_chunk`` returns a tuple of arrays.

    A ``fori_loop`` slicing ``x`` and ``grad`` where they lie: a ``lax.scan`` over their
    (batch / chunk, chunk, ...) reshapes made XLA copy both whole arrays into the loop first; the
    training step is 1.4 % (HybridSN), 7 % (MobileNetV2) and 10 % (HybridSN-BN) faster without.
    Unrolled twice: half the loop's per-iteration overhead (HybridSN's conv3 runs 128 iterations),
    and XLA may copy one chunk while oneDNN works on the other: HybridSN's step 0.931 -> 0.909 s;
    MobileNetV2 and HybridSN-BN within noise, 4 no better than 2 (docs/performance.md, tenth round).
    """
    def add_chunk(i, total):
        x_chunk, grad_chunk = (lax.dynamic_slice_in_dim(a, i * chunk, chunk) for a in (x, grad))
        return jax.tree.map(jnp.add, total, per_chunk(x_chunk, grad_chunk))

    several = isinstance(shape[0], tuple)
    zeros = tuple(jnp.zeros(s, jnp.float32) for s in shape) if several else jnp.zeros(shape, jnp.float32)
    return lax.fori_loop(0, x.shape[0] // chunk, add_chunk, zeros, unroll=2)


# Samples per chunk of the GEMM convolutions: unfolded patches of a whole batch take gigabytes
# (HybridSN's conv2: 1.6 GB at batch 128) and XLA spends most of a conv writing them to fresh memory;
# a few samples at a time stay small and are 3-4x faster forward (docs/performance.md).
# The stride-1 unfold convs (HybridSN's) run 2 samples at a time, training and inference: on a
# 2-core Xeon (2 MiB of L2 per core) training is 11-19 % faster than at 8; on the 2-core EPYC the
# per-layer sums were within 1 %. The MobileNet stems' im2col infers 8 samples at a time.
IM2COL_CHUNK = 8
UNFOLD_CHUNK = 2
# Samples per convolution of the kernel gradients that take the samples as input channels
# (``_folded_kernel_grad``, ``_merged_axis_kernel_grad``), alone at 2 / 4 / 8 / 16 samples:
# HybridSN's conv4 94.4 / 88.8 / 87.4 / 100.4 ms, conv3 119.9 / 115.6 / 117.4 / 123.0 ms, conv2
# 85.2 / 73.0 / 72.4 / 77.4 ms; HybridSN's step at 4 / 8 / 16: 0.843 / 0.861 / 0.875 s, and 0.799 s
# at 4 against 0.806 s at 8 (0.807 s with conv4's at 8, the others at 4).
SAMPLE_CHANNELS_CHUNK = 4
# Smallest GEMM contraction worth the unfold-and-shift-add formulation (docs/performance.md).
MIN_CONTRACTION = 64
# The kernel gradient as oneDNN convolutions (``_conv_kernel_grad``): output-gradient bytes per
# chunk, which are the conv's kernel (896 KiB stays in this Xeon's 2 MiB L2: 2 samples of HybridSN's
# conv1, 1 of conv2 and conv3, whose conv runs 1.4x / 2.6x slower at 2 / 4; one sample's gradient
# goes in as it lies, so conv2 at 1 instead of 2: step 0.829 -> 0.810 s and 0.787 -> 0.778 s), and
# the least conv batch (unfolded taps times C_in) the unfolding aims for.
KERNEL_GRAD_CHUNK_BYTES = 7 << 17
KERNEL_GRAD_MIN_BATCH = 16
# Output depths per block of the depth-Toeplitz 3D conv (few input channels, e.g. HybridSN's conv1).
DEPTH_BLOCK = 8


def conv_fast(x: Array, kernel: Array, strides: int, padding: int, train: bool = False,
              bias: Array | None = None, relu: bool = False) -> Array:
    """The fast convolution (plus ``bias``, then ReLU if ``relu``): oneDNN's where XLA's CPU runtime
    has it (``onednn``), else GEMMs.

    oneDNN takes stride-1 float32 or bfloat16 convolutions: with more than one tap (every HybridSN
    conv) as a convolution with the bias and ReLU fused in, forward and input gradient, its kernel
    gradient from oneDNN convolutions (3D; HybridSN's 2D conv4 takes ``_onednn_depth_folded``) or
    GEMMs (2D) (``_onednn_conv``); 1x1 ones as matmuls
    (``_onednn_pointwise``). Strided convolutions, other dtypes and other backends use
    ``conv_gemm``.
    """
    spatial = x.ndim - 2
    if strides == 1 and _onednn_takes(x, kernel):
        if math.prod(kernel.shape[:spatial]) > 1:
            return _onednn_conv(x, kernel, bias, padding, relu)
        if not padding:
            return _bias_relu(_onednn_pointwise(x, kernel), bias, relu)
    return _bias_relu(conv_gemm(x, kernel, strides, padding, train), bias, relu)


@jax.custom_vjp
def _onednn_pointwise(x: Array, kernel: Array) -> Array:
    """A 1x1 convolution as oneDNN matmuls, forward and both gradients."""
    rows = x.reshape(-1, x.shape[-1])
    return onednn.matmul(rows, kernel.reshape(kernel.shape[-2:])).reshape(*x.shape[:-1], kernel.shape[-1])


def _onednn_pointwise_fwd(x, kernel):
    return _onednn_pointwise(x, kernel), (x, kernel)


def _onednn_pointwise_bwd(residuals, grad):
    x, kernel = residuals
    rows, grad_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    grad_x = onednn.matmul(grad_rows, kernel.reshape(kernel.shape[-2:]), transpose_b=True).reshape(x.shape)
    grad_kernel = onednn.matmul(rows, grad_rows, transpose_a=True, out_dtype=jnp.float32)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


_onednn_pointwise.defvjp(_onednn_pointwise_fwd, _onednn_pointwise_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_conv(x: Array, kernel: Array, bias: Array | None, padding: int, relu: bool) -> Array:
    return onednn.convolution(x, kernel, (padding,) * (x.ndim - 2), bias=bias, relu=relu)


def _onednn_conv_fwd(x, kernel, bias, padding, relu):
    y = _onednn_conv(x, kernel, bias, padding, relu)
    return y, (x, kernel, bias is not None, y if relu else None)


def _onednn_conv_bwd(padding, relu, residuals, grad):
    # Input gradient: another oneDNN convolution (XLA drops it when nobody needs it, e.g. for the
    # network's input). Kernel gradient: in 3D oneDNN convolutions, over a few samples as input
    # channels with W and C_in merged into one axis where kw · C_in fills a 16-wide vector
    # (``_merged_axis_kernel_grad``), else over partly unfolded input (``_conv_kernel_grad``); in
    # 2D the unfold formulation's GEMMs, or autodiff of ``conv_gemm`` for thin contractions (RGB
    # stems), which measured faster there (docs/performance.md).
    x, kernel, has_bias, y = residuals
    spatial = x.ndim - 2
    # Behind a fused 3D ReLU the bias gradient is summed chunk by chunk in the kernel gradient's
    # loop, from data it has just brought into cache, instead of in a pass over the whole
    # gradient: HybridSN's step 0.933 -> 0.913 s. Behind BatchNorm (no fused ReLU) that was 2 %
    # slower (1.073 -> 1.094 s), so it keeps the pass.
    bias_in_loop = has_bias and spatial == 3 and y is not None
    grad, grad_bias = _through_relu_and_bias(grad, y, has_bias and not bias_in_loop)
    grad_x = onednn.input_gradient(grad, kernel, (padding,) * spatial)
    if spatial == 3:
        merge = kernel.shape[2] * kernel.shape[3] >= onednn.PACKED_CHANNELS
        kernel_grad = _merged_axis_kernel_grad if merge else _conv_kernel_grad
        grad_kernel, loop_bias = kernel_grad(x, grad, kernel.shape, padding, bias_in_loop)
        return grad_x, grad_kernel, loop_bias if bias_in_loop else grad_bias
    if math.prod(kernel.shape[1:spatial]) * kernel.shape[-2] >= MIN_CONTRACTION:
        return grad_x, _unfold_kernel_grad(x, grad, kernel.shape, padding), grad_bias
    _, kernel_vjp = jax.vjp(lambda k: conv_gemm(x, k, 1, padding, train=True), kernel)
    return grad_x, kernel_vjp(grad)[0], grad_bias


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def _through_relu_and_bias(grad: Array, y: Array | None, with_bias: bool) -> tuple[Array, Array | None]:
    """The gradient before a fused ReLU (``y``, its saved output, None without one) and, if
    ``with_bias``, the bias gradient (the sum over every axis but the channels), else None, for
    the oneDNN convolutions' VJPs."""
    if y is not None:
        grad = jnp.where(y > 0, grad, 0)
    return grad, jnp.sum(grad, axis=tuple(range(grad.ndim - 1))) if with_bias else None


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_depth_folded(x: Array, kernel: Array, bias: Array | None, padding: int, relu: bool) -> Array:
    """``conv_fast(fold_depth(x), kernel, ...)`` without moving ``x``: a 3D convolution whose kernel
    spans the whole depth (its taps reordered from the folded channels), output depth 1. Forward
    and input gradient by oneDNN; the kernel gradient by ``_folded_kernel_grad``'s convolutions. Saves
    HybridSN's conv4 two whole-batch transposes (forward, and the input gradient back) and the
    kernel gradient's copy of the folded input (docs/performance.md)."""
    y = onednn.convolution(x, _depth_kernel(x, kernel), (0, padding, padding), bias=bias, relu=relu)
    return y.reshape(y.shape[0], *y.shape[2:])


def _depth_kernel(x: Array, kernel: Array) -> Array:
    """The folded 2D kernel (kh, kw, C * D, O) as the 3D one (D, kh, kw, C, O)."""
    depth, channels = x.shape[1], x.shape[-1]
    kh, kw, _, features = kernel.shape
    return jnp.transpose(kernel.reshape(kh, kw, channels, depth, features), (3, 0, 1, 2, 4))


def _onednn_depth_folded_fwd(x, kernel, bias, padding, relu):
    y = _onednn_depth_folded(x, kernel, bias, padding, relu)
    return y, (x, kernel, bias is not None, y if relu else None)


def _onednn_depth_folded_bwd(padding, relu, residuals, grad):
    x, kernel, has_bias, y = residuals
    grad, grad_bias = _through_relu_and_bias(grad, y, has_bias)
    grad_x = onednn.input_gradient(grad[:, None], _depth_kernel(x, kernel), (0, padding, padding))
    return grad_x, _folded_kernel_grad(x, grad, kernel.shape, padding), grad_bias


_onednn_depth_folded.defvjp(_onednn_depth_folded_fwd, _onednn_depth_folded_bwd)


def _conv_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int,
                      with_bias: bool = False) -> tuple[Array, Array | None]:
    """The kernel gradient of a stride-1 convolution as oneDNN convolutions, a few samples at a time.

    dK[t, c, o] = sum over samples and positions p of x[p + t, c] * grad[p, o] is itself a
    convolution: the output gradient is its kernel (its output channels are the conv's C_out), the
    input its image, the conv's output the taps. Run as one directly (all axes spatial) oneDNN is
    3x slower than GEMMs, so trailing spatial axes are unfolded (their taps times C_in become the
    conv's batch, their output positions times the chunk's samples its input channels): the last,
    and more while that batch is below ``KERNEL_GRAD_MIN_BATCH``; the first stays spatial, and the
    kept axes go in order of taps. The unfolded copies are taps-times smaller than the GEMM
    formulation's, and ``KERNEL_GRAD_CHUNK_BYTES`` of output gradient per chunk keep the conv's
    kernel in L2. HybridSN's conv1-conv3 at batch 128: 64/197/233 ms -> 48/126/205 ms
    (docs/performance.md, ninth round; the tenth's packing, axis order and batch placement below).
    Returns the kernel gradient and, ``with_bias``, the bias gradient (``grad`` summed over all
    but its channels), else None. HybridSN's conv2 and conv3 have since moved to
    ``_merged_axis_kernel_grad`` (faster wherever kw · C_in fills oneDNN's 16-wide vectors); conv1
    (C_in 1) stays here, and the measurements below that name conv2 and conv3 are the history of
    this formulation's one-sample and blocked paths, which the tests keep covering.
    """
    spatial = x.ndim - 2
    if padding:
        x = jnp.pad(x, ((0, 0),) + ((padding, padding),) * spatial + ((0, 0),))
    cin, cout = kernel_shape[-2:]
    # Unfold the last axis, then more trailing ones while the conv's batch is small; axis 0 stays.
    unfolded = [spatial - 1]
    while unfolded[0] > 1 and math.prod(kernel_shape[a] for a in unfolded) * cin < KERNEL_GRAD_MIN_BATCH:
        unfolded.insert(0, unfolded[0] - 1)
    # The kept axis with the most taps last: oneDNN blocks the output along its last spatial axis,
    # and 5 positions there instead of 3 make conv2's (taps 5, 3) 121 -> 97 ms.
    kept = sorted((a for a in range(spatial) if a not in unfolded), key=lambda a: kernel_shape[a])
    out_sizes = grad.shape[1:-1]
    # 8 output channels (HybridSN's conv1) run at half vector width: pack pairs of the gradient's
    # positions along the last kept axis as 16 channels, the kernel's taps there 2 apart; the
    # conv's output then holds both shifts, summed after the loop (47.7 -> 32.3 ms).
    last = kept[-1]
    pack = 2 if 2 * cout == onednn.PACKED_CHANNELS and out_sizes[last] % 2 == 0 else 1
    batch = math.prod(kernel_shape[a] for a in unfolded) * cin
    # With under 4 output positions along that axis (conv3's 3), the conv's batch goes there too,
    # as an extra spatial axis the kernel spans 1 of, in blocks of up to 12 (the image's rows for
    # one output row then stay in L2): conv3's kernel gradient 158.6 -> 142.0 ms, HybridSN's step
    # 0.969 -> 0.950 s (HybridSN-BN's within noise). conv2 (5 positions) is slower so.
    block = max(d for d in range(1, 13) if batch % d == 0) if kernel_shape[last] + pack - 1 < 4 else 1

    def per_chunk(x_chunk, grad_chunk):
        bias = (jnp.sum(grad_chunk, axis=tuple(range(grad_chunk.ndim - 1)), dtype=jnp.float32),) if with_bias else ()
        return (kernel_chunk(x_chunk, *conv_kernel(grad_chunk)), *bias)

    def kernel_chunk(x_chunk, weights, kernel_axes):
        # (chunk, *spatial, C_in) -> (C_in, *kept, chunk, *unfolded): the conv's channels innermost.
        image = jnp.transpose(x_chunk, [spatial + 1, *(1 + a for a in kept), 0, *(1 + a for a in unfolded)])
        windows = [image[(Ellipsis, *(slice(t, t + out_sizes[a]) for t, a in zip(taps, unfolded)))]
                   for taps in itertools.product(*(range(kernel_shape[a]) for a in unfolded))]
        image = jnp.stack(windows).reshape(batch, *(x.shape[1 + a] for a in kept), -1)
        dilations = (1,) * (len(kept) - 1) + (pack,)
        if block > 1:  # the batch in blocks along an extra last axis, which the kernel spans 1 of
            image = jnp.moveaxis(image.reshape(batch // block, block, *image.shape[1:]), 1, -2)
            dilations += (1,)
        elif kernel_axes is not None:  # the kernel's sample axis (of 1) spans a leading image axis of 1
            image, dilations = image[:, None], (1,) + dilations
        y = onednn.convolution(image, weights, (0,) * len(dilations), out_dtype=jnp.float32, dilations=dilations,
                               kernel_axes=kernel_axes)
        # -> (unfolded taps · C_in, *kept taps (the last pack - 1 more), pack · C_out)
        if block > 1:
            return jnp.moveaxis(y, -2, 1).reshape(batch, *y.shape[1:-2], pack * cout)
        return y[:, 0] if kernel_axes is not None else y

    def conv_kernel(grad_chunk):
        """The conv's kernel from a chunk of the output gradient and its ``kernel_axes`` (None:
        in order): taps *kept (and 1 along the block's axis if ``block`` > 1), channels chunk ·
        unfolded positions -> pack · C_out."""
        if grad_chunk.shape[0] == 1 and pack == 1:
            # One sample, unpacked: the gradient as it lies, the kept axes leading, the unfolded
            # ones merged into the channels and the sample's axis of 1 spanning the block's (or a
            # leading image axis of 1), described by kernel_axes since oneDNN copies every kernel
            # into its own layout anyway. XLA then slices each chunk once for the conv and the
            # bias sum: HybridSN's step 0.824 -> 0.812 s (conv3), 0.800 -> 0.789 s (conv2).
            weights = grad_chunk.reshape(1, *out_sizes[:len(kept)], -1, cout)
            taps = [1 + a for a in kept]
            taps = taps + [0] if block > 1 else [0] + taps
            return weights, (*taps, len(kept) + 1, len(kept) + 2)
        weights = jnp.transpose(grad_chunk, [*(1 + a for a in kept), 0, *(1 + a for a in unfolded), spatial + 1])
        weights = weights.reshape(*(out_sizes[a] for a in kept[:-1]), out_sizes[last] // pack, pack, -1, cout)
        weights = jnp.swapaxes(weights, -3, -2).reshape(*weights.shape[:-3], -1, pack * cout)
        return (weights[..., None, :, :] if block > 1 else weights), None

    chunk = _chunk_samples(grad, KERNEL_GRAD_CHUNK_BYTES)
    kept_taps = [kernel_shape[a] for a in kept]
    total_shape = (batch, *kept_taps[:-1], kept_taps[-1] + pack - 1, pack * cout)
    total, *bias = _sum_over_chunks(per_chunk, x, grad, chunk, (total_shape, (cout,))[:1 + with_bias])
    total = total.reshape(*total_shape[:-1], pack, cout)
    # Shift j of the packed positions sits j taps further along the last kept axis.
    total = sum(total[..., j:j + kept_taps[-1], j, :] for j in range(pack))
    total = total.reshape(*(kernel_shape[a] for a in unfolded), cin, *kept_taps, cout)
    # Axes (*unfolded, C_in, *kept, C_out) -> the kernel's (*spatial, C_in, C_out).
    order = [*unfolded, spatial, *kept]
    total = jnp.transpose(total, [order.index(a) for a in range(spatial)] + [len(unfolded), spatial + 1])
    return total.astype(x.dtype), (bias[0].astype(x.dtype) if with_bias else None)


def _merged_axis_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int,
                             with_bias: bool = False) -> tuple[Array, Array | None]:
    """The kernel gradient of a stride-1 3D convolution as oneDNN convolutions over
    ``SAMPLE_CHANNELS_CHUNK`` samples at a time, the samples as their input channels:

        dK[a, b, c, i, o] = sum over n, d, h, w of x[n, d + a, h + b, w + c, i] * grad[n, d, h, w, o]

    is a 3D convolution of the chunk moved to (D, H, W · C_in, N) (a 2D transpose: the samples
    innermost; W and C_in then one axis) with the output gradient as its kernel, as it lies
    (``kernel_axes``): taps (OD, OH, OW), the last C_in apart along the merged axis, N -> O
    channels. Its output (kd, kh, kw · C_in, O) is the kernel gradient, with kw · C_in positions
    along its last axis for oneDNN to block over (48 for HybridSN's conv3, 24 for conv2) and no
    multiply-adds on zeros, where ``_conv_kernel_grad`` copies shifted windows of each sample
    with C_in as the batch. Alone, conv3 154.0 -> 115.6 ms and conv2 101.7 -> 72.4 ms
    (docs/performance.md, twelfth round); conv1 (C_in 1: 3 positions) 32.7 -> 66.5, so it keeps
    ``_conv_kernel_grad``. Returns the kernel gradient and, ``with_bias``, the bias gradient summed
    in the same loop, else None.
    """
    if padding:
        x = jnp.pad(x, ((0, 0),) + ((padding, padding),) * 3 + ((0, 0),))
    _, depth, height, width, cin = x.shape
    cout = kernel_shape[-1]

    def per_chunk(x_chunk, grad_chunk):
        image = jnp.transpose(x_chunk, (1, 2, 3, 4, 0)).reshape(1, depth, height, width * cin, -1)
        kernel = onednn.convolution(image, grad_chunk, (0, 0, 0), out_dtype=jnp.float32, dilations=(1, 1, cin),
                                    kernel_axes=(1, 2, 3, 0, 4))
        bias = (jnp.sum(grad_chunk, axis=(0, 1, 2, 3), dtype=jnp.float32),) if with_bias else ()
        return (kernel, *bias)

    chunk = math.gcd(x.shape[0], SAMPLE_CHANNELS_CHUNK)
    total_shape = (1, *kernel_shape[:2], kernel_shape[2] * cin, cout)
    total, *bias = _sum_over_chunks(per_chunk, x, grad, chunk, (total_shape, (cout,))[:1 + with_bias])
    return total.reshape(kernel_shape).astype(x.dtype), (bias[0].astype(x.dtype) if with_bias else None)


def _unfold_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int) -> Array:
    """The kernel gradient of a stride-1 convolution as ``_unfold_shift_add``'s transpose, a few
    samples at a time: the input unfolded over the trailing spatial axes, the output gradient
    shifted once per first-axis tap, one oneDNN matmul (25 % faster than XLA's dot at the shapes of
    HybridSN's conv3/conv4, which have since moved to convolutions) accumulated in float32."""
    spatial = grad.ndim - 2
    if padding:
        x = jnp.pad(x, ((0, 0),) + ((padding, padding),) * spatial + ((0, 0),))
    first, rest = kernel_shape[0], kernel_shape[1:spatial]
    cin, cout = kernel_shape[-2:]
    out_sizes = grad.shape[1:-1]

    def per_chunk(x_chunk, grad_chunk):
        cols = _unfold_trailing(x_chunk, rest, out_sizes)
        shifted = _shifted_taps(grad_chunk, out_sizes[0], first)
        return onednn.matmul(cols.reshape(-1, cols.shape[-1]), shifted.reshape(-1, first * cout), transpose_a=True,
                             out_dtype=jnp.float32)

    chunk = math.gcd(x.shape[0], UNFOLD_CHUNK)
    total = _sum_over_chunks(per_chunk, x, grad, chunk, (math.prod(rest) * cin, first * cout))
    # Rows (*rest, C_in), columns (first, C_out), as ``_unfold_shift_add``'s matrix.
    return jnp.moveaxis(total.reshape(*rest, cin, first, cout), -2, 0).astype(x.dtype)


def _folded_kernel_grad(x: Array, grad: Array, kernel_shape: tuple[int, ...], padding: int) -> Array:
    """The kernel gradient of a stride-1 2D convolution of ``fold_depth(x)`` as oneDNN convolutions
    over ``SAMPLE_CHANNELS_CHUNK`` samples at a time, the samples as their input channels:

        dK[a, b, (c, d), o] = sum over n, h, w of x[n, d, h + a, w + b, c] * grad[n, h, w, o]

    is a 3D convolution of the chunk moved to (D, H, W, C, N) (a 2D transpose: the samples
    innermost) with the output gradient as its kernel (taps (OH, OW, 1), N -> O channels, passed
    as it lies: ``kernel_axes``). Its output (D, kh, kw, C, O) has C_in positions along its last
    axis for oneDNN to block over, and no multiply-adds on zeros. HybridSN's conv4 alone 123 ->
    87 ms (docs/performance.md, eleventh round) against one matmul per 2 samples over the input's
    positions and the gradient shifted by every tap (12 % of them on zeros, and a copy of both).
    """
    kh, kw, _, cout = kernel_shape
    _, depth, _, _, cin = x.shape

    def per_chunk(x_chunk, grad_chunk):
        image = jnp.transpose(x_chunk, (1, 2, 3, 4, 0))
        return onednn.convolution(image, grad_chunk[:, :, :, None], (padding, padding, 0), out_dtype=jnp.float32,
                                  kernel_axes=(1, 2, 3, 0, 4))

    chunk = math.gcd(x.shape[0], SAMPLE_CHANNELS_CHUNK)
    total = _sum_over_chunks(per_chunk, x, grad, chunk, (depth, kh, kw, cin, cout))
    # (D, kh, kw, C, O) -> (kh, kw, C * D, O), the folded channel c * D + d.
    return jnp.transpose(total, (1, 2, 3, 0, 4)).reshape(kh, kw, cin * depth, cout).astype(x.dtype)


def conv_gemm(x: Array, kernel: Array, strides: int, padding: int, train: bool = False) -> Array:
    """A convolution as matrix products, choosing the formulation that XLA runs fastest on CPU.

    XLA's CPU convolutions run far below its matrix-product speed, worst for 3D convs with few
    channels (jax issue #13800). Each formulation below is a few GEMMs over a (partly) unfolded
    input, applied a few samples at a time under ``jax.checkpoint`` so the backward recomputes
    the unfolded chunk instead of storing gigabytes of it (docs/performance.md has the numbers):

    * 1x1: one GEMM, nothing to unfold;
    * stride 1, 3D, few input channels: depth-Toeplitz (``_depth_toeplitz``);
    * stride 1, enough channels: unfold the trailing spatial axes, shift-and-add over the first
      (``_unfold_shift_add``);
    * strided, or 2D with few channels (an RGB stem): full im2col (``_im2col``), in chunks only
      at inference, as measured fastest for the MobileNet stems.

    ``conv_fast`` prefers oneDNN's convolutions where XLA's runtime has them; these formulations
    are its fallback, and its oneDNN path's kernel gradient.
    """
    spatial = x.ndim - 2
    taps = kernel.shape[:spatial]
    cin, cout = kernel.shape[-2:]
    if padding:
        x = jnp.pad(x, ((0, 0),) + ((padding, padding),) * spatial + ((0, 0),))
    out_sizes = tuple((x.shape[1 + a] - taps[a]) // strides + 1 for a in range(spatial))
    if math.prod(taps) == 1:
        cols = x[(slice(None),) + (slice(None, None, strides),) * spatial]
        return (cols.reshape(-1, cin) @ kernel.reshape(cin, cout)).reshape(x.shape[0], *out_sizes, cout)
    # im2col without remat: the whole batch in training, IM2COL_CHUNK samples at a time in inference.
    im2col_chunk = None if train else IM2COL_CHUNK
    if strides != 1:
        return _chunked(partial(_im2col, kernel=kernel, strides=strides, out_sizes=out_sizes), x,
                        out_sizes, cout, im2col_chunk, remat=False)
    chunk = UNFOLD_CHUNK
    # Unfolding all but the first axis gives a contraction of taps[1:]·C; below MIN_CONTRACTION the
    # GEMMs are too thin to run well (HybridSN's conv1: 3·3·1 = 9).
    thin = math.prod(taps[1:]) * cin < MIN_CONTRACTION
    if spatial == 3 and thin:
        return _chunked(partial(_depth_toeplitz, kernel=kernel, out_sizes=out_sizes), x, out_sizes, cout, chunk)
    if not thin:
        return _chunked(partial(_unfold_shift_add, kernel=kernel, out_sizes=out_sizes), x, out_sizes, cout, chunk)
    return _chunked(partial(_im2col, kernel=kernel, strides=1, out_sizes=out_sizes), x, out_sizes, cout,
                    im2col_chunk, remat=False)


def _chunked(fn: Callable, x: Array, out_sizes: tuple[int, ...], cout: int, chunk: int | None,
             remat: bool = True) -> Array:
    """``fn`` over ``chunk`` samples at a time (``lax.map``; None: the whole batch at once),
    rematerialized in the backward."""
    batch = x.shape[0]
    chunk = batch if chunk is None else math.gcd(batch, chunk)
    fn = jax.checkpoint(fn) if remat else fn
    out = lax.map(fn, x.reshape(batch // chunk, chunk, *x.shape[1:]))
    return out.reshape(batch, *out_sizes, cout)


def _windows(x: Array, axes_taps: dict[int, int], out_sizes: dict[int, int], strides: dict[int, int]) -> list[Array]:
    """Every shifted window of ``x`` over the given axes, in row-major tap order."""
    axes = sorted(axes_taps)
    windows = []
    for offsets in itertools.product(*(range(axes_taps[a]) for a in axes)):
        start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
        for a, o in zip(axes, offsets):
            start[a], limit[a], step[a] = o, o + (out_sizes[a] - 1) * strides[a] + 1, strides[a]
        windows.append(lax.slice(x, start, limit, step))
    return windows


def _unfold(x: Array, axes_taps: dict[int, int], out_sizes: dict[int, int], strides: dict[int, int]) -> Array:
    """The windows of ``_windows`` side by side on the channel axis (tap-major, channel-minor)."""
    return jnp.concatenate(_windows(x, axes_taps, out_sizes, strides), axis=-1)


def _im2col(chunk: Array, kernel: Array, strides: int, out_sizes: tuple[int, ...]) -> Array:
    """Every tap into the contraction axis (order (kd, kh, kw, C), the kernel's), one GEMM."""
    spatial = chunk.ndim - 2
    axes = range(1, spatial + 1)
    cols = _unfold(chunk, dict(zip(axes, kernel.shape[:spatial])), dict(zip(axes, out_sizes)),
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
    cols = _unfold_trailing(chunk, rest, out_sizes)
    # (first, *rest, C, O) -> (*rest, C, first, O): one column block per first-axis tap.
    matrix = jnp.moveaxis(kernel, 0, -2).reshape(math.prod(rest) * cin, first * cout)
    z = (cols.reshape(-1, cols.shape[-1]) @ matrix).reshape(*cols.shape[:-1], first, cout)
    return _shift_add(z, out_sizes[0], first)


def _unfold_trailing(chunk: Array, taps: tuple[int, ...], out_sizes: tuple[int, ...]) -> Array:
    """``_unfold`` over every spatial axis but the first (stride 1): ``taps`` of those axes,
    ``out_sizes`` of every spatial axis."""
    axes = range(2, chunk.ndim - 1)
    return _unfold(chunk, dict(zip(axes, taps)), dict(zip(axes, out_sizes[1:])), dict.fromkeys(axes, 1))


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
    # Autodiff's sum of ``taps`` padded copies compiles to a slow loop (5-9 % of a HybridSN
    # training step, docs/performance.md).
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
    """3D conv with few input channels as one GEMM per block of ``DEPTH_BLOCK`` output depths.

    With one input channel (HybridSN's conv1) im2col gives a contraction of only 7·3·3 = 63 and
    copies the input 63 times. Here each row holds a block's whole input depth span (block + kd - 1
    planes of 3x3 windows), and a banded (Toeplitz) kernel maps it to all the block's output
    depths at once: about twice the multiplications, far less memory traffic.
    """
    kd, kh, kw, cin, cout = kernel.shape
    od = out_sizes[0]
    block = min(DEPTH_BLOCK, od)
    blocks = -(-od // block)
    span = block + kd - 1
    needed = blocks * block + kd - 1
    if needed > chunk.shape[1]:
        chunk = jnp.pad(chunk, ((0, 0), (0, needed - chunk.shape[1]), (0, 0), (0, 0), (0, 0)))
    # Rows: (depth within the span, kh, kw, C) for every block start (depth stride = block).
    cols = _unfold(chunk, {1: span, 2: kh, 3: kw}, {1: blocks, 2: out_sizes[1], 3: out_sizes[2]},
                   {1: block, 2: 1, 3: 1})
    # toeplitz[j, i, k, c, b, o] = kernel[j - b, i, k, c, o] for 0 <= j - b < kd, else 0.
    toeplitz = onednn.depth_banded(kernel, block)
    y = cols.reshape(-1, cols.shape[-1]) @ toeplitz.reshape(span * kh * kw * cin, block * cout)
    y = y.reshape(chunk.shape[0], blocks, *out_sizes[1:], block, cout)
    return jnp.moveaxis(y, -2, 2).reshape(chunk.shape[0], blocks * block, *out_sizes[1:], cout)[:, :od]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count as the MobileNet reference code does (never below 90%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_input(x: Array, *, rank: int, expected: dict[int, int], model: str, hint: str) -> None:
    """Fail early, naming the expected and the given shape, instead of deep inside XLA."""
    if x.ndim != rank:
        raise ValueError(
            f"{model} expects a rank-{rank} input {hint}, got shape {tuple(x.shape)} (rank {x.ndim})"
        )
    for axis, size in expected.items():
        if x.shape[axis] != size:
            raise ValueError(
                f"{model} expects {hint} with size {size} on axis {axis % rank}, "
                f"got shape {tuple(x.shape)}"
            )
