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

torchvision's (``features.N.conv.…``, ``classifier.1``) and timm's (``conv_stem``,
``blocks.i.j.…``, ``conv_head``, ``classifier``) ImageNet MobileNets are first renamed into the
note's layout (``torch_layouts.py``), detected from the keys or named with ``layout=``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lightnets_jax import models
from lightnets_jax.torch_layouts import detect_layout, rename_to_note

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


def from_torch(name: str, state_dict: Mapping[str, Any], layout: str | None = None, seed: int = 0,
               **options: Any) -> dict:
    """Convert a PyTorch state_dict for model ``name`` into Flax ``variables``.

    ``layout`` is ``"note"`` (the note's modules), ``"torchvision"`` or ``"timm"``; by default it is
    detected from the keys. Values may be torch tensors or NumPy arrays. Every expected key must
    be present with the expected shape; missing, misshapen and unexpected keys raise a ValueError
    listing them. A classifier of another size than ``num_classes`` (a 1000-class checkpoint for a
    10-class model) is replaced by a fresh one (initialised with ``seed``), with a warning.
    """
    layout = layout or detect_layout(state_dict)
    state_dict, origin = rename_to_note(name, state_dict, layout)
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
            unexpected.append(origin[key])
            continue
        if target not in expected:
            unexpected.append(origin[key])
            continue
        if tuple(array.shape) != tuple(expected[target].shape):
            want = _torch_shape(target, expected[target].shape)
            misshapen[target] = f"{origin[key]}: expected {want}, got {tuple(_to_numpy(value).shape)}"
            continue
        converted[target] = jnp.asarray(array, dtype=jnp.float32)
    head = {path for path in expected if path[:2] == ("params", models.spec(name).classifier)}
    new_head = bool(misshapen) and set(misshapen) <= head  # only the class count differs: a fresh head
    if new_head:
        misshapen.clear()
        converted = {path: value for path, value in converted.items() if path not in head}
    missing = [
        f"{_torch_key(path)} {_torch_shape(path, spec.shape)}"
        for path, spec in expected.items()
        if path not in converted and path not in misshapen and not (new_head and path in head)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: " + _first_few(missing, ", "))
    if misshapen:
        problems.append(f"{len(misshapen)} misshapen keys: " + _first_few(list(misshapen.values()), "; "))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: " + _first_few(unexpected, ", "))
    if problems:
        first = (unexpected or [m.split(":")[0] for m in misshapen.values()] or missing)[0].split(" ")[0]
        raise ValueError(f"state_dict does not match model {name!r} (read as the {layout} layout; first key that "
                         f"does not fit: {first}): " + " | ".join(problems))
    variables = traverse_util.unflatten_dict(converted)
    if not new_head:
        return variables
    fresh = models.init(models.create(name, **options), jax.random.key(seed))
    warnings.warn(f"{name}: the checkpoint's classifier has another number of classes than the model's "
                  f"{models.num_classes(name, fresh)}; kept the backbone, initialised a new classifier (seed {seed})",
                  stacklevel=2)
    return models.with_classifier(name, variables, fresh)


def _first_few(items: list[str], sep: str, shown: int = 8) -> str:
    return sep.join(items[:shown]) + (f"{sep}... ({len(items) - shown} more)" if len(items) > shown else "")


def load(name: str, path: str | Path, layout: str | None = None, **options: Any) -> dict:
    """Read a PyTorch checkpoint file (``.safetensors``, no torch needed; ``.pth``/``.pt``, needs
    torch) and convert it with :func:`from_torch` into Flax ``variables`` for model ``name``."""
    return from_torch(name, read_state_dict(path), layout, **options)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A checkpoint file's tensors as NumPy arrays, keyed like a PyTorch state_dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
        except ImportError as err:
            raise ImportError(f"reading {path} needs safetensors: pip install 'lightnets_jax[weights]'") from err

        try:
            return load_file(str(path))
        except (SafetensorError, ValueError, OSError) as err:
            raise ValueError(f"cannot read {path}: not a complete .safetensors file ({err})") from err
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError as err:
            raise ImportError(f"reading {path} needs PyTorch (pip install torch), or convert it to .safetensors") from err
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises RuntimeError, pickle and zip errors alike
            raise ValueError(f"cannot read {path}: not a PyTorch checkpoint torch.load can open ({err})") from err
        for wrapper in ("state_dict", "model", "model_state_dict"):  # training checkpoints wrap it
            if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
        if not isinstance(payload, dict):
            raise ValueError(f"{path} holds a {type(payload).__name__}, not a state_dict")
        return {k: _to_numpy(v) for k, v in payload.items()}
    raise ValueError(f"cannot read {path}: expected a .safetensors, .pth or .pt file")


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
