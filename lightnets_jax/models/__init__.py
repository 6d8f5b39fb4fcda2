"""The model zoo: ``available()`` lists the names, ``create(name, **options)`` builds one.

Every model is a Flax linen module called as ``model.apply(variables, x, train=...)``; train
mode needs ``mutable=["batch_stats"]`` (BatchNorm models) and ``rngs={"dropout": key}``
(HybridSN).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from lightnets_jax.models import mobilenet_v1, mobilenet_v2
from lightnets_jax.models.hybridsn import HybridSN
from lightnets_jax.models.mobilenet_v1 import MobileNetV1
from lightnets_jax.models.mobilenet_v2 import MobileNetV2

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], str]] = {
    "mobilenet_v1": (MobileNetV1, {}, "the note's CIFAR-10 MobileNetV1 (9 separable blocks)"),
    "mobilenet_v1_paper": (
        MobileNetV1,
        {"cfg": mobilenet_v1.PAPER_CFG},
        "CIFAR-10 MobileNetV1 at the paper's depth (13 depthwise layers)",
    ),
    "mobilenet_v1_imagenet": (
        MobileNetV1,
        {"cfg": mobilenet_v1.PAPER_CFG, "stem_stride": 2, "input_size": None, "num_classes": 1000},
        "the paper's ImageNet MobileNetV1 (any resolution)",
    ),
    "mobilenet_v2": (MobileNetV2, {}, "the note's CIFAR-10 MobileNetV2"),
    "mobilenet_v2_imagenet": (
        MobileNetV2,
        {"cfg": mobilenet_v2.PAPER_CFG, "imagenet": True, "activation": "relu6", "input_size": None,
         "num_classes": 1000},
        "the paper's ImageNet MobileNetV2 (ReLU6, any resolution)",
    ),
    "hybridsn": (HybridSN, {}, "the note's HybridSN for 25x25x30 hyperspectral patches"),
    "hybridsn_bn": (HybridSN, {"batch_norm": True}, "HybridSN with BatchNorm after every conv (the note's fix)"),
}


def available() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    return _lookup(name)[2]


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return _REGISTRY[name]


def create(name: str, **options: Any) -> nn.Module:
    """Build a registered model; ``options`` override its fields (e.g. ``num_classes=100``)."""
    cls, defaults, _ = _lookup(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}")
    return cls(**{**defaults, **options})


__all__ = ["available", "create", "describe", "MobileNetV1", "MobileNetV2", "HybridSN"]
