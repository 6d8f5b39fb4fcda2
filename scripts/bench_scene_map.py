#!/usr/bin/env python
"""Whole-scene maps with HybridSN: the dense (fully convolutional) path against patch by patch,
and ``lightnets predict`` on large synthetic scenes (wall time, peak memory, pixels/s).

    python scripts/bench_scene_map.py                    # both parts
    python scripts/bench_scene_map.py --parts indian_pines --repeats 3
    python scripts/bench_scene_map.py --parts scenes --sides 500 1000 --formats npy envi

Part ``indian_pines``: the 145 x 145 map of the bundled scene with a randomly initialised
``hybridsn`` (speed does not depend on the weights), both methods in this process after one
untimed run each (compilation), the median of ``--repeats`` dense maps against
``--patch-repeats`` patch-by-patch ones. Part ``scenes``: a small run is trained
for one epoch on a 40 x 40 x 200 scene, then ``lightnets predict --cube`` maps side x side x 200
float32 cubes (``.npy``, or ENVI as AVIRIS ships them) in a fresh process each (PCA transform
included); peak RSS is the child's, peak anonymous memory its sampled ``RssAnon``.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def indian_pines(repeats: int, patch_repeats: int) -> dict:
    import jax

    from lightnets_jax import models
    from lightnets_jax.data import hyperspectral as hsi
    from lightnets_jax.tasks import scene_map

    scene = hsi.load_scene("indian_pines")
    padded = hsi.pad_cube(hsi.apply_pca(scene.cube, 30), 25)
    model = models.create("hybridsn")
    variables = model.init(jax.random.key(0), np.zeros((1, 25, 25, 30), np.float32), train=False)
    result = {"part": "indian_pines", "pixels": 145 * 145, "kernels": model.conv_impl}
    maps = {}
    for method in ("dense", "patch"):
        scene_map.predict_scene(model, variables, padded, method)  # compiles
        times = []
        for _ in range(repeats if method == "dense" else patch_repeats):
            mapped = scene_map.predict_scene(model, variables, padded, method)
            times.append(mapped.seconds)
        maps[method] = mapped.labels
        result[f"{method}_seconds"] = statistics.median(times)
        result[f"{method}_samples_s"] = times
    result["speedup"] = result["patch_seconds"] / result["dense_seconds"]
    result["maps_equal"] = bool(np.array_equal(maps["dense"], maps["patch"]))
    return result


def train_small_run(folder: Path) -> Path:
    from lightnets_jax.tasks import hyperspectral
    from lightnets_jax.training.engine import OptimizerConfig

    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), np.int32)
    labels[5:35, 5:35] = np.repeat(np.arange(4) + 1, 225).reshape(30, 30)
    cube = rng.standard_normal((40, 40, 200)).astype(np.float32) + labels[..., None] * np.linspace(-1, 1, 200)
    np.save(folder / "small_cube.npy", cube)
    np.save(folder / "small_gt.npy", labels)
    config = hyperspectral.make_config("default", cube=str(folder / "small_cube.npy"), gt=str(folder / "small_gt.npy"),
                                       epochs=1, batch_size=64, optimizer=OptimizerConfig("adam", 1e-3, "constant"))
    hyperspectral.train(config, folder / "run", log=lambda *_: None)
    return folder / "run"


def write_cube(path: Path, side: int, fmt: str) -> Path:
    """A side x side x 200 float32 cube of noise, written in slabs (the script itself stays small):
    ``npy``, or ``envi`` as AVIRIS ships flight lines (BIL, big-endian, ``.hdr`` beside it)."""
    rng = np.random.default_rng(side)
    slabs = ((row, rng.standard_normal((min(100, side - row), side, 200), np.float32)) for row in range(0, side, 100))
    if fmt == "npy":
        cube = np.lib.format.open_memmap(path.with_suffix(".npy"), "w+", np.float32, (side, side, 200))
        for row, slab in slabs:
            cube[row:row + len(slab)] = slab
        del cube
        return path.with_suffix(".npy")
    with open(path.with_suffix(".img"), "wb") as f:
        for _, slab in slabs:
            f.write(np.ascontiguousarray(slab.transpose(0, 2, 1)).astype(">f4").tobytes())  # lines, bands, samples
    path.with_suffix(".img.hdr").write_text(f"ENVI\nsamples = {side}\nlines = {side}\nbands = 200\nheader offset = 0\n"
                                            "data type = 4\ninterleave = bil\nbyte order = 1\n")
    return path.with_suffix(".img")


def run_sampling_memory(command: list[str]) -> int:
    """Run ``command``; its peak anonymous memory in kB (``RssAnon``, sampled every 0.2 s): unlike
    peak RSS it leaves out the pages of a memory-mapped cube, which the kernel can drop."""
    # stderr to a file, not a pipe: the progress bars of a large map would fill a pipe nobody reads
    # while sampling, and the child would block on it.
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        peak = 0
        while child.poll() is None:
            try:
                status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
                peak = max(peak, int(next(line.split()[1] for line in status if line.startswith("RssAnon"))))
            except (OSError, StopIteration):
                pass
            time.sleep(0.2)
        if child.returncode:
            errors.seek(0)
            raise subprocess.CalledProcessError(child.returncode, command, stderr=errors.read())
    return peak


def scenes(sides: list[int], formats: list[str]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        workdir = train_small_run(folder)
        for side in sides:
            for fmt in formats:
                cube_path = write_cube(folder / f"cube_{side}", side, fmt)
                out = folder / f"map_{side}_{fmt}"
                command = [sys.executable, "-m", "lightnets_jax.cli", "predict", "--workdir", str(workdir),
                           "--cube", str(cube_path), "--out", str(out)]
                tic = time.perf_counter()
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                anonymous = run_sampling_memory(command)
                wall = time.perf_counter() - tic
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                record = json.loads((out / "prediction.json").read_text())
                results.append({"part": "scene", "side": side, "bands": 200, "format": fmt, "wall_seconds": wall,
                                "map_seconds": record["map_seconds"], "pixels_per_s": record["pixels_per_s"],
                                "tile": record["tile"], "peak_rss_mb": max(peak, before) / 1024,
                                "peak_rss_note": "the largest child so far" if peak == before else "this child",
                                "peak_anonymous_mb": anonymous / 1024})
                for leftover in folder.glob(f"cube_{side}.*"):
                    leftover.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["indian_pines", "scenes"], choices=["indian_pines", "scenes"])
    parser.add_argument("--repeats", type=int, default=3, help="timed dense maps (median)")
    parser.add_argument("--patch-repeats", type=int, default=1, help="timed patch-by-patch maps (a minute each)")
    parser.add_argument("--sides", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--formats", nargs="+", default=["npy"], choices=["npy", "envi"],
                        help="how the cubes are stored (envi: BIL, big-endian, as AVIRIS ships them)")
    args = parser.parse_args(argv)
    print(json.dumps({"machine": cpu_name()}), flush=True)
    if "indian_pines" in args.parts:
        print(json.dumps(indian_pines(args.repeats, args.patch_repeats)), flush=True)
    if "scenes" in args.parts:
        for record in scenes(args.sides, args.formats):
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
