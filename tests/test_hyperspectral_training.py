"""End to end on a tiny synthetic scene: train, checkpoint, resume, evaluate, CLI errors."""

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import cli
from lightnets_jax.tasks import hyperspectral
from tests.support import write_tiny_scene

pytestmark = pytest.mark.slow


@pytest.fixture()
def scene_files(tmp_path):
    return write_tiny_scene(tmp_path)


def _config(scene_files, epochs=2):
    from lightnets_jax.training.engine import OptimizerConfig

    cube, gt = scene_files
    return hyperspectral.make_config(
        "default", cube=str(cube), gt=str(gt), pca_components=16, patch_size=9, test_ratio=0.5, epochs=epochs,
        batch_size=8, optimizer=OptimizerConfig("adam", 1e-3, "constant"),
    )


def test_bf16_config_builds_a_bfloat16_model(scene_files):
    config = dataclasses.replace(_config(scene_files), bf16=True)
    assert hyperspectral.build_model(config, 3).dtype == jnp.bfloat16
    assert hyperspectral.build_model(_config(scene_files), 3).dtype is None


def test_train_resume_and_evaluate_reproduce(scene_files, tmp_path):
    straight = hyperspectral.train(_config(scene_files), tmp_path / "straight", log=lambda *_: None)
    # The scores are those of the confusion matrix the report stores (rows: 72 test pixels, 24 per class).
    confusion = np.asarray(straight["confusion_matrix"])
    assert confusion.sum() == 72 and confusion.sum(axis=1).tolist() == [24, 24, 24]
    assert straight["overall_accuracy"] == pytest.approx(100 * np.trace(confusion) / 72)
    assert straight["per_class_accuracy"] == pytest.approx((100 * np.diag(confusion) / 24).tolist())
    assert (tmp_path / "straight" / "classification_map.png").exists()
    assert len((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()) == 2
    assert straight["checkpoint_epoch"] == 2

    # 1 epoch, then resume to 2: the same final predictions as the straight run.
    config = _config(scene_files)
    first = tmp_path / "resumed"
    from lightnets_jax.training import checkpoint

    hyperspectral.train(config, first, log=lambda *_: None)
    shutil.rmtree(first / "checkpoints" / "2")  # as if killed during epoch 2
    assert checkpoint.latest_epoch(first) == 1
    resumed = hyperspectral.train(config, first, resume=True, log=lambda *_: None)
    assert checkpoint.latest_epoch(first) == 2
    np.testing.assert_array_equal(np.load(first / "classification_map.npy"),
                                  np.load(tmp_path / "straight" / "classification_map.npy"))
    assert resumed["confusion_matrix"] == straight["confusion_matrix"]

    # `lightnets evaluate` reproduces the report from the checkpoint, identically, twice.
    before = np.load(tmp_path / "straight" / "test_predictions.npy")
    assert cli.main(["evaluate", "--workdir", str(tmp_path / "straight")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "straight" / "test_predictions.npy"), before)
    report = json.loads((tmp_path / "straight" / "report.json").read_text())
    assert report["confusion_matrix"] == straight["confusion_matrix"] and report["checkpoint_epoch"] == 2


def test_a_run_killed_just_after_a_checkpoint_resumes_with_every_epoch_recorded(scene_files, tmp_path, monkeypatch):
    from lightnets_jax.training import checkpoint

    save = checkpoint.save

    def save_then_die(workdir, state, epoch, *args, **kwargs):
        path = save(workdir, state, epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt  # the kill lands the moment epoch 1's checkpoint is complete
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        hyperspectral.train(_config(scene_files), tmp_path / "run", log=lambda *_: None)
    monkeypatch.setattr(checkpoint, "save", save)
    hyperspectral.train(_config(scene_files), tmp_path / "run", resume=True, log=lambda *_: None)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_flips_change_training_and_resume_exactly(scene_files, tmp_path):
    from lightnets_jax.training import checkpoint

    config = dataclasses.replace(_config(scene_files), augment="flips", predict_map=False)
    straight = hyperspectral.train(config, tmp_path / "straight", log=lambda *_: None)
    plain = hyperspectral.train(dataclasses.replace(config, augment="none"), tmp_path / "plain", log=lambda *_: None)
    loss = [json.loads(line)["train_loss"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    plain_loss = [json.loads(line)["train_loss"] for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert loss[0] != plain_loss[0]  # the first epoch already sees flipped patches
    del plain
    hyperspectral.train(config, tmp_path / "resumed", log=lambda *_: None)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "2")
    resumed = hyperspectral.train(config, tmp_path / "resumed", resume=True, log=lambda *_: None)
    assert checkpoint.latest_epoch(tmp_path / "resumed") == 2
    np.testing.assert_array_equal(np.load(tmp_path / "resumed" / "test_predictions.npy"),
                                  np.load(tmp_path / "straight" / "test_predictions.npy"))
    assert resumed["confusion_matrix"] == straight["confusion_matrix"]
    with pytest.raises(ValueError, match="unknown augment 'mixup'; choose one of none, flips"):
        dataclasses.replace(config, augment="mixup")


def test_cli_errors_are_one_line(scene_files, tmp_path, capsys):
    cube, gt = scene_files
    assert cli.main(["train", "resnet", "--workdir", str(tmp_path / "w")]) == 2
    assert "unknown model 'resnet'; available models:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as parse_error:  # refused by the parser, before anything runs
        cli.main(["train", "hybridsn", "--cube", str(cube), "--gt", str(gt), "--patch-size", "8",
                  "--workdir", str(tmp_path / "w")])
    assert parse_error.value.code == 2 and "must be an odd integer >= 1, got 8" in capsys.readouterr().err
    assert cli.main(["train", "hybridsn", "--cube", str(cube), "--gt", str(gt), "--pca-components", "40",
                     "--workdir", str(tmp_path / "w")]) == 2
    assert "PCA components must be between 1 and the cube's 20 bands, got 40" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing half-written


def test_non_finite_loss_names_the_runs_step_not_the_epochs(scene_files, tmp_path, monkeypatch):
    # The loss turns NaN at the first step of epoch 2: the message must say step `steps`, the
    # run's step count (it used to say step 0, counting from the start epoch of the run).
    from lightnets_jax.training import checkpoint, engine

    config = _config(scene_files, epochs=3)
    steps = hyperspectral._steps_per_epoch(config, 72)  # 144 labelled pixels, half for training
    real_step = engine.train_step

    def poisoned(state, images, labels, label_smoothing=0.0):
        new_state, metrics = real_step(state, images, labels, label_smoothing)
        return new_state, {**metrics, "loss": jnp.where(state.step >= steps, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(engine, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match=rf"loss became nan at step {steps} \(epoch 2\).*lower --lr"):
        hyperspectral.train(config, tmp_path / "run", log=lambda *_: None)
    assert checkpoint.epochs(tmp_path / "run") == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_cli_config_file_with_flags_over_it(scene_files, tmp_path):
    cube, gt = scene_files
    workdir = tmp_path / "note"
    assert cli.main(["train", "hybridsn", "--config", "hybridsn_note", "--cube", str(cube), "--gt", str(gt),
                     "--pca-components", "16", "--patch-size", "9", "--test-ratio", "0.5", "--epochs", "1",
                     "--batch-size", "8", "--no-map", "--augment", "flips", "--label-smoothing", "0.1",
                     "--workdir", str(workdir)]) == 0
    saved = json.loads((workdir / "config.json").read_text())
    assert (saved["recipe"], saved["init_scheme"], saved["epochs"], saved["batch_size"]) == ("note", "torch", 1, 8)
    assert (saved["augment"], saved["label_smoothing"]) == ("flips", 0.1)  # --label-smoothing used to be dropped
    assert saved["optimizer"]["schedule"] == "constant" and saved["predict_map"] is False
    assert cli.main(["train", "hybridsn", "--config", "cifar10", "--workdir", str(tmp_path / "x")]) == 2
