"""Recipes as config files: each loads, says the command that runs it, and flags override it."""

import dataclasses

import pytest

from lightnets_jax import configs
from lightnets_jax.tasks import classification, hyperspectral


@pytest.mark.parametrize("name", configs.available())
def test_every_config_loads_and_its_docstring_is_the_command(name):
    import importlib

    module = importlib.import_module(f"lightnets_jax.configs.{name}")
    config = configs.load(name)
    assert isinstance(config, (hyperspectral.HSIConfig, classification.ImageConfig))
    assert f"--config {name}" in module.__doc__ and "lightnets train" in module.__doc__


def test_recipes_are_the_config_files():
    assert configs.available() == ["cifar10", "finetune", "hybridsn", "hybridsn_bn", "hybridsn_note"]
    default, note = hyperspectral.make_config("default"), hyperspectral.make_config("note")
    assert (default.recipe, default.epochs, default.batch_size, default.init_scheme) == ("default", 20, 64, "glorot")
    assert default.optimizer.schedule == "onecycle" and default.label_smoothing == 0.1
    # The BatchNorm variant's default is its own file: the same recipe without the smoothing.
    bn = hyperspectral.make_config("default", model="hybridsn_bn")
    assert bn == dataclasses.replace(default, model="hybridsn_bn", epochs=30, label_smoothing=0.0)
    assert hyperspectral.make_config("note", model="hybridsn_bn") == dataclasses.replace(note, model="hybridsn_bn")
    assert (note.recipe, note.epochs, note.batch_size, note.init_scheme) == ("note", 100, 128, "torch")
    assert note.optimizer.schedule == "constant"
    with pytest.raises(ValueError, match="unknown recipe 'paper'; choose one of default, note"):
        hyperspectral.make_config("paper")
    # What CIFAR-10 runs used before the config file existed: old workdirs still --resume.
    assert configs.load("cifar10") == classification.ImageConfig()


def test_flags_override_a_config_and_none_keeps_it():
    config = configs.override(configs.load("hybridsn"), epochs=3, seed=None, batch_size=16)
    assert (config.epochs, config.batch_size, config.seed) == (3, 16, 0)


def test_a_config_file_of_ones_own(tmp_path):
    path = tmp_path / "short.py"
    path.write_text("from lightnets_jax import configs\nimport dataclasses\n"
                    "def get_config():\n    return dataclasses.replace(configs.load('hybridsn'), epochs=5)\n")
    assert configs.load(str(path)) == dataclasses.replace(configs.load("hybridsn"), epochs=5)
    with pytest.raises(ValueError, match="unknown config 'hybrid'.*hybridsn"):
        configs.load("hybrid")
    with pytest.raises(FileNotFoundError, match="missing.py does not exist"):
        configs.load(str(tmp_path / "missing.py"))
