"""What every training run records and checks, written once for both tasks: the per-epoch
records in ``metrics.jsonl`` and the stop on a non-finite loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from lightnets_jax.training.checkpoint import atomic_write

METRICS = "metrics.jsonl"


def read_history(workdir: Path, upto_epoch: int | None = None) -> list[dict]:
    """Per-epoch records from ``metrics.jsonl``; with ``upto_epoch`` (resuming), the records of
    epochs after that checkpoint are dropped from the file too, so it never lists an epoch twice."""
    path = Path(workdir) / METRICS
    if not path.exists():
        return []
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if upto_epoch is not None:
        history = [h for h in history if h["epoch"] <= upto_epoch]
        atomic_write(path, "".join(json.dumps(h) + "\n" for h in history).encode())
    return history


def append(workdir: Path, record: dict, history: list[dict]) -> None:
    """Add one epoch's record to ``metrics.jsonl`` and to ``history``."""
    with open(Path(workdir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    history.append(record)


def checked_losses(losses: Sequence, epoch: int, steps_per_epoch: int, workdir: Path, first_step: int = 0) -> np.ndarray:
    """The losses of steps ``first_step``, ``first_step + 1``, ... of ``epoch`` (0-based) as float64;
    a FloatingPointError naming the run's first bad step if any is not finite."""
    losses = np.asarray(jax.device_get(list(losses)), np.float64)
    finite = np.isfinite(losses)
    if not finite.all():
        bad = int(np.argmax(~finite))
        step = epoch * steps_per_epoch + first_step + bad
        raise FloatingPointError(f"loss became {losses[bad]} at step {step} (epoch {epoch + 1}); "
                                 f"the last good checkpoint is kept in {workdir}; lower --lr")
    return losses
