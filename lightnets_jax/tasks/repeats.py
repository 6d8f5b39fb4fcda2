"""Repeated HybridSN runs, one per seed, as papers report them: ``W/seed_K/`` is a normal,
resumable run whose seed moves the initialization, the shuffling and (unless the split is fixed)
the split; ``W/summary.json`` and ``W/summary.md`` hold mean ± std over the finished seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lightnets_jax.reports import repeats as tables
from lightnets_jax.tasks import hyperspectral
from lightnets_jax.training import checkpoint


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,3,7"`` or a mix (``"0-2,5"``) as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"--seeds takes ranges and lists such as 0-9 or 0,3,7, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must name seeds >= 0, got {text!r}")
    return sorted(seeds)


def seed_config(config: hyperspectral.HSIConfig, seed: int, fixed_split: bool) -> hyperspectral.HSIConfig:
    """Seed K's run: seed K, split seed ``split_seed + K`` (seed 0 keeps the note's split) unless fixed."""
    return dataclasses.replace(config, seed=seed, split_seed=config.split_seed + (0 if fixed_split else seed))


def train(config: hyperspectral.HSIConfig, workdir: Path, seeds: list[int], fixed_split: bool = False,
          resume: bool = False, log=print) -> dict:
    """Train every seed not finished yet (all of them unless ``resume``), then write the summary."""
    workdir = Path(workdir)
    if not resume and workdir.exists() and any(workdir.glob("seed_*")):
        raise FileExistsError(f"{workdir} already holds repeated runs; pass --resume to finish them or choose "
                              "another --workdir")
    reports = []
    for seed in seeds:
        run_dir, run_config = workdir / f"seed_{seed}", seed_config(config, seed, fixed_split)
        report_path = run_dir / "report.json"
        wanted = json.loads(json.dumps(dataclasses.asdict(run_config)))  # as report.json stores it
        if report_path.is_file() and json.loads(report_path.read_text())["config"] == wanted:
            log(f"seed {seed}: finished, skipped")
            reports.append(json.loads(report_path.read_text()))
            continue
        log(f"seed {seed}: training in {run_dir}")
        reports.append(hyperspectral.train(run_config, run_dir, resume=checkpoint.latest_epoch(run_dir) is not None,
                                           log=log))
    summary = tables.summarize(reports, seeds)
    checkpoint.write_json(workdir / "summary.json", summary)
    checkpoint.atomic_write(workdir / "summary.md", tables.to_markdown(summary).encode())
    return summary
