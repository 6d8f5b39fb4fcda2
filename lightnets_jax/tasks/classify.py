"""``lightnets classify``: the top classes of image files under a model's weights, with the
preprocessing those weights were trained with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from lightnets_jax import models
from lightnets_jax.data import cifar10, images


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, centre-crop ``size``, standardize by ``mean``/``std``."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def preprocessing_for(model_name: str, run_config=None) -> Preprocessing:
    """The published weights' transform for ImageNet models (224 of 256, their mean/std), the
    note's for CIFAR ones (the whole image at 32); a fine-tuning run's crop side when given."""
    spec = models.spec(model_name)
    if spec.mean is None:
        return Preprocessing(32, 32, cifar10.MEAN, cifar10.STD)
    size = run_config.image_size if run_config is not None and run_config.dataset == "folder" else 224
    return Preprocessing(size, int(round(size / 0.875)), spec.mean, spec.std)


def load_pixels(files: list[str | Path], preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (N, size, size, 3) of the files, each decoded and cropped as the weights expect."""
    return np.stack([images.eval_transform(images.decode(f), preprocessing.size, preprocessing.resize) for f in files])


def classify(files: list[str | Path], model, variables, preprocessing: Preprocessing, class_names: list[str],
             top: int = 5, batch_size: int = 32) -> list[dict]:
    """For each file, its ``top`` classes as (name, probability), most likely first."""
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    forward = jax.jit(lambda x: jax.nn.softmax(model.apply(variables, x, train=False), -1))
    results = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        pixels = images.normalize(load_pixels(chunk, preprocessing), preprocessing.mean, preprocessing.std)
        probabilities = np.asarray(forward(pixels))
        for path, row in zip(chunk, probabilities):
            best = np.argsort(-row, kind="stable")[:top]
            results.append({"file": str(path), "top": [(class_names[k], float(row[k])) for k in best]})
    return results
