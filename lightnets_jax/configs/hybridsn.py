"""HybridSN on Indian Pines, our default recipe (the main job):

    lightnets train hybridsn --config hybridsn

The paper's Keras initialization (Glorot uniform, zero biases), a one-cycle schedule peaking at
Adam 1e-3 and label smoothing 0.1 reach the paper's accuracy in 20 epochs, where the note's
recipe (``hybridsn_note``) is still improving after 100. Smoothing is the one change of a seed-0
screen that held over 5 seeds; 20 epochs are the fewest of 15, 20 and 30 whose 5-seed mean
still meets OA 98.5 (``--epochs 30`` gains 0.1: docs/results.md, "Repeated runs").
"""

from lightnets_jax.tasks.hyperspectral import HSIConfig
from lightnets_jax.training.engine import OptimizerConfig


def get_config() -> HSIConfig:
    return HSIConfig(recipe="default", init_scheme="glorot", epochs=20, batch_size=64, label_smoothing=0.1,
                     optimizer=OptimizerConfig("adam", 1e-3, "onecycle"))
