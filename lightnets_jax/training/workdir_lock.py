"""One run per workdir: an exclusive ``flock`` on ``W/.lock``, taken before the run writes
anything there. The operating system releases it when the process ends, however it ends, so a
killed run's lock never blocks ``--resume``; a second writer meanwhile gets one line naming the
process that holds it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class WorkdirBusy(FileExistsError):
    """Another live process owns the workdir."""


@contextlib.contextmanager
def owned(workdir: Path) -> Iterator[None]:
    """Hold ``workdir`` (created if missing) for the ``with`` block, or raise WorkdirBusy. A folder
    this call created and the block left empty is removed again (bad input leaves nothing)."""
    workdir = Path(workdir).absolute()
    created = [p for p in (workdir, *workdir.parents) if not p.exists()]  # innermost first
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise WorkdirBusy(f"{workdir} is in use by another run (process {holder}); wait for it to finish "
                          "or choose another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if created and os.listdir(workdir) == [LOCK_FILE]:
            (workdir / LOCK_FILE).unlink()
            for folder in created:  # the workdir, then the parents this call made, while empty
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def run_in(workdir: Path, resume: bool) -> Iterator[None]:
    """Own ``workdir`` for a training run: refuse a finished or running run there unless resuming,
    and a resume with nothing to resume."""
    from lightnets_jax.training import checkpoint

    workdir = Path(workdir)
    if resume and not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"nothing to resume in {workdir}: no run was started there; drop --resume to start one")
    with owned(workdir):  # first: a run still going is "in use", not "already holds a run"
        checkpoint.check_fresh(workdir, resume)
        yield
