"""What every training run records, shows and checks, written once for both tasks: the per-epoch
records in ``metrics.jsonl``, the progress bar's rate and the stop on a non-finite loss."""

from __future__ import annotations

import json
import time
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
    """Add one epoch's record to ``metrics.jsonl`` and to ``history``. Call it before the epoch's
    checkpoint is saved: a run killed between the two then resumes from the epoch before, whose
    ``read_history`` drops the record, and trains the epoch again; the other way round it resumed
    past an epoch with no record (missing from the curves, the report's epochs and seconds)."""
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


class EpochRate:
    """The loss and images/s an epoch's progress bar shows. The rate counts from the end of the
    first step shown: a run's first step compiles, and counting it made a MobileNetV2 epoch read
    8 img/s for its first hundred steps where it ran at 98."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.start: float | None = None
        self.first_step = 0

    def postfix(self, step: int, loss: float) -> dict[str, str]:
        """For the bar once step ``step`` (0-based in the epoch) has finished, its loss read back."""
        now = time.perf_counter()
        if self.start is None:
            self.start, self.first_step = now, step
            return {"loss": f"{loss:.4f}"}
        rate = (step - self.first_step) * self.batch_size / (now - self.start)
        return {"loss": f"{loss:.4f}", "img_s": f"{rate:.1f}"}
