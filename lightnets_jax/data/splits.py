"""Splits of a scene's labelled pixels into train and test, all seeded: the note's stratified
split, a fixed number per class (low-label tables) and spatially disjoint blocks. A split is a
list of pixel coordinates; patches are cut only when a batch needs them."""

from __future__ import annotations

import dataclasses

import numpy as np

from lightnets_jax.data.hyperspectral import DataError, check_window, labelled_pixels


@dataclasses.dataclass(frozen=True)
class Split:
    train: np.ndarray  # (n, 2) pixel coordinates
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    method: str

    def describe(self) -> dict:
        return {"method": self.method, "train": int(len(self.train)), "test": int(len(self.test)),
                "train_per_class": np.bincount(self.train_labels).tolist(),
                "test_per_class": np.bincount(self.test_labels).tolist()}


def stratified_split(labels: np.ndarray, test_ratio: float, seed: int = 345) -> Split:
    """The note's ``train_test_split(..., stratify=y)`` over labelled pixels in row-major order.

    Same order, ratio and seed as the note, so the very same pixels land in each set.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_ratio < 1:
        raise DataError(f"test ratio must be between 0 and 1, got {test_ratio}")
    coords, y = labelled_pixels(labels)
    counts = np.bincount(y)
    sparse = [f"class {k + 1} ({n} pixels)" for k, n in enumerate(counts) if 0 < n < 2]
    if sparse:
        raise DataError(f"a stratified split needs >= 2 pixels per class; {', '.join(sparse)}: drop them or use --split per-class")
    n_train = len(y) - int(np.ceil(test_ratio * len(y)))
    if n_train < len(counts[counts > 0]):
        raise DataError(f"test ratio {test_ratio} leaves {n_train} training pixels for {len(counts)} classes; lower it")
    try:
        train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=test_ratio, random_state=seed, stratify=y)
    except ValueError as err:
        raise DataError(f"cannot stratify with test ratio {test_ratio}: {err}") from err
    return Split(coords[train_idx], y[train_idx], coords[test_idx], y[test_idx], f"stratified(test_ratio={test_ratio}, seed={seed})")


def per_class_split(labels: np.ndarray, per_class: int, seed: int = 345, max_fraction: float | None = None) -> Split:
    """A fixed number of training pixels per class, the rest for testing.

    ``max_fraction`` caps a small class at that share of its pixels (papers' low-label tables take
    half of a class smaller than twice ``per_class``); without it such a class is an error.
    """
    coords, y = labelled_pixels(labels)
    rng = np.random.default_rng(seed)
    train_idx = []
    for k in range(int(y.max()) + 1):
        members = np.flatnonzero(y == k)
        take = per_class if max_fraction is None else min(per_class, max(1, int(max_fraction * len(members))))
        if len(members) <= take:
            raise DataError(f"class {k + 1} has {len(members)} pixels, not more than --per-class {per_class}; "
                            "lower it or cap small classes with --per-class-max-fraction 0.5")
        train_idx.extend(rng.choice(members, take, replace=False))
    train_idx = np.sort(np.asarray(train_idx))
    test_mask = np.ones(len(y), bool)
    test_mask[train_idx] = False
    cap = "" if max_fraction is None else f", max_fraction={max_fraction}"
    return Split(coords[train_idx], y[train_idx], coords[test_mask], y[test_mask], f"per_class({per_class}{cap}, seed={seed})")


def disjoint_split(labels: np.ndarray, window: int, test_ratio: float, block: int | None = None, seed: int = 345) -> Split:
    """Spatially disjoint split: whole square blocks of the scene go to train or test.

    Blocks are drawn in a seeded order until they hold ``1 - test_ratio`` of the labelled pixels;
    a class still without training pixels gets one more block holding it. Test pixels inside any
    training pixel's patch (closer than ``window // 2 + 1``) are dropped, so no training patch sees
    a test pixel. Small classes may end with no test pixels; their accuracy is then absent.
    """
    from scipy.ndimage import binary_dilation

    check_window(window, *labels.shape)
    height, width = labels.shape
    block = block or window
    rng = np.random.default_rng(seed)
    block_cols = -(-width // block)
    block_of = (np.arange(height)[:, None] // block) * block_cols + np.arange(width)[None, :] // block
    labelled = labels > 0
    pixels_per_block = np.bincount(block_of[labelled], minlength=block_of.max() + 1)
    is_train = np.zeros(len(pixels_per_block), bool)
    taken, wanted = 0, (1 - test_ratio) * labelled.sum()
    for b in rng.permutation(len(pixels_per_block)):
        if taken >= wanted:
            break
        is_train[b], taken = True, taken + pixels_per_block[b]
    for k in range(1, int(labels.max()) + 1):
        holding = np.unique(block_of[labels == k])
        if len(holding) and not is_train[holding].any():
            is_train[rng.choice(holding)] = True
    train_mask = labelled & is_train[block_of]
    seen_by_training = binary_dilation(train_mask, structure=np.ones((window, window), bool))
    test_mask = labelled & ~is_train[block_of] & ~seen_by_training
    if not test_mask.any():
        raise DataError(f"the disjoint split with blocks of {block} left no test pixels; raise --test-ratio or use a smaller --block")
    coords, y = labelled_pixels(labels)
    in_train = train_mask[coords[:, 0], coords[:, 1]]
    in_test = test_mask[coords[:, 0], coords[:, 1]]
    return Split(coords[in_train], y[in_train], coords[in_test], y[in_test], f"disjoint(block={block}, test_ratio={test_ratio}, seed={seed})")
