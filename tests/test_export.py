"""StableHLO export: every model leaves JAX and computes what it computed inside, any batch size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import cli, export, models


@pytest.mark.slow
@pytest.mark.parametrize("name", models.available())
def test_exported_stablehlo_matches_jax_at_another_batch_size(name, tmp_path):
    model = models.create(name)
    shape = models.example_shape(model, 3)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.asarray(x[:1]), train=False)
    run = export.from_stablehlo(export.to_stablehlo(model, variables))
    got, want = np.asarray(run(x)), np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
    assert np.asarray(run(x[:1])).shape == (1, want.shape[-1])  # the batch size is symbolic


def test_export_uses_the_portable_kernels_only():
    model = models.create("hybridsn")
    assert model.conv_impl != "reference" or jax.default_backend() != "cpu"
    variables = model.init(jax.random.key(0), jnp.zeros((1, 25, 25, 30)), train=False)
    text = jax.export.deserialize(bytearray(export.to_stablehlo(model, variables, batch=2))).mlir_module()
    assert "onednn" not in text and "stablehlo.convolution" in text


def test_cli_exports_a_model_and_refuses_ambiguity(tmp_path, capsys):
    out = tmp_path / "m.stablehlo"
    assert cli.main(["export", "mobilenet_v1", "--options", '{"width_multiplier": 0.25}', "--out", str(out)]) == 0
    run = export.from_stablehlo(out.read_bytes())
    assert np.asarray(run(np.zeros((2, 32, 32, 3), np.float32))).shape == (2, 10)
    assert cli.main(["export", "--out", str(out)]) == 2
    assert "pass a MODEL" in capsys.readouterr().err
