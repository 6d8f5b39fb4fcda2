"""Pictures people would rather look at than read: classification maps and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def class_colors(num_classes: int) -> np.ndarray:
    """One fixed RGB colour (uint8) per class, index 0 = unlabelled (black)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    colors = [(0, 0, 0)] + [tuple(int(255 * v) for v in cmap(i % 20)[:3]) for i in range(num_classes)]
    return np.asarray(colors, dtype=np.uint8)


def color_map(class_map: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels with 0 = background → (H, W, 3) uint8 image, one pixel per scene pixel."""
    return class_colors(num_classes)[class_map]


def save_classification_map(path: Path, prediction: np.ndarray, ground_truth: np.ndarray | None, class_names,
                            title: str) -> None:
    """Prediction for every pixel beside the ground truth (alone without one), with a legend; plus
    a raw-size PNG map."""
    plt = _pyplot()
    num_classes = len(class_names)
    colors = class_colors(num_classes)
    plt.imsave(path.with_name(path.stem + "_pixels.png"), color_map(prediction, num_classes))
    panels = [(prediction, "prediction (every pixel)")]
    if ground_truth is not None:
        panels.insert(0, (ground_truth, "ground truth"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6.5), squeeze=False)
    for ax, (image, name) in zip(axes[0], panels):
        ax.imshow(color_map(image, num_classes), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i + 1] / 255) for i in range(num_classes)]
    fig.legend(handles, [f"{i + 1} {n}" for i, n in enumerate(class_names)], loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(right=0.78)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_training_curves(path: Path, history: list[dict]) -> None:
    if not history:
        return
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    acc_ax.plot(epochs, [h["train_accuracy"] for h in history], label="train accuracy (%)")
    if any("val_accuracy" in h for h in history):
        acc_ax.plot(epochs, [h.get("val_accuracy", np.nan) for h in history], label="validation accuracy (%)")
    acc_ax.set_xlabel("epoch")
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
