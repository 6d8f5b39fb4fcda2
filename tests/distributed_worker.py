"""One process of the two-process ``jax.distributed`` test (run by tests/test_distributed.py).

Usage: python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON
Trains a small MobileNetV1 for a few steps on a fixed global batch, data-parallel over every
device of every process, and writes the losses and checksums of the parameters after the first
and the last step.
"""

import json
import sys

import jax
import numpy as np
import optax

from lightnets_jax import models
from lightnets_jax.training import engine
from lightnets_jax.training.parallel import DataParallel, initialize_distributed


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    if num_processes > 1:
        initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    model = models.create("mobilenet_v1", width_multiplier=0.25)
    state = engine.create_train_state(model, optax.sgd(0.01, momentum=0.9), np.zeros((1, 32, 32, 3), np.float32), 0)
    parallel = DataParallel()
    state = parallel.replicate(state)
    step = jax.jit(engine.train_step)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    losses, first_step_params = [], None
    for _ in range(3):
        state, metrics = step(state, parallel.shard_global_batch(images), parallel.shard_global_batch(labels))
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
        first_step_params = first_step_params or _local_leaves(state.params)
    params = _local_leaves(state.params)
    record = {"process_count": jax.process_count(), "device_count": jax.device_count(), "losses": losses,
              "param_sums": [float(np.sum(p, dtype=np.float64)) for p in params],
              "first_step_param_abs_sums": [float(np.sum(np.abs(p), dtype=np.float64)) for p in first_step_params]}
    with open(out, "w") as f:
        json.dump(record, f)


def _local_leaves(tree) -> list[np.ndarray]:
    return jax.tree.leaves(jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
