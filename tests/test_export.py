"""Export: every model leaves JAX (StableHLO and ONNX) and computes what it computed inside, at
any batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import cli, export, models
from tests.support import random_variables


def _inputs_and_logits(name):
    model = models.create(name)
    variables = random_variables(model)
    x = np.random.default_rng(1).standard_normal(models.example_shape(model, 3)).astype(np.float32)
    want = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    assert np.abs(want[0] - want[1]).max() > 1e-3 * np.abs(want).max()  # the logits depend on the input
    return model, variables, x, want


@pytest.mark.slow
@pytest.mark.parametrize("name", models.available())
def test_exported_stablehlo_matches_jax_at_another_batch_size(name):
    model, variables, x, want = _inputs_and_logits(name)
    run = export.from_stablehlo(export.to_stablehlo(model, variables))
    np.testing.assert_allclose(np.asarray(run(x)), want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    assert np.asarray(run(x[:1])).shape == (1, want.shape[-1])  # the batch size is symbolic


@pytest.mark.slow
@pytest.mark.parametrize("name", models.available())
def test_exported_onnx_runs_in_onnxruntime_like_jax(name):
    ort = pytest.importorskip("onnxruntime")
    model, variables, x, want = _inputs_and_logits(name)
    session = ort.InferenceSession(export.to_onnx(model, variables).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    one = session.run(["logits"], {"input": x[:1]})[0]  # the batch axis is dynamic
    np.testing.assert_allclose(one, want[:1], rtol=0, atol=1e-4 * float(np.abs(want).max()))


def test_export_uses_the_portable_kernels_only():
    pytest.importorskip("onnx")
    model = models.create("hybridsn")
    assert model.conv_impl != "reference" or jax.default_backend() != "cpu"
    variables = model.init(jax.random.key(0), jnp.zeros((1, 25, 25, 30)), train=False)
    text = jax.export.deserialize(bytearray(export.to_stablehlo(model, variables, batch=2))).mlir_module()
    assert "onednn" not in text and "stablehlo.convolution" in text
    ops = {node.op_type for node in export.to_onnx(model, variables, batch=2).graph.node}
    assert "Conv" in ops and ops <= {"Conv", "Transpose", "Reshape", "Add", "Relu", "MatMul", "Identity", "Expand"}


def test_onnx_activations_are_relu_and_clip_and_every_weight_is_used():
    # onnxruntime fuses Relu and Clip into the Conv before them, not Max or Min with a constant
    # (MobileNets ran 1.5-3x faster for it), and warns of initializers no node reads.
    pytest.importorskip("onnx")
    model = models.create("mobilenet_v1_timm")  # ReLU6 after every conv
    graph = export.to_onnx(model, models.init(model, jax.random.key(0)), batch=2).graph
    ops = [node.op_type for node in graph.node]
    assert "Max" not in ops and "Min" not in ops and ops.count("Clip") == ops.count("Relu") == ops.count("Conv")
    read = {name for node in graph.node for name in node.input}
    assert {init.name for init in graph.initializer} <= read


def test_cli_exports_a_model_and_refuses_ambiguity(tmp_path, capsys):
    out = tmp_path / "m.stablehlo"
    assert cli.main(["export", "mobilenet_v1", "--options", '{"width_multiplier": 0.25}', "--out", str(out)]) == 0
    run = export.from_stablehlo(out.read_bytes())
    assert np.asarray(run(np.zeros((2, 32, 32, 3), np.float32))).shape == (2, 10)
    assert cli.main(["export", "--out", str(out)]) == 2
    assert "pass a MODEL" in capsys.readouterr().err


def test_cli_exports_published_weights_as_onnx(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from safetensors.numpy import save_file

    from lightnets_jax import convert

    model = models.create("mobilenet_v2_imagenet", width_multiplier=0.35)
    variables = random_variables(model)
    weights = tmp_path / "w.safetensors"
    save_file(convert.to_torch("mobilenet_v2_imagenet", variables), str(weights))
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "mobilenet_v2_imagenet", "--options", '{"width_multiplier": 0.35}',
                     "--weights", str(weights), "--out", str(out)]) == 0
    assert "onnx of MobileNetV2" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)  # the exported size
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    want = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
