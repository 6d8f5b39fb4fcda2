#!/usr/bin/env python
"""Exported ONNX in onnxruntime: our export of a model against ``torch.onnx.export`` of the
note's PyTorch module, with JAX's own eval step for scale.

    python scripts/bench_onnx.py                                   # mobilenet_v1, mobilenet_v2 (128), hybridsn (64)
    python scripts/bench_onnx.py --models mobilenet_v2:32 --rounds 5

Each model is exported with random weights (speed does not depend on them); the two ONNX
sessions and JAX take turns, ``--rounds`` times the median of ``--steps`` runs each, and the
medians over the rounds are printed, one JSON line per model. Run as a script, the process
takes the ``lightnets`` command's memory settings first. Needs onnxruntime (and torch
for PyTorch's export; without it, or for a model the note has no module for, that column is
left out).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import warnings

import jax
import numpy as np

from lightnets_jax import export, models
from lightnets_jax.cli.bench import median_seconds

DEFAULT_MODELS = ("mobilenet_v1:128", "mobilenet_v2:128", "hybridsn:64")


def _torch_onnx(name: str, x: np.ndarray, session_options):
    """PyTorch's export of the note's module as an onnxruntime session and its input, or None."""
    try:
        import torch
    except ImportError:
        return None
    import onnxruntime as ort

    from lightnets_jax import reference_torch

    try:
        module = reference_torch.build(name).eval()
    except KeyError:  # the note has no PyTorch module for the ImageNet variants
        return None
    nchw = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
    torch_x = nchw[:, None] if name.startswith("hybridsn") else nchw  # Conv3d: (N, 1, bands, H, W)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter: the newer one needs onnxscript, not a dependency
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.from_numpy(torch_x),), buffer, input_names=["input"],
                          output_names=["logits"], dynamo=False, dynamic_axes={"input": {0: "batch"}})
    return ort.InferenceSession(buffer.getvalue(), session_options, providers=["CPUExecutionProvider"]), torch_x


def measure(name: str, batch: int, rounds: int, steps: int, threads: int) -> dict:
    import onnxruntime as ort

    model = models.create(name)
    variables = models.init(model, jax.random.key(0))
    x = np.random.default_rng(0).standard_normal(models.example_shape(model, batch)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    ours = ort.InferenceSession(export.to_onnx(model, variables).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    runs = {"ours_onnx": lambda: ours.run(["logits"], {"input": x}),
            "jax": lambda: jax.block_until_ready(evaluate(variables, x))}
    if (theirs := _torch_onnx(name, x, options)) is not None:
        session, torch_x = theirs
        runs["torch_onnx"] = lambda: session.run(["logits"], {"input": torch_x})
    rates = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            rates[key].append(batch / median_seconds(run, steps))
    record = {"model": name, "batch_size": batch, "onnxruntime": ort.__version__, "threads": threads,
              **{f"{key}_images_per_s": statistics.median(values) for key, values in rates.items()}}
    if "torch_onnx" in rates:
        record["ours_over_torch_onnx"] = record["ours_onnx_images_per_s"] / record["torch_onnx_images_per_s"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="NAME:BATCH pairs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime's intra-op threads")
    args = parser.parse_args(argv)
    pairs = []
    for item in args.models:
        name, _, batch = item.partition(":")
        if name not in models.available() or not batch.isdigit() or int(batch) < 1:
            parser.error(f"--models takes NAME:BATCH with NAME one of {', '.join(models.available())}, got {item!r}")
        pairs.append((name, int(batch)))
    for name, batch in pairs:
        print(json.dumps(measure(name, batch, args.rounds, args.steps, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    from lightnets_jax.cli import cpu_memory

    cpu_memory.restart_with_tunables()  # JAX as the ``lightnets`` command runs it (docs/performance.md, "Memory")
    cpu_memory.use_synchronous_dispatch_if_heap_kept()
    raise SystemExit(main())
