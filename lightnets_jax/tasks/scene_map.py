"""Maps of whole scenes with a trained HybridSN: every pixel classified, tile by tile.

``method="dense"`` runs the network fully convolutionally over tiles of the padded,
PCA-reduced scene (``models.hybridsn_dense``), each tile read with a halo of ``patch_size - 1``
pixels so its border pixels see their whole patch; ``method="patch"`` cuts every pixel's patch
and runs the network on batches of them (the note's way, for checking). Tile sides come from a
memory budget, tiles of one batch are spread over the local devices, and every tile has one
shape, so the tile step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from lightnets_jax.data import hyperspectral as hsi
from lightnets_jax.models.hybridsn_dense import dense_logits
from lightnets_jax.reports.summary import summarize_model

METHODS = ("dense", "patch")
# Bytes of activations a tile batch may hold at once; the tile side follows from it.
DEFAULT_MEMORY_BUDGET = 256 << 20


@dataclasses.dataclass
class SceneMap:
    labels: np.ndarray  # (H, W) int32 classes 0..K-1
    probabilities: np.ndarray | None  # (H, W, K) float16 softmax, when asked for
    seconds: float
    method: str
    tile: tuple[int, int] | None  # output pixels per tile (dense)


def activation_bytes_per_position(bands: int, itemsize: int = 4) -> int:
    """Bytes of every HybridSN feature map at one position of a tile (an upper bound on what a
    tile holds at once per position: XLA frees each map once the next is computed)."""
    floats = bands + (bands - 6) * 8 + (bands - 10) * 16 + 2 * (bands - 12) * 32 + 64 + 256 + 128
    return floats * itemsize


def tile_side(patch_size: int, bands: int, devices: int = 1, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """The largest square tile (output pixels a side) whose batch of ``devices`` tiles, halo
    included, fits ``memory_budget`` bytes of activations; at least 1."""
    positions = memory_budget // (devices * activation_bytes_per_position(bands))
    return max(1, math.isqrt(positions) - (patch_size - 1))


def predict_scene(model, variables, padded: np.ndarray, method: str = "dense", probabilities: bool = False,
                  tile: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET, batch_size: int = 256,
                  desc: str = "map") -> SceneMap:
    """Classify every pixel of the scene whose padded, PCA-reduced cube is ``padded``
    ((H + S - 1, W + S - 1, B), as ``hsi.pad_cube`` makes it)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    window = model.patch_size
    height, width = padded.shape[0] - window + 1, padded.shape[1] - window + 1
    tic = time.perf_counter()
    if method == "patch":
        logits_of = _patch_logits(model, variables, padded, hsi.scene_pixels(height, width), batch_size, desc)
        chosen = None
    else:
        devices = jax.local_devices()
        side = tile or tile_side(window, padded.shape[2], len(devices), memory_budget)
        chosen = (min(side, height), min(side, width))
        logits_of = _dense_logits(model, variables, padded, chosen, devices, desc)
    labels = np.empty((height, width), np.int32)
    probs = np.empty((height, width, model.num_classes), np.float16) if probabilities else None
    # Dense tiles index the (H, W) map, patch batches its row-major pixels.
    views = (labels, probs) if method == "dense" else (labels.reshape(-1), None if probs is None else probs.reshape(-1, probs.shape[-1]))
    for where, logits in logits_of:
        views[0][where] = np.argmax(logits, axis=-1)
        if probs is not None:
            views[1][where] = np.asarray(jax.nn.softmax(logits, axis=-1))
    return SceneMap(labels, probs, time.perf_counter() - tic, method, chosen)


def _dense_logits(model, variables, padded: np.ndarray, tile: tuple[int, int], devices, desc: str):
    """(map region, logits) of every tile, computed ``len(devices)`` tiles at a time."""
    window = model.patch_size
    height, width = padded.shape[0] - window + 1, padded.shape[1] - window + 1
    th, tw = tile
    rows, cols = math.ceil(height / th), math.ceil(width / tw)
    # Zeros below and right of the scene so that every tile has one shape (cropped afterwards).
    grown = np.pad(padded, ((0, rows * th - height), (0, cols * tw - width), (0, 0)))
    starts = [(r * th, c * tw) for r in range(rows) for c in range(cols)]
    step = _dense_step(model)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("tiles",)), PartitionSpec("tiles"))
    variables = jax.device_put(variables, NamedSharding(sharding.mesh, PartitionSpec()))
    for first in tqdm(range(0, len(starts), len(devices)), desc=desc, leave=False, unit="tile batch"):
        batch = starts[first:first + len(devices)]
        batch_tiles = [grown[r:r + th + window - 1, c:c + tw + window - 1] for r, c in batch]
        batch_tiles += [batch_tiles[-1]] * (len(devices) - len(batch))  # a last, partial batch
        logits = np.asarray(step(variables, jax.device_put(np.stack(batch_tiles), sharding)))
        for (r, c), tile_logits in zip(batch, logits):
            tile_logits = tile_logits[:height - r, :width - c]
            yield np.s_[r:r + tile_logits.shape[0], c:c + tile_logits.shape[1]], tile_logits


@functools.lru_cache(maxsize=8)
def _dense_step(model):
    return jax.jit(functools.partial(dense_logits, model))


def predict_pixels(model, variables, padded: np.ndarray, coords: np.ndarray, batch_size: int = 256,
                   desc: str = "predict", method: str | None = None) -> np.ndarray:
    """Classes of the pixels at ``coords`` (n, 2). ``method`` None takes the one of fewer
    multiply-adds (``cheaper_method``): ``"dense"`` maps the whole scene and reads the pixels
    out, ``"patch"`` cuts each pixel's patch on the device, a batch at a time."""
    height, width = padded.shape[0] - model.patch_size + 1, padded.shape[1] - model.patch_size + 1
    method = method or cheaper_method(model, len(coords), height * width)
    if method == "dense":
        labels = predict_scene(model, variables, padded, "dense", desc=desc).labels
        return labels[coords[:, 0], coords[:, 1]]
    if method != "patch":
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    labels = np.empty(len(coords), np.int32)
    for where, logits in _patch_logits(model, variables, padded, coords, batch_size, desc):
        labels[where] = np.argmax(logits, axis=-1)
    return labels


def cheaper_method(model, pixels: int, scene_pixels: int) -> str:
    """``"dense"`` when mapping all ``scene_pixels`` takes fewer multiply-adds than ``pixels``
    patches (Indian Pines' test set: 20x fewer), else ``"patch"`` (a few pixels of a large scene)."""
    per_patch, per_dense_pixel = multiply_adds(model)
    return "dense" if scene_pixels * per_dense_pixel <= pixels * per_patch else "patch"


def multiply_adds(model) -> tuple[int, int]:
    """(multiply-adds of one patch through ``model.apply``, of one pixel of a dense map, halo aside):
    a dense map computes each conv output once per position, where patches recompute it, and
    runs the dense layers once per pixel either way."""
    layers = summarize_model(model).layers
    per_pixel = sum(layer.macs if layer.kind == "dense" else layer.macs // math.prod(layer.output_shape[-3:-1])
                    for layer in layers)
    return sum(layer.macs for layer in layers), per_pixel


def _patch_logits(model, variables, padded: np.ndarray, coords: np.ndarray, batch_size: int, desc: str):
    """(range of ``coords``, logits) in fixed-size batches of patches (one compiled shape)."""
    padded_device = jnp.asarray(padded)
    step = _patch_step(model)
    for start in tqdm(range(0, len(coords), batch_size), desc=desc, leave=False, unit="batch"):
        chunk = coords[start:start + batch_size]
        full = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
        yield np.s_[start:start + len(chunk)], np.asarray(step(variables, padded_device, jnp.asarray(full)))[:len(chunk)]


@functools.lru_cache(maxsize=8)
def _patch_step(model):
    def step(variables, padded, coords):
        patches = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], model.patch_size)
        return model.apply(variables, patches, train=False)
    return jax.jit(step)
