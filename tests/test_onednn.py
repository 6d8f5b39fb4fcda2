"""oneDNN's convolutions through XLA's custom call: the probe, the config, and what the models compile to."""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lightnets_jax import models, ops
from lightnets_jax.ops import config, epilogue, onednn, reference
from tests.support import needs_onednn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(jax.default_backend() != "cpu" or platform.machine() != "x86_64",
                    reason="jaxlib's x86-64 CPU builds are the ones with oneDNN")
def test_available_on_x86_cpu():
    assert onednn.available()
    assert onednn.describe() == "oneDNN convs"


@pytest.mark.parametrize("setting", [{config.DISABLE_ONEDNN_ENV: "1"},
                                     {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}])
def test_off_when_disabled_or_with_several_devices(setting):
    # Several devices keep the GEMM formulations (see ``onednn.available``).
    code = "from lightnets_jax.ops import onednn; print(onednn.available(), onednn.describe())"
    env = {**os.environ, **setting, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "GEMM", "convs"]


# (input shape, kernel shape, padding, stride, groups): 1D, 2D padded, 3D with unequal taps,
# strided, depthwise.
CONVOLUTIONS = {
    "1d": ((2, 11, 3), (3, 3, 4), 1, 1, 1),
    "2d_padded": ((2, 7, 6, 5), (3, 3, 5, 4), 1, 1, 1),
    "3d": ((2, 9, 7, 6, 3), (5, 3, 2, 3, 4), 0, 1, 1),
    "2d_strided": ((2, 9, 9, 3), (3, 3, 3, 4), 1, 2, 1),
    "depthwise": ((2, 8, 8, 6), (3, 3, 1, 6), 1, 1, 6),
    "3d_strided_depth": ((2, 10, 7, 6, 3), (4, 3, 3, 3, 16), 1, (2, 1, 1), 1),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(CONVOLUTIONS))
def test_convolution_matches_xla(case):
    x_shape, k_shape, padding, stride, groups = CONVOLUTIONS[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
    spatial = x.ndim - 2
    got = jax.jit(lambda x, k: onednn.convolution(x, k, (padding,) * spatial, stride, groups))(x, k)
    letters = "DHW"[-spatial:]
    strides = (stride,) * spatial if isinstance(stride, int) else stride
    want = lax.conv_general_dilated(x, k, strides, [(padding, padding)] * spatial,
                                    dimension_numbers=(f"N{letters}C", f"{letters}IO", f"N{letters}C"),
                                    feature_group_count=groups, precision=lax.Precision.HIGHEST)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_dilated_convolution_matches_xla():
    # Kernel taps 2 apart along the depth (the packed kernel gradients' convs), adjacent elsewhere.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 11, 6, 5, 3), np.float32))
    k = jnp.asarray(rng.standard_normal((4, 3, 2, 3, 16), np.float32))
    got = jax.jit(lambda x, k: onednn.convolution(x, k, (0, 1, 0), dilations=(2, 1, 1)))(x, k)
    want = lax.conv_general_dilated(x, k, (1, 1, 1), [(0, 0), (1, 1), (0, 0)], rhs_dilation=(2, 1, 1),
                                    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=lax.Precision.HIGHEST)
    assert got.shape == want.shape == (2, 5, 6, 4, 16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_kernel_stored_in_another_order_via_kernel_axes():
    # A (C_out, kd, C_in, kh, kw) kernel described by kernel_axes gives the plain kernel's result.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 5, 3), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 2, 4, 3, 16), np.float32))
    stored = jnp.transpose(k, (4, 0, 3, 1, 2))
    got = jax.jit(lambda x, s: onednn.convolution(x, s, (1, 0, 1), kernel_axes=(1, 3, 4, 2, 0)))(x, stored)
    want = onednn.convolution(x, k, (1, 0, 1))
    assert got.shape == want.shape == (2, 7, 5, 4, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="permutation of the kernel's 5 axes"):
        onednn.convolution(x, stored, (1, 0, 1), kernel_axes=(1, 3, 4, 2, 2))


# (output gradient shape, kernel shape, padding, pack): HybridSN's conv2 (8 input channels, the
# case input_gradient packs), 4 channels in fours, a 2D kernel with a depth of one tap.
PACKED = {
    "conv2_like": ((2, 10, 7, 6, 16), (5, 3, 3, 8, 16), 0, 2),
    "fours_padded": ((2, 8, 7, 6, 16), (3, 3, 3, 4, 16), 1, 4),
    "2d_one_tap": ((2, 6, 5, 16), (1, 3, 8, 16), 0, 2),
}


@needs_onednn
@pytest.mark.parametrize("case", sorted(PACKED))
def test_depth_packed_input_gradient_matches_autodiff(case):
    grad_shape, k_shape, padding, pack = PACKED[case]
    rng = np.random.default_rng(0)
    grad = jnp.asarray(rng.standard_normal(grad_shape, np.float32))
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
    spatial = grad.ndim - 2
    x_shape = (grad_shape[0], *(g + t - 1 - 2 * padding for g, t in zip(grad_shape[1:-1], k_shape)), k_shape[-2])
    _, vjp = jax.vjp(lambda x: reference.conv(x, k, 1, padding), jnp.zeros(x_shape, jnp.float32))
    want = vjp(grad)[0]
    flipped = jnp.flip(k, axis=tuple(range(spatial))).swapaxes(-1, -2)
    pads = [t - 1 - padding for t in k_shape[:spatial]]
    packed = jax.jit(lambda g, f: onednn._depth_packed(g, f, pads, pack))(grad, flipped)
    np.testing.assert_allclose(packed, want, rtol=1e-4, atol=1e-4)
    chosen = jax.jit(lambda g, k: onednn.input_gradient(g, k, (padding,) * spatial))(grad, k)
    np.testing.assert_allclose(chosen, want, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_input_gradient_packs_eight_channels_only():
    def strides_of(grad_shape, k_shape):
        grad, k = jnp.zeros(grad_shape, jnp.float32), jnp.zeros(k_shape, jnp.float32)
        text = jax.jit(lambda g, k: onednn.input_gradient(g, k, (0, 0, 0))).lower(grad, k).as_text()
        return len(re.findall(r"strides[^:]*: \[2, 1, 1\]", text))  # the config's JSON, escaped

    assert strides_of((2, 10, 7, 6, 16), (5, 3, 3, 8, 16)) == 1
    assert strides_of((2, 10, 7, 6, 16), (5, 3, 3, 16, 16)) == 0
    assert strides_of((2, 9, 7, 6, 16), (5, 3, 3, 8, 16)) == 0  # odd output depth: not packed


@needs_onednn
@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_bias_and_activation_post_ops(activation):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 6, 3), np.float32)) * 2
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 5), np.float32))
    b = jnp.asarray(rng.standard_normal((5,), np.float32))
    got = jax.jit(lambda x, k, b: onednn.convolution(x, k, (1, 1, 1), bias=b, activation=activation))(x, k, b)
    want = lax.conv_general_dilated(x, k, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                    precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(got, epilogue.bias_activation(want, b, activation), rtol=1e-4, atol=1e-4)
    rows = x.reshape(-1, 3)
    got = jax.jit(lambda a, k, b: onednn.matmul(a, k, bias=b, activation=activation))(rows, k[0, 0, 0], b)
    want = jnp.matmul(rows, k[0, 0, 0], precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(got, epilogue.bias_activation(want, b, activation), rtol=1e-4, atol=1e-4)
    assert activation != "relu6" or float(jnp.max(got)) == 6.0  # the clip was reached


@needs_onednn
@pytest.mark.parametrize("name", ["hybridsn", "hybridsn_bn"])
@pytest.mark.parametrize("train", [False, True])
def test_hybridsn_compiles_its_convolutions_to_onednn(name, train):
    # Forward: all four convs; training adds the input gradients of conv2-conv4 (the network's
    # input needs none, and XLA drops that one) and the kernel gradients of all four, called in
    # chunk loops. XLA's own convolutions appear nowhere. The ReLUs
    # run inside the convs, except in training with BatchNorm (which then sits between them).
    model = models.create(name)
    x = jnp.zeros((2, 25, 25, 30), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    if train:
        def step(variables, x):
            loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x, train=True,  # noqa: E731
                                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})[0])
            return jax.grad(loss)(variables["params"])
    else:
        def step(variables, x):
            return model.apply(variables, x, train=False)
    text = jax.jit(step).lower(variables, x).compile().as_text()
    calls = re.findall(r'custom_call_target="__onednn\$convolution".*?op_name="([^"]+)"', text)
    # The kernel gradients' chunk loops (closed_call) may be unrolled: one or more calls per layer.
    assert len([name for name in calls if "closed_call" not in name]) == (7 if train else 4)
    in_loops = {re.search(r"(conv\d)_0", name).group(1) for name in calls if "closed_call" in name}
    assert in_loops == ({"conv1", "conv2", "conv3", "conv4"} if train else set())
    assert " convolution(" not in text
    assert text.count('"RELU"') == (0 if train and name == "hybridsn_bn" else 4)


def test_batchnorm_folded_at_inference_matches_the_reference():
    # Running statistics away from their initial values, so that the folding has work to do.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 25, 25, 30), np.float32))
    fast, reference = models.create("hybridsn_bn"), models.create("hybridsn_bn", conv_impl="reference")
    variables = fast.init(jax.random.key(0), x, train=False)
    for _ in range(3):
        _, updates = reference.apply(variables, x * 3 + 1, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(1)})
        variables = {**variables, **updates}
    got, want = fast.apply(variables, x, train=False), reference.apply(variables, x, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("name", ["hybridsn", "hybridsn_bn"])
def test_hybridsn_gradients_match_the_reference_path(name):
    # The fast path's custom gradients (oneDNN input and kernel gradients, conv4's kernel gradient
    # by GEMMs, the ReLU fused into the convs of the variant without BatchNorm) against autodiff of
    # XLA's convolutions.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 25, 25, 30), np.float32))
    fast, reference = models.create(name), models.create(name, conv_impl="reference")
    variables = fast.init(jax.random.key(0), x, train=False)

    def grads(model):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
            return jnp.sum(logits * jnp.arange(logits.shape[-1]))
        return jax.grad(loss)(variables["params"])

    got, want = grads(fast), grads(reference)
    want_by_path = dict(jax.tree_util.tree_leaves_with_path(want))
    # Absolute tolerance on the largest gradient's scale: with BatchNorm after them the convs' bias
    # gradients are zero up to rounding.
    scale = max(float(jnp.max(jnp.abs(w))) for w in want_by_path.values())
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        np.testing.assert_allclose(g, want_by_path[path], rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))


needs_onednn_bf16 = pytest.mark.skipif(not onednn.available(jnp.bfloat16),
                                       reason="XLA's CPU runtime here has no bfloat16 oneDNN custom calls")


@needs_onednn_bf16
@pytest.mark.parametrize("case", ["conv3d", "depthwise", "pointwise"])
def test_bfloat16_layers_match_float32_on_the_rounded_inputs(case):
    # bfloat16 operands, float32 accumulation: values and both gradients within bfloat16's
    # rounding of the float32 results computed from the same (rounded) inputs.
    x_shape, k_shape, padding, conv, plain = {
        "conv3d": ((3, 7, 8, 6, 8), (3, 3, 3, 8, 16), 0,
                   lambda x, k: ops.conv(x, k, jnp.ones(16, x.dtype), strides=1, padding=0, activation="relu",
                                         impl="onednn"),
                   lambda x, k: jax.nn.relu(reference.conv(x, k, 1, 0) + 1)),
        "depthwise": ((4, 9, 8, 16), (3, 3, 1, 16), 1,
                      lambda x, k: ops.depthwise_conv(x, k, 1, 1, "onednn"),
                      lambda x, k: reference.conv(x, k, 1, 1, groups=16)),
        "pointwise": ((4, 6, 6, 16), (1, 1, 16, 32), 0,
                      lambda x, k: ops.conv(x, k, None, strides=1, padding=0, impl="onednn"),
                      lambda x, k: reference.conv(x, k, 1, 0)),
    }[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape, np.float32)).astype(jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal(k_shape, np.float32) * 0.3).astype(jnp.bfloat16)

    def value_and_grads(f, x, k):
        y, vjp = jax.vjp(f, x, k)
        weights = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape, np.float32)).astype(y.dtype)
        return (y, *vjp(weights))

    text = jax.jit(lambda x, k: value_and_grads(conv, x, k)).lower(x, k).compile().as_text()
    assert "__onednn$" in text and " convolution(" not in text
    got = jax.jit(lambda x, k: value_and_grads(conv, x, k))(x, k)
    want = jax.jit(lambda x, k: value_and_grads(plain, x, k))(x.astype(jnp.float32), k.astype(jnp.float32))
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(jnp.float32), w, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(w))))


@needs_onednn_bf16
def test_bfloat16_hybridsn_trains_on_onednn_close_to_float32():
    # dtype=bfloat16 used to run XLA's bfloat16 GEMMs (4.4x slower than float32 for HybridSN here);
    # it now compiles to oneDNN's calls, logits and gradients within a few bfloat16 roundings of
    # the float32 reference path's.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 25, 25, 30), np.float32))
    fast, reference = models.create("hybridsn", dtype=jnp.bfloat16), models.create("hybridsn", conv_impl="reference")
    variables = reference.init(jax.random.key(0), x, train=False)

    def grads(model):
        def loss(params):
            logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
            return jnp.sum(logits * jnp.arange(logits.shape[-1])), logits
        return jax.grad(loss, has_aux=True)(variables["params"])

    text = jax.jit(lambda: grads(fast)).lower().compile().as_text()
    # 4 forward, 3 input gradients, 4 kernel gradients (one chunk each at batch 2).
    assert text.count('custom_call_target="__onednn$convolution"') == 11 and " convolution(" not in text
    (got, logits), (want, want_logits) = jax.jit(lambda: grads(fast))(), jax.jit(lambda: grads(reference))()
    np.testing.assert_allclose(logits, want_logits, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(want_logits))))
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=0, atol=3e-2 * scale)


def test_bfloat16_needs_avx512_in_the_cpu_flags(tmp_path):
    # On an AVX2-only CPU oneDNN's bfloat16 call kills the process (SIGILL), so the flags decide first.
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    avx512 = tmp_path / "avx512"
    avx512.write_text("flags\t\t: avx2 avx512f avx512dq avx512bw avx512vl amx_bf16\n")
    assert not onednn.BFLOAT16_CPU_FLAGS <= onednn.cpu_flags(str(avx2))
    assert onednn.BFLOAT16_CPU_FLAGS <= onednn.cpu_flags(str(avx512))
    assert onednn.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the warning is about CPUs")
@pytest.mark.parametrize("flags, warns", [({"avx2", "fma"}, True), ({"avx512f", "amx_bf16"}, False),
                                          ({"avx512f", "avx512_bf16"}, False)])
def test_bfloat16_on_a_cpu_without_native_bfloat16_warns_it_is_slower(monkeypatch, flags, warns):
    import warnings

    monkeypatch.setattr(onednn, "cpu_flags", lambda: frozenset(flags))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config.choose_impl("reference", jnp.bfloat16)
        config.choose_impl("reference", jnp.float32)
    slow = [w for w in caught if "leave out --bf16" in str(w.message)]
    assert len(slow) == (1 if warns else 0)
