#!/usr/bin/env python
"""Time and peak memory of hyperspectral data preparation and full-scene inference.

Each phase runs in a fresh child process, so its peak resident memory (``ru_maxrss`` from
``wait4``) is its own and includes the Python, NumPy and JAX baseline:

* ``note``  the note's preparation on the bundled Indian Pines: ``applyPCA`` (30, whitened),
  ``createImageCubes`` (every pixel's 25x25x30 float64 patch, then the labelled ones) and the
  stratified ``train_test_split`` (test ratio 0.9, random_state 345);
* ``ours``  this library's preparation of the same run (PCA, padded cube, split) plus cutting
  every training and test patch once, batch by batch, as training and evaluation do;
* ``scene`` full-scene inference on a synthetic SIDE x SIDE x BANDS cube (default 1000x1000x200,
  written to a temporary .npy): load, PCA, then the streamed prediction of ``--max-batches``
  batches of 256 pixels with an untrained HybridSN (memory is flat after the first batch; the
  time for the whole scene is extrapolated from the measured batches).

Usage: python scripts/bench_hyperspectral_data.py [--phases note,ours,scene] [--side 1000]
       [--bands 200] [--max-batches 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHASES = ("note", "ours", "scene")


def phase_note(args) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    from lightnets_jax.data import hyperspectral as hsi

    scene = hsi.load_scene("indian_pines")
    tic = time.perf_counter()
    # The note's applyPCA: reshape, PCA(30, whiten=True), reshape back (float64 throughout).
    flat = np.reshape(scene.cube.astype(np.float64), (-1, scene.cube.shape[2]))
    reduced = PCA(n_components=30, whiten=True).fit_transform(flat).reshape(*scene.cube.shape[:2], 30)
    patches, labels = hsi.note_create_image_cubes(reduced, scene.labels, 25)
    x_train, x_test, y_train, y_test = train_test_split(patches, labels, test_size=0.9, random_state=345,
                                                        stratify=labels)
    return {"seconds": time.perf_counter() - tic, "train_patches": len(x_train), "test_patches": len(x_test)}


def phase_ours(args) -> dict:
    from lightnets_jax.data import hyperspectral as hsi
    from lightnets_jax.tasks import hyperspectral as task

    tic = time.perf_counter()
    prepared = task.prepare(task.make_config())
    checksum = 0.0
    for coords in (prepared.split.train, prepared.split.test):
        for start in range(0, len(coords), 256):
            batch = coords[start:start + 256]
            checksum += float(hsi.gather_patches(prepared.padded, batch[:, 0], batch[:, 1], 25).sum())
    return {"seconds": time.perf_counter() - tic, "train_patches": len(prepared.split.train),
            "test_patches": len(prepared.split.test)}


def phase_scene(args) -> dict:
    import jax
    import optax

    from lightnets_jax.data import hyperspectral as hsi
    from lightnets_jax.tasks import hyperspectral as task
    from lightnets_jax.tasks import scene_map
    from lightnets_jax.training import engine

    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        cube_path, gt_path = Path(folder) / "cube.npy", Path(folder) / "gt.npy"
        # Written row block by row block so that making the file does not count a second cube.
        cube = np.lib.format.open_memmap(cube_path, "w+", np.float32, (args.side, args.side, args.bands))
        for row in range(0, args.side, 100):
            cube[row:row + 100] = rng.standard_normal((min(100, args.side - row), args.side, args.bands), np.float32)
        cube.flush()
        del cube
        gt = rng.integers(0, 17, (args.side, args.side)).astype(np.int32)
        gt[:2, :17] = np.arange(17)  # every class present whatever the side
        np.save(gt_path, gt)
        del gt
        tic = time.perf_counter()
        config = task.make_config(cube=str(cube_path), gt=str(gt_path), scene="synthetic", test_ratio=0.5)
        prepared = task.prepare(config)
        prepare_seconds = time.perf_counter() - tic
        prepare_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    coords = hsi.scene_pixels(*prepared.scene.labels.shape)
    window, batch = config.patch_size, 256
    model = task.build_model(config, prepared.scene.num_classes)  # untrained: memory and time only
    example = np.zeros((1, window, window, config.pca_components), np.float32)
    state = engine.create_train_state(model, optax.sgd(0.0), example, 0)
    measured = coords[: batch * args.max_batches]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scene_map.predict_pixels(model, variables, prepared.padded, measured[:batch], batch)  # compile
    tic = time.perf_counter()
    scene_map.predict_pixels(model, variables, prepared.padded, measured, batch)
    seconds = time.perf_counter() - tic
    return {"prepare_seconds": prepare_seconds, "peak_rss_after_prepare_mb": prepare_peak_mb,
            "pixels": len(coords), "predicted_pixels": len(measured),
            "predict_seconds": seconds, "scene_predict_seconds_extrapolated": seconds * len(coords) / len(measured),
            "device": str(jax.devices()[0])}


def run_child(phase: str, args) -> dict:
    command = [sys.executable, __file__, "--child", phase, "--side", str(args.side), "--bands", str(args.bands),
               "--max-batches", str(args.max_batches)]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        process = subprocess.Popen(command + ["--child-out", result.name])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"phase {phase!r} failed (exit {process.returncode}); run it alone with --child {phase}")
        record = json.loads(Path(result.name).read_text())
    record["phase"] = phase
    record["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--side", type=int, default=1000, help="synthetic scene height and width")
    parser.add_argument("--bands", type=int, default=200, help="synthetic scene bands")
    parser.add_argument("--max-batches", type=int, default=8, help="batches of 256 pixels predicted in 'scene'")
    parser.add_argument("--json", help="also write the records to this file")
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        record = {"note": phase_note, "ours": phase_ours, "scene": phase_scene}[args.child](args)
        Path(args.child_out).write_text(json.dumps(record))
        return 0
    phases = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if args.side < 25 or args.bands < 30 or args.max_batches < 1:
        parser.error("--side must be >= 25, --bands >= 30 and --max-batches >= 1 (25x25 patches, 30 PCA components)")
    records = []
    for phase in phases:
        record = run_child(phase, args)
        records.append(record)
        details = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in record.items() if k not in ("phase", "peak_rss_mb"))
        print(f"{phase:6s} peak RSS {record['peak_rss_mb']:8.0f} MB  {details}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
