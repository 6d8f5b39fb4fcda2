"""Pictures people would rather look at than read: classification maps, training curves and
repeated runs' accuracies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightnets_jax.reports.repeats import SCORES


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
    height, width = prediction.shape
    side = 5.5 * min(1.0, width / height)  # panels sized to the scene's shape: no empty bands around them
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 3, side * height / width + 0.8),
                             squeeze=False, layout="constrained")
    for ax, (image, name) in zip(axes[0], panels):
        ax.imshow(color_map(image, num_classes), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i + 1] / 255) for i in range(num_classes)]
    fig.legend(handles, [f"{i + 1} {n}" for i, n in enumerate(class_names)], loc="outside right center", fontsize=8)
    fig.suptitle(title)
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


def save_repeats_summary(path: Path, summaries: list[dict], labels: list[str] | None = None) -> None:
    """Scores and per-class accuracies of one or more repeat runs (or single runs) side by side:
    a bar at each mean, a line from min to max; each class's spread at a glance where the table
    needs a careful read. ``labels`` name the runs in the legend (several summaries)."""
    plt = _pyplot()
    rows = [(label, key, True) for label, key in SCORES]
    rows += [(name, name, False) for name in dict.fromkeys(n for s in summaries for n in s["per_class"])]
    height = 0.8 / len(summaries)
    fig, ax = plt.subplots(figsize=(7, (0.3 + 0.12 * (len(summaries) - 1)) * len(rows) + 1.5))
    positions = np.arange(len(rows))[::-1].astype(float)
    lowest = 100.0
    for k, summary in enumerate(summaries):
        stats = [(summary["scores"] if score else summary["per_class"]).get(key) for _, key, score in rows]
        shown = [i for i, st in enumerate(stats) if st is not None and st["mean"] is not None]
        means = np.array([stats[i]["mean"] for i in shown])
        spread = [means - [stats[i]["min"] for i in shown], [stats[i]["max"] for i in shown] - means]
        offset = (len(summaries) - 1) / 2 * height - k * height
        ax.barh(positions[shown] + offset, means, height=height, xerr=spread, capsize=2, color=f"C{k}",
                label=labels[k] if labels else None)
        lowest = min(lowest, float(np.min(means - spread[0])))
    ax.set_yticks(positions, [label for label, _, _ in rows], fontsize=8)
    ax.set_xlim(max(0.0, lowest - 5), 100.5)
    ax.set_xlabel("accuracy (%): mean, min to max")
    if len(summaries) == 1:
        oa = summaries[0]["scores"]["overall_accuracy"]
        ax.set_title(f"{summaries[0]['model']} on {summaries[0]['scene']}: {summaries[0]['runs']} runs, "
                     f"OA {oa['mean']:.2f} ± {oa['std']:.2f}", fontsize=10)
    elif labels:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))  # above the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
