"""The Flax models are the note's PyTorch networks: same logits, same BatchNorm updates."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax
import jax.numpy as jnp
from flax import traverse_util

from lightnets_jax import convert, models
from lightnets_jax import reference_torch as torch_reference

pytestmark = pytest.mark.slow

NAMES = ["mobilenet_v1", "mobilenet_v1_paper", "mobilenet_v2", "hybridsn", "hybridsn_bn"]
TOL = 1e-4


def _randomized_torch_model(name, seed=0):
    torch.manual_seed(seed)
    module = torch_reference.build(name)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                sub.weight.uniform_(0.5, 1.5, generator=generator)
                sub.bias.normal_(0.0, 0.1, generator=generator)
                sub.running_mean.normal_(0.0, 0.1, generator=generator)
                sub.running_var.uniform_(0.5, 1.5, generator=generator)
    return module


def _inputs(name, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    if name.startswith("hybridsn"):
        x = rng.standard_normal((batch, 25, 25, 30)).astype(np.float32)
        return x, torch.from_numpy(x.transpose(0, 3, 1, 2)[:, None].copy())
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= TOL * scale, f"{what}: max abs error {err:.3g} > {TOL} x scale {scale:.3g}"


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_eval_logits_match_torch(name, impl):
    module = _randomized_torch_model(name).eval()
    variables = convert.from_torch(name, module.state_dict())
    x, xt = _inputs(name)
    with torch.no_grad():
        expected = module(xt).numpy()
    actual = models.create(name, conv_impl=impl).apply(variables, jnp.asarray(x), train=False)
    _assert_close(actual, expected, f"{name}/{impl} eval logits")


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("name", NAMES)
def test_train_logits_and_running_stats_match_torch(name, impl):
    module = _randomized_torch_model(name).train()
    options = {"conv_impl": impl}
    if name.startswith("hybridsn"):
        module.dropout.p = 0.0
        options["dropout_rate"] = 0.0
    variables = convert.from_torch(name, module.state_dict())
    x, xt = _inputs(name, batch=8)
    with torch.no_grad():
        expected = module(xt).numpy()
    logits, updates = models.create(name, **options).apply(
        variables, jnp.asarray(x), train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
    )
    _assert_close(logits, expected, f"{name}/{impl} train logits")
    new_state = module.state_dict()
    for path, value in traverse_util.flatten_dict(dict(updates)).items():
        key = convert._torch_key(path)
        _assert_close(value, new_state[key].numpy(), f"{name}/{impl} {key}")


@pytest.mark.parametrize("name", NAMES)
def test_to_torch_round_trip_loads_strictly(name):
    module = _randomized_torch_model(name, seed=3)
    variables = convert.from_torch(name, module.state_dict())
    state = convert.to_torch(name, variables)
    fresh = torch_reference.build(name)
    fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    for key, value in module.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value.numpy(), err_msg=key)
