"""Crash-safe checkpoints with orbax: one step directory per epoch, the last few kept, plus the best.

Orbax writes each checkpoint into a temporary directory and renames it when complete (a rename
is atomic on POSIX file systems), so a run killed at any moment, SIGKILL during a save included,
leaves whole checkpoints only and loses at most the epoch in flight; the temporary directory a
killed save leaves behind is removed when the next run opens the folder. Saves are synchronous:
when ``save`` returns, the epoch is on disk.

Layout in the workdir: ``checkpoints/<epoch>/`` (the last ``keep``) and ``best/<epoch>/`` (one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from lightnets_jax.configs import flat_settings

LATEST, BEST = "checkpoints", "best"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden file beside ``path``, then rename it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if err.errno is None:
            raise
        # Name the file the caller asked for, not the temporary one.
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror}") from err


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, (json.dumps(payload, indent=2) + "\n").encode())


_PRUNED = "pruned"


def _manager(folder: Path, keep: int) -> ocp.CheckpointManager:
    # Opening the folder removes what a killed save left behind (cleanup_tmp_directories). Old
    # epochs are first renamed into _PRUNED (atomic) and deleted from there, so a kill during the
    # deletion never leaves a half-deleted epoch under its number.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True, todelete_subdir=_PRUNED)
    return ocp.CheckpointManager(folder.absolute(), options=options)


def save(workdir: Path, state: Any, epoch: int, keep: int = 3, folder: str = LATEST) -> Path:
    """Write ``state`` as epoch ``epoch`` under ``workdir/folder``, keeping the newest ``keep``."""
    workdir.mkdir(parents=True, exist_ok=True)
    with _manager(workdir / folder, keep) as manager:
        manager.save(epoch, args=ocp.args.StandardSave(state), force=True)
    shutil.rmtree(workdir / folder / _PRUNED, ignore_errors=True)
    return workdir / folder / str(epoch)


def epochs(workdir: Path, folder: str = LATEST) -> list[int]:
    """Epochs with a complete checkpoint. Orbax renames a step's temporary directory to the bare
    epoch number only once it is complete, so a save cut short by a kill is never listed. (Listing
    the folder, not opening a manager, is safe while another process is saving or pruning.)"""
    path = workdir / folder
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def latest_epoch(workdir: Path, folder: str = LATEST) -> int | None:
    saved = epochs(workdir, folder)
    return saved[-1] if saved else None


class CorruptCheckpoints(ValueError):
    """No checkpoint of a folder restores."""


def restore(workdir: Path, target: Any, epoch: int | None = None, folder: str = LATEST,
            log: Callable = print) -> tuple[Any, int]:
    """The state saved at ``epoch`` in the structure of ``target``; by default the newest epoch
    that restores whole, walking back past damaged ones and saying which it skipped and why."""
    workdir = Path(workdir)
    candidates = [epoch] if epoch is not None else epochs(workdir, folder)[::-1]
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {workdir / folder}; train first (lightnets train ... --workdir {workdir})")
    skipped = []
    for candidate in candidates:
        try:
            with ocp.StandardCheckpointer() as reader:
                state = reader.restore((workdir / folder / str(candidate) / "default").absolute(), target)
        except Exception as err:  # noqa: BLE001 - orbax and TensorStore raise many kinds for damaged files
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            skipped.append(candidate)
            log(f"skipped checkpoint {workdir / folder / str(candidate)}: it does not restore ({reason})")
            continue
        return state, candidate
    raise CorruptCheckpoints(f"no checkpoint in {workdir / folder} restores (epochs {', '.join(map(str, skipped))} "
                             f"are damaged); delete that folder and train again with the same --workdir")


def set_aside(workdir: Path, newer_than: int, folder: str = LATEST) -> list[int]:
    """Move the checkpoints after epoch ``newer_than`` (damaged ones a resume skipped) to
    ``workdir/damaged/``, so the resumed run can save those epochs again; returns their epochs."""
    moved = [e for e in epochs(workdir, folder) if e > newer_than]
    for epoch in moved:
        target = workdir / "damaged" / folder / str(epoch)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        (workdir / folder / str(epoch)).rename(target)
    return moved


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
            before, after = flat_settings(saved), flat_settings(config)
            changed = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in {**before, **after}
                                if before.get(k) != after.get(k))
            raise ValueError(f"--resume with settings that differ from {workdir / 'config.json'} ({changed}); "
                             "pass the run's own settings, or drop --resume and choose another --workdir")
        state, start_epoch = restore(workdir, state, log=log)
        if set_aside(workdir, start_epoch):
            log(f"damaged checkpoints moved to {workdir / 'damaged'}")
        log(f"resumed from epoch {start_epoch}")
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", dataclasses.asdict(config))
    return state, start_epoch
