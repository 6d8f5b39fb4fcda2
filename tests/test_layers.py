"""The Flax layers: parameters, PyTorch's conventions, and the same numbers whichever kernels
they are given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax.models import layers
from lightnets_jax.ops import reference
from tests.support import assert_same_values_and_gradients, needs_onednn


@needs_onednn
@pytest.mark.parametrize("padding", [0, 1])
def test_depth_folded_conv_is_the_2d_conv_of_pytorchs_reshape(padding):
    # Conv(fold_depth=True) on (N, D, H, W, C) against a reference 2D conv of the (N, H, W, C * D)
    # map with channel c * D + d; on oneDNN's path a 3D conv spanning the depth, bias and ReLU fused.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 7, 6, 4), np.float32))
    fast = layers.Conv(6, (3, 3), padding=padding, use_bias=True, fold_depth=True, impl="onednn")
    xla = layers.Conv(6, (3, 3), padding=padding, use_bias=True, fold_depth=True, impl="reference")
    params = fast.init(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (3, 3, 4 * 5, 6)
    folded = jnp.transpose(x, (0, 2, 3, 4, 1)).reshape(3, 7, 6, 20)
    plain = jax.nn.relu(reference.conv(folded, params["kernel"], 1, padding) + params["bias"])
    np.testing.assert_allclose(xla.apply({"params": params}, x, activation="relu"), plain, rtol=1e-5, atol=1e-5)
    apply = lambda module: lambda x, k: module.apply({"params": {**params, "kernel": k}}, x, train=True,  # noqa: E731
                                                     activation="relu")
    assert_same_values_and_gradients(apply(fast), apply(xla), x, params["kernel"])


@needs_onednn
def test_dense_fast_is_onednns_matmul_and_matches_xlas_dot():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 37), np.float32))
    fast, plain = layers.Dense(6, impl="onednn"), layers.Dense(6, impl="reference")
    params = fast.init(jax.random.key(0), x)["params"]
    apply = lambda module: lambda x, k: module.apply({"params": {**params, "kernel": k}}, x)  # noqa: E731
    assert_same_values_and_gradients(apply(fast), apply(plain), x, params["kernel"])
    text = jax.jit(jax.grad(lambda x: jnp.sum(apply(fast)(x, params["kernel"])))).lower(x).compile().as_text()
    assert 'custom_call_target="__onednn$matmul"' in text
    with pytest.raises(ValueError, match="conv impl 'fast'.*models.create"):
        layers.Dense(6, impl="fast").init(jax.random.key(0), x)


def test_depth_folded_conv_names_the_shapes_it_needs():
    with pytest.raises(ValueError, match=r"\(3, 7, 6, 4\).*5D input"):
        layers.Conv(6, (3, 3), fold_depth=True).init(jax.random.key(0), jnp.zeros((3, 7, 6, 4)))


@pytest.mark.parametrize("shape", [(6, 5, 7, 4), (3, 4, 5, 6, 8)])
def test_batch_norm_relu_matches_autodiff_of_batch_norm_then_relu(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.7, np.float32)
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), np.float32),
              "bias": jnp.asarray(rng.standard_normal(shape[-1]), np.float32)}
    stats = layers.BatchNorm(False).init(jax.random.key(0), x)["batch_stats"]

    def train_mode(module, relu_after):
        def f(x, params):
            y, updates = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
            return (jax.nn.relu(y) if relu_after else y), updates
        return f

    fused, plain = (train_mode(layers.BatchNorm(False, activation="relu", fused_relu_train=True), False),
                     train_mode(layers.BatchNorm(False), True))
    (y_fused, stats_fused), (y_plain, stats_plain) = fused(x, params), plain(x, params)
    np.testing.assert_array_equal(y_fused, y_plain)
    for got, want in zip(jax.tree.leaves(stats_fused), jax.tree.leaves(stats_plain)):
        np.testing.assert_array_equal(got, want)
    cotangent = jnp.asarray(rng.standard_normal(shape), np.float32)
    grads_fused = jax.vjp(lambda x, p: fused(x, p)[0], x, params)[1](cotangent)
    grads_plain = jax.vjp(lambda x, p: plain(x, p)[0], x, params)[1](cotangent)
    for got, want in zip(jax.tree.leaves(grads_fused), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(want))))
    with pytest.raises(ValueError, match="activation='relu6'.*activation='relu', or fused_relu_train=False"):
        layers.BatchNorm(False, activation="relu6", fused_relu_train=True).init(jax.random.key(0), x)
    eval_mode = layers.BatchNorm(True, activation="relu").apply({"params": params, "batch_stats": stats}, x)
    np.testing.assert_array_equal(eval_mode, jax.nn.relu(layers.BatchNorm(True).apply(
        {"params": params, "batch_stats": stats}, x)))


@pytest.mark.parametrize("shape", [(7,), (256, 10), (3, 3, 3, 32), (7, 3, 3, 1, 8)])
def test_initializers_drawn_flat_give_jaxs_numbers(shape):
    # The layers draw over the flattened shape (fast to compile); the numbers must be the ones
    # jax.random.uniform and nn.initializers.glorot_uniform give for the shape itself.
    key = jax.random.key(3)
    expected = jax.random.uniform(key, shape, jnp.float32, -0.2, 0.2)
    np.testing.assert_array_equal(layers.kernel_init("torch", 25)(key, shape), expected)
    if len(shape) > 1:
        np.testing.assert_array_equal(layers.kernel_init("glorot", 0)(key, shape),
                                      jax.nn.initializers.glorot_uniform()(key, shape))


def test_models_init_is_eager_init_compiled():
    from lightnets_jax import models

    model = models.create("hybridsn_bn", patch_size=11, bands=16, init_scheme="glorot")
    compiled = models.init(model, jax.random.key(5))
    eager = model.init(jax.random.key(5), jnp.zeros(models.example_shape(model)), train=False)
    assert jax.tree.structure(compiled) == jax.tree.structure(eager)
    for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(a, b)


def _random_batch_norm_state(variables, rng):
    """Parameters and running statistics far from their initial values, so a folding error shows."""
    def perturb(path, a):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return jnp.asarray(rng.uniform(0.2, 3.0, a.shape), a.dtype)
        if "batch_stats" in name or "scale" in name or "bias" in name:
            return a + jnp.asarray(rng.standard_normal(a.shape), a.dtype)
        return a
    return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize("impl", [pytest.param("onednn", marks=needs_onednn), "gemm"])
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("layer", ["pointwise", "conv3x3", "depthwise_strided"])
def test_conv_bn_folds_eval_batch_norm_and_activation_into_the_conv(layer, activation, impl):
    import flax.linen as nn

    class ConvBN(nn.Module):
        impl: str

        @nn.compact
        def __call__(self, x, train):
            conv = {"pointwise": layers.Conv(8, (1, 1), impl=self.impl),
                    "conv3x3": layers.Conv(8, (3, 3), padding=1, use_bias=True, impl=self.impl),
                    "depthwise_strided": layers.DepthwiseConv(strides=2, impl=self.impl)}[layer]
            return layers.conv_bn(conv, layers.BatchNorm(not train, activation=activation), x, train)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 8), np.float32)) * 3
    fast, plain = ConvBN(impl), ConvBN("reference")
    variables = _random_batch_norm_state(fast.init(jax.random.key(0), x, False), rng)
    want = plain.apply(variables, x, False)
    np.testing.assert_allclose(fast.apply(variables, x, False), want, rtol=1e-5, atol=1e-5)
    if impl == "onednn":  # one oneDNN call that adds the bias and applies the activation, nothing after it
        jaxpr = str(jax.make_jaxpr(lambda v, x: fast.apply(v, x, False))(variables, x))
        assert jaxpr.count("ffi_call") == 1 and "max" not in jaxpr.split("ffi_call")[-1]
    # Training is not folded: the same numbers as the reference, running statistics included.
    train = lambda model: model.apply(variables, x, True, mutable=["batch_stats"])  # noqa: E731
    for got, expected in zip(jax.tree.leaves(train(fast)), jax.tree.leaves(train(plain))):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("mobilenet_v1", (2, 32, 32, 3)), ("mobilenet_v2_imagenet", (2, 64, 64, 3))])
def test_mobilenets_folded_eval_equals_the_reference_eval(name, shape):
    from lightnets_jax import models

    fast, plain = models.create(name, width_multiplier=0.5), models.create(name, width_multiplier=0.5,
                                                                         conv_impl="reference")
    rng = np.random.default_rng(0)
    variables = _random_batch_norm_state(models.init(fast, jax.random.key(0), shape), rng)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    want = plain.apply(variables, x)
    np.testing.assert_allclose(fast.apply(variables, x), want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
