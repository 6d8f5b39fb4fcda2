"""SIGKILL at random moments, saves included, never leaves a torn or half-written checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from lightnets_jax.training import checkpoint

# Saves 8 MB states as fast as it can, epoch after epoch, each filled with its epoch number.
WRITER = """
import sys
from pathlib import Path
import numpy as np
from lightnets_jax.training import checkpoint
workdir = Path(sys.argv[1])
start = (checkpoint.latest_epoch(workdir) or 0) + 1
for epoch in range(start, start + 10_000):
    checkpoint.save(workdir, {"w": np.full((2_000_000,), epoch, np.float32)}, epoch)
"""


def _kill_while_saving(workdir: Path, seconds: float) -> None:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(workdir)])
    deadline = time.time() + 60
    first = checkpoint.latest_epoch(workdir) or 0
    while (checkpoint.latest_epoch(workdir) or 0) <= first and time.time() < deadline:
        time.sleep(0.01)  # wait until it is saving
    time.sleep(seconds)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _assert_every_checkpoint_whole(workdir: Path, kills: int) -> int:
    target = {"w": np.zeros((2_000_000,), np.float32)}
    epochs = checkpoint.epochs(workdir)
    # keep=3, but pruning follows the commit: each kill in between leaves one extra until a save prunes.
    assert 1 <= len(epochs) <= 3 + kills
    for epoch in epochs:
        restored, _ = checkpoint.restore(workdir, target, epoch)
        assert np.all(np.asarray(restored["w"]) == epoch)
    return epochs[-1]


def test_sigkill_during_saves_leaves_whole_checkpoints_and_resume_cleans_up(tmp_path):
    rng = np.random.default_rng(0)
    latest, torn_saves = 0, 0
    for attempt in range(10):  # at least 4 kills, and on until one has landed mid-save
        if attempt >= 4 and torn_saves:
            break
        _kill_while_saving(tmp_path, float(rng.uniform(0.0, 0.3)))
        # The writer does little but save, so kills land mid-save and leave orbax's temporary dir.
        torn_saves += any(p.name.endswith("tmp") for p in (tmp_path / checkpoint.LATEST).iterdir())
        newest = _assert_every_checkpoint_whole(tmp_path, kills=attempt + 1)
        assert newest > latest  # progress kept: at most the save in flight is lost
        latest = newest
    assert torn_saves >= 1, "no kill landed during a save; the test did not test that case"
    # The next save of a restarted run removes what a killed writer left mid-write.
    checkpoint.save(tmp_path, {"w": np.full((2_000_000,), latest + 1, np.float32)}, latest + 1)
    folder = tmp_path / checkpoint.LATEST
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(str(e) for e in checkpoint.epochs(tmp_path))
    assert len(checkpoint.epochs(tmp_path)) == 3
    assert _assert_every_checkpoint_whole(tmp_path, kills=0) == latest + 1
