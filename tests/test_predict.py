"""``lightnets predict``: a trained run maps its own scene or a new one, and refuses bad input
with one line, leaving nothing half-written."""

import json
import shutil

import numpy as np
import pytest

from lightnets_jax import cli
from lightnets_jax.data import envi
from lightnets_jax.data import hyperspectral as hsi
from lightnets_jax.tasks import hyperspectral, predict
from lightnets_jax.training.engine import OptimizerConfig
from tests.support import write_envi, write_tiny_scene

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of HybridSN on a 17 x 15 synthetic scene of 20 bands (PCA fitted on training pixels)."""
    folder = tmp_path_factory.mktemp("predict")
    write_tiny_scene(folder, height=17, width=15)
    config = hyperspectral.make_config("default", cube=str(folder / "cube.npy"), gt=str(folder / "gt.npy"),
                                       pca_components=16, patch_size=9, test_ratio=0.5, epochs=1, batch_size=8,
                                       pca_fit="train", optimizer=OptimizerConfig("adam", 1e-3, "constant"))
    hyperspectral.train(config, folder / "run", log=lambda *_: None)
    return folder


def test_maps_its_own_scene_dense_as_patch_by_patch(run, tmp_path):
    record = predict.predict(run / "run", out=tmp_path / "dense", probabilities=True, tile=5, log=lambda *_: None)
    predict.predict(run / "run", out=tmp_path / "patch", method="patch", log=lambda *_: None)
    dense, patch = (np.load(tmp_path / d / "classification_map.npy") for d in ("dense", "patch"))
    np.testing.assert_array_equal(dense, patch)
    assert dense.shape == (17, 15) and dense.min() >= 1 and dense.max() <= 3
    # The map training wrote (from the dense path too) is the same map, shifted by one.
    np.testing.assert_array_equal(np.load(run / "run" / "classification_map.npy") + 1, dense)
    probabilities = np.load(tmp_path / "dense" / "probabilities.npy")
    assert probabilities.dtype == np.float16 and probabilities.shape == (17, 15, 3)
    np.testing.assert_array_equal(np.argmax(probabilities, -1) + 1, dense)
    saved = json.loads((tmp_path / "dense" / "prediction.json").read_text())
    assert saved == json.loads(json.dumps(record)) and saved["shape"] == [17, 15, 20] and saved["checkpoint_epoch"] == 1
    assert saved["tile"] == [5, 5] and saved["pixels_per_s"] > 0 and saved["peak_rss_mb"] > 0
    assert (tmp_path / "dense" / "classification_map.png").is_file()


def test_a_new_scene_uses_the_runs_own_pca(run, tmp_path):
    # The training scene given as a "new" cube: the saved PCA (fitted on training pixels only)
    # must give the very map of the run's own scene; a PCA refitted on the cube would not.
    shutil.copy(run / "cube.npy", tmp_path / "flight.npy")
    own = predict.predict(run / "run", out=tmp_path / "own", log=lambda *_: None)
    new = predict.predict(run / "run", cube=str(tmp_path / "flight.npy"), gt=str(run / "gt.npy"), out=tmp_path / "new",
                          log=lambda *_: None)
    np.testing.assert_array_equal(np.load(tmp_path / "own" / "classification_map.npy"),
                                  np.load(tmp_path / "new" / "classification_map.npy"))
    assert (own["scene"], new["scene"]) == ("cube", "flight")  # scenes of one's own go by their file's name


def test_an_envi_flight_line_maps_like_the_same_cube_as_npy(run, tmp_path):
    cube = np.load(run / "cube.npy")
    where = "map info = {UTM, 1.000, 1.000, 724522.0, 3846498.0, 15.0, 15.0, 11, North, WGS-84}\n"
    write_envi(tmp_path / "flight.img", cube, "bil", big_endian=True, extra=where)  # AVIRIS-style: BIL, big-endian
    args = ["predict", "--workdir", str(run / "run"), "--cube", str(tmp_path / "flight.img.hdr"), "--out"]
    assert cli.main(args + [str(tmp_path / "envi")]) == 0
    predict.predict(run / "run", cube=str(run / "cube.npy"), out=tmp_path / "npy", log=lambda *_: None)
    np.testing.assert_array_equal(np.load(tmp_path / "envi" / "classification_map.npy"),
                                  np.load(tmp_path / "npy" / "classification_map.npy"))
    assert json.loads((tmp_path / "envi" / "prediction.json").read_text())["scene"] == "flight"
    # The map goes back out as an ENVI classification on the flight line's grid.
    mapped = hsi.read_array(tmp_path / "envi" / "classification_map.img", None, ndim=2)
    np.testing.assert_array_equal(mapped, np.load(tmp_path / "npy" / "classification_map.npy"))
    header = envi.parse_header((tmp_path / "envi" / "classification_map.img.hdr").read_text())
    assert header["file type"] == "ENVI Classification" and header["classes"] == "4"
    assert header["map info"] == where.split(" = ")[1].strip() and header["class names"].startswith("{Unclassified, ")
    assert not (tmp_path / "npy" / "classification_map.img").exists()  # a .npy cube has no grid to carry


def test_masked_nodata_pixels_stay_unclassified(run, tmp_path):
    cube = np.load(run / "cube.npy")
    cube[0, :4] = np.nan
    cube[16, 14] = 0
    np.save(tmp_path / "holes.npy", cube)
    args = ["predict", "--workdir", str(run / "run"), "--cube", str(tmp_path / "holes.npy"), "--out", str(tmp_path / "m")]
    assert cli.main(args) == 2 and not (tmp_path / "m").exists()
    assert cli.main(args + ["--mask-nodata"]) == 0
    class_map = np.load(tmp_path / "m" / "classification_map.npy")
    assert (class_map[0, :4] == 0).all() and class_map[16, 14] == 0 and (class_map == 0).sum() == 5
    assert json.loads((tmp_path / "m" / "prediction.json").read_text())["unclassified_pixels"] == 5


def test_bad_input_is_one_line_and_leaves_nothing(run, tmp_path, capsys):
    workdir = str(run / "run")
    np.save(tmp_path / "bands.npy", np.zeros((17, 15, 12), np.float32))
    np.save(tmp_path / "tiny.npy", np.load(run / "cube.npy")[:3, :3])
    (tmp_path / "empty").mkdir()
    shutil.copy(run / "run" / "config.json", tmp_path / "empty" / "config.json")
    cases = {
        "12 bands but the run was trained on 20": ["--workdir", workdir, "--cube", str(tmp_path / "bands.npy")],
        "patch size 9 exceeds the 3x3 scene": ["--workdir", workdir, "--cube", str(tmp_path / "tiny.npy")],
        "holds no checkpoint": ["--workdir", str(tmp_path / "empty")],
        "has no config.json": ["--workdir", str(tmp_path / "nowhere")],
    }
    for message, args in cases.items():
        assert cli.main(["predict", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_an_existing_output_is_refused_unless_overwrite(run, tmp_path, capsys):
    args = ["predict", "--workdir", str(run / "run"), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 0
    assert cli.main(args) == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0 and sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "classification_map.npy", "classification_map.png", "classification_map_pixels.png", "prediction.json"]


def test_an_old_run_without_its_pca_maps_its_own_scene_but_not_another(run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run / "run", old)
    (old / hyperspectral.PREPROCESSING).unlink()
    assert cli.main(["predict", "--workdir", str(old), "--out", str(tmp_path / "own")]) == 0
    assert cli.main(["predict", "--workdir", str(old), "--cube", str(run / "cube.npy"), "--out", str(tmp_path / "x")]) == 2
    assert "re-evaluate it (lightnets evaluate" in capsys.readouterr().err


def test_a_trained_run_exports_to_stablehlo_that_maps_alike(run, tmp_path):
    from lightnets_jax import export
    from lightnets_jax.data import hyperspectral as hsi

    assert cli.main(["export", "--workdir", str(run / "run"), "--out", str(tmp_path / "run.stablehlo")]) == 0
    forward = export.from_stablehlo((tmp_path / "run.stablehlo").read_bytes())
    class_map = np.load(run / "run" / "classification_map.npy")  # the run's own dense map, classes 0..K-1
    config = hyperspectral.HSIConfig.from_json(json.loads((run / "run" / "config.json").read_text()))
    padded = hyperspectral.prepare(config).padded
    coords = hsi.scene_pixels(*class_map.shape)
    logits = np.asarray(forward(hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 9)))
    np.testing.assert_array_equal(np.argmax(logits, -1).reshape(class_map.shape), class_map)


def test_classify_refuses_a_hyperspectral_run(run, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(b"not read: the run is refused first")
    assert cli.main(["classify", str(image), "--weights", str(run / "run")]) == 2
    assert "is a hyperspectral run; classify takes image models (use lightnets predict)" in capsys.readouterr().err
