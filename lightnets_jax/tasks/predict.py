"""``lightnets predict``: a trained HybridSN run applied to a whole scene, its own or a new one.

A new scene is prepared with the run's own fitted PCA (``preprocessing.npz`` in the workdir), not a
PCA refitted on it. Outputs go to a temporary folder renamed into place at the end, so a killed or
failed prediction never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from lightnets_jax.data import envi
from lightnets_jax.data import hyperspectral as hsi
from lightnets_jax.reports import plots
from lightnets_jax.tasks import hyperspectral, load_run, scene_map
from lightnets_jax.training import checkpoint


def predict(workdir: Path, cube: str | None = None, gt: str | None = None, cube_key: str | None = None,
            gt_key: str | None = None, out: Path | None = None, method: str = "dense", probabilities: bool = False,
            mask_nodata: bool = False, overwrite: bool = False, tile: int | None = None, log=print) -> dict:
    """Classify every pixel of the run's scene (or of ``cube``) and write the map files into ``out``
    (default ``workdir/predict/<scene>``); returns what ``prediction.json`` records."""
    tic = time.perf_counter()
    workdir = Path(workdir)
    task, config = load_run(workdir)
    if task is not hyperspectral:
        raise ValueError(f"{workdir} is a {config.model} run on CIFAR-10; lightnets predict maps scenes with HybridSN runs")
    epoch = checkpoint.latest_epoch(workdir)
    if epoch is None:
        raise FileNotFoundError(f"{workdir} holds no checkpoint; train there first or finish the run with --resume")
    if gt is not None and cube is None:
        raise ValueError("--gt needs --cube (the ground truth of which scene?)")
    name = hyperspectral.scene_name(None, cube) or config.scene
    out = Path(out) if out else workdir / "predict" / name
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    scene_cube, labels, class_names, pca = _scene(config, workdir, cube, gt, cube_key, gt_key)
    hsi.check_window(config.patch_size, *scene_cube.shape[:2])
    nodata = _nodata(scene_cube, mask_nodata)
    # Block by block (a memory-mapped cube is never copied whole); no-data pixels as zero spectra.
    padded = hsi.pad_cube(hsi.pca_transform(pca, scene_cube, nodata), config.patch_size)
    del scene_cube
    model, variables, epoch = hyperspectral.trained_model(workdir, config, len(class_names))
    mapped = scene_map.predict_scene(model, variables, padded, method, probabilities, tile=tile, desc=f"map {name}")
    class_map = mapped.labels + 1  # 0 = not classified
    if nodata is not None:
        class_map[nodata] = 0
    height, width = class_map.shape
    tile_shape = None if mapped.tile is None else list(mapped.tile)
    record = {"scene": name, "shape": [height, width, int(pca.n_features_in_)], "method": method,
              "model": config.model, "checkpoint_epoch": epoch, "tile": tile_shape,
              "map_seconds": mapped.seconds, "pixels_per_s": height * width / mapped.seconds,
              "unclassified_pixels": int(0 if nodata is None else nodata.sum()),
              "wall_seconds": time.perf_counter() - tic,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    _write(out, overwrite, class_map, labels, class_names, mapped.probabilities, record, config.model, cube)
    log(f"{name}: {height}x{width} pixels mapped in {mapped.seconds:.1f} s ({record['pixels_per_s']:.0f} pixels/s, "
        f"{method}); files in {out}")
    return record


def _scene(config, workdir: Path, cube, gt, cube_key, gt_key):
    """(cube, ground truth or None, class names, fitted PCA) of the scene to map."""
    saved = workdir / hyperspectral.PREPROCESSING
    if cube is None:  # the run's own scene
        scene = hyperspectral.load_scene(config)
        if saved.is_file():
            pca, _ = hsi.load_pca(saved)
        else:  # a run from before the transform was saved: refit as its training did
            pca = hyperspectral.prepare(config).pca
        return scene.cube, scene.labels, scene.class_names, pca
    if not saved.is_file():
        raise FileNotFoundError(f"{workdir} has no {hyperspectral.PREPROCESSING} (the run's fitted PCA), so another scene "
                                f"cannot be prepared as its training scene was; re-evaluate it (lightnets evaluate "
                                f"--workdir {workdir}) or retrain")
    pca, _ = hsi.load_pca(saved)
    new_cube = hsi.read_array(cube, cube_key, ndim=3)
    if new_cube.shape[-1] != pca.n_features_in_:
        raise hsi.DataError(f"{cube} has {new_cube.shape[-1]} bands but the run was trained on {pca.n_features_in_}; "
                            "pass a cube of the same sensor and band selection")
    labels = None
    if gt is not None:
        labels = hsi.read_array(gt, gt_key, ndim=2).astype(np.int32)
        if labels.shape != new_cube.shape[:2]:
            raise hsi.DataError(f"{gt} is {labels.shape[0]}x{labels.shape[1]} but the cube is "
                                f"{new_cube.shape[0]}x{new_cube.shape[1]}")
    return new_cube, labels, hyperspectral.class_names(workdir, config), pca


def _nodata(cube: np.ndarray, mask_nodata: bool) -> np.ndarray | None:
    """Pixels to leave unclassified (spectrum all zero or not finite) with ``mask_nodata``; without
    it, a DataError if any value is not finite. Read in blocks of rows, like the PCA."""
    finite, empty = np.empty(cube.shape[:2], bool), np.empty(cube.shape[:2], bool)
    for rows in hsi.row_blocks(*cube.shape[:2]):
        block = np.asarray(cube[rows])
        finite[rows] = np.isfinite(block).all(axis=-1)
        empty[rows] = ~np.any(block != 0, axis=-1)  # NaN != 0: such pixels are caught by ``finite``
    if not mask_nodata:
        if not finite.all():
            raise hsi.DataError(f"the cube has {int((~finite).sum())} pixels with NaN or inf values; pass "
                                "--mask-nodata to leave them (and all-zero pixels) unclassified")
        return None
    return ~finite | empty


def _write(out: Path, overwrite: bool, class_map, labels, class_names, probabilities, record, model_name,
           cube: str | None) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "classification_map.npy", class_map)
    if cube is not None and hsi.is_envi(cube):  # an ENVI flight line: a map GIS tools overlay on it
        envi.write_classification(tmp / "classification_map.img", class_map, class_names,
                                  plots.class_colors(len(class_names)), source=Path(cube))
    plots.save_classification_map(tmp / "classification_map.png", class_map, labels, class_names,
                                  f"{model_name} on {record['scene']}")
    if probabilities is not None:
        np.save(tmp / "probabilities.npy", probabilities)
    (tmp / "prediction.json").write_text(json.dumps(record, indent=2) + "\n")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    tmp.rename(out)
