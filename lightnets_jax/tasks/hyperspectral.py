"""Train and evaluate HybridSN on a hyperspectral scene: the project's main job.

``train(config)`` prepares the scene (PCA, padding, split), trains on the shared engine with the
padded cube kept on the device and patches gathered inside the jitted step, checkpoints every
epoch (``--resume`` continues), then ``evaluate`` predicts every pixel of the scene in batches
and writes the report, the classification map and the curves into the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lightnets_jax import models
from lightnets_jax.checks import check_range
from lightnets_jax.data import hyperspectral as hsi, splits
from lightnets_jax.reports import metrics, plots
from lightnets_jax.tasks import load_run, scene_map
from lightnets_jax.training import checkpoint, engine, records, workdir_lock


@dataclasses.dataclass(frozen=True)
class HSIConfig:
    """Everything that defines a run; saved as ``config.json`` in the workdir."""

    model: str = "hybridsn"
    recipe: str = "default"
    scene: str = "indian_pines"  # a known scene, or the name of one's own (``scene_name``)
    cube: str | None = None
    gt: str | None = None
    data_dir: str | None = None
    cube_key: str | None = None
    gt_key: str | None = None
    pca_components: int = 30
    pca_fit: str = "scene"  # "scene" (the note, the paper) or "train" (no test-pixel leakage)
    patch_size: int = 25
    split: str = "stratified"  # "stratified", "disjoint" or "per-class"
    test_ratio: float = 0.9
    per_class: int = 20
    per_class_max_fraction: float | None = None  # cap small classes at this share (papers: 0.5)
    disjoint_block: int | None = None  # block side of the disjoint split (default: patch_size)
    split_seed: int = 345
    seed: int = 0
    epochs: int = 100
    batch_size: int = 128
    init_scheme: str = "torch"
    optimizer: engine.OptimizerConfig = engine.OptimizerConfig()
    label_smoothing: float = 0.0
    augment: str = "none"  # "flips": each training patch flipped/transposed at random (8 symmetries)
    conv_impl: str = "fast"
    bf16: bool = False  # bfloat16 compute, float32 parameters
    predict_map: bool = True
    class_names: tuple[str, ...] | None = None  # a scene of one's own: its classes' names (else numbered)

    def __post_init__(self):
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        check_range("epochs", self.epochs, 1, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        models.check_options({"patch_size": self.patch_size, "bands": self.pca_components},
                             names={"bands": "pca_components"})
        check_range("test_ratio", self.test_ratio, 0, 1, low_open=True, high_open=True)
        check_range("per_class", self.per_class, 1, integer=True)
        if self.per_class_max_fraction is not None:
            check_range("per_class_max_fraction", self.per_class_max_fraction, 0, 1, low_open=True)
        if self.disjoint_block is not None:
            check_range("disjoint_block", self.disjoint_block, 1, integer=True)
        check_range("seed", self.seed, 0, integer=True)
        check_range("split_seed", self.split_seed, 0, integer=True)
        check_range("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        if self.augment not in hsi.AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; choose one of {', '.join(hsi.AUGMENTATIONS)}")

    @classmethod
    def from_json(cls, payload: dict) -> "HSIConfig":
        return checkpoint.config_from_json(cls, payload)


def make_config(recipe: str = "default", **overrides) -> HSIConfig:
    """The recipe's config for ``overrides["model"]`` (default: HSIConfig's) with the options that
    are not None replaced."""
    from lightnets_jax import configs

    config_name = configs.recipe_config(recipe, overrides.get("model") or HSIConfig.model)
    overrides["scene"] = scene_name(overrides.get("scene"), overrides.get("cube"))
    return configs.override(configs.load(config_name), **overrides)


def scene_name(scene: str | None, cube: str | None) -> str | None:
    """What a run calls its scene: the one named, else a cube of one's own by its file's name
    (never Indian Pines', whose class names it would borrow), else None (the config's)."""
    return scene or (hsi.file_scene_name(cube) if cube else None)


@dataclasses.dataclass
class Prepared:
    scene: hsi.Scene  # its raw cube is dropped once reduced (``cube_shape`` keeps the shape)
    split: splits.Split
    padded: np.ndarray  # (H + S - 1, W + S - 1, bands) float32, PCA-reduced and zero-padded
    cube_shape: tuple[int, int, int]
    pca: object  # the fitted sklearn PCA, saved with the run to prepare other scenes alike


def load_scene(config: HSIConfig) -> hsi.Scene:
    return hsi.load_scene(config.scene, config.cube, config.gt, config.data_dir, config.cube_key, config.gt_key,
                          config.class_names)


def prepare(config: HSIConfig) -> Prepared:
    scene = load_scene(config)
    hsi.check_window(config.patch_size, *scene.labels.shape)
    if config.split == "stratified":
        split = splits.stratified_split(scene.labels, config.test_ratio, config.split_seed)
    elif config.split == "disjoint":
        split = splits.disjoint_split(scene.labels, config.patch_size, config.test_ratio, config.disjoint_block,
                                   config.split_seed)
    elif config.split == "per-class":
        split = splits.per_class_split(scene.labels, config.per_class, config.split_seed, config.per_class_max_fraction)
    else:
        raise hsi.DataError(f"unknown split {config.split!r}; choose stratified, disjoint or per-class")
    if config.pca_fit not in ("scene", "train"):
        raise hsi.DataError(f"unknown --pca-fit {config.pca_fit!r}; choose scene or train")
    fit_mask = None
    if config.pca_fit == "train":
        fit_mask = np.zeros(scene.labels.shape, bool)
        fit_mask[split.train[:, 0], split.train[:, 1]] = True
    pca = hsi.fit_pca(scene.cube, config.pca_components, whiten=True, fit_mask=fit_mask)
    reduced = hsi.pca_transform(pca, scene.cube)
    # The raw cube is not needed past PCA; keeping it would double a large scene's footprint.
    return Prepared(dataclasses.replace(scene, cube=None), split, hsi.pad_cube(reduced, config.patch_size),
                    scene.cube.shape, pca)


# The run's fitted PCA and patch size (``hsi.pca_archive``), for predicting other scenes alike.
PREPROCESSING = "preprocessing.npz"


def build_model(config: HSIConfig, num_classes: int):
    return models.create(config.model, num_classes=num_classes, patch_size=config.patch_size,
                         bands=config.pca_components, init_scheme=config.init_scheme, conv_impl=config.conv_impl,
                         dtype=jnp.bfloat16 if config.bf16 else None)


def initial_state(config: HSIConfig, num_classes: int, steps_per_epoch: int = 1) -> engine.TrainState:
    """The run's state before training (the structure checkpoints restore into)."""
    model = build_model(config, num_classes)
    tx = engine.make_optimizer(config.optimizer, config.epochs, steps_per_epoch)
    example = jnp.zeros((1, config.patch_size, config.patch_size, config.pca_components))
    return engine.create_train_state(model, tx, example, config.seed)


def class_names(workdir: Path, config: HSIConfig) -> tuple[str, ...]:
    """The run's class names: from its report when it has one (cheap), else from its scene."""
    report = Path(workdir) / "report.json"
    if report.is_file():
        return tuple(json.loads(report.read_text())["class_names"])
    return load_scene(config).class_names


def trained_model(workdir: Path, config: HSIConfig, num_classes: int) -> tuple:
    """(model, eval variables, epoch) of the run's newest checkpoint that restores."""
    state, epoch = checkpoint.restore(workdir, initial_state(config, num_classes))
    return build_model(config, num_classes), {"params": state.params, "batch_stats": state.batch_stats}, epoch


def _steps_per_epoch(config: HSIConfig, n_train: int) -> int:
    # Full batches only (one compiled shape); a remainder of under one batch is left out per epoch,
    # a different one each epoch since the order is reshuffled.
    return max(1, n_train // min(config.batch_size, n_train))


def train(config: HSIConfig, workdir: Path, resume: bool = False, log=print) -> dict:
    """Train, checkpointing every epoch into ``workdir`` (owned by this run while it lasts), then
    evaluate and write the report."""
    with workdir_lock.run_in(workdir, resume):
        return _train(config, Path(workdir), resume, log)


def _train(config: HSIConfig, workdir: Path, resume: bool, log) -> dict:
    t0 = time.time()
    prepared = prepare(config)
    split = prepared.split
    batch = min(config.batch_size, len(split.train))
    steps = _steps_per_epoch(config, len(split.train))
    state = initial_state(config, prepared.scene.num_classes, steps)
    state, start_epoch = checkpoint.start_or_resume(workdir, config, state, resume, log)
    log(f"{prepared.scene.name}: cube {prepared.cube_shape}, {len(split.train)} train / "
        f"{len(split.test)} test pixels ({split.method}); {config.model}, {config.epochs} epochs, "
        f"batch {batch}, {steps} steps/epoch on {jax.devices()[0].platform}")

    padded = jnp.asarray(prepared.padded)
    train_coords, train_labels = jnp.asarray(split.train), jnp.asarray(split.train_labels)
    window = config.patch_size

    @functools.partial(jax.jit, donate_argnums=0)  # the old state's buffers are reused for the new one
    def epoch_step(state, indices, symmetry):
        coords, labels = train_coords[indices], train_labels[indices]
        patches = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], window, symmetry)
        return engine.train_step(state, patches, labels, config.label_smoothing)

    history = records.read_history(workdir, start_epoch)
    total_loss = sum(h["train_loss"] * h["steps"] for h in history)  # the note's running sum
    for epoch in range(start_epoch, config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(split.train))
        symmetry = (hsi.random_symmetries(config.seed, epoch, len(split.train)) if config.augment == "flips"
                    else None)
        epoch_loss, epoch_acc, tic, rate = [], [], time.time(), records.EpochRate(batch)
        with tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="step") as bar:
            for i in bar:
                take = order[i * batch:(i + 1) * batch]
                state, m = epoch_step(state, jnp.asarray(take), None if symmetry is None else jnp.asarray(symmetry[take]))
                epoch_loss.append(m["loss"])
                epoch_acc.append(m["accuracy"])
                if i == steps - 1 or i % 4 == 0:
                    bar.set_postfix(rate.postfix(i, float(m["loss"])))
        losses = records.checked_losses(epoch_loss, epoch, steps, workdir)
        total_loss += losses.sum()
        log("[Epoch: %d]   [loss avg: %.4f]   [current loss: %.4f]" % (epoch + 1, total_loss / (epoch + 1), losses[-1]))
        record = {"epoch": epoch + 1, "steps": steps, "train_loss": float(losses.mean()),
                  "train_accuracy": 100 * float(np.mean(jax.device_get(epoch_acc))),
                  "seconds": time.time() - tic}
        records.append(workdir, record, history)  # before the checkpoint: see records.append
        checkpoint.save(workdir, state, epoch + 1)
    train_seconds = time.time() - t0
    plots.save_training_curves(workdir / "training_curves.png", history)
    report = evaluate(workdir, state=state, prepared=prepared, config=config, log=log)
    report["train_wall_seconds"] = train_seconds
    checkpoint.write_json(workdir / "report.json", report)
    return report


def evaluate(workdir: Path, state=None, prepared: Prepared | None = None, config: HSIConfig | None = None,
             log=print) -> dict:
    """Predict from the latest checkpoint (or the given state) and write the report files."""
    from sklearn.metrics import classification_report

    workdir = Path(workdir)
    config = config or load_run(workdir)[1]
    prepared = prepared or prepare(config)
    split, scene = prepared.split, prepared.scene
    if state is None:
        steps = _steps_per_epoch(config, len(split.train))
        state, epoch = checkpoint.restore(workdir, initial_state(config, prepared.scene.num_classes, steps))
    else:  # the training loop's state: its newest checkpoint
        epoch = checkpoint.latest_epoch(workdir)
    checkpoint.atomic_write(workdir / PREPROCESSING, hsi.pca_archive(prepared.pca, config.patch_size))
    tic = time.time()
    model = build_model(config, scene.num_classes)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if config.predict_map:
        full = scene_map.predict_scene(model, variables, prepared.padded, "dense", desc="map scene").labels
        test_pred = full[split.test[:, 0], split.test[:, 1]]
    else:
        test_pred = scene_map.predict_pixels(model, variables, prepared.padded, split.test, desc="predict test")
    predict_seconds = time.time() - tic
    names = list(scene.class_names)
    text = classification_report(split.test_labels, test_pred, labels=range(len(names)), target_names=names,
                                 digits=4, zero_division=0)
    log(text)
    (workdir / "classification_report.txt").write_text(text)
    confusion = metrics.confusion_matrix(split.test_labels, test_pred, len(names))
    result = metrics.scores(confusion)
    log("OA %.2f  AA %.2f  Kappa %.2f" % (result["overall_accuracy"], result["average_accuracy"], result["kappa"]))
    if result["absent_classes"]:
        absent = ", ".join(names[i] for i in result["absent_classes"])
        log(f"AA over the {len(names) - len(result['absent_classes'])} classes present in the test set "
            f"(absent: {absent})")
    report = {**result, "class_names": names, "confusion_matrix": confusion.tolist(), "split": split.describe(),
              "config": dataclasses.asdict(config), "predict_seconds": predict_seconds,
              "device": jax.devices()[0].device_kind, "checkpoint_epoch": epoch}
    np.save(workdir / "test_predictions.npy", test_pred)
    if config.predict_map:
        np.save(workdir / "classification_map.npy", full)
        title = f"{config.model} on {scene.name}: OA {result['overall_accuracy']:.2f}%"
        plots.save_classification_map(workdir / "classification_map.png", full + 1, scene.labels,
                                      names, title)
    checkpoint.write_json(workdir / "report.json", report)
    return report
