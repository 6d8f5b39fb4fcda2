"""HybridSN: 3D then 2D convolutions for hyperspectral pixel classification (Roy et al., 2019).

Input patches are channels-last, (N, S, S, B): height, width, PCA bands. Internally the 3D convs
run over (bands, height, width) like the note's ``Conv3d`` on (N, 1, B, S, S), and the spectral
depth is merged into channels in PyTorch's order (channel ``c·D + d``), and the conv4 output is
flattened in PyTorch's (C, H, W) order, so PyTorch weights load unchanged. Submodule names
follow the note (``conv1_0`` ↔ ``conv1.0``, ``conv1_1`` ↔ its ``BatchNorm3d``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lightnets_jax.models.layers import BatchNorm, Conv, Dense, check_input, conv_bn

# (output channels, kernel (depth, height, width)) of the three 3D convs.
CONV3D_CFG = ((8, (7, 3, 3)), (16, (5, 3, 3)), (32, (3, 3, 3)))


class HybridSN(nn.Module):
    """HybridSN; ``batch_norm=True`` is the note's improved variant (BN after every conv).

    Attributes:
      num_classes: 16 for Indian Pines.
      patch_size: spatial side S of the input patches (odd).
      bands: spectral bands B after PCA.
      dropout_rate: dropout before each hidden FC's ReLU, as the note orders it.
      batch_norm: add BatchNorm after each conv.
      init_scheme: ``"torch"`` (PyTorch defaults) or ``"glorot"`` (the paper's Keras code).
      conv_impl: the kernels' implementation, ``"reference"`` (XLA's), ``"gemm"`` or ``"onednn"``
        (CPU); ``models.create`` picks the fast one for the backend.
      dtype: compute dtype; parameters stay float32.
    """

    num_classes: int = 16
    patch_size: int = 25
    bands: int = 30
    dropout_rate: float = 0.4
    batch_norm: bool = False
    init_scheme: str = "torch"
    conv_impl: str = "reference"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        s, b = self.patch_size, self.bands
        check_input(x, rank=4, expected={1: s, 2: s, 3: b}, model="HybridSN",
                    hint=f"patch batch (N, {s}, {s}, {b}) = (N, patch, patch, bands)")
        minimum_bands = sum(k[0] - 1 for _, k in CONV3D_CFG) + 1
        if s < 9 or b < minimum_bands:
            raise ValueError(f"HybridSN needs patch_size >= 9 and bands >= {minimum_bands}, got {s} and {b}")
        # (N, S, S, B) -> (N, B, S, S, 1): depth = bands, one input channel.
        out = jnp.transpose(x, (0, 3, 1, 2))[..., None]
        for i, (features, kernel) in enumerate(CONV3D_CFG, start=1):
            out = self._conv_bn_relu(features, kernel, out, train, f"conv{i}")
        # conv4 is a 2D conv of PyTorch's reshape(N, -1, H, W) of (N, C, D, H, W): channel index
        # c * D + d; Conv(fold_depth=True) takes the 3D map as it is.
        out = self._conv_bn_relu(64, (3, 3), out, train, "conv4", fold_depth=True)
        out = jnp.transpose(out, (0, 3, 1, 2)).reshape(out.shape[0], -1)  # flatten as (C, H, W)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)

        def dense(features: int, name: str) -> Dense:
            return Dense(features, init_scheme=self.init_scheme, impl=self.conv_impl, dtype=self.dtype, name=name)

        out = nn.relu(dropout(dense(256, "fc1")(out)))
        out = nn.relu(dropout(dense(128, "fc2")(out)))
        return dense(self.num_classes, "fc3")(out).astype(jnp.float32)

    def _conv_bn_relu(self, features: int, kernel: tuple[int, ...], x, train: bool, name: str,
                      fold_depth: bool = False):
        # Without BatchNorm the ReLU goes into the conv (fused on oneDNN); with it, into the
        # BatchNorm (one op in training), and at inference both fold into the conv (``conv_bn``).
        conv = Conv(features, kernel, use_bias=True, init_scheme=self.init_scheme, impl=self.conv_impl,
                    dtype=self.dtype, fold_depth=fold_depth, name=f"{name}_0")
        if not self.batch_norm:
            return conv(x, train, activation="relu")
        return conv_bn(conv, BatchNorm(not train, activation="relu", fused_relu_train=True, name=f"{name}_1"), x, train)
