"""MobileNetV1: depthwise separable convolutions (Howard et al., 2017).

``MobileNetV1`` with the default config is the study note's CIFAR-10 network (kuangliu's
pytorch-cifar): 3×3 stem at stride 1, nine separable blocks, 2×2 average pool, linear head.
Submodules are named after the note's PyTorch attributes (``layers_3`` ↔ ``layers.3``) so that
checkpoints convert key by key (see :mod:`lightnets_jax.convert`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lightnets_jax.models.layers import (BatchNorm, Conv, Dense, DepthwiseConv, check_image_input, conv_bn,
                                         make_divisible, pooled_features)

# (output channels, depthwise stride) per separable block.
NOTE_CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (1024, 2), (1024, 1))
# The paper's Table 1: 13 depthwise layers, five 512-wide stride-1 blocks.
PAPER_CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + (
    (1024, 2),
    (1024, 1),
)


class Block(nn.Module):
    """Depthwise 3×3 + BN + ReLU, then pointwise 1×1 + BN + ReLU."""

    out_planes: int
    stride: int = 1
    activation: str = "relu"
    conv_impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        depthwise = DepthwiseConv(strides=self.stride, padding=1, impl=self.conv_impl, dtype=self.dtype, name="conv1")
        out = conv_bn(depthwise, BatchNorm(not train, activation=self.activation, name="bn1"), x, train)
        pointwise = Conv(self.out_planes, (1, 1), impl=self.conv_impl, dtype=self.dtype, name="conv2")
        return conv_bn(pointwise, BatchNorm(not train, activation=self.activation, name="bn2"), out, train)


class MobileNetV1(nn.Module):
    """MobileNetV1 for CIFAR (stem stride 1, fixed 32×32 input) or ImageNet (stem stride 2, any size).

    Attributes:
      num_classes: size of the linear head.
      cfg: (channels, stride) per separable block, before the width multiplier.
      width_multiplier: the paper's α, applied to every layer's width.
      stem_stride: 1 for CIFAR (the note), 2 for ImageNet (the paper).
      input_size: the fixed input side for the CIFAR network (its 2×2 pool assumes 32×32);
        ``None`` for global average pooling over any resolution.
      activation: ``"relu"`` (the paper, the note) or ``"relu6"`` (TF-slim's and timm's weights).
      conv_impl: the kernels' implementation, ``"reference"`` (XLA's), ``"gemm"`` or ``"onednn"``
        (CPU); ``models.create`` picks the fast one for the backend.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    num_classes: int = 10
    cfg: tuple[tuple[int, int], ...] = NOTE_CFG
    width_multiplier: float = 1.0
    stem_stride: int = 1
    input_size: int | None = 32
    activation: str = "relu"
    conv_impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_image_input(x, "MobileNetV1", self.input_size)
        width = lambda c: make_divisible(c * self.width_multiplier)
        stem = Conv(width(32), (3, 3), strides=self.stem_stride, padding=1, impl=self.conv_impl, dtype=self.dtype,
                    name="conv1")
        out = conv_bn(stem, BatchNorm(not train, activation=self.activation, name="bn1"), x, train)
        for i, (planes, stride) in enumerate(self.cfg):
            out = Block(width(planes), stride, self.activation, self.conv_impl, self.dtype, name=f"layers_{i}")(out, train)
        out = pooled_features(out, 2, "MobileNetV1", self.input_size)  # the note's F.avg_pool2d(out, 2), flattened
        return Dense(self.num_classes, impl=self.conv_impl, dtype=self.dtype, name="linear")(out).astype(jnp.float32)
