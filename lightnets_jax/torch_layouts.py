"""Rename torchvision's and timm's ImageNet MobileNet state_dicts into the note's key layout.

Our ImageNet MobileNets name their layers like the note's CIFAR modules (``conv1``, ``bn1``,
``layers.i.conv1``…, ``conv2``, ``bn2``, ``linear``); the published weights use other names for
the same tensors. Each block of theirs is mapped to ours by position, so a renamed state_dict
converts with the same rules as the note's (:func:`lightnets_jax.convert.from_torch`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from lightnets_jax import models

LAYOUTS = ("note", "torchvision", "timm")

# Inside one block: their layer → ours. Keys of a MobileNetV2 block with an expansion conv first.
_TORCHVISION_V2 = {"conv.0.0": "conv1", "conv.0.1": "bn1", "conv.1.0": "conv2", "conv.1.1": "bn2", "conv.2": "conv3",
                   "conv.3": "bn3"}
_TORCHVISION_V2_NO_EXPANSION = {"conv.0.0": "conv2", "conv.0.1": "bn2", "conv.1": "conv3", "conv.2": "bn3"}
_TIMM_V2 = {"conv_pw": "conv1", "bn1": "bn1", "conv_dw": "conv2", "bn2": "bn2", "conv_pwl": "conv3", "bn3": "bn3"}
_TIMM_V2_NO_EXPANSION = {"conv_dw": "conv2", "bn1": "bn2", "conv_pw": "conv3", "bn2": "bn3"}
_TIMM_V1 = {"conv_dw": "conv1", "bn1": "bn1", "conv_pw": "conv2", "bn2": "bn2"}
_TIMM_TOP = {"conv_stem": "conv1", "bn1": "bn1", "conv_head": "conv2", "bn2": "bn2", "classifier": "linear"}


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    keys = set(state_dict)
    if "features.0.0.weight" in keys:
        return "torchvision"
    if "conv_stem.weight" in keys:
        return "timm"
    return "note"


def rename_to_note(name: str, state_dict: Mapping[str, Any], layout: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``state_dict`` with its keys in the note's layout for model ``name``, and each new key's
    original name (for error messages)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "note":
        return dict(state_dict), {k: k for k in state_dict}
    family = models.spec(name).build
    if name not in _imagenet_models():
        raise ValueError(f"{layout}'s weights are for the ImageNet MobileNets ({', '.join(_imagenet_models())}), "
                         f"not {name!r}")
    if layout == "torchvision":
        if family is not models.MobileNetV2:
            raise ValueError("torchvision has no MobileNetV1; its mobilenet_v2 loads into mobilenet_v2_imagenet")
        return _rename(state_dict, _torchvision_v2_key(state_dict), layout)
    return _rename(state_dict, _timm_key(state_dict, v1=family is models.MobileNetV1), layout)


def _imagenet_models() -> list[str]:
    return [n for n in models.available(models.IMAGE) if models.spec(n).mean is not None]


def _rename(state_dict, rename_key, layout) -> tuple[dict[str, Any], dict[str, str]]:
    renamed, origin = {}, {}
    for key, value in state_dict.items():
        new = rename_key(key)
        if new is None:
            raise ValueError(f"key {key!r} is not part of {layout}'s MobileNet layout; pass layout= if the guess is wrong")
        renamed[new], origin[new] = value, key
    return renamed, origin


def _split(key: str, pattern: str):
    match = re.match(pattern, key)
    return match.groups() if match else None


def _torchvision_v2_key(state_dict):
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"features\.(\d+)\.", k))})
    last = blocks[-1] if blocks else 0
    expanded = {b for b in blocks if f"features.{b}.conv.3.weight" in state_dict}

    def rename(key):
        if (parts := _split(key, r"classifier\.1\.(\w+)$")):
            return f"linear.{parts[0]}"
        if (parts := _split(key, r"features\.(\d+)\.([01])\.(\w+)$")):
            index, layer, leaf = int(parts[0]), parts[1], parts[2]
            if index in (0, last):  # the stem and the last 1x1 conv, each a conv + BN
                names = ("conv1", "bn1") if index == 0 else ("conv2", "bn2")
                return f"{names[int(layer)]}.{leaf}"
        if (parts := _split(key, r"features\.(\d+)\.(conv\.\d(?:\.\d)?)\.(\w+)$")):
            index, layer, leaf = int(parts[0]), parts[1], parts[2]
            table = _TORCHVISION_V2 if index in expanded else _TORCHVISION_V2_NO_EXPANSION
            if layer in table:
                return f"layers.{index - 1}.{table[layer]}.{leaf}"
        return None

    return rename


def _timm_key(state_dict, v1: bool):
    order = sorted({(int(m.group(1)), int(m.group(2))) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    position = {block: i for i, block in enumerate(order)}
    expanded = {b for b in order if f"blocks.{b[0]}.{b[1]}.conv_pwl.weight" in state_dict}

    def rename(key):
        if (parts := _split(key, r"(\w+)\.(\w+)$")) and parts[0] in _TIMM_TOP:
            return f"{_TIMM_TOP[parts[0]]}.{parts[1]}"
        if (parts := _split(key, r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)$")):
            block, layer, leaf = (int(parts[0]), int(parts[1])), parts[2], parts[3]
            table = _TIMM_V1 if v1 else _TIMM_V2 if block in expanded else _TIMM_V2_NO_EXPANSION
            if layer in table:
                return f"layers.{position[block]}.{table[layer]}.{leaf}"
        return None

    return rename
