"""The training engine: a TrainState with ``batch_stats``, optax optimizers and pure steps.

``train_step`` and ``eval_step`` are pure functions of their arguments (jit them, or call them
inside a larger jitted function that also builds the batch); the dropout key for step ``t`` is
``fold_in(state.dropout_key, t)``, so a resumed run draws exactly the masks an uninterrupted
run would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from lightnets_jax import models
from lightnets_jax.checks import check_range

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step", "onecycle")


class TrainState(train_state.TrainState):
    batch_stats: Any
    dropout_key: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    step_epochs: tuple[int, ...] = ()  # for "step": epochs at which the rate drops 10x

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        check_range("learning rate", self.learning_rate, 0, low_open=True)
        check_range("weight decay", self.weight_decay, 0)


def learning_rate_schedule(config: OptimizerConfig, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    total = max(1, epochs * steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    lr = config.learning_rate
    if config.schedule == "onecycle":
        return optax.cosine_onecycle_schedule(total, lr, pct_start=max(warmup / total, 0.05) if warmup else 0.25)
    if config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
    elif config.schedule == "step":
        main = optax.piecewise_constant_schedule(lr, {e * steps_per_epoch - warmup: 0.1 for e in config.step_epochs})
    else:
        main = optax.constant_schedule(lr)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(config: OptimizerConfig, epochs: int, steps_per_epoch: int) -> optax.GradientTransformation:
    config.validate()
    schedule = learning_rate_schedule(config, epochs, steps_per_epoch)
    if config.name == "sgd":
        # PyTorch-style coupled weight decay (added to the gradient), as kuangliu's recipe uses.
        return optax.chain(optax.add_decayed_weights(config.weight_decay),
                           optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
    if config.name == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(schedule))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, example: jax.Array, seed: int) -> TrainState:
    # Raw uint32 keys (not typed keys) so the state serializes into checkpoints as plain arrays.
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = models.init(model, init_key, example.shape)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        dropout_key=dropout_key,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
               update_batch_stats: bool = True):
    """One optimizer step; returns the new state and {loss, accuracy} of the batch.

    ``update_batch_stats=False`` runs BatchNorm on its running statistics and keeps them (a frozen
    backbone), in eval mode throughout (no dropout either).
    """
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if not update_batch_stats:
            logits = state.apply_fn(variables, images, train=False, rngs={"dropout": dropout_key})
            return cross_entropy(logits, labels, label_smoothing), (logits, {})
        logits, updates = state.apply_fn(variables, images, train=True, mutable=["batch_stats"],
                                         rngs={"dropout": dropout_key})
        return cross_entropy(logits, labels, label_smoothing), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
    """Logits in eval mode: running BatchNorm statistics, no dropout, deterministic."""
    return state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
