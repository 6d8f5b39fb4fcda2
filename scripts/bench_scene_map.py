#!/usr/bin/env python
"""Whole-scene maps with HybridSN: the dense (fully convolutional) path against patch by patch,
and ``lightnets predict`` on large synthetic scenes (wall time, peak memory, pixels/s).

    python scripts/bench_scene_map.py                    # both parts
    python scripts/bench_scene_map.py --parts indian_pines --repeats 3
    python scripts/bench_scene_map.py --parts scenes --sides 500 1000

Part ``indian_pines``: the 145 x 145 map of the bundled scene with a randomly initialised
``hybridsn`` (speed does not depend on the weights), both methods in this process after one
untimed run each (compilation), the median of ``--repeats`` dense maps against
``--patch-repeats`` patch-by-patch ones. Part ``scenes``: a small run is trained
for one epoch on a 40 x 40 x 200 scene, then ``lightnets predict --cube`` maps side x side x 200
float32 cubes in a fresh process each (PCA transform included); peak RSS is the child's.
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


def scenes(sides: list[int]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        workdir = train_small_run(folder)
        for side in sides:
            cube_path = folder / f"cube_{side}.npy"
            cube = np.lib.format.open_memmap(cube_path, "w+", np.float32, (side, side, 200))
            rng = np.random.default_rng(side)
            for row in range(0, side, 100):  # written in slabs: the script itself stays small
                cube[row:row + 100] = rng.standard_normal((min(100, side - row), side, 200), np.float32)
            del cube
            command = [sys.executable, "-m", "lightnets_jax.cli", "predict", "--workdir", str(workdir),
                       "--cube", str(cube_path), "--out", str(folder / f"map_{side}")]
            tic = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            subprocess.run(command, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - tic
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            record = json.loads((folder / f"map_{side}" / "prediction.json").read_text())
            results.append({"part": "scene", "side": side, "bands": 200, "wall_seconds": wall,
                            "map_seconds": record["map_seconds"], "pixels_per_s": record["pixels_per_s"],
                            "tile": record["tile"], "peak_rss_mb": max(peak, before) / 1024,
                            "peak_rss_note": "the largest child so far" if peak == before else "this child"})
            cube_path.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["indian_pines", "scenes"], choices=["indian_pines", "scenes"])
    parser.add_argument("--repeats", type=int, default=3, help="timed dense maps (median)")
    parser.add_argument("--patch-repeats", type=int, default=1, help="timed patch-by-patch maps (a minute each)")
    parser.add_argument("--sides", type=int, nargs="+", default=[500, 1000])
    args = parser.parse_args(argv)
    print(json.dumps({"machine": cpu_name()}), flush=True)
    if "indian_pines" in args.parts:
        print(json.dumps(indian_pines(args.repeats, args.patch_repeats)), flush=True)
    if "scenes" in args.parts:
        for record in scenes(args.sides):
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
