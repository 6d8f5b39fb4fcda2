"""The CIFAR-10 engine on tiny synthetic data: overfitting, determinism, resume, data parallel."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import traverse_util

from lightnets_jax.tasks import classification
from lightnets_jax.training import checkpoint, engine
from tests.test_cifar10 import _batches, _write_python

pytestmark = pytest.mark.slow


@pytest.fixture()
def tiny_cifar(tmp_path):
    _write_python(tmp_path / "data" / "cifar-10-batches-py", _batches(n=8))
    return tmp_path / "data"


def _config(data_dir, epochs):
    return classification.ImageConfig(model="mobilenet_v1", width_multiplier=0.25, data_dir=str(data_dir),
                                      epochs=epochs, batch_size=8, val_size=8,
                                      optimizer=engine.OptimizerConfig("adam", 3e-3, "constant"))


def _params(workdir, config):
    state = classification._state(config, 4, 10)
    state, _ = checkpoint.restore(workdir, state)
    return traverse_util.flatten_dict(state.params)


def test_resume_ends_with_the_same_parameters_and_eval_is_deterministic(tiny_cifar, tmp_path):
    quiet = lambda *_: None
    config = _config(tiny_cifar, epochs=2)
    straight = classification.train(config, tmp_path / "straight", log=quiet)
    assert (tmp_path / "straight" / "training_curves.png").exists()
    assert 0 <= straight["test_accuracy"] <= 100 and straight["epochs"] == 2

    classification.train(config, tmp_path / "resumed", log=quiet)
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "2")  # as if killed during epoch 2
    assert checkpoint.latest_epoch(tmp_path / "resumed") == 1
    assert checkpoint.latest_epoch(tmp_path / "resumed", checkpoint.BEST) in (1, 2)
    classification.train(config, tmp_path / "resumed", resume=True, log=quiet)
    a, b = _params(tmp_path / "straight", config), _params(tmp_path / "resumed", config)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))

    first = classification.evaluate(tmp_path / "straight", log=quiet)["test_accuracy"]
    assert classification.evaluate(tmp_path / "straight", log=quiet)["test_accuracy"] == first


def test_the_report_is_of_the_checkpoint_validation_picked(tiny_cifar, tmp_path):
    quiet = lambda *_: None
    config, workdir = _config(tiny_cifar, epochs=2), tmp_path / "run"
    report = classification.train(config, workdir, log=quiet)
    assert report["checkpoint_epoch"] == checkpoint.latest_epoch(workdir, checkpoint.BEST)
    # As if validation had peaked at epoch 1: the report and the run's model must be epoch 1's, not the last.
    first, _ = checkpoint.restore(workdir, classification._state(config, 4, 10), epoch=1)
    shutil.rmtree(workdir / checkpoint.BEST)
    checkpoint.save(workdir, first, 1, keep=1, folder=checkpoint.BEST)
    assert classification.evaluate(workdir, log=quiet)["checkpoint_epoch"] == 1
    _, variables, epoch = classification.trained_model(workdir, config)
    assert epoch == 1
    picked, expected = traverse_util.flatten_dict(variables["params"]), traverse_util.flatten_dict(first.params)
    for key in expected:
        np.testing.assert_array_equal(picked[key], expected[key], err_msg=str(key))


def test_tiny_model_overfits_tiny_data():
    import jax
    import jax.numpy as jnp
    import optax

    from lightnets_jax import models

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    model = models.create("mobilenet_v1", width_multiplier=0.25)
    state = engine.create_train_state(model, optax.adam(3e-3), x[:1], seed=0)
    step = jax.jit(engine.train_step)
    for _ in range(60):
        state, metrics = step(state, x, y)
    assert float(metrics["accuracy"]) == 1.0
    logits = engine.eval_step(state, x)
    assert float(jnp.mean(jnp.argmax(logits, -1) == y)) >= 0.9  # eval mode (running stats) agrees


def test_data_parallel_on_four_devices_matches_one_device():
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, optax
        from lightnets_jax import models
        from lightnets_jax.training import engine
        from lightnets_jax.training.parallel import DataParallel
        assert jax.device_count() == 4
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, 16).astype(np.int32)
        losses = {}
        for n in (1, 4):
            parallel = DataParallel(jax.devices()[:n])
            model = models.create("mobilenet_v2", width_multiplier=0.25)
            state = parallel.replicate(engine.create_train_state(model, optax.sgd(1e-3, 0.9), jnp.asarray(x[:1]), 0))
            step = jax.jit(engine.train_step)
            out = []
            # Two steps: the first gradients agree bit for bit; from then on float reduction order
            # (per-shard partial sums) makes the runs drift apart by ~8x per step at this lr.
            for _ in range(2):
                state, m = step(state, parallel.shard_global_batch(x), parallel.shard_global_batch(y))
                out.append(float(m["loss"]))
            losses[n] = out
        try:
            DataParallel().check_batch_size(10)
        except ValueError as err:
            print("ERR", err)
        print("LOSSES", losses[1], losses[4])
        assert np.allclose(losses[1], losses[4], atol=1e-5), losses
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batch size 10 is not divisible by the 4 devices" in result.stdout


def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
        tiny_cifar, tmp_path, monkeypatch):
    import jax.numpy as jnp

    real_step = engine.train_step

    def poisoned(state, images, labels, label_smoothing=0.0, **options):  # the loss turns NaN from step 5 on
        new_state, metrics = real_step(state, images, labels, label_smoothing, **options)
        return new_state, {**metrics, "loss": jnp.where(state.step >= 5, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(engine, "train_step", poisoned)
    config = _config(tiny_cifar, epochs=3)  # 4 steps per epoch: step 5 is in epoch 2
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5 \(epoch 2\).*lower --lr"):
        classification.train(config, tmp_path / "run", log=lambda *_: None)
    assert checkpoint.epochs(tmp_path / "run") == [1]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
