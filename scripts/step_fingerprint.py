"""Parameters and batch statistics of every registered model after one training step, saved as .npz.

Run before and after a refactor that must not change numbers, then compare:
    python scripts/step_fingerprint.py /tmp/before.npz
    python scripts/step_fingerprint.py /tmp/after.npz --compare /tmp/before.npz
Small inputs keep it quick (the ImageNet models at 64x64); every layer's forward, input gradient
and kernel gradient path still runs.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lightnets_jax import models
from lightnets_jax.training import engine


def example(name: str, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if name.startswith("hybridsn"):
        shape, classes = (batch, 25, 25, 30), 16
    elif name.endswith("imagenet"):
        shape, classes = (batch, 64, 64, 3), 1000
    else:
        shape, classes = (batch, 32, 32, 3), 10
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, classes, batch).astype(np.int32)


def fingerprint(batch: int = 8) -> dict[str, np.ndarray]:
    leaves = {}
    for name in models.available():
        x, y = example(name, batch, np.random.default_rng(0))
        model = models.create(name)
        state = engine.create_train_state(model, optax.adam(1e-3), jnp.asarray(x[:1]), seed=0)
        state, _ = jax.jit(engine.train_step)(state, jnp.asarray(x), jnp.asarray(y))
        flat = traverse_util.flatten_dict({"params": state.params, "batch_stats": state.batch_stats}, sep="/")
        leaves.update({f"{name}/{k}": np.asarray(v) for k, v in flat.items()})
        leaves[f"{name}/eval_logits"] = np.asarray(jax.jit(engine.eval_step)(state, jnp.asarray(x)))
    return leaves


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--compare", help="an earlier output: report every leaf that is not bitwise equal")
    args = parser.parse_args()
    leaves = fingerprint()
    np.savez(args.out, **leaves)
    if not args.compare:
        print(f"{len(leaves)} arrays -> {args.out}")
        return 0
    before = dict(np.load(args.compare))
    differ = sorted(k for k in before.keys() | leaves.keys()
                    if k not in before or k not in leaves or not np.array_equal(before[k], leaves[k]))
    for key in differ:
        print("differs:", key)
    print(f"{len(leaves) - len(differ)} of {len(leaves)} arrays bitwise equal")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
