"""Hyperspectral scenes for pixel classification: loading, PCA and patch extraction (the splits
of labelled pixels into train and test are in ``splits.py``).

Follows the study note's HybridSN pipeline (PCA with whitening, zero padding, a square patch
around every labelled pixel, label 0 dropped and labels shifted to 0..K-1, a stratified split),
but never materializes the note's (pixels × S × S × B) float64 array: a split is a list of pixel
coordinates, and patches are cut from the padded, PCA-reduced cube only for the pixels a batch
needs (:func:`gather_patches`, vectorized NumPy or jitted JAX with the cube on device).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
from pathlib import Path
from typing import Iterator

import numpy as np

from lightnets_jax.data import envi

INDIAN_PINES_CLASSES = (
    "Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees", "Grass-pasture-mowed",
    "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill", "Soybean-clean", "Wheat", "Woods",
    "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers",
)
SALINAS_CLASSES = (
    "Brocoli_green_weeds_1", "Brocoli_green_weeds_2", "Fallow", "Fallow_rough_plow", "Fallow_smooth", "Stubble",
    "Celery", "Grapes_untrained", "Soil_vinyard_develop", "Corn_senesced_green_weeds", "Lettuce_romaine_4wk",
    "Lettuce_romaine_5wk", "Lettuce_romaine_6wk", "Lettuce_romaine_7wk", "Vinyard_untrained",
    "Vinyard_vertical_trellis",
)
PAVIAU_CLASSES = (
    "Asphalt", "Meadows", "Gravel", "Trees", "Painted metal sheets", "Bare Soil", "Bitumen", "Self-Blocking Bricks",
    "Shadows",
)
# Scenes the user supplies as files (the usual .mat names and keys); Indian Pines is bundled.
SCENES = {
    "indian_pines": {"classes": INDIAN_PINES_CLASSES, "files": ("Indian_pines_corrected.mat", "Indian_pines_gt.mat")},
    "salinas": {"classes": SALINAS_CLASSES, "files": ("Salinas_corrected.mat", "Salinas_gt.mat")},
    "paviau": {"classes": PAVIAU_CLASSES, "files": ("PaviaU.mat", "PaviaU_gt.mat")},
}


class DataError(ValueError):
    """Bad or unreadable input data; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Scene:
    name: str
    cube: np.ndarray | None  # (H, W, B) float32
    labels: np.ndarray  # (H, W) int32, 0 = unlabelled, 1..K classes
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_scene(
    scene: str = "indian_pines",
    cube_path: str | Path | None = None,
    gt_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    cube_key: str | None = None,
    gt_key: str | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Scene:
    """Load a scene: explicit files, ``data_dir`` with the usual file names, or the bundled Indian
    Pines. A scene of one's own (``scene`` not a known one) has its classes numbered unless
    ``class_names`` names them or its ground truth is an ENVI classification that does."""
    if scene not in SCENES and cube_path is None:
        raise DataError(f"unknown scene {scene!r}; choose one of {', '.join(SCENES)} or pass --cube FILE --gt FILE")
    if (cube_path is None) != (gt_path is None):
        raise DataError("pass both --cube and --gt (the image cube and its ground-truth map), or neither")
    if cube_path is None and data_dir is not None:
        cube_name, gt_name = SCENES[scene]["files"]
        cube_path, gt_path = Path(data_dir) / cube_name, Path(data_dir) / gt_name
    if cube_path is None:
        if scene != "indian_pines":
            names = " and ".join(SCENES[scene]["files"])
            raise DataError(f"scene {scene!r} is not bundled: pass --data-dir holding {names}, or --cube/--gt")
        cube, gt = _bundled_indian_pines()
    else:
        cube, gt = read_array(cube_path, cube_key, ndim=3), read_array(gt_path, gt_key, ndim=2)
    cube, gt = validate_scene(cube, gt)
    num_classes = int(gt.max())
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names given but the ground truth has {num_classes} classes")
    names = class_names or SCENES.get(scene, {}).get("classes", ())
    if not names and gt_path is not None and is_envi(gt_path):  # an ENVI classification names them
        listed = envi.class_names(gt_path) or ()
        names = listed[:num_classes] if len(listed) >= num_classes else ()
    if len(names) != num_classes:
        names = tuple(f"class {i}" for i in range(1, num_classes + 1))
    return Scene(scene, cube, gt, tuple(names))


def _bundled_indian_pines() -> tuple[np.ndarray, np.ndarray]:
    try:
        folder = importlib.resources.files("tensorly") / "datasets" / "data"
    except ModuleNotFoundError as err:
        raise DataError("the bundled Indian Pines comes with the 'tensorly' package: pip install tensorly") from err
    return np.load(folder / "Indian_pines_corrected.npy"), np.load(folder / "Indian_pines_gt.npy")


_RANKS = {3: "a cube (height, width, bands)", 2: "a class map (height, width)"}


def check_rank(array, ndim: int, what: str) -> None:
    """A DataError naming ``what`` unless ``array`` is a cube (``ndim`` 3) or a class map (2)."""
    if np.ndim(array) != ndim:
        raise DataError(f"{what} must be {_RANKS[ndim]}, got shape {np.shape(array)}")


def read_array(path: str | Path, key: str | None, ndim: int) -> np.ndarray:
    """Read a .npy, .mat (v5 via scipy, v7.3/HDF5 via h5py) or ENVI (.hdr beside a raw binary;
    a class map is its one band) array of the given rank."""
    array = _read_array(Path(path), key, ndim)
    check_rank(array, ndim, str(path))
    return array


def _read_array(path: Path, key: str | None, ndim: int) -> np.ndarray:
    if path.is_dir():
        raise DataError(f"cannot read {path}: it is a folder; pass the file itself (.npy, .mat or ENVI .hdr)")
    if not path.is_file():
        raise DataError(f"cannot read {path}: no such file")
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r")  # mapped: large cubes are read block by block
        if is_envi(path):
            return _read_envi(path, key, ndim)
        if path.suffix != ".mat":
            raise DataError(f"cannot read {path}: expected a .npy or .mat file, or an ENVI raster with its .hdr")
        arrays = _read_mat(path)
    except envi.EnviError as err:
        raise DataError(str(err)) from None
    except DataError:
        raise
    except Exception as err:  # corrupt file: name it and the reason, not a stack of scipy internals
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if key is not None:
        if key not in arrays:
            raise DataError(f"{path} has no array {key!r}; its arrays are: {', '.join(sorted(arrays)) or 'none'}")
        return arrays[key]
    candidates = [k for k, v in arrays.items() if np.ndim(v) == ndim]
    if len(candidates) != 1:
        flag = "--cube-key" if ndim == 3 else "--gt-key"
        found = ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items()) or "none"
        raise DataError(f"{path}: {len(candidates)} candidate {ndim}-d arrays ({found}); name one with {flag}")
    return arrays[candidates[0]]


def is_envi(path: str | Path) -> bool:
    """Whether ``read_array`` reads ``path`` as an ENVI raster: not .npy or .mat, a .hdr for it."""
    return Path(path).suffix not in (".npy", ".mat") and envi.header_of(path) is not None


def file_scene_name(path: str | Path) -> str:
    """What a scene of one's own is called: its file's name without the suffix (an ENVI header's
    without its binary's suffix too: ``flight.img.hdr`` is ``flight``)."""
    path = Path(path)
    if path.suffix.lower() == ".hdr" and Path(path.stem).suffix.lower() in envi.BINARY_SUFFIXES:
        return Path(path.stem).stem
    return path.stem


def _read_envi(path: Path, key: str | None, ndim: int) -> np.ndarray:
    if key is not None:
        raise DataError(f"{path} is an ENVI raster, one array: --cube-key and --gt-key name arrays in .mat files")
    raster = envi.read(path)
    if ndim == 2:
        if raster.shape[-1] != 1:
            raise DataError(f"{path} has {raster.shape[-1]} bands; a ground-truth map is one band of class numbers")
        return raster[..., 0]
    return raster


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        return {k: v for k, v in mat.items() if not k.startswith("__")}
    except (NotImplementedError, ValueError):  # MATLAB v7.3 files are HDF5, which scipy cannot read
        try:
            import h5py
        except ImportError as err:
            raise DataError(f"{path} may be a MATLAB v7.3 (HDF5) file: pip install h5py to read it") from err
        if not h5py.is_hdf5(path):
            raise

        with h5py.File(path, "r") as f:
            # MATLAB stores column-major: HDF5 sees the axes reversed.
            return {k: np.asarray(v).T for k, v in f.items() if isinstance(v, h5py.Dataset)}


def validate_scene(cube: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cube, gt = np.asarray(cube), np.asarray(gt)
    check_rank(cube, 3, "the cube")
    check_rank(gt, 2, "the ground truth")
    if cube.shape[:2] != gt.shape:
        raise DataError(f"cube {cube.shape[:2]} and ground truth {gt.shape} differ in height/width; pass matching files")
    cube = cube.astype(np.float32, copy=False)  # no second copy of a cube that is float32 already
    for row in range(0, cube.shape[0], 64):  # row blocks: a whole-cube mask would cost a quarter cube
        bad = ~np.isfinite(cube[row:row + 64])
        if bad.any():
            count = int(sum((~np.isfinite(cube[r:r + 64])).sum() for r in range(0, cube.shape[0], 64)))
            r, c, b = np.argwhere(bad)[0]
            raise DataError(f"the cube has {count} NaN/inf values (first at row {row + r}, col {c}, band {b}); "
                            "clean or mask them first")
    if (gt < 0).any() or not np.allclose(gt, np.round(gt)):
        raise DataError("ground-truth labels must be whole numbers >= 0 (0 = unlabelled)")
    return cube, gt.astype(np.int32)


PCA_BLOCK = 1 << 16  # pixels per transform block


def apply_pca(cube: np.ndarray, components: int, whiten: bool = True, fit_mask: np.ndarray | None = None,
              seed: int = 0) -> np.ndarray:
    """PCA over bands, as the note's ``applyPCA``; ``fit_mask`` fits on those pixels only."""
    return pca_transform(fit_pca(cube, components, whiten, fit_mask, seed), cube)


def fit_pca(cube: np.ndarray, components: int, whiten: bool = True, fit_mask: np.ndarray | None = None,
            seed: int = 0):
    """sklearn's PCA over the bands of ``cube`` (of the ``fit_mask`` pixels if given), fitted."""
    from sklearn.decomposition import PCA

    bands = cube.shape[-1]
    if not 1 <= components <= bands:
        raise DataError(f"PCA components must be between 1 and the cube's {bands} bands, got {components}")
    flat = cube.reshape(-1, bands)
    pca = PCA(n_components=components, whiten=whiten, random_state=seed)
    return pca.fit(flat if fit_mask is None else flat[fit_mask.reshape(-1)])


def pca_transform(pca, cube: np.ndarray, nodata: np.ndarray | None = None) -> np.ndarray:
    """``cube`` (H, W, bands; any dtype, memory-mapped or not) through a fitted PCA, float32, in
    blocks of rows (sklearn centres a copy of its input: a second cube at once otherwise). Pixels
    where the (H, W) mask ``nodata`` is set go through as zero spectra."""
    height, width, bands = cube.shape
    if bands != pca.n_features_in_:
        raise DataError(f"the cube has {bands} bands but the PCA was fitted on {pca.n_features_in_}; "
                        "pass a cube of the same sensor and band selection")
    reduced = np.empty((height, width, pca.n_components_), np.float32)
    for rows in row_blocks(height, width):
        block = np.array(cube[rows], np.float32).reshape(-1, bands)  # a copy: masking writes it
        if nodata is not None:
            block[nodata[rows].reshape(-1)] = 0
        reduced[rows] = pca.transform(block).reshape(-1, width, pca.n_components_)
    return reduced


def row_blocks(height: int, width: int) -> Iterator[slice]:
    """Blocks of whole rows of about ``PCA_BLOCK`` pixels, the way large cubes are read: a block of
    a memory-mapped file's view is all that is in memory at once."""
    rows = max(1, PCA_BLOCK // width)
    return (slice(row, row + rows) for row in range(0, height, rows))


_PCA_FIELDS = ("mean_", "components_", "explained_variance_", "n_components_", "n_features_in_")


def pca_archive(pca, patch_size: int) -> bytes:
    """A fitted PCA and the patch size as ``.npz`` bytes: enough to prepare another scene exactly as
    the training one (``load_pca`` reads them back)."""
    buffer = io.BytesIO()
    arrays = {name: np.asarray(getattr(pca, name)) for name in _PCA_FIELDS}
    np.savez(buffer, whiten=np.asarray(pca.whiten), patch_size=np.asarray(patch_size), **arrays)
    return buffer.getvalue()


def load_pca(path: Path):
    """(the fitted PCA, the patch size) from a ``pca_archive`` file."""
    from sklearn.decomposition import PCA

    saved = np.load(path)
    pca = PCA(n_components=int(saved["n_components_"]), whiten=bool(saved["whiten"]))
    for name in _PCA_FIELDS:
        value = saved[name]
        setattr(pca, name, value.item() if value.ndim == 0 else value)
    return pca, int(saved["patch_size"])


def check_window(window: int, height: int, width: int) -> None:
    if window < 1 or window % 2 == 0:
        raise DataError(f"the patch size must be odd so the pixel sits in the centre, got {window}; try {window + 1}")
    if window > 2 * min(height, width) + 1:
        raise DataError(f"patch size {window} exceeds the {height}x{width} scene; use at most {2 * min(height, width) - 1}")


def pad_cube(cube: np.ndarray, window: int) -> np.ndarray:
    """Zero padding by (window - 1) / 2 on each side, as the note's ``padWithZeros``."""
    check_window(window, *cube.shape[:2])
    margin = (window - 1) // 2
    return np.pad(cube, ((margin, margin), (margin, margin), (0, 0)))


# Training-patch augmentations (``--augment``): "flips" draws one of the square's 8 symmetries.
AUGMENTATIONS = ("none", "flips")


def gather_patches(padded, rows, cols, window: int, symmetry=None):
    """Patches (n, window, window, B) centred on (rows, cols) of the unpadded scene.

    Works on NumPy arrays and, unchanged, on JAX arrays under jit: it is one advanced-index
    gather, so only the requested patches are ever built. ``symmetry`` (n,) in 0..7 picks each
    patch's flip and transpose (the square's eight symmetries, ``random_symmetries``); the centre
    pixel stays in the centre, and the flips cost nothing beyond the gather's indices.
    """
    offsets = np.arange(window)
    if symmetry is None:
        r = rows[:, None, None] + offsets[None, :, None]
        c = cols[:, None, None] + offsets[None, None, :]
        return padded[r, c]
    xp = np if isinstance(symmetry, np.ndarray) else _jnp()
    flipped = window - 1 - offsets
    dr = xp.where((symmetry & 1)[:, None] > 0, flipped, offsets)  # (n, window)
    dc = xp.where((symmetry & 2)[:, None] > 0, flipped, offsets)
    transpose = (symmetry & 4)[:, None, None] > 0
    r = rows[:, None, None] + xp.where(transpose, dr[:, None, :], dr[:, :, None])
    c = cols[:, None, None] + xp.where(transpose, dc[:, :, None], dc[:, None, :])
    return padded[r, c]


def random_symmetries(seed: int, epoch: int, n: int) -> np.ndarray:
    """Each training pixel's symmetry (0..7) for one epoch, fixed by (seed, epoch) so that a
    resumed run draws the same ones."""
    return np.random.default_rng([seed, epoch, 8]).integers(0, 8, n).astype(np.int32)


def _jnp():
    import jax.numpy as jnp

    return jnp


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major coordinates of labelled pixels (the note's order) and their 0-based classes."""
    rows, cols = np.nonzero(labels)
    return np.stack([rows, cols], axis=1).astype(np.int32), (labels[rows, cols] - 1).astype(np.int32)


def scene_pixels(height: int, width: int) -> np.ndarray:
    """Row-major coordinates of every pixel of a scene, labelled or not (for full-scene maps)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int32)


def note_create_image_cubes(X: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The note's ``createImageCubes`` loop, verbatim in behaviour: the reference for tests and benchmarks."""
    margin = (window - 1) // 2
    padded = np.zeros((X.shape[0] + 2 * margin, X.shape[1] + 2 * margin, X.shape[2]))
    padded[margin:X.shape[0] + margin, margin:X.shape[1] + margin, :] = X
    data = np.zeros((X.shape[0] * X.shape[1], window, window, X.shape[2]))
    patch_labels = np.zeros(X.shape[0] * X.shape[1])
    index = 0
    for r in range(margin, padded.shape[0] - margin):
        for c in range(margin, padded.shape[1] - margin):
            data[index] = padded[r - margin:r + margin + 1, c - margin:c + margin + 1]
            patch_labels[index] = y[r - margin, c - margin]
            index += 1
    keep = patch_labels > 0
    return data[keep], patch_labels[keep] - 1
