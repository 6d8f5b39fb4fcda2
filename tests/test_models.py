import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lightnets_jax import convert, models
from lightnets_jax.ops import config, onednn
from lightnets_jax.reports.summary import summarize

PARAMS = {
    "mobilenet_v1": 2_142_026,
    "mobilenet_v1_paper": 3_217_226,
    "mobilenet_v2": 2_296_922,
    "hybridsn": 5_122_176,
    "hybridsn_bn": 5_122_416,
    "mobilenet_v1_imagenet": 4_231_976,  # the paper's 4.2M
    "mobilenet_v2_imagenet": 3_504_872,  # the paper's 3.4M (torchvision's count)
}


def _count(name, shape, **options):
    model = models.create(name, **options)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return sum(v.size for v in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    shape = (1, 25, 25, 30) if name.startswith("hybridsn") else (1, 224, 224, 3) if "imagenet" in name else (1, 32, 32, 3)
    assert _count(name, shape) == PARAMS[name]


def test_registry_lists_names_and_rejects_unknown():
    assert set(PARAMS) <= set(models.available())
    with pytest.raises(ValueError, match="available models: .*mobilenet_v1"):
        models.create("resnet50")
    with pytest.raises(TypeError, match="no option depth_multiplier.*width_multiplier"):
        models.create("mobilenet_v1", depth_multiplier=2)


def test_mobilenet_v1_stage_shapes_match_the_note():
    layers = {l.path: l.output_shape[1:] for l in summarize("mobilenet_v1").layers}
    assert layers["conv1"] == (32, 32, 32)
    expected = [(32, 32, 64), (16, 16, 128), (16, 16, 128), (8, 8, 256), (8, 8, 256), (4, 4, 512), (4, 4, 512),
                (2, 2, 1024), (2, 2, 1024)]
    assert [layers[f"layers_{i}/conv2"] for i in range(9)] == expected
    assert layers["linear"] == (10,)


def test_mobilenet_v2_and_hybridsn_stage_shapes():
    v2 = {l.path: l.output_shape[1:] for l in summarize("mobilenet_v2").layers}
    assert v2["layers_0/conv3"] == (32, 32, 16)
    assert v2["layers_3/conv3"] == (16, 16, 32) and v2["layers_6/conv3"] == (8, 8, 64)
    assert v2["layers_13/conv3"] == (4, 4, 160) and v2["conv2"] == (4, 4, 1280)
    hs = {l.path: l.output_shape[1:] for l in summarize("hybridsn").layers}
    assert hs["conv1_0"] == (24, 23, 23, 8) and hs["conv2_0"] == (20, 21, 21, 16)
    assert hs["conv3_0"] == (18, 19, 19, 32) and hs["conv4_0"] == (17, 17, 64) and hs["fc1"] == (256,)


def test_multiply_adds_count_every_kernel_entry_at_every_output_position():
    macs = {l.path: l.macs for l in summarize("hybridsn").layers}
    assert macs["conv1_0"] == 23 * 23 * 24 * 8 * (7 * 3 * 3)
    assert macs["conv4_0"] == 17 * 17 * 64 * (3 * 3 * 32 * 18)  # the folded depth is conv4's input channels
    assert sum(macs.values()) == 247_683_392  # the ~248 M a patch costs (docs/performance.md)
    v1 = {l.path: l.macs for l in summarize("mobilenet_v1").layers}
    assert v1["conv1"] == 32 * 32 * 32 * 27 and v1["layers_0/conv1"] == 32 * 32 * 32 * 9  # stem, first depthwise


def test_separable_cost_equals_note_formula():
    summary = summarize("mobilenet_v1")
    pairs = [l for l in summary.layers if l.separable_ratio is not None]
    assert len(pairs) == 9
    for layer in pairs:
        assert layer.separable_ratio == pytest.approx(1 / layer.output_shape[-1] + 1 / 9, rel=1e-12)


def test_width_multiplier_and_options_change_parameter_count():
    assert _count("mobilenet_v1", (1, 32, 32, 3), width_multiplier=0.5) < PARAMS["mobilenet_v1"] / 3
    assert _count("mobilenet_v2_imagenet", (1, 160, 160, 3), width_multiplier=0.5) < PARAMS["mobilenet_v2_imagenet"]
    smaller = _count("hybridsn", (1, 15, 15, 20), patch_size=15, bands=20, num_classes=9)
    # bands 20 -> depth 8 after the 3D convs (32 x 8 = 256 channels); 15x15 -> 9x9 -> 7x7 after conv4
    assert smaller == 512 + 5776 + 13856 + (3 * 3 * 256 * 64 + 64) + (64 * 7 * 7 * 256 + 256) + 32896 + 129 * 9


@pytest.mark.slow
def test_imagenet_models_take_any_resolution():
    model = models.create("mobilenet_v2_imagenet", num_classes=5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
    assert model.apply(variables, jnp.zeros((2, 128, 128, 3))).shape == (2, 5)


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("hybridsn", (2, 21, 21, 30), r"\(N, 25, 25, 30\).*got shape \(2, 21, 21, 30\)"),
        ("hybridsn", (2, 25, 25, 20), r"\(N, 25, 25, 30\).*got shape \(2, 25, 25, 20\)"),
        ("mobilenet_v1", (2, 32, 32, 1), r"\(N, 32, 32, 3\).*got shape \(2, 32, 32, 1\)"),
        ("mobilenet_v2", (32, 32, 3), r"rank-4.*got shape \(32, 32, 3\)"),
    ],
)
def test_bad_input_shapes_raise_clear_errors(name, shape, match):
    with pytest.raises(ValueError, match=match):
        models.create(name).init(jax.random.key(0), jnp.zeros(shape))


def _fake_state_dict(name):
    variables = convert.expected_variables(name)
    return {convert._torch_key(path): np.zeros(convert._torch_shape(path, spec.shape), np.float32)
            for path, spec in variables.items()}


def test_converter_names_missing_and_misshapen_keys():
    state = _fake_state_dict("hybridsn")
    assert "conv1.0.weight" in state and state["conv1.0.weight"].shape == (8, 1, 7, 3, 3)
    convert.from_torch("hybridsn", state)  # complete and well-shaped: converts
    del state["fc2.bias"]
    state["fc1.weight"] = np.zeros((256, 100), np.float32)
    with pytest.raises(ValueError) as err:
        convert.from_torch("hybridsn", state)
    assert "missing keys: fc2.bias (128,)" in str(err.value)
    assert "fc1.weight: expected (256, 18496), got (256, 100)" in str(err.value)



def test_a_checkpoint_of_another_class_count_keeps_its_backbone_under_a_fresh_head():
    state = _fake_state_dict("hybridsn")  # 16 classes, zeros
    with pytest.warns(UserWarning, match="model's 9; kept the backbone, initialised a new classifier \\(seed 3\\)"):
        variables = convert.from_torch("hybridsn", state, seed=3, num_classes=9)
    fresh = models.init(models.create("hybridsn", num_classes=9), jax.random.key(3))
    assert models.num_classes("hybridsn", variables) == 9
    np.testing.assert_array_equal(variables["params"]["fc3"]["kernel"], fresh["params"]["fc3"]["kernel"])
    assert not np.any(variables["params"]["fc2"]["kernel"])  # the checkpoint's backbone
    state["fc2.weight"] = np.zeros((128, 100), np.float32)  # more than the head differs: refused
    with pytest.raises(ValueError, match="misshapen keys: fc2.weight"):
        convert.from_torch("hybridsn", state, num_classes=9)

@pytest.mark.slow
def test_eval_is_deterministic_and_train_uses_dropout_rng():
    model = models.create("hybridsn", patch_size=11, bands=16, num_classes=4)
    x = jax.random.normal(jax.random.key(1), (3, 11, 11, 16))
    variables = model.init(jax.random.key(0), x)
    first, second = model.apply(variables, x), model.apply(variables, x)
    np.testing.assert_array_equal(first, second)
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_fast_and_reference_paths_agree_with_bf16_option_running():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    fast = models.create("mobilenet_v2")
    variables = fast.init(jax.random.key(0), x)
    reference = models.create("mobilenet_v2", conv_impl="reference")
    np.testing.assert_allclose(fast.apply(variables, x), reference.apply(variables, x), atol=1e-4)
    f32 = fast.apply(variables, x)
    bf16 = models.create("mobilenet_v2", dtype=jnp.bfloat16).apply(variables, x)
    # bfloat16 keeps 8 bits of mantissa: 17 layers of rounding stay within 2 % of the logit scale.
    assert bf16.dtype == jnp.float32 and not np.array_equal(bf16, f32)
    np.testing.assert_allclose(bf16, f32, rtol=0, atol=2e-2 * float(jnp.max(jnp.abs(f32))))


@pytest.mark.slow
def test_batch_stats_update_only_in_train_mode():
    model = models.create("mobilenet_v1", width_multiplier=0.25)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) + 3.0
    variables = model.init(jax.random.key(0), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = traverse_util.flatten_dict(variables["batch_stats"])
    after = traverse_util.flatten_dict(updates["batch_stats"])
    assert not np.allclose(before[("bn1", "mean")], after[("bn1", "mean")])
    eval_out = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_out, model.apply(variables, x, train=False))


@pytest.mark.parametrize("name, shape", [("mobilenet_v2", (2, 32, 32, 3)), ("hybridsn_bn", (2, 25, 25, 30))])
def test_fast_is_resolved_once_when_the_model_is_built(name, shape, monkeypatch):
    """``models.create`` decides the kernels: on CPU the CPU kernels (oneDNN, or GEMMs when oneDNN
    is switched off), a different program from ``"reference"``; on GPU/TPU XLA's own convolutions
    (cuDNN beat the CPU kernels there), the very program of ``"reference"``."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    reference = models.create(name, conv_impl="reference")
    variables = reference.init(jax.random.key(0), x, train=False)

    def programs(model):
        return [str(jax.make_jaxpr(lambda v, x, m=m: m.apply(v, x, train=train, rngs={"dropout": jax.random.key(1)},
                                                               mutable=["batch_stats"] if train else False))(variables, x))
                for train in (False, True) for m in (model, reference)]

    on_cpu = models.create(name)
    assert on_cpu.conv_impl == ("onednn" if onednn.available() else "gemm")
    with config.override(onednn=False):
        assert models.create(name).conv_impl == "gemm"
    cpu_programs = programs(on_cpu)
    assert cpu_programs[0] != cpu_programs[1] and cpu_programs[2] != cpu_programs[3]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    off_cpu = models.create(name)
    assert off_cpu.conv_impl == "reference"
    gpu_programs = programs(off_cpu)
    assert gpu_programs[0] == gpu_programs[1] and gpu_programs[2] == gpu_programs[3]
    # A layer is never handed the request itself: "fast" is for models.create to resolve.
    with pytest.raises(ValueError, match="resolved by lightnets_jax.models.create"):
        models.HybridSN(conv_impl="fast").init(jax.random.key(0), jnp.zeros((1, 25, 25, 30)))
