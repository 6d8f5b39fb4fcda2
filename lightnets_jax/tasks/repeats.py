"""Repeated HybridSN runs, one per seed, as papers report them: ``W/seed_K/`` is a normal,
resumable run whose seed moves the initialization, the shuffling and (unless the split is fixed)
the split; ``W/summary.json`` and ``W/summary.md`` hold mean ± std over the finished seeds,
``W/summary.png`` shows them (mean, min to max).

With several GPUs the seeds run side by side, one per device, each in its own process (its log
in ``W/seed_K/train.log``); on a CPU they run one after another in this process.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import jax

from lightnets_jax.reports import plots
from lightnets_jax.reports import repeats as tables
from lightnets_jax.tasks import hyperspectral
from lightnets_jax.training import checkpoint


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,3,7"`` or a mix (``"0-2,5"``) as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"--seeds takes ranges and lists such as 0-9 or 0,3,7, got {text!r}") from None
        if last < first:
            raise ValueError(f"--seeds range {part.strip()} runs downwards; write {last}-{first}")
        seeds.update(range(first, last + 1))
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must name seeds >= 0, got {text!r}")
    return sorted(seeds)


def seed_config(config: hyperspectral.HSIConfig, seed: int, fixed_split: bool) -> hyperspectral.HSIConfig:
    """Seed K's run: seed K, split seed ``split_seed + K`` (seed 0 keeps the note's split) unless fixed."""
    return dataclasses.replace(config, seed=seed, split_seed=config.split_seed + (0 if fixed_split else seed))


def device_slots() -> list[dict[str, str]]:
    """One environment per local GPU, each running one seed at a time; none (run in this process,
    one seed after another) on a CPU or a single device."""
    if jax.default_backend() != "gpu" or jax.local_device_count() < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ordinals = visible.split(",") if visible else [str(d.local_hardware_id) for d in jax.local_devices()]
    return [{"CUDA_VISIBLE_DEVICES": ordinal} for ordinal in ordinals[:jax.local_device_count()]]


def finished_report(run_dir: Path, config: hyperspectral.HSIConfig) -> dict | None:
    """The report of a run of ``config`` that trained all its epochs, else None: a report can also
    come from ``lightnets evaluate`` on a run killed part way (reports before checkpoint_epoch
    was recorded count as finished)."""
    path = run_dir / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))  # as report.json stores it
    if report["config"] != wanted or report.get("checkpoint_epoch", config.epochs) != config.epochs:
        return None
    return report


def train(config: hyperspectral.HSIConfig, workdir: Path, seeds: list[int], fixed_split: bool = False,
          resume: bool = False, log=print) -> dict:
    """Train every seed not finished yet (all of them unless ``resume``), then write the summary."""
    workdir = Path(workdir)
    if not resume and workdir.exists() and any(workdir.glob("seed_*")):
        raise FileExistsError(f"{workdir} already holds repeated runs; pass --resume to finish them or choose "
                              "another --workdir")
    reports, pending = {}, []
    for seed in seeds:
        run_dir, run_config = workdir / f"seed_{seed}", seed_config(config, seed, fixed_split)
        report = finished_report(run_dir, run_config)
        if report is not None:
            log(f"seed {seed}: finished, skipped")
            reports[seed] = report
        else:
            pending.append((seed, run_dir, run_config))
    slots = device_slots()
    if len(slots) > 1 and len(pending) > 1:
        reports.update(_side_by_side(pending, slots, log))
    else:
        for seed, run_dir, run_config in pending:
            log(f"seed {seed}: training in {run_dir}")
            reports[seed] = hyperspectral.train(run_config, run_dir,
                                                resume=checkpoint.latest_epoch(run_dir) is not None, log=log)
    summary = tables.summarize([reports[seed] for seed in seeds], seeds)
    checkpoint.write_json(workdir / "summary.json", summary)
    checkpoint.atomic_write(workdir / "summary.md", tables.to_markdown(summary).encode())
    plots.save_repeats_summary(workdir / "summary.png", [summary])
    return summary


def _side_by_side(pending, slots: list[dict[str, str]], log) -> dict[int, dict]:
    """Each pending seed in a process of its own on a free device, as many at once as devices."""
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def run(seed, run_dir, run_config):
        slot = free.get()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            log(f"seed {seed}: training in {run_dir} on {slot} (log: {run_dir / 'train.log'})")
            resume = checkpoint.latest_epoch(run_dir) is not None
            with open(run_dir / "train.log", "a") as out:
                done = subprocess.run([sys.executable, "-m", "lightnets_jax.tasks.repeats", str(run_dir),
                                       json.dumps(dataclasses.asdict(run_config)), "resume" if resume else "fresh"],
                                      env={**os.environ, **slot}, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                last = (run_dir / "train.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"seed {seed} failed (exit {done.returncode}): {last[0]}; see {run_dir / 'train.log'}")
            return seed, json.loads((run_dir / "report.json").read_text())
        finally:
            free.put(slot)

    with concurrent.futures.ThreadPoolExecutor(len(slots)) as pool:
        return dict(pool.map(lambda job: run(*job), pending))


if __name__ == "__main__":  # one seed of a side-by-side repeat run, in its own process
    run_dir, payload, mode = sys.argv[1:4]
    hyperspectral.train(hyperspectral.HSIConfig.from_json(json.loads(payload)), Path(run_dir), resume=mode == "resume")
