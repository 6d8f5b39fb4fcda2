"""The jobs: ``hyperspectral`` (HybridSN, the main job) and ``classification`` (CIFAR-10)."""

from __future__ import annotations

import json
from pathlib import Path


def load_run(workdir: Path):
    """(the task module, its config) of the training run in ``workdir``, from its ``config.json``."""
    config_path = Path(workdir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json; train there first (lightnets train ... --workdir {workdir})")
    payload = json.loads(config_path.read_text())
    if "scene" in payload:
        from lightnets_jax.tasks import hyperspectral as task

        return task, task.HSIConfig.from_json(payload)
    from lightnets_jax.tasks import classification as task

    return task, task.ImageConfig.from_json(payload)
