"""HybridSN on Indian Pines with the study note's recipe exactly:

    lightnets train hybridsn --config hybridsn_note     (or --recipe note)

PyTorch's default initialization, Adam 1e-3 constant, batch 128, 100 epochs.
"""

from lightnets_jax.tasks.hyperspectral import HSIConfig
from lightnets_jax.training.engine import OptimizerConfig


def get_config() -> HSIConfig:
    return HSIConfig(recipe="note", init_scheme="torch", epochs=100, batch_size=128,
                     optimizer=OptimizerConfig("adam", 1e-3, "constant"))
