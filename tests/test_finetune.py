"""Fine-tuning on an image folder, and classify: a generated folder of coloured images is learnt,
resume is exact, published-layout weights start it, and classify names the colour of a new image."""

import json
import shutil

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from lightnets_jax import cli, convert, models
from lightnets_jax.data import images
from lightnets_jax.tasks import classification
from lightnets_jax.training import checkpoint, engine
from tests.support import random_variables

COLOURS = {"blue": (30, 40, 220), "green": (40, 200, 50), "red": (220, 30, 40)}


def _picture(colour, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _folder(root, per_class=10):
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            suffix = ".png" if i % 2 else ".jpg"
            _picture(colour, 100 * list(COLOURS).index(name) + i).save(root / name / f"{i}{suffix}")
    return root


def _config(data_dir, epochs, **changes):
    # From scratch, a small batch and few steps: the CIFAR MobileNetV1 at 32x32 learns the colours
    # in 16 epochs at this rate (its BatchNorm statistics settle last).
    options = dict(model="mobilenet_v1", dataset="folder", data_dir=str(data_dir), width_multiplier=0.25,
                   epochs=epochs, batch_size=5, image_size=32, val_fraction=0.2, label_smoothing=0.0, workers=2,
                   optimizer=engine.OptimizerConfig("adam", 1e-2, "cosine"))
    return classification.ImageConfig(**{**options, **changes})


def _params(workdir, config):
    state, _ = checkpoint.restore(workdir, classification._state(config, 4, 3))
    return traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats})


@pytest.mark.slow
def test_a_folder_is_learnt_resume_is_exact_and_classify_names_the_colour(tmp_path, capsys):
    data = _folder(tmp_path / "pictures")
    quiet = lambda *_: None
    report = classification.train(_config(data, 16), tmp_path / "run", log=quiet)
    assert report["class_names"] == ["blue", "green", "red"]
    assert report["test_accuracy"] == 100.0  # two held-out pictures per colour
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(h["train_accuracy"] for h in history) == 100.0

    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    for epoch in (16, 15):  # as if killed during epoch 15
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(epoch))
    classification.train(_config(data, 16), tmp_path / "resumed", resume=True, log=quiet)
    straight, resumed = _params(tmp_path / "run", _config(data, 16)), _params(tmp_path / "resumed", _config(data, 16))
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])

    _picture(COLOURS["green"], 999, size=(64, 48)).save(tmp_path / "new.png")
    assert cli.main(["classify", str(tmp_path / "new.png"), "--weights", str(tmp_path / "run"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].endswith("new.png") and lines[-2].endswith("green")  # most likely first
    assert "centre crop 32" in lines[-4]


@pytest.mark.slow
def test_published_weights_start_the_run_and_a_frozen_backbone_stays_put(tmp_path):
    data = _folder(tmp_path / "pictures", per_class=4)
    model = models.create("mobilenet_v2_imagenet", width_multiplier=0.35, conv_impl="reference")
    imagenet = random_variables(model)
    weights = tmp_path / "imagenet.safetensors"
    from safetensors.numpy import save_file

    save_file(convert.to_torch("mobilenet_v2_imagenet", imagenet), str(weights))
    messages = []
    config = _config(data, 2, model="mobilenet_v2_imagenet", width_multiplier=0.35, batch_size=3, weights=str(weights),
                     freeze_backbone=True)
    with pytest.warns(UserWarning, match="initialised a new classifier"):
        classification.train(config, tmp_path / "run", log=messages.append)
    assert any(f"starting from {weights}" in m for m in messages)
    trained = _params(tmp_path / "run", config)
    start = traverse_util.flatten_dict(imagenet)
    for key, value in trained.items():
        if key[1] != "linear":  # the backbone and its BatchNorm statistics are the published ones
            np.testing.assert_array_equal(value, start[key])
    assert trained[("params", "linear", "kernel")].shape == (int(1280), 3)


def test_bad_folders_and_images_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    _picture(COLOURS["red"], 0).save(tmp_path / "one" / "cats" / "a.png")
    with pytest.raises(images.ImageError, match="has 1 class folder \\(cats\\); a classifier needs"):
        images.image_folder(tmp_path / "one")
    (tmp_path / "one" / "dogs").mkdir()
    with pytest.raises(images.ImageError, match="dogs holds no images"):
        images.image_folder(tmp_path / "one")
    (tmp_path / "fake.jpg").write_text("not a picture")
    assert cli.main(["classify", str(tmp_path / "fake.jpg"), "--model", "mobilenet_v1_imagenet",
                     "--options", '{"width_multiplier": 0.25}']) == 2
    err = capsys.readouterr().err.strip()
    assert "fake.jpg: not an image PIL can decode" in err and len(err.splitlines()) == 1
    assert cli.main(["train", "mobilenet_v2_imagenet", "--dataset", "folder"]) == 2
    assert "--dataset folder needs --data-dir" in capsys.readouterr().err


def test_eval_transform_is_torchvisions_resize_and_centre_crop(tmp_path):
    picture = _picture(COLOURS["red"], 3, size=(300, 200))
    pixels = images.eval_transform(picture, 224)
    resized = np.asarray(picture.resize((384, 256), Image.BILINEAR))  # shorter side to 256
    np.testing.assert_array_equal(pixels, resized[16:240, 80:304])


def test_classify_prints_imagenet_names_for_published_weights(tmp_path, capsys):
    from safetensors.numpy import save_file

    model = models.create("mobilenet_v2_imagenet", width_multiplier=0.35)
    variables = random_variables(model, seed=2)
    save_file(convert.to_torch("mobilenet_v2_imagenet", variables), str(tmp_path / "w.safetensors"))
    _picture(COLOURS["blue"], 5, size=(260, 300)).save(tmp_path / "x.jpg")
    assert cli.main(["classify", str(tmp_path / "x.jpg"), "--model", "mobilenet_v2_imagenet", "--options",
                     '{"width_multiplier": 0.35}', "--weights", str(tmp_path / "w.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    pixels = images.eval_transform(Image.open(tmp_path / "x.jpg").convert("RGB"), 224, 256)
    x = images.normalize(pixels[None], models.IMAGENET_MEAN, models.IMAGENET_STD)
    logits = np.asarray(model.apply(variables, x, train=False))[0]
    best = int(np.argmax(logits))
    assert lines[2].endswith(images.imagenet_class_names()[best]) and len(lines) == 7
