"""Tables over repeated runs, the way hyperspectral papers report them: mean ± std (and min/max)
of OA, AA, Kappa and each class's accuracy over seeds, and several such folders side by side."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from lightnets_jax.configs import flat_settings

SCORES = (("OA", "overall_accuracy"), ("AA", "average_accuracy"), ("Kappa", "kappa"))
TIMES = (("train s", "train_wall_seconds"), ("predict s", "predict_seconds"))


def _stats(values) -> dict:
    """mean, sample std (ddof 1; 0 for one run), min, max of the values that are not None."""
    present = np.asarray([v for v in values if v is not None], np.float64)
    if present.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "runs": 0}
    return {"mean": float(present.mean()), "std": float(present.std(ddof=1)) if present.size > 1 else 0.0,
            "min": float(present.min()), "max": float(present.max()), "runs": int(present.size)}


def summarize(reports: list[dict], seeds: list[int] | None = None) -> dict:
    """The summary of per-seed ``report.json`` payloads (one scene, one model)."""
    if not reports:
        raise ValueError("no finished run to summarize")
    names = reports[0]["class_names"]
    config = reports[0]["config"]
    return {
        "model": config["model"], "recipe": config["recipe"], "scene": config["scene"],
        "splits": sorted({r["split"]["method"] for r in reports}), "epochs": config["epochs"],
        "label_smoothing": config.get("label_smoothing", 0.0), "seeds": seeds,
        "runs": len(reports), "config": config,  # the first run's; the runs differ in their seeds only
        "scores": {key: _stats([r.get(key) for r in reports]) for _, key in SCORES + TIMES},
        "per_class": {name: _stats([r["per_class_accuracy"][i] for r in reports]) for i, name in enumerate(names)},
    }


def _cell(stats: dict, spread: bool = True) -> str:
    if stats["mean"] is None:
        return "absent"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if spread and stats["runs"] > 1 else f"{stats['mean']:.2f}"


def to_markdown(summary: dict) -> str:
    """The paper's layout: a row per score and per class, mean ± std, min and max."""
    splits = summary["splits"]
    split_text = splits[0] if len(splits) == 1 else f"{len(splits)} different ones ({splits[0]}, ...)"
    lines = [f"# {summary['model']} on {summary['scene']} ({summary['recipe']} recipe, {summary['epochs']} epochs)", "",
             f"{summary['runs']} runs, seeds {summary['seeds']}; split: {split_text}. Mean ± sample std (ddof 1).", "",
             "| | mean ± std | min | max |", "|---|---|---|---|"]
    rows = [(label, summary["scores"][key]) for label, key in SCORES + TIMES] + list(summary["per_class"].items())
    for label, stats in rows:
        low = "" if stats["min"] is None else f"{stats['min']:.2f}"
        high = "" if stats["max"] is None else f"{stats['max']:.2f}"
        lines.append(f"| {label} | {_cell(stats)} | {low} | {high} |")
    return "\n".join(lines) + "\n"


def load(folder: Path) -> dict:
    """A repeat folder's ``summary.json``, or a single run's ``report.json`` as a one-run summary."""
    folder = Path(folder)
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        first = sorted(folder.glob("seed_*/report.json"))
        if "config" not in summary and first:  # a summary from before they kept the config
            summary["config"] = json.loads(first[0].read_text())["config"]
        return summary
    if (folder / "report.json").is_file():
        report = json.loads((folder / "report.json").read_text())
        if "overall_accuracy" not in report:  # a CIFAR-10 or image-folder run: one test accuracy, no OA/AA/Kappa
            raise ValueError(f"{folder} is not a hyperspectral run (its report has no overall accuracy); "
                             "lightnets report compares hyperspectral runs and repeat folders")
        return summarize([report], [report["config"]["seed"]])
    raise FileNotFoundError(f"{folder} holds neither summary.json (lightnets train --repeats) nor report.json")


def protocols(summary: dict) -> list[str]:
    """The split methods of a summary without their seeds: the protocol its runs share."""
    return sorted({re.sub(r",? ?seed=\d+", "", method) for method in summary["splits"]})


# Settings that vary within one repeat folder, or that the headers or rows of their own show.
_NOT_SETTING_ROWS = {"model", "recipe", "seed", "split_seed", "epochs", "label_smoothing", "class_names", "split",
                     "test_ratio", "per_class", "per_class_max_fraction", "disjoint_block"}


def differing_settings(summaries: list[dict]) -> dict[str, list[str]]:
    """The run settings (``optimizer.learning_rate`` for nested ones) whose values are not the
    same in every summary, each with its value per summary ("" where a summary predates them)."""
    flat = [flat_settings(s.get("config", {})) for s in summaries]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in _NOT_SETTING_ROWS]
    return {k: ["" if k not in f else str(f[k]) for f in flat] for k in keys if len({str(f.get(k)) for f in flat}) > 1}


def column_name(summary: dict, folder: Path) -> str:
    """What a folder's column (or legend entry) is called: model, recipe, folder, runs."""
    return f"{summary['model']} {summary['recipe']} ({Path(folder).name}, n={summary['runs']})"


def side_by_side(summaries: list[dict], headers: list[str], fmt: str = "markdown") -> str:
    """Several runs' or repeat folders' summaries (``load``) as one table: a column each, under
    ``headers`` (``column_name``), scores and classes as rows."""
    rows = [["split"] + [" / ".join(protocols(s)) for s in summaries], ["epochs"] + [str(s["epochs"]) for s in summaries],
            # the default recipe's smoothing changed (0 -> 0.1): older summaries lack the field
            ["label smoothing"] + [str(s.get("label_smoothing", "")) for s in summaries]]
    rows += [[name] + values for name, values in differing_settings(summaries).items()]
    rows += [[label] + [_cell(s["scores"][key]) for s in summaries] for label, key in SCORES + TIMES]
    classes = list(summaries[0]["per_class"])
    rows += [[name] + [_cell(s["per_class"][name]) if name in s["per_class"] else "" for s in summaries]
             for name in classes]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([""] + headers)
        writer.writerows(rows)
        return out.getvalue()
    lines = ["| | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
