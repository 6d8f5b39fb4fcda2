"""Data parallelism with ``jax.sharding``: a 1-D ``data`` mesh over every device of every process.

The batch is split along the mesh axis and the train state replicated; XLA inserts the
cross-device reductions (gradients, BatchNorm batch statistics), so the numbers equal a
single-device run on the same global batch. The same code runs on 1 CPU, N GPUs or a TPU slice,
and across hosts after ``jax.distributed.initialize``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Multi-host set-up; a no-op for one process."""
    if coordinator is None:
        return
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


class DataParallel:
    def __init__(self, devices=None) -> None:
        self.mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def device_count(self) -> int:
        return self.mesh.size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.device_count:
            raise ValueError(f"batch size {batch_size} is not divisible by the {self.device_count} devices; "
                             f"use a multiple of {self.device_count}, e.g. {batch_size - batch_size % self.device_count or self.device_count}")

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def shard_global_batch(self, array: np.ndarray) -> jax.Array:
        """A global batch (the same on every process) → one array sharded along ``data``."""
        per_process = len(array) // jax.process_count()
        start = jax.process_index() * per_process
        local = array[start:start + per_process]
        return jax.make_array_from_process_local_data(self.batch, local, array.shape)
