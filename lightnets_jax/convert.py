"""Move weights between the note's PyTorch modules and the Flax models, key by key.

The Flax submodules are named after the PyTorch attributes with indices joined by ``_``
(``layers.3.shortcut.1`` ↔ ``layers_3/shortcut_1``), so the mapping is mechanical:

=====================  =====================================  ==========================
PyTorch                Flax                                   transform
=====================  =====================================  ==========================
conv ``weight``        ``params/.../kernel``                  (O, I, *k) → (*k, I, O)
linear ``weight``      ``params/.../kernel``                  (O, I) → (I, O)
``bias``               ``params/.../bias``                    —
BN ``weight``          ``params/.../scale``                   —
BN ``running_mean``    ``batch_stats/.../mean``               —
BN ``running_var``     ``batch_stats/.../var``                —
``num_batches_tracked``  (dropped; written as 0 by ``to_torch``)
=====================  =====================================  ==========================
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lightnets_jax import models

_INDEXED = re.compile(r"^(.*)_(\d+)$")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    # Always copy: on CPU, JAX may alias host memory, and torch updates BN buffers in place.
    return np.array(value, copy=True)


def _flax_module_path(torch_prefix: list[str]) -> tuple[str, ...]:
    path: list[str] = []
    for part in torch_prefix:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path)


def _torch_module_prefix(flax_path: tuple[str, ...]) -> str:
    parts = []
    for name in flax_path:
        match = _INDEXED.match(name)
        parts.extend([match.group(1), match.group(2)] if match else [name])
    return ".".join(parts)


def expected_variables(name: str, **options: Any) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """Flattened (collection, *module path, leaf) → shape of the model's variables."""
    model = models.create(name, **options)
    shape = models.example_shape(model)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return traverse_util.flatten_dict(dict(variables))


def from_torch(name: str, state_dict: Mapping[str, Any], **options: Any) -> dict:
    """Convert a state_dict of the note's PyTorch module ``name`` into Flax ``variables``.

    Values may be torch tensors or NumPy arrays. Every expected key must be present with the
    expected shape; missing, misshapen and unexpected keys raise a ValueError listing them.
    """
    expected = expected_variables(name, **options)
    converted: dict[tuple[str, ...], np.ndarray] = {}
    unexpected: list[str] = []
    misshapen: dict[tuple[str, ...], str] = {}
    for key, value in state_dict.items():
        *prefix, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        module = _flax_module_path(prefix)
        array = _to_numpy(value)
        if leaf == "weight" and array.ndim == 1:
            target = ("params", *module, "scale")
        elif leaf == "weight":
            target = ("params", *module, "kernel")
            array = array.T if array.ndim == 2 else array.transpose(*range(2, array.ndim), 1, 0)
        elif leaf == "bias":
            target = ("params", *module, "bias")
        elif leaf in ("running_mean", "running_var"):
            target = ("batch_stats", *module, leaf.removeprefix("running_"))
        else:
            unexpected.append(key)
            continue
        if target not in expected:
            unexpected.append(key)
            continue
        if tuple(array.shape) != tuple(expected[target].shape):
            want = _torch_shape(target, expected[target].shape)
            misshapen[target] = f"{key}: expected {want}, got {tuple(_to_numpy(value).shape)}"
            continue
        converted[target] = jnp.asarray(array, dtype=jnp.float32)
    missing = [
        f"{_torch_key(path)} {_torch_shape(path, spec.shape)}"
        for path, spec in expected.items()
        if path not in converted and path not in misshapen
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if misshapen:
        problems.append("misshapen keys: " + "; ".join(misshapen.values()))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if problems:
        raise ValueError(f"state_dict does not match model {name!r}: " + " | ".join(problems))
    return traverse_util.unflatten_dict(converted)


def _torch_key(path: tuple[str, ...]) -> str:
    collection, *module, leaf = path
    torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
    return f"{_torch_module_prefix(tuple(module))}.{torch_leaf}"


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] != "kernel":
        return tuple(shape)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return (shape[-1], shape[-2], *shape[:-2])


def to_torch(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax ``variables`` of model ``name`` → the note's PyTorch state_dict as NumPy arrays.

    Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    del name  # the mapping is structural; the name documents intent at call sites
    state: dict[str, np.ndarray] = {}
    for path, value in traverse_util.flatten_dict(dict(variables)).items():
        array = np.asarray(value, dtype=np.float32)
        if path[-1] == "kernel":
            array = array.T if array.ndim == 2 else array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))
        key = _torch_key(path)
        state[key] = np.array(array, order="C", copy=True)
        if path[-1] == "mean":
            state[key.replace("running_mean", "num_batches_tracked")] = np.array(0, dtype=np.int64)
    return state
