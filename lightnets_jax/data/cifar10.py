"""CIFAR-10 as NumPy arrays (uint8 NHWC images, int32 labels), from wherever it already is.

Looked for in this order: ``data_dir`` (or ``$LIGHTNETS_CIFAR10_DIR``; without either, ``./data``,
where the note's torchvision code downloads it) holding the official python layout
(``cifar-10-batches-py/``, as torchvision leaves it), the official binary layout
(``cifar-10-batches-bin/``) or one of the official archives (checksum-verified, extracted in
memory); then tensorflow-datasets (``cifar10``, which downloads and prepares it on a connected
machine). The NumPy paths need no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from lightnets_jax.data.hyperspectral import DataError

ENV_VAR = "LIGHTNETS_CIFAR10_DIR"
MEAN = (0.4914, 0.4822, 0.4465)  # the note's normalization
STD = (0.2023, 0.1994, 0.2010)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
ARCHIVES = {  # name -> md5 of the official release
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
}
_RECORD = 1 + 32 * 32 * 3  # binary layout: label byte + CHW pixels


@dataclasses.dataclass(frozen=True)
class Cifar10:
    train_images: np.ndarray  # (50000, 32, 32, 3) uint8
    train_labels: np.ndarray  # (50000,) int32
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


# Where the note's code leaves CIFAR-10: torchvision.datasets.CIFAR10(root='./data', download=True).
NOTE_DATA_DIR = "data"


def load(data_dir: str | Path | None = None, use_tfds: bool = True) -> Cifar10:
    data_dir = data_dir or os.environ.get(ENV_VAR)
    tried = []
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist; point it at the folder holding cifar-10-batches-py")
    if data_dir is not None:
        roots = [Path(data_dir)]
    else:  # the note's download folder, where there is one
        roots = [Path(NOTE_DATA_DIR)] if Path(NOTE_DATA_DIR).is_dir() else []
    for root in roots:
        found = _from_folder(root)
        if found is not None:
            return found
        tried.append(f"{root} (no cifar-10-batches-py/, cifar-10-batches-bin/ or official archive)")
    if use_tfds:
        try:
            import tensorflow_datasets  # noqa: F401
        except ImportError:
            tried.append("tensorflow-datasets (not installed: pip install 'lightnets_jax[tfds]')")
        else:
            try:
                return _checked(*_read_tfds(), "tensorflow-datasets cifar10")
            except Exception as err:  # offline, not prepared, a module its download needs missing, ...
                tried.append(f"tensorflow-datasets, installed but it could not provide cifar10 ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120]})")
    raise DataError("CIFAR-10 not found; tried " + "; ".join(tried or ["nothing"]) +
                    f". Pass --data-dir DIR (or set {ENV_VAR}) holding cifar-10-batches-py/ as torchvision leaves it")


def _from_folder(root: Path) -> Cifar10 | None:
    """CIFAR-10 from the official python or binary layout or archive in (or at) ``root``, if any."""
    for folder in (root / "cifar-10-batches-py", root):
        if (folder / "test_batch").exists():
            return _checked(*_read_python_layout(folder), f"python layout at {folder}")
    for folder in (root / "cifar-10-batches-bin", root):
        if (folder / "test_batch.bin").exists():
            return _checked(*_read_binary_layout(folder), f"binary layout at {folder}")
    for name, md5 in ARCHIVES.items():
        if (root / name).exists():
            return _checked(*_read_archive(root / name, md5), f"archive {root / name}")
    return None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the python layout needs data_batch_1..5 and test_batch") from None
    except Exception as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}); re-extract the official archive") from err


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if data is None or labels is None:
        raise DataError(f"{path} has no b'data'/b'labels' entries; is it a CIFAR-10 batch file?")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: data {data.shape} and {len(labels)} labels; expected (N, 3072) and N labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int32)


def _read_python_layout(folder: Path):
    train = [_python_batch(folder / name) for name in TRAIN_BATCHES]
    test = _python_batch(folder / "test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test[0], test[1]


def _binary_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % _RECORD:
        raise DataError(f"{name} has {len(raw)} bytes, not a whole number of {_RECORD}-byte records: truncated or corrupt")
    records = np.frombuffer(raw, np.uint8).reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0].astype(np.int32)


def _read_binary_layout(folder: Path):
    def read(name):
        path = folder / name
        if not path.exists():
            raise DataError(f"{path} is missing; the binary layout needs data_batch_1..5.bin and test_batch.bin")
        return _binary_batch(path.read_bytes(), str(path))

    train = [read(f"{n}.bin") for n in TRAIN_BATCHES]
    test = read("test_batch.bin")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test[0], test[1]


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_archive(path: Path, expected_md5: str):
    actual = md5sum(path)
    if actual != expected_md5:
        raise DataError(f"{path} has MD5 {actual}, not the official {expected_md5}: re-download it")
    members = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                members[Path(member.name).name] = tar.extractfile(member).read()
    if "test_batch" in members:
        def batch(name):
            data = pickle.load(io.BytesIO(members[name]), encoding="bytes")
            return (np.asarray(data[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                    np.asarray(data[b"labels"], np.int32))
    else:
        def batch(name):
            return _binary_batch(members[f"{name}.bin"], f"{path}:{name}.bin")
    train = [batch(n) for n in TRAIN_BATCHES]
    test = batch("test_batch")
    return np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), test[0], test[1]


def _read_tfds():
    import tensorflow_datasets as tfds

    def split(name):
        source = tfds.data_source("cifar10", split=name)
        images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.uint8)
        labels = np.asarray([source[i]["label"] for i in range(len(source))], np.int32)
        return images, labels

    return (*split("train"), *split("test"))


def _checked(train_x, train_y, test_x, test_y, source: str) -> Cifar10:
    for name, labels in (("train", train_y), ("test", test_y)):
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{source}: {name} labels range {labels.min()}..{labels.max()}, CIFAR-10 has 0..9; the files are corrupt")
    return Cifar10(train_x, train_y, test_x, test_y, source)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC → float32, the note's ToTensor + Normalize."""
    from lightnets_jax.data.images import normalize as standardize

    return standardize(images, MEAN, STD)


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """The note's RandomCrop(32, padding=4) + RandomHorizontalFlip, vectorized over the batch."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dy = rng.integers(0, 2 * padding + 1, n)
    dx = rng.integers(0, 2 * padding + 1, n)
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
