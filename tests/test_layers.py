"""The fast convolutions (``layers.conv_gemm``, ``layers.depthwise_conv_shifted`` and their oneDNN
paths ``layers.conv_fast``, ``layers.depthwise_conv_fast``) against XLA's convolutions, values
and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax.models import layers
from tests.markers import needs_onednn

# (input shape, kernel shape, stride, padding): one case per formulation, with ragged depth blocks
# (conv1-like, 13 output depths = 8 + 5), batch sizes that do not divide the chunk, and padding.
CASES = {
    "depth_toeplitz": ((3, 19, 9, 8, 1), (7, 3, 3, 1, 4), 1, 0),
    "unfold_shift_add_3d": ((4, 9, 8, 7, 8), (5, 3, 3, 8, 6), 1, 0),
    "unfold_shift_add_2d": ((5, 9, 9, 40), (3, 3, 40, 7), 1, 1),
    "im2col_few_channels": ((2, 8, 8, 3), (3, 3, 3, 5), 1, 1),
    "im2col_strided": ((3, 9, 9, 6), (3, 3, 6, 4), 2, 1),
    "pointwise": ((2, 5, 5, 6), (1, 1, 6, 3), 1, 0),
}


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_gemm_matches_xla_convolution_and_its_gradients(case, train):
    x_shape, k_shape, stride, padding = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
    fast = lambda x, k: layers.conv_gemm(x, k, stride, padding, train)  # noqa: E731
    reference = lambda x, k: layers._conv(x, k, stride, padding, groups=1)  # noqa: E731
    _assert_same_values_and_gradients(fast, reference, x, k)


# (input shape, stride, chunk bytes): batch 6 with chunks of 4 samples' bytes gives gcd(6, 4) = 2
# samples per chunk; a budget below one sample gives one; a huge one the whole batch.
DEPTHWISE_CASES = {
    "stride1_chunk2": ((6, 7, 7, 5), 1, 4 * 7 * 7 * 5 * 4),
    "stride2_chunk1": ((3, 9, 8, 4), 2, 16),
    "stride1_whole_batch": ((4, 6, 6, 3), 1, 1 << 30),
}


@pytest.mark.parametrize("case", sorted(DEPTHWISE_CASES))
def test_depthwise_conv_shifted_matches_grouped_convolution_and_its_gradients(case, monkeypatch):
    x_shape, stride, chunk_bytes = DEPTHWISE_CASES[case]
    monkeypatch.setattr(layers, "DEPTHWISE_GRAD_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    channels = x_shape[-1]
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 1, channels), np.float32))
    fast = lambda x, k: layers.depthwise_conv_shifted(x, k, stride, 1)  # noqa: E731
    reference = lambda x, k: layers._conv(x, k, stride, 1, groups=channels)  # noqa: E731
    _assert_same_values_and_gradients(fast, reference, x, k)


@needs_onednn
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_fast_matches_xla_convolution_and_its_gradients(case):
    # Stride-1 multi-tap cases run oneDNN (forward, input gradient); the kernel gradient is oneDNN
    # convolutions in 3D (``_conv_kernel_grad``), GEMMs in 2D.
    x_shape, k_shape, stride, padding = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
    fast = lambda x, k: layers.conv_fast(x, k, stride, padding, train=True)  # noqa: E731
    reference = lambda x, k: layers._conv(x, k, stride, padding, groups=1)  # noqa: E731
    _assert_same_values_and_gradients(fast, reference, x, k)


# (input shape, kernel shape, padding, chunk bytes) for ``_conv_kernel_grad``: one input channel
# (two axes unfolded), several (one), padding, chunks of 1, 2 (batch 6, 4 samples' budget) and
# the whole batch, kept axes put in order of taps (depth 4 after height 2, as conv2's 5 and 3), and
# 8 output channels, packed in pairs of positions (even output depth, as conv1's) or not (odd);
# one sample per chunk with the kept axes reordered and the batch as a spatial axis (blocks of 8
# of 16), its kernel the gradient as it lies (conv3's case).
KERNEL_GRAD_CASES = {
    "one_sample_reordered_block": ((3, 7, 8, 6, 8), (3, 2, 2, 8, 4), 1, 16),
    "eight_out_channels_packed": ((2, 9, 6, 5, 1), (4, 3, 2, 1, 8), 0, 1 << 30),
    "eight_out_channels_odd_depth": ((2, 8, 6, 5, 2), (4, 3, 2, 2, 8), 0, 1 << 30),
    "kept_axes_reordered": ((2, 9, 7, 6, 8), (4, 2, 3, 8, 4), 0, 1 << 30),
    "one_channel_chunk1": ((3, 11, 7, 6, 1), (4, 3, 2, 1, 5), 0, 16),
    "eight_channels_padded_chunk2": ((6, 6, 7, 5, 8), (3, 3, 3, 8, 4), 1, 4 * 6 * 7 * 5 * 4 * 4),
    "wide_whole_batch": ((4, 5, 6, 6, 20), (2, 2, 3, 20, 3), 1, 1 << 30),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(KERNEL_GRAD_CASES))
def test_conv_kernel_grad_matches_autodiff_of_xla_convolution(case, monkeypatch):
    x_shape, k_shape, padding, chunk_bytes = KERNEL_GRAD_CASES[case]
    monkeypatch.setattr(layers, "KERNEL_GRAD_CHUNK_BYTES", chunk_bytes)
    _check_kernel_and_bias_grad(layers._conv_kernel_grad, x_shape, k_shape, padding)


# The merged-axis formulation: batch 6 in chunks of 2 (SAMPLE_CHANNELS_CHUNK 4 does not divide
# it), unequal taps, C_in 8 (conv2's) and 3, padding.
MERGED_AXIS_CASES = {
    "eight_channels": ((6, 7, 6, 8, 8), (3, 2, 3, 8, 16), 0),
    "three_channels_padded": ((4, 6, 5, 7, 3), (2, 3, 2, 3, 5), 1),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(MERGED_AXIS_CASES))
def test_merged_axis_kernel_grad_matches_autodiff_of_xla_convolution(case):
    _check_kernel_and_bias_grad(layers._merged_axis_kernel_grad, *MERGED_AXIS_CASES[case])


def _check_kernel_and_bias_grad(kernel_grad, x_shape, k_shape, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
    y, vjp = jax.vjp(lambda k: layers._conv(x, k, 1, padding, groups=1), k)
    grad = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    expected = vjp(grad)[0]
    got, bias = jax.jit(lambda x, grad: kernel_grad(x, grad, k_shape, padding, True))(x, grad)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected))))
    np.testing.assert_allclose(bias, jnp.sum(grad, axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-4)
    assert jax.jit(lambda x, grad: kernel_grad(x, grad, k_shape, padding))(x, grad)[1] is None


@needs_onednn
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_fast_matches_grouped_convolution_and_its_gradients(stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 9, 8, 6), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 1, 6), np.float32))
    fast = lambda x, k: layers.depthwise_conv_fast(x, k, stride, 1)  # noqa: E731
    reference = lambda x, k: layers._conv(x, k, stride, 1, groups=6)  # noqa: E731
    _assert_same_values_and_gradients(fast, reference, x, k)


@pytest.mark.parametrize("padding", [0, 1])
def test_depth_folded_conv_is_the_2d_conv_of_pytorchs_reshape(padding):
    # Conv(fold_depth=True) on (N, D, H, W, C) against a reference 2D conv of the (N, H, W, C * D)
    # map with channel c * D + d; on oneDNN's path a 3D conv spanning the depth, bias and ReLU fused.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 7, 6, 4), np.float32))
    fast = layers.Conv(6, (3, 3), padding=padding, use_bias=True, relu=True, fold_depth=True)
    reference = layers.Conv(6, (3, 3), padding=padding, use_bias=True, relu=True, fold_depth=True, impl="reference")
    params = fast.init(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (3, 3, 4 * 5, 6)
    folded = jnp.transpose(x, (0, 2, 3, 4, 1)).reshape(3, 7, 6, 20)
    plain = layers._bias_relu(layers._conv(folded, params["kernel"], 1, padding, groups=1), params["bias"], True)
    np.testing.assert_allclose(reference.apply({"params": params}, x), plain, rtol=1e-5, atol=1e-5)
    apply = lambda module: lambda x, k: module.apply({"params": {**params, "kernel": k}}, x, train=True)  # noqa: E731
    _assert_same_values_and_gradients(apply(fast), apply(reference), x, params["kernel"])


@needs_onednn
@pytest.mark.parametrize("padding", [0, 1])
def test_folded_kernel_grad_matches_autodiff_of_the_folded_2d_convolution(padding):
    # Batch 6 in chunks of 2 (SAMPLE_CHANNELS_CHUNK 4 does not divide it), a 3x2 kernel (unequal
    # taps), padding.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 5, 7, 6, 3), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 2, 3 * 5, 4), np.float32))
    y, vjp = jax.vjp(lambda k: layers._conv(layers.fold_depth(x), k, 1, padding, groups=1), k)
    grad = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    expected = vjp(grad)[0]
    got = jax.jit(lambda x, grad: layers._folded_kernel_grad(x, grad, k.shape, padding))(x, grad)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected))))


@needs_onednn
def test_dense_fast_is_onednns_matmul_and_matches_xlas_dot():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((5, 37), np.float32))
    fast, reference = layers.Dense(6), layers.Dense(6, impl="reference")
    params = fast.init(jax.random.key(0), x)["params"]
    apply = lambda module: lambda x, k: module.apply({"params": {**params, "kernel": k}}, x)  # noqa: E731
    _assert_same_values_and_gradients(apply(fast), apply(reference), x, params["kernel"])
    text = jax.jit(jax.grad(lambda x: jnp.sum(apply(fast)(x, params["kernel"])))).lower(x).compile().as_text()
    assert 'custom_call_target="__onednn$matmul"' in text
    with pytest.raises(ValueError, match="conv impl"):
        layers.Dense(6, impl="gemm").init(jax.random.key(0), x)


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

    fused, plain = train_mode(layers.BatchNorm(False, relu=True), False), train_mode(layers.BatchNorm(False), True)
    (y_fused, stats_fused), (y_plain, stats_plain) = fused(x, params), plain(x, params)
    np.testing.assert_array_equal(y_fused, y_plain)
    for got, want in zip(jax.tree.leaves(stats_fused), jax.tree.leaves(stats_plain)):
        np.testing.assert_array_equal(got, want)
    cotangent = jnp.asarray(rng.standard_normal(shape), np.float32)
    grads_fused = jax.vjp(lambda x, p: fused(x, p)[0], x, params)[1](cotangent)
    grads_plain = jax.vjp(lambda x, p: plain(x, p)[0], x, params)[1](cotangent)
    for got, want in zip(jax.tree.leaves(grads_fused), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(want))))
    eval_mode = layers.BatchNorm(True, relu=True).apply({"params": params, "batch_stats": stats}, x)
    np.testing.assert_array_equal(eval_mode, jax.nn.relu(layers.BatchNorm(True).apply(
        {"params": params, "batch_stats": stats}, x)))


def _assert_same_values_and_gradients(fast, reference, x, k):
    def loss(conv):
        def f(x, k):
            y = conv(x, k)
            weights = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape, np.float32))
            return jnp.sum(y * weights), y
        return f

    (_, y_fast), grads_fast = jax.value_and_grad(loss(fast), argnums=(0, 1), has_aux=True)(x, k)
    (_, y_ref), grads_ref = jax.value_and_grad(loss(reference), argnums=(0, 1), has_aux=True)(x, k)
    assert y_fast.shape == y_ref.shape
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * float(jnp.max(jnp.abs(want))))
