"""Image files in, model inputs out: decoding, the eval transform published ImageNet weights
expect (resize the shorter side, centre crop, normalize), the training augmentation (random
resized crop and flip), and image folders with one subfolder per class."""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

import numpy as np

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageError(ValueError):
    """An image file or folder that cannot be used, with the reason and the fix."""


def imagenet_class_names() -> list[str]:
    text = importlib.resources.files("lightnets_jax.data").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def decode(path: str | Path):
    """The file as an RGB PIL image; anything PIL cannot decode is an ImageError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"no image file {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageError(f"cannot read {path}: not an image PIL can decode ({err})") from None


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 scaled to [0, 1] and standardized per channel."""
    return (pixels.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def eval_transform(image, size: int, resize: int | None = None) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(size), bilinear: uint8 (size, size, 3).

    ``resize`` defaults to size / 0.875 (256 for 224), the crop ratio of the published weights.
    """
    from PIL import Image

    resize = resize or int(round(size / 0.875))
    width, height = image.size
    scale = resize / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def train_transform(image, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip: uint8 (size, size, 3)."""
    from PIL import Image

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            break
    else:  # the whole image, centred (torchvision's fallback)
        w, h, left, top = width, height, 0, 0
    crop = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    pixels = np.asarray(crop, np.uint8)
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """Image files and their class indices; ``classes`` are the subfolder names, sorted."""

    files: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]


def image_folder(root: str | Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """``root/CLASS/*.jpg|png…``; ``classes`` fixes the class order (a validation folder's must
    match its training folder's)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"no image folder {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(classes or found)
    if len(classes) < 2:
        raise ImageError(f"{root} has {len(classes)} class folder{'s' if len(classes) != 1 else ''} "
                         f"({', '.join(classes) or 'none'}); a classifier needs one subfolder per class, two at least")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ImageError(f"{root} has class folders the training folder lacks: {', '.join(unknown)}")
    files, labels = [], []
    for index, name in enumerate(classes):
        members = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in SUFFIXES) if (root / name).is_dir() else []
        if not members:
            raise ImageError(f"class folder {root / name} holds no images ({', '.join(SUFFIXES)}); add some or remove it")
        files += members
        labels += [index] * len(members)
    return ImageFolder(tuple(files), np.asarray(labels, np.int32), classes)


def _subset(folder: ImageFolder, indices: np.ndarray) -> ImageFolder:
    return ImageFolder(tuple(folder.files[i] for i in indices), folder.labels[indices], folder.classes)


def folder_split(root: str | Path, val_fraction: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    """(train, validation): ``root/train`` and ``root/val`` when present, else ``val_fraction`` of
    each class of ``root`` held out (seeded, one image at least)."""
    root = Path(root)
    if (root / "train").is_dir():
        train = image_folder(root / "train")
        for name in ("val", "validation"):
            if (root / name).is_dir():
                return train, image_folder(root / name, train.classes)
        root, whole = root / "train", train
    else:
        whole = image_folder(root)
    rng = np.random.default_rng(seed)
    held_out = []
    for index, name in enumerate(whole.classes):
        members = np.flatnonzero(whole.labels == index)
        if len(members) < 2:
            raise ImageError(f"class folder {root / name} has {len(members)} image; holding some out for validation "
                             "needs 2 at least (or give a val/ folder beside train/)")
        held_out.extend(rng.choice(members, max(1, int(round(val_fraction * len(members)))), replace=False))
    val_mask = np.zeros(len(whole.labels), bool)
    val_mask[held_out] = True
    return _subset(whole, np.flatnonzero(~val_mask)), _subset(whole, np.flatnonzero(val_mask))
