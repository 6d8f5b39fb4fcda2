"""``lightnets bench``: training-step and eval throughput, optionally against the note's PyTorch.

Compilation and warm-up are timed apart; each timed step ends with ``block_until_ready`` (JAX)
or a finished backward/optimizer step (PyTorch, synchronous on CPU), and with
``--compare-torch`` the two frameworks alternate step by step so that machine noise hits both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightnets_jax import models, ops
from lightnets_jax.cli import cpu_memory
from lightnets_jax.ops import onednn
from lightnets_jax.training import engine


@dataclasses.dataclass
class Timing:
    median_s: float
    spread_s: float  # (max - min) / 2
    samples_s: list[float]  # every timed step, in order

    @classmethod
    def of(cls, samples: list[float]) -> "Timing":
        return cls(statistics.median(samples), (max(samples) - min(samples)) / 2, list(samples))


def median_seconds(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` after one untimed call (compiles, warms)."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


# Untimed train+eval rounds before timing. The first compiles; the next let the process's heap grow
# to what a step needs (the first steps after compiling run slower: docs/performance.md).
WARMUP_ROUNDS = 3


def _jax_steps(name: str, x: np.ndarray, y: np.ndarray, conv_impl: str, bf16: bool):
    model = models.create(name, conv_impl=conv_impl, dtype=jnp.bfloat16 if bf16 else None)
    tx = optax.sgd(0.01, momentum=0.9)
    state = engine.create_train_state(model, tx, jnp.asarray(x[:1]), seed=0)
    train = jax.jit(engine.train_step, donate_argnums=0)
    evaluate = jax.jit(engine.eval_step)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = train(holder["state"], xs, ys)
        jax.block_until_ready(metrics["loss"])

    def eval_once():
        jax.block_until_ready(evaluate(holder["state"], xs))

    return train_once, eval_once


def _torch_device(torch) -> str:
    """PyTorch runs on the accelerator JAX uses when it has one (a CUDA build of torch is needed)."""
    return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


def _torch_steps(name: str, x: np.ndarray, y: np.ndarray, bf16: bool):
    import torch

    from lightnets_jax import reference_torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = _torch_device(torch)
    module = reference_torch.build(name).to(device)
    if models.spec(name).task == models.HYPERSPECTRAL:  # the note's Conv3d input (N, 1, B, S, S)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2)[:, None].copy()).to(device)
    else:
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    # bfloat16 compute with float32 parameters, PyTorch's way (JAX's: the model's ``dtype``).
    compute = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def train_once():
        module.train()
        optimizer.zero_grad()
        with compute():
            loss = criterion(module(xt), yt)
        loss.backward()
        optimizer.step()
        sync()

    def eval_once():
        module.eval()
        with torch.no_grad(), compute():
            module(xt)
        sync()

    return train_once, eval_once


def pipeline_images_per_s(batch_size: int, batches: int = 20) -> float:
    """Images/s of the CIFAR-10 input pipeline (crop, flip, normalize) on one host thread."""
    from lightnets_jax.data import cifar10

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
    tic = time.perf_counter()
    for _ in range(batches):
        cifar10.normalize(cifar10.random_crop_flip(images, rng))
    return batch_size * batches / (time.perf_counter() - tic)


def run(name: str, batch_size: int = 128, steps: int = 5, compare_torch: bool = False,
        conv_impl: str = "fast", warmup: int = WARMUP_ROUNDS, bf16: bool = False) -> dict:
    """Median images/s over ``steps`` timed steps per phase, after ``warmup`` untimed rounds;
    ``bf16``: bfloat16 compute with float32 parameters in both frameworks."""
    if warmup < 1 or steps < 1:
        raise ValueError(f"bench needs --warmup >= 1 (the first step compiles) and --steps >= 1, "
                         f"got {warmup} and {steps}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(models.example_shape(name, batch_size)).astype(np.float32)
    num_classes = models.create(name).num_classes
    y = rng.integers(0, num_classes, batch_size).astype(np.int32)
    frameworks = {"jax": _jax_steps(name, x, y, conv_impl, bf16)}
    if compare_torch:
        frameworks["torch"] = _torch_steps(name, x, y, bf16)
    result: dict = {"model": name, "batch_size": batch_size, "steps": steps, "conv_impl": conv_impl,
                    "kernels": ops.choose_impl(conv_impl, jnp.bfloat16 if bf16 else None),
                    "compute_dtype": "bfloat16" if bf16 else "float32", "machine": machine_line()}
    if x.shape[1:] == (32, 32, 3):  # a CIFAR-10 model: can its input pipeline keep up with the step?
        result["pipeline_images_per_s"] = pipeline_images_per_s(batch_size)
    result["warmup_rounds"] = warmup
    for framework in frameworks:
        result[f"{framework}_compile_and_warmup_s"] = 0.0
    for _ in range(warmup):  # interleaved like the timed steps, so both heaps settle as they will run
        for framework, (train_once, eval_once) in frameworks.items():
            tic = time.perf_counter()
            train_once()
            eval_once()
            result[f"{framework}_compile_and_warmup_s"] += time.perf_counter() - tic
    for phase, index in (("train", 0), ("eval", 1)):
        samples: dict[str, list[float]] = {f: [] for f in frameworks}
        for _ in range(steps):
            for framework, fns in frameworks.items():  # interleaved
                tic = time.perf_counter()
                fns[index]()
                samples[framework].append(time.perf_counter() - tic)
        for framework, values in samples.items():
            timing = Timing.of(values)
            result[f"{framework}_{phase}_images_per_s"] = batch_size / timing.median_s
            result[f"{framework}_{phase}_step_s"] = dataclasses.asdict(timing)
        if compare_torch:
            result[f"{phase}_ratio_jax_over_torch"] = (result[f"jax_{phase}_images_per_s"]
                                                      / result[f"torch_{phase}_images_per_s"])
    return result


def machine_line() -> str:
    device = jax.devices()[0]
    torch_version = ""
    try:
        import torch

        torch_device = (torch.cuda.get_device_name(0) if _torch_device(torch) == "cuda"
                        else f"CPU, {torch.get_num_threads()} threads")
        torch_version = f", torch {torch.__version__} ({torch_device})"
    except ImportError:
        pass
    try:
        dispatch = "async" if jax.config.read("jax_cpu_enable_async_dispatch") else "sync"
    except (AttributeError, KeyError):  # a jax without the setting
        dispatch = "default"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
            f"{device.platform} ({device.device_kind}){torch_version}, {cpu_memory.describe()}, {dispatch} CPU dispatch, "
            f"{onednn.describe()}")


def format_row(result: dict) -> str:
    model = result["model"] + (" bf16" if result.get("compute_dtype") == "bfloat16" else "")
    line = (f"{model:<19} train {result['jax_train_images_per_s']:8.1f} img/s  "
            f"eval {result['jax_eval_images_per_s']:8.1f} img/s")
    if "torch_train_images_per_s" in result:
        line += (f"  | torch train {result['torch_train_images_per_s']:8.1f} eval {result['torch_eval_images_per_s']:8.1f}"
                 f"  | ratio train {result['train_ratio_jax_over_torch']:.2f}x eval {result['eval_ratio_jax_over_torch']:.2f}x")
    if "pipeline_images_per_s" in result:
        line += f"  | input pipeline {result['pipeline_images_per_s']:.0f} img/s"
    return line
