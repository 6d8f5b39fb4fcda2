"""Crash-safe checkpoints: one file per epoch, written to a temporary name then renamed.

A rename is atomic on POSIX file systems, so a run killed at any moment (SIGKILL during a save
included) leaves either the previous checkpoint or the new one, never a torn file, and loses at
most the epoch in flight.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from flax import serialization

_NAME = re.compile(r"^checkpoint_(\d+)\.msgpack$")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode())


def save(workdir: Path, state: Any, epoch: int, keep: int = 3) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(workdir)
    path = workdir / f"checkpoint_{epoch:04d}.msgpack"
    atomic_write(path, serialization.to_bytes(state))
    for old in sorted(_epochs(workdir))[:-keep]:
        (workdir / f"checkpoint_{old:04d}.msgpack").unlink(missing_ok=True)
    return path


def remove_stale_temporaries(workdir: Path) -> None:
    """Delete temporary files that a killed process left mid-write (never our own)."""
    for tmp in workdir.glob(".*.tmp-*"):
        if not tmp.name.endswith(f".tmp-{os.getpid()}"):
            tmp.unlink(missing_ok=True)


def _epochs(workdir: Path) -> list[int]:
    return [int(m.group(1)) for p in workdir.glob("checkpoint_*.msgpack") if (m := _NAME.match(p.name))]


def latest_epoch(workdir: Path) -> int | None:
    epochs = _epochs(workdir) if workdir.is_dir() else []
    return max(epochs) if epochs else None


def restore(workdir: Path, target: Any, epoch: int | None = None) -> tuple[Any, int]:
    """The state saved at ``epoch`` (default: the latest) in the structure of ``target``."""
    epoch = latest_epoch(workdir) if epoch is None else epoch
    if epoch is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}; train first (lightnets train ... --workdir {workdir})")
    data = (workdir / f"checkpoint_{epoch:04d}.msgpack").read_bytes()
    return serialization.from_bytes(target, data), epoch


def config_from_json(config_cls: type, payload: dict):
    """Rebuild a frozen run config (with its nested ``OptimizerConfig``) from ``config.json``."""
    from lightnets_jax.training.engine import OptimizerConfig

    payload = dict(payload)
    optimizer = dict(payload["optimizer"])
    optimizer["step_epochs"] = tuple(optimizer["step_epochs"])
    payload["optimizer"] = OptimizerConfig(**optimizer)
    return config_cls(**payload)


def check_fresh(workdir: Path, resume: bool) -> None:
    if not resume and latest_epoch(workdir) is not None:
        raise FileExistsError(f"{workdir} already holds a run; pass --resume to continue it or choose another --workdir")


def start_or_resume(workdir: Path, config: Any, state: Any, resume: bool, log: Callable = print) -> tuple[Any, int]:
    """Restore the latest checkpoint when resuming the same config; record the config; return (state, epoch)."""
    start_epoch = 0
    if resume and latest_epoch(workdir) is not None:
        saved = config_from_json(type(config), json.loads((workdir / "config.json").read_text()))
        if saved != config:
            raise ValueError(f"--resume with a different configuration than {workdir / 'config.json'}; "
                             "drop --resume or use the same options")
        state, start_epoch = restore(workdir, state)
        log(f"resumed from epoch {start_epoch}")
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", dataclasses.asdict(config))
    return state, start_epoch


def read_history(workdir: Path, upto_epoch: int | None = None) -> list[dict]:
    """Per-epoch records from ``metrics.jsonl``; with ``upto_epoch`` (resuming), the records of
    epochs after that checkpoint are dropped from the file too, so it never lists an epoch twice."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if upto_epoch is not None:
        history = [h for h in history if h["epoch"] <= upto_epoch]
        atomic_write(path, "".join(json.dumps(h) + "\n" for h in history).encode())
    return history
