"""MobileNetV2: inverted residuals and linear bottlenecks (Sandler et al., 2018).

The default config is the study note's CIFAR-10 network (kuangliu's pytorch-cifar): stride-1
stem, a 1×1 conv + BN projection shortcut on every stride-1 block whose width changes, ReLU.
``imagenet=True`` gives the paper's network: stride-2 stem, stride 2 on the 24-wide stage,
identity shortcuts only, no expansion conv when t = 1, ReLU6 and global average pooling.
Submodules carry the note's PyTorch names (``layers_3.shortcut_0`` ↔ ``layers.3.shortcut.0``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lightnets_jax.models.layers import (BatchNorm, Conv, Dense, DepthwiseConv, check_image_input, conv_bn,
                                         make_divisible, pooled_features)

# (expansion t, output channels c, repeats n, first stride s), the note's CIFAR table.
NOTE_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# The paper's Table 2 (ImageNet): the 24-wide stage downsamples.
PAPER_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class Block(nn.Module):
    """Expand 1×1 (+BN+act), depthwise 3×3 (+BN+act), linear 1×1 projection (+BN), shortcut."""

    out_planes: int
    expansion: int
    stride: int
    activation: str = "relu"
    projection_shortcut: bool = True  # the note's code; the paper only adds identity shortcuts
    skip_unit_expansion: bool = False  # the paper's t = 1 block has no expansion conv
    conv_impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        def pointwise(features: int, name: str) -> Conv:
            return Conv(features, (1, 1), impl=self.conv_impl, dtype=self.dtype, name=name)

        def norm(name: str, activation: str | None) -> BatchNorm:
            return BatchNorm(not train, activation=activation, name=name)

        in_planes = x.shape[-1]
        out = x
        if not (self.skip_unit_expansion and self.expansion == 1):
            out = conv_bn(pointwise(self.expansion * in_planes, "conv1"), norm("bn1", self.activation), out, train)
        depthwise = DepthwiseConv(strides=self.stride, padding=1, impl=self.conv_impl, dtype=self.dtype, name="conv2")
        out = conv_bn(depthwise, norm("bn2", self.activation), out, train)
        out = conv_bn(pointwise(self.out_planes, "conv3"), norm("bn3", None), out, train)  # linear bottleneck
        if self.stride != 1:
            return out
        if in_planes == self.out_planes:
            return out + x
        if self.projection_shortcut:
            return out + conv_bn(pointwise(self.out_planes, "shortcut_0"), norm("shortcut_1", None), x, train)
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR (the note) or ImageNet (the paper).

    Attributes:
      num_classes: size of the linear head.
      cfg: (t, c, n, s) rows before the width multiplier.
      width_multiplier: the paper's α (channels rounded to multiples of 8; the 1280-wide last
        conv is only widened, never narrowed, as in the paper).
      activation: ``"relu"`` (the note) or ``"relu6"`` (the paper).
      imagenet: paper mode, see the module docstring.
      input_size: fixed input side for the CIFAR network (its 4×4 pool assumes 32×32).
      conv_impl, dtype: as for :class:`~lightnets_jax.models.mobilenet_v1.MobileNetV1`.
    """

    num_classes: int = 10
    cfg: tuple[tuple[int, int, int, int], ...] = NOTE_CFG
    width_multiplier: float = 1.0
    activation: str = "relu"
    imagenet: bool = False
    input_size: int | None = 32
    conv_impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image_input(x, "MobileNetV2", self.input_size)
        width = lambda c: make_divisible(c * self.width_multiplier)
        stem = Conv(width(32), (3, 3), strides=2 if self.imagenet else 1, padding=1, impl=self.conv_impl,
                    dtype=self.dtype, name="conv1")
        out = conv_bn(stem, BatchNorm(not train, activation=self.activation, name="bn1"), x, train)
        index = 0
        for expansion, channels, repeats, first_stride in self.cfg:
            for stride in [first_stride] + [1] * (repeats - 1):
                out = Block(width(channels), expansion, stride, self.activation,
                            projection_shortcut=not self.imagenet, skip_unit_expansion=self.imagenet,
                            conv_impl=self.conv_impl, dtype=self.dtype, name=f"layers_{index}")(out, train)
                index += 1
        last = make_divisible(1280 * max(1.0, self.width_multiplier))
        head = Conv(last, (1, 1), impl=self.conv_impl, dtype=self.dtype, name="conv2")
        out = conv_bn(head, BatchNorm(not train, activation=self.activation, name="bn2"), out, train)
        out = pooled_features(out, 4, "MobileNetV2", self.input_size)  # the note's F.avg_pool2d(out, 4), flattened
        return Dense(self.num_classes, impl=self.conv_impl, dtype=self.dtype, name="linear")(out).astype(jnp.float32)
