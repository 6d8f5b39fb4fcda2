import pickle
import tarfile

import numpy as np
import pytest

from lightnets_jax.data import cifar10
from lightnets_jax.data.hyperspectral import DataError


def _batches(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist())
            for name in (*cifar10.TRAIN_BATCHES, "test_batch")}


def _write_python(folder, batches):
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)


def _write_binary(folder, batches):
    folder.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


def _expected(batches):
    train = np.concatenate([batches[n][0] for n in cifar10.TRAIN_BATCHES]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([batches[n][1] for n in cifar10.TRAIN_BATCHES])
    return train, labels


@pytest.mark.parametrize("layout", ["python", "python-root", "binary"])
def test_layouts_give_shapes_dtypes_labels_and_order(tmp_path, layout):
    batches = _batches()
    if layout == "python":
        _write_python(tmp_path / "cifar-10-batches-py", batches)
    elif layout == "python-root":
        _write_python(tmp_path / "here", batches)
        tmp_path = tmp_path / "here"
    else:
        _write_binary(tmp_path / "cifar-10-batches-bin", batches)
    data = cifar10.load(tmp_path, use_tfds=False)
    train, labels = _expected(batches)
    assert data.train_images.shape == (30, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int32
    np.testing.assert_array_equal(data.train_images, train)
    np.testing.assert_array_equal(data.train_labels, labels)
    np.testing.assert_array_equal(data.test_labels, batches["test_batch"][1])
    # Channel planes: the first 1024 bytes of a row are red.
    np.testing.assert_array_equal(data.test_images[0, :, :, 0].ravel(), batches["test_batch"][0][0, :1024])


def test_without_a_data_dir_the_notes_download_folder_is_used(tmp_path, monkeypatch):
    batches = _batches(seed=3)
    _write_python(tmp_path / "data" / "cifar-10-batches-py", batches)  # torchvision's CIFAR10(root='./data')
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    data = cifar10.load(use_tfds=False)
    assert data.source == "python layout at data/cifar-10-batches-py"
    np.testing.assert_array_equal(data.train_labels, _expected(batches)[1])
    (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"tried data \(no cifar-10-batches-py/"):
        cifar10.load(use_tfds=False)


def _archive(tmp_path, batches):
    _write_python(tmp_path / "src" / "cifar-10-batches-py", batches)
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path


def test_archive_is_checksum_verified(tmp_path, monkeypatch):
    batches = _batches()
    path = _archive(tmp_path, batches)
    with pytest.raises(DataError, match="MD5 .* not the official c58f3010"):
        cifar10.load(tmp_path, use_tfds=False)
    monkeypatch.setitem(cifar10.ARCHIVES, "cifar-10-python.tar.gz", cifar10.md5sum(path))
    data = cifar10.load(tmp_path, use_tfds=False)
    np.testing.assert_array_equal(data.train_labels, _expected(batches)[1])


def test_bad_data_dirs_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cifar10.load(tmp_path / "nope", use_tfds=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="CIFAR-10 not found; tried .*empty.*Pass --data-dir"):
        cifar10.load(tmp_path / "empty", use_tfds=False)
    batches = _batches()
    _write_python(tmp_path / "trunc" / "cifar-10-batches-py", batches)
    raw = (tmp_path / "trunc" / "cifar-10-batches-py" / "data_batch_3").read_bytes()
    (tmp_path / "trunc" / "cifar-10-batches-py" / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupt"):
        cifar10.load(tmp_path / "trunc", use_tfds=False)
    batches["test_batch"] = (batches["test_batch"][0], [11] * 6)
    _write_python(tmp_path / "labels" / "cifar-10-batches-py", batches)
    with pytest.raises(DataError, match="test labels range 11..11"):
        cifar10.load(tmp_path / "labels", use_tfds=False)
    _write_binary(tmp_path / "bin" / "cifar-10-batches-bin", _batches())
    path = tmp_path / "bin" / "cifar-10-batches-bin" / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        cifar10.load(tmp_path / "bin", use_tfds=False)


def test_augmentation_crops_within_padding_and_flips_half():
    images = np.zeros((2000, 32, 32, 3), np.uint8)
    images[:, :, :16] = 255  # left half white: a flip moves it right
    images[:, 0, 0] = 7  # a marker to locate the crop
    out = cifar10.random_crop_flip(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    left = out[:, 8:24, 10].mean(axis=(1, 2))  # column 10 is white unless flipped (crop shift <= 4)
    flipped = left < 128
    assert 0.45 < flipped.mean() < 0.55
    for image, was_flipped in zip(out[:200], flipped[:200]):
        ys, xs = np.nonzero(image[..., 0] == 7)
        if len(ys):  # the marker stays within 4 px of its corner
            assert ys[0] <= 4 and (xs[0] >= 27 if was_flipped else xs[0] <= 4)
    again = cifar10.random_crop_flip(images, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)  # reproducible from the seed


def test_normalize_matches_the_note():
    image = np.full((1, 2, 2, 3), 128, np.uint8)
    expected = (128 / 255 - np.asarray(cifar10.MEAN)) / np.asarray(cifar10.STD)
    np.testing.assert_allclose(cifar10.normalize(image)[0, 0, 0], expected, atol=1e-6)


def test_real_cifar10_if_present():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "cifar-10-batches-py").exists():
        pytest.skip("the real CIFAR-10 is not beside this checkout")
    data = cifar10.load(root, use_tfds=False)
    assert data.train_images.shape == (50000, 32, 32, 3)
    assert data.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    np.testing.assert_allclose(data.train_images.reshape(-1, 3).mean(0), [125.307, 122.950, 113.865], atol=1e-3)


def test_validation_split_that_leaves_no_training_batch_is_refused(tmp_path):
    from lightnets_jax.tasks import classification

    _write_python(tmp_path / "data" / "cifar-10-batches-py", _batches(n=6))  # 30 training images
    config = classification.ImageConfig(data_dir=str(tmp_path / "data"), batch_size=8, val_size=25)
    with pytest.raises(ValueError, match=r"--val-size 25 leaves no full training batch of 8 .* choose 1 to 22"):
        classification.train(config, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="val_size must be an integer >= 1, got 0"):  # refused where it enters
        classification.ImageConfig(val_size=0)
    big = classification.ImageConfig(data_dir=str(tmp_path / "data"), batch_size=100000, val_size=2)
    with pytest.raises(ValueError, match="--batch-size 100000 exceeds the 30 training images .* choose 1 to 28"):
        classification.train(big, tmp_path / "run", log=lambda *_: None)


def test_tensorflow_datasets_path_reads_cifar10(monkeypatch, tmp_path):
    # No files anywhere: load() falls back to tfds.data_source("cifar10"), here mocked by tfds's
    # own testing helper (no TensorFlow needed, no download).
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data either
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        data = cifar10.load()
    assert data.source == "tensorflow-datasets cifar10"
    assert data.train_images.shape == (7, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (7, 32, 32, 3) and data.train_labels.dtype == np.int32
    assert 0 <= data.train_labels.min() and data.test_labels.max() <= 9
    assert cifar10.normalize(data.train_images[:2]).shape == (2, 32, 32, 3)


def test_without_files_or_tfds_the_error_says_both_ways(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name.startswith("tensorflow_datasets"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(cifar10.DataError, match=r"tensorflow-datasets \(not installed.*Pass --data-dir DIR"):
        cifar10.load(tmp_path)


def test_an_installed_tfds_that_cannot_provide_cifar10_is_not_called_missing(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")

    def unprepared():  # what tfds raised here offline: its download path imports a module it lacks
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.setattr(cifar10, "_read_tfds", unprepared)
    with pytest.raises(cifar10.DataError) as err:
        cifar10.load(tmp_path)
    assert "installed but it could not provide cifar10 (ModuleNotFoundError: No module named 'importlib_resources')" \
        in str(err.value)
    assert "not installed" not in str(err.value) and "Pass --data-dir DIR" in str(err.value)
