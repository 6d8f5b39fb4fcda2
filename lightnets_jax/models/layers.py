"""The Flax layers the models are built from, numerically interchangeable with PyTorch's:

* initialization as ``torch.nn`` does it (U(±1/sqrt(fan_in)) for weights and biases), or
  Glorot-uniform with zero biases as the HybridSN paper's Keras code;
* explicit symmetric padding (Flax's ``"SAME"`` pads stride-2 convs differently from PyTorch);
* BatchNorm with PyTorch's momentum (0.1) and epsilon (1e-5), normalizing by the biased batch
  variance but tracking the *unbiased* one in ``batch_stats``.

Each layer holds its parameters and calls a kernel in ``lightnets_jax.ops`` with the concrete
implementation (``impl``) that ``models.create`` chose for the backend: ``"reference"`` (XLA's
own, portable; the default), ``"gemm"`` or ``"onednn"`` (the CPU kernels), same numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lightnets_jax import ops
from lightnets_jax.ops import batch_norm as bn
from lightnets_jax.ops.config import check_impl

Array = jax.Array
Initializer = Callable[..., Array]

INIT_SCHEMES = ("torch", "glorot")


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(repr, choices))}")


# Every draw is made over the flattened shape, then reshaped: the same numbers (threefry counts
# over the flat index; tests/test_layers.py checks), but XLA compiled each rank-4/5 kernel's draw
# in 0.5-3 s, which was most of a model's init.
def _uniform(bound: float) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)

    return init


def glorot_uniform(key, shape, dtype=jnp.float32) -> Array:
    """``nn.initializers.glorot_uniform()``'s numbers, its arithmetic step for step."""
    receptive_field = math.prod(shape) / shape[-2] / shape[-1]
    fan_in, fan_out = shape[-2] * receptive_field, shape[-1] * receptive_field
    variance = jnp.array(1.0 / ((fan_in + fan_out) / 2), dtype=dtype)
    return (jax.random.uniform(key, (math.prod(shape),), dtype, -1) * jnp.sqrt(3 * variance)).reshape(shape)


def kernel_init(scheme: str, fan_in: int) -> Initializer:
    """Weight initializer: PyTorch's default or Glorot uniform (the HybridSN paper's Keras code)."""
    _check_choice("init scheme", scheme, INIT_SCHEMES)
    if scheme == "torch":
        return _uniform(1.0 / math.sqrt(fan_in))
    return glorot_uniform


def bias_init(scheme: str, fan_in: int) -> Initializer:
    _check_choice("init scheme", scheme, INIT_SCHEMES)
    if scheme == "torch":
        return _uniform(1.0 / math.sqrt(fan_in))
    return nn.initializers.zeros


def _cast(dtype, *arrays):
    return tuple(None if a is None else a.astype(dtype) for a in arrays)


class Conv(nn.Module):
    """A 2D or 3D convolution with PyTorch's padding and initialization (channels last).

    The call's ``activation`` ("relu", "relu6") follows the bias (fused into oneDNN's kernels).
    A per-channel ``affine`` (multiplier, shift) given to the call, e.g. a following BatchNorm's
    in eval mode, is folded into the kernel and bias. ``fold_depth`` makes a 2D conv take a 3D
    feature map (N, D, H, W, C) as PyTorch's ``reshape(N, C * D, H, W)`` of it (HybridSN's step
    from 3D to 2D): the kernel is (kh, kw, C * D, features) in that channel order.
    """

    features: int
    kernel_size: tuple[int, ...]
    strides: int = 1
    padding: int = 0
    use_bias: bool = False
    init_scheme: str = "torch"
    impl: str = "reference"
    dtype: jnp.dtype | None = None
    fold_depth: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False, affine: tuple[Array, Array] | None = None,
                 activation: str | None = None) -> Array:
        check_impl(self.impl)
        if self.fold_depth and (x.ndim != 5 or len(self.kernel_size) != 2):
            raise ValueError(f"Conv(fold_depth=True) is a 2D conv of a (N, D, H, W, C) input: got input shape "
                             f"{x.shape} and kernel_size {self.kernel_size}; pass a 5D input and a 2D kernel_size")
        in_features = x.shape[-1] * (x.shape[1] if self.fold_depth else 1)
        fan_in = in_features * math.prod(self.kernel_size)
        kernel = self.param("kernel", kernel_init(self.init_scheme, fan_in),
                            (*self.kernel_size, in_features, self.features))
        bias = self.param("bias", bias_init(self.init_scheme, fan_in), (self.features,)) if self.use_bias else None
        if affine is not None:
            kernel, bias = bn.fold_into_conv(kernel, bias, *affine)
        x, kernel, bias = _cast(self.dtype or x.dtype, x, kernel, bias)
        return ops.conv(x, kernel, bias, strides=self.strides, padding=self.padding, activation=activation,
                        impl=self.impl, train=train, fold_depth=self.fold_depth)


class DepthwiseConv(nn.Module):
    """A depthwise 2D convolution (PyTorch ``groups=in_channels``), kernel shaped (kh, kw, 1, C).

    Called as :class:`Conv` is (``affine`` folded in, ``activation`` after it; ``train`` is
    taken for the same call, the depthwise kernels do not chunk differently in training)."""

    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    padding: int = 1
    init_scheme: str = "torch"
    impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False, affine: tuple[Array, Array] | None = None,
                 activation: str | None = None) -> Array:
        check_impl(self.impl)
        kernel = self.param("kernel", kernel_init(self.init_scheme, math.prod(self.kernel_size)),
                            (*self.kernel_size, 1, x.shape[-1]))
        bias = None
        if affine is not None:
            kernel, bias = bn.fold_into_conv(kernel, None, *affine)
        x, kernel, bias = _cast(self.dtype or x.dtype, x, kernel, bias)
        return ops.depthwise_conv(x, kernel, self.strides, self.padding, self.impl, bias, activation)


class Dense(nn.Module):
    """``torch.nn.Linear``: kernel (in, out) and bias, PyTorch's or Glorot initialization."""

    features: int
    init_scheme: str = "torch"
    impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        check_impl(self.impl)
        fan_in = x.shape[-1]
        kernel = self.param("kernel", kernel_init(self.init_scheme, fan_in), (fan_in, self.features))
        bias = self.param("bias", bias_init(self.init_scheme, fan_in), (self.features,))
        return ops.dense(*_cast(self.dtype or x.dtype, x, kernel, bias), self.impl)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm{1,2,3}d`` over the last axis, running statistics in ``batch_stats``,
    then ``activation`` ("relu", "relu6" or None). ``fused_relu_train``: in training, BatchNorm
    and ReLU as one op with a hand-written backward (``ops.batch_norm.batch_norm_relu``), which
    measured faster behind HybridSN's 3D convs and slower in MobileNetV1.

    Train mode normalizes with the biased batch variance and folds the *unbiased* variance into
    the running estimate, exactly as PyTorch does, so converted checkpoints keep evolving alike.
    Statistics are computed in float32 whatever the compute dtype.
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    activation: str | None = None
    fused_relu_train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        if self.use_running_average:
            multiplier, shift = bn.affine(scale, bias, running_mean.value, running_var.value, self.epsilon)
            return bn.affine_activation(x, multiplier, shift, self.activation)
        if self.fused_relu_train and self.activation != "relu":
            raise ValueError(f"BatchNorm(fused_relu_train=True) fuses a ReLU, but activation={self.activation!r}; "
                             "pass activation='relu', or fused_relu_train=False")
        if self.fused_relu_train:
            y, mean, var = bn.batch_norm_relu(x, scale, bias, self.epsilon)
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        else:
            y, mean, var = bn.batch_norm_train(x, scale, bias, self.epsilon, self.activation)
        if not self.is_initializing():
            count = math.prod(x.shape[:-1])
            unbiased = var * (count / max(count - 1, 1))
            running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
            running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        return y

    def inference_affine(self) -> tuple[Array, Array]:
        """What eval mode applies, as a per-channel (multiplier, shift) from the stored parameters
        and running statistics: for folding into the convolution before it."""
        return bn.affine(self.get_variable("params", "scale"), self.get_variable("params", "bias"),
                         self.get_variable("batch_stats", "mean"), self.get_variable("batch_stats", "var"),
                         self.epsilon)


def conv_bn(conv: Conv | DepthwiseConv, norm: BatchNorm, x: Array, train: bool) -> Array:
    """``norm(conv(x))``, the norm's activation included. At inference on the CPU kernels the
    BatchNorm's running affine folds into the conv's kernel and bias, and its activation into the
    conv's kernel: one pass over the output instead of three. The ``"reference"`` implementation
    keeps PyTorch's order of operations (the parity tests' path)."""
    if not train and conv.impl != "reference" and not conv.parent.is_initializing():
        return conv(x, train, affine=norm.inference_affine(), activation=norm.activation)
    return norm(conv(x, train))


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


def check_image_input(x: Array, model: str, input_size: int | None) -> None:
    """The MobileNets' input: (N, H, W, 3), H = W = ``input_size`` unless it is None."""
    expected = {-1: 3}
    if input_size is not None:
        expected.update({1: input_size, 2: input_size})
    hint = "image batch (N, H, W, 3)" if input_size is None else f"image batch (N, {input_size}, {input_size}, 3)"
    check_input(x, rank=4, expected=expected, model=model, hint=hint)


def pooled_features(x: Array, window: int, model: str, input_size: int | None) -> Array:
    """The classifier's input: at a fixed ``input_size`` (the CIFAR networks) the note's last
    ``window`` × ``window`` average pool, flattened; at any resolution (``None``) a global mean.
    Refuses an ``input_size`` the strides shrink below the window (the head would have no inputs)."""
    if input_size is None:
        return jnp.mean(x, axis=(1, 2))
    if x.shape[1] < window or x.shape[2] < window:
        raise ValueError(f"{model} with input_size {input_size} leaves a {x.shape[1]}x{x.shape[2]} map for its "
                         f"{window}x{window} average pool; pass a larger input_size, or input_size=None for global "
                         "average pooling")
    return nn.avg_pool(x, (window, window), strides=(window, window)).reshape(x.shape[0], -1)
