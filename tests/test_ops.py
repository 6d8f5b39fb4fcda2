"""Every kernel in ``lightnets_jax.ops`` against the plain XLA version it must equal
(``ops.reference``), values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import ops
from lightnets_jax.ops import config, conv_kernel_grad, depthwise, epilogue, gemm_conv, onednn, reference
from tests.support import assert_same_values_and_gradients, needs_onednn, random_arrays

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
    x, k = random_arrays(x_shape, k_shape)
    fast = lambda x, k: gemm_conv.conv_gemm(x, k, stride, padding, train)  # noqa: E731
    plain = lambda x, k: reference.conv(x, k, stride, padding)  # noqa: E731
    assert_same_values_and_gradients(fast, plain, x, k)


# (input shape, stride, chunk bytes): batch 6 with chunks of 4 samples' bytes gives gcd(6, 4) = 2
# samples per chunk; a budget below one sample gives one; a huge one the whole batch.
DEPTHWISE_CASES = {
    "stride1_chunk2": ((6, 7, 7, 5), 1, 4 * 7 * 7 * 5 * 4),
    "stride2_chunk1": ((3, 9, 8, 4), 2, 16),
    "stride1_whole_batch": ((4, 6, 6, 3), 1, 1 << 30),
}


@pytest.mark.parametrize("case", sorted(DEPTHWISE_CASES))
def test_depthwise_conv_shifted_matches_grouped_convolution_and_its_gradients(case):
    x_shape, stride, chunk_bytes = DEPTHWISE_CASES[case]
    rng = np.random.default_rng(0)
    channels = x_shape[-1]
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 1, channels), np.float32))
    fast = lambda x, k: depthwise.depthwise_conv_shifted(x, k, stride, 1)  # noqa: E731
    plain = lambda x, k: reference.conv(x, k, stride, 1, groups=channels)  # noqa: E731
    with config.override(depthwise_grad_chunk_bytes=chunk_bytes):
        assert_same_values_and_gradients(fast, plain, x, k)


@needs_onednn
@pytest.mark.parametrize("case", sorted(CASES))
def test_onednn_conv_matches_xla_convolution_and_its_gradients(case):
    # Stride-1 multi-tap cases run oneDNN (forward, input gradient); the kernel gradient is oneDNN
    # convolutions in 3D (``conv_kernel_grad``), GEMMs in 2D.
    x_shape, k_shape, stride, padding = CASES[case]
    x, k = random_arrays(x_shape, k_shape)
    fast = lambda x, k: ops.conv(x, k, None, strides=stride, padding=padding, impl="onednn", train=True)  # noqa: E731
    plain = lambda x, k: reference.conv(x, k, stride, padding)  # noqa: E731
    assert_same_values_and_gradients(fast, plain, x, k)


# (input shape, kernel shape, padding, chunk bytes) for ``unfolded_kernel_grad``: one input channel
# (two axes unfolded), several (one), padding, chunks of 1, 2 (batch 6, 4 samples' budget) and
# the whole batch, kept axes put in order of taps (depth 4 after height 2), and 8 output channels,
# packed in pairs of positions (even output depth, as conv1's) or not (odd).
KERNEL_GRAD_CASES = {
    "eight_out_channels_packed": ((2, 9, 6, 5, 1), (4, 3, 2, 1, 8), 0, 1 << 30),
    "eight_out_channels_odd_depth": ((2, 8, 6, 5, 2), (4, 3, 2, 2, 8), 0, 1 << 30),
    "kept_axes_reordered": ((2, 9, 7, 6, 8), (4, 2, 3, 8, 4), 0, 1 << 30),
    "one_channel_chunk1": ((3, 11, 7, 6, 1), (4, 3, 2, 1, 5), 0, 16),
    "eight_channels_padded_chunk2": ((6, 6, 7, 5, 8), (3, 3, 3, 8, 4), 1, 4 * 6 * 7 * 5 * 4 * 4),
    "wide_whole_batch": ((4, 5, 6, 6, 20), (2, 2, 3, 20, 3), 1, 1 << 30),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(KERNEL_GRAD_CASES))
def test_unfolded_kernel_grad_matches_autodiff_of_xla_convolution(case):
    x_shape, k_shape, padding, chunk_bytes = KERNEL_GRAD_CASES[case]
    with config.override(kernel_grad_chunk_bytes=chunk_bytes):
        _check_kernel_and_bias_grad(conv_kernel_grad.unfolded_kernel_grad, x_shape, k_shape, padding)


# The merged-axis formulation: batch 6 in chunks of 2 (sample_channels_chunk 4 does not divide
# it), unequal taps, C_in 8 (conv2's) and 3, padding.
MERGED_AXIS_CASES = {
    "eight_channels": ((6, 7, 6, 8, 8), (3, 2, 3, 8, 16), 0),
    "three_channels_padded": ((4, 6, 5, 7, 3), (2, 3, 2, 3, 5), 1),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(MERGED_AXIS_CASES))
def test_merged_axis_kernel_grad_matches_autodiff_of_xla_convolution(case):
    _check_kernel_and_bias_grad(conv_kernel_grad.merged_axis_kernel_grad, *MERGED_AXIS_CASES[case])


def _check_kernel_and_bias_grad(kernel_grad, x_shape, k_shape, padding):
    x, k = random_arrays(x_shape, k_shape)
    y, vjp = jax.vjp(lambda k: reference.conv(x, k, 1, padding), k)
    (grad,) = random_arrays(y.shape, seed=1)
    expected = vjp(grad)[0]
    got, bias = jax.jit(lambda x, grad: kernel_grad(x, grad, k_shape, padding, True))(x, grad)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected))))
    np.testing.assert_allclose(bias, jnp.sum(grad, axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-4)
    assert jax.jit(lambda x, grad: kernel_grad(x, grad, k_shape, padding))(x, grad)[1] is None


@needs_onednn
@pytest.mark.parametrize("stride", [1, 2])
def test_onednn_depthwise_conv_matches_grouped_convolution_and_its_gradients(stride):
    x, k = random_arrays((4, 9, 8, 6), (3, 3, 1, 6))
    fast = lambda x, k: depthwise.depthwise_conv(x, k, stride, 1, "onednn")  # noqa: E731
    plain = lambda x, k: reference.conv(x, k, stride, 1, groups=6)  # noqa: E731
    assert_same_values_and_gradients(fast, plain, x, k)


@needs_onednn
@pytest.mark.parametrize("padding", [0, 1])
def test_folded_kernel_grad_matches_autodiff_of_the_folded_2d_convolution(padding):
    # Batch 6 in chunks of 2 (sample_channels_chunk 4 does not divide it), a 3x2 kernel (unequal
    # taps), padding.
    x, k = random_arrays((6, 5, 7, 6, 3), (3, 2, 3 * 5, 4))
    y, vjp = jax.vjp(lambda k: reference.conv(reference.fold_depth(x), k, 1, padding), k)
    (grad,) = random_arrays(y.shape, seed=1)
    expected = vjp(grad)[0]
    got = jax.jit(lambda x, grad: conv_kernel_grad.folded_kernel_grad(x, grad, k.shape, padding))(x, grad)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected))))


# Bias and activation fused into oneDNN's kernels: (input shape, kernel shape, stride, padding,
# the op with the fused epilogue, the plain op before it).
FUSED_CASES = {
    "conv2d": ((2, 7, 6, 5), (3, 3, 5, 8), 1, 1, "conv"),
    "conv3d": ((2, 6, 5, 5, 3), (3, 3, 3, 3, 8), 1, 0, "conv"),
    "pointwise_matmul": ((2, 6, 6, 8), (1, 1, 8, 16), 1, 0, "conv"),
    "depthwise": ((2, 8, 8, 16), (3, 3, 1, 16), 1, 1, "depthwise"),
    "depthwise_strided": ((2, 9, 8, 16), (3, 3, 1, 16), 2, 1, "depthwise"),
}


@needs_onednn
@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_bias_and_activation_match_the_plain_epilogue_and_its_gradients(case, activation):
    x_shape, k_shape, stride, padding, kind = FUSED_CASES[case]
    x, k, b = random_arrays(x_shape, k_shape, k_shape[-1:])
    x = 3 * x  # outputs on both sides of ReLU6's 6
    groups = x_shape[-1] if kind == "depthwise" else 1
    if kind == "depthwise":
        fused = lambda x, k, b: ops.depthwise_conv(x, k, stride, padding, "onednn", b, activation)  # noqa: E731
    else:
        fused = lambda x, k, b: ops.conv(x, k, b, strides=stride, padding=padding, impl="onednn",  # noqa: E731
                                         activation=activation)
    plain = lambda x, k, b: epilogue.bias_activation(reference.conv(x, k, stride, padding, groups), b,  # noqa: E731
                                                      activation)
    text = jax.jit(fused).lower(x, k, b).compile().as_text()
    assert onednn.POST_OPS[activation] in text and "maximum(" not in text and "minimum(" not in text
    y_fused, vjp_fused = jax.vjp(fused, x, k, b)
    y_plain, vjp_plain = jax.vjp(plain, x, k, b)
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-4, atol=1e-4)
    assert 0 < float(jnp.mean(y_plain == 0)) < 1 and (activation == "relu" or float(jnp.max(y_plain)) == 6)
    (cotangent,) = random_arrays(y_plain.shape, seed=1)
    for got, want in zip(vjp_fused(cotangent), vjp_plain(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
