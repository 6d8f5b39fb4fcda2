"""HybridSN as a fully convolutional network: the logits of every pixel of a tile from one pass
over it, with the trained parameters unchanged.

Patch by patch, neighbouring pixels recompute the same convolutions (~248 M multiply-adds per
pixel of a 25x25x30 patch). Run once over a tile of the padded scene instead, the 3D convs and
conv4 produce every patch's feature map at once, fc1 becomes a (S - 8) x (S - 8) convolution
with fc1's weights reshaped (its input rows are PyTorch's (C, H, W) flatten), fc2 and fc3 become
1x1 convolutions, and eval-mode BatchNorm folds into the conv before it: ~5.5 M multiply-adds
per pixel. Same numbers as ``HybridSN.apply`` up to float rounding (tests/test_dense_map.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightnets_jax import ops
from lightnets_jax.models.hybridsn import CONV3D_CFG, HybridSN
from lightnets_jax.ops import batch_norm as bn

Array = jax.Array
EPSILON = 1e-5  # BatchNorm's, as in models/layers.py


def dense_logits(model: HybridSN, variables: dict[str, Any], tiles: Array) -> Array:
    """Logits (N, T, T, K) of tiles (N, T + S - 1, T + S - 1, B) of the padded, PCA-reduced scene:
    entry (n, i, j) is what ``model.apply`` gives the S x S patch ``tiles[n, i:i + S, j:j + S]``."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    dtype = model.dtype or tiles.dtype
    out = jnp.transpose(tiles, (0, 3, 1, 2))[..., None].astype(dtype)  # (N, bands, H, W, 1), as HybridSN
    for i in range(1, len(CONV3D_CFG) + 1):
        out = _conv_bn_relu(model, params, stats, f"conv{i}", out)
    out = _conv_bn_relu(model, params, stats, "conv4", out, fold_depth=True)
    side = model.patch_size - 8  # conv4's output side on one patch
    channels = out.shape[-1]
    fc1 = params["fc1"]["kernel"].reshape(channels, side, side, -1).transpose(1, 2, 0, 3)
    out = _conv(model, out, fc1, params["fc1"]["bias"], "relu")
    for name, activation in (("fc2", "relu"), ("fc3", None)):
        kernel = params[name]["kernel"]
        out = _conv(model, out, kernel.reshape(1, 1, *kernel.shape), params[name]["bias"], activation)
    return out.astype(jnp.float32)


def _conv_bn_relu(model: HybridSN, params, stats, name: str, x: Array, fold_depth: bool = False) -> Array:
    conv = params[f"{name}_0"]
    kernel, bias = conv["kernel"], conv["bias"]
    if model.batch_norm:  # eval mode: the running statistics' affine map, folded into the conv
        norm, running = params[f"{name}_1"], stats[f"{name}_1"]
        multiplier, shift = bn.affine(norm["scale"], norm["bias"], running["mean"], running["var"], EPSILON)
        kernel, bias = bn.fold_into_conv(kernel, bias, multiplier, shift)
    return _conv(model, x, kernel, bias, "relu", fold_depth=fold_depth)


def _conv(model: HybridSN, x: Array, kernel: Array, bias: Array, activation: str | None,
          fold_depth: bool = False) -> Array:
    return ops.conv(x, kernel.astype(x.dtype), bias.astype(x.dtype), strides=1, padding=0, activation=activation,
                    impl=model.conv_impl, fold_depth=fold_depth)
