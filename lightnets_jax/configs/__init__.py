"""Training recipes as small Python files, each with a ``get_config()`` that returns the run's
typed config and a docstring that is the command running it. ``load`` takes a name from this
folder (``hybridsn``, ``hybridsn_bn``, ``hybridsn_note``, ``cifar10``, ``finetune``) or the path of a ``.py`` file of your own."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Any


# ``--recipe`` names: the configs in this folder they stand for; None: the model's own.
RECIPES = {"default": None, "note": "hybridsn_note"}


def recipe_config(recipe: str, model: str) -> str:
    """The config a recipe names for ``model``: the default is the model's own file
    (``hybridsn.py``, ``hybridsn_bn.py``), the note's recipe is one for both."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[recipe] or model


def available() -> list[str]:
    return sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("_"))


def load(name_or_path: str) -> Any:
    """The config that ``get_config()`` of the named recipe (or ``.py`` file) returns."""
    if name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"lightnets_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    elif name_or_path in available():
        module = importlib.import_module(f"lightnets_jax.configs.{name_or_path}")
    else:
        raise ValueError(f"unknown config {name_or_path!r}; choose one of {', '.join(available())} or a .py file")
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {name_or_path!r} defines no get_config()")
    return module.get_config()


def override(config: Any, **options: Any) -> Any:
    """``config`` with every option that is not None replaced (command-line flags over a config)."""
    return dataclasses.replace(config, **{k: v for k, v in options.items() if v is not None})


def flat_settings(config: Any) -> dict[str, Any]:
    """A run config (dataclass or its ``config.json`` dict) as one level of settings, nested ones
    dotted (``optimizer.learning_rate``): what tables and messages name a setting by."""
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flat_settings(value).items()})
        else:
            flat[key] = value
    return flat
