"""The model zoo: ``available()`` lists the names, ``create(name, **options)`` builds one, and
``spec(name)`` tells what it is for (task, input shape, default dataset, default options).

Every model is a Flax linen module called as ``model.apply(variables, x, train=...)``; train
mode needs ``mutable=["batch_stats"]`` (BatchNorm models) and ``rngs={"dropout": key}``
(HybridSN). ``create`` is where the kernels' implementation is decided, once per model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightnets_jax import ops
from lightnets_jax.checks import check_range
from lightnets_jax.models import mobilenet_v1, mobilenet_v2
from lightnets_jax.models.hybridsn import HybridSN
from lightnets_jax.models.mobilenet_v1 import MobileNetV1
from lightnets_jax.models.mobilenet_v2 import MobileNetV2

IMAGE, HYPERSPECTRAL = "image", "hyperspectral"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image_shape(model: nn.Module) -> tuple[int, int, int]:
    side = model.input_size or 224  # any resolution: the ImageNet size as the example
    return (side, side, 3)


def _patch_shape(model: nn.Module) -> tuple[int, int, int]:
    return (model.patch_size, model.patch_size, model.bands)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class and default options, and what callers need to feed it."""

    name: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str
    task: str  # IMAGE: (N, H, W, 3) images; HYPERSPECTRAL: (N, S, S, bands) patches
    dataset: str  # what ``lightnets train`` trains it on by default (no ImageNet pipeline: CIFAR-10)
    example_shape: Callable[[nn.Module], tuple[int, ...]]  # one input, no batch axis, of a built model
    classifier: str  # the top-level module that maps features to class logits (the head fine-tuning replaces)
    # ImageNet models: the RGB normalization their published weights expect (classify, fine-tuning)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


def _image(name, build, description, dataset="cifar10", mean=None, std=None, **defaults):
    return ModelSpec(name, build, defaults, description, IMAGE, dataset, _image_shape, "linear", mean, std)


_SPECS = (
    _image("mobilenet_v1", MobileNetV1, "the note's CIFAR-10 MobileNetV1 (9 separable blocks)"),
    _image("mobilenet_v1_paper", MobileNetV1, "CIFAR-10 MobileNetV1 at the paper's depth (13 depthwise layers)",
           cfg=mobilenet_v1.PAPER_CFG),
    _image("mobilenet_v1_imagenet", MobileNetV1, "the paper's ImageNet MobileNetV1 (any resolution)",
           mean=IMAGENET_MEAN, std=IMAGENET_STD,
           cfg=mobilenet_v1.PAPER_CFG, stem_stride=2, input_size=None, num_classes=1000),
    _image("mobilenet_v1_timm", MobileNetV1, "ImageNet MobileNetV1 with ReLU6, as timm's mobilenetv1_100 (its weights)",
           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
           cfg=mobilenet_v1.PAPER_CFG, stem_stride=2, input_size=None, num_classes=1000, activation="relu6"),
    _image("mobilenet_v2", MobileNetV2, "the note's CIFAR-10 MobileNetV2"),
    _image("mobilenet_v2_imagenet", MobileNetV2,
           "the paper's ImageNet MobileNetV2 (ReLU6, any resolution; torchvision's and timm's weights)",
           mean=IMAGENET_MEAN, std=IMAGENET_STD, cfg=mobilenet_v2.PAPER_CFG, imagenet=True, activation="relu6", input_size=None,
           num_classes=1000),
    ModelSpec("hybridsn", HybridSN, {}, "the note's HybridSN for 25x25x30 hyperspectral patches", HYPERSPECTRAL,
              "indian_pines", _patch_shape, "fc3"),
    ModelSpec("hybridsn_bn", HybridSN, {"batch_norm": True}, "HybridSN with BatchNorm after every conv (the note's fix)",
              HYPERSPECTRAL, "indian_pines", _patch_shape, "fc3"),
)
_REGISTRY = {s.name: s for s in _SPECS}


# Values no model can be built with (HybridSN's convs need patches of 9 and 13 bands at least).
_OPTION_LIMITS = {
    "num_classes": dict(low=1, integer=True),
    "width_multiplier": dict(low=0, low_open=True),
    "patch_size": dict(low=9, odd=True),
    "bands": dict(low=13, integer=True),
    "dropout_rate": dict(low=0, high=1, high_open=True),
}


def check_options(options: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Refuse option values no model can be built with, before any work is done; ``names`` gives
    the setting an option comes from, for the message (a run's ``pca_components`` is ``bands``)."""
    for option, limits in _OPTION_LIMITS.items():
        if option in options:
            check_range((names or {}).get(option, option), options[option], **limits)


def available(task: str | None = None) -> list[str]:
    """The registered model names (of one ``task`` if given)."""
    return sorted(name for name, s in _REGISTRY.items() if task is None or s.task == task)


def spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return _REGISTRY[name]


def describe(name: str) -> str:
    return spec(name).description


def create(name: str, **options: Any) -> nn.Module:
    """Build a registered model; ``options`` override its fields (e.g. ``num_classes=100``).

    ``conv_impl`` (default ``"fast"``) is resolved here for the backend and compute dtype
    (``ops.choose_impl``): the model carries the concrete implementation its layers run.
    """
    model_spec = spec(name)
    fields = {f.name for f in dataclasses.fields(model_spec.build) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"model {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(sorted(fields))}")
    options = {**model_spec.defaults, **options}
    check_options(options)
    options["conv_impl"] = ops.choose_impl(options.get("conv_impl", "fast"), options.get("dtype"))
    return model_spec.build(**options)


def example_shape(model: nn.Module | str, batch: int = 1) -> tuple[int, ...]:
    """The input shape a model (or a registered name, with its defaults) takes, batch first."""
    if isinstance(model, str):
        model = create(model)
    for model_spec in _SPECS:
        if isinstance(model, model_spec.build):
            return (batch, *model_spec.example_shape(model))
    raise TypeError(f"{type(model).__name__} is not a registered model class")


def init(model: nn.Module, key: jax.Array, shape: tuple[int, ...] | None = None) -> dict:
    """``model.init`` in eval mode on zeros of ``shape`` (default ``example_shape(model)``): the
    same variables, but compiled as one program, where XLA drops the forward pass that eager init
    runs op by op, and compiled once for equal models (a model is a static argument)."""
    return _init(model, key, tuple(shape or example_shape(model)))


def num_classes(name: str, variables: dict) -> int:
    """How many classes the classifier of model ``name`` in ``variables`` has."""
    return variables["params"][spec(name).classifier]["bias"].shape[0]


def with_classifier(name: str, variables: dict, donor: dict) -> dict:
    """``variables`` of model ``name`` with the classifier's parameters taken from ``donor``: the
    backbone kept under a new head (fine-tuning for another number of classes)."""
    head = spec(name).classifier
    return {**variables, "params": {**variables["params"], head: donor["params"][head]}}


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: nn.Module, key: jax.Array, shape: tuple[int, ...]) -> dict:
    return model.init(key, jnp.zeros(shape), train=False)


__all__ = ["available", "create", "describe", "example_shape", "init", "num_classes", "spec", "with_classifier",
           "ModelSpec", "MobileNetV1", "MobileNetV2", "HybridSN"]
