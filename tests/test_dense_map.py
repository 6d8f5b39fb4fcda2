"""Dense (fully convolutional) HybridSN maps against the patch-by-patch network they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import models
from lightnets_jax.data import hyperspectral as hsi
from lightnets_jax.models.hybridsn_dense import dense_logits
from lightnets_jax.tasks import scene_map


def _model_and_variables(name, patch_size=11, bands=16, num_classes=5):
    model = models.create(name, patch_size=patch_size, bands=bands, num_classes=num_classes)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, patch_size, patch_size, bands), np.float32))
    variables = models.init(model, jax.random.key(0))
    # Compiled once: eager train steps run op by op and took most of this file's time.
    train_apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    for step in range(3):  # running statistics away from their start, so BatchNorm's folding has work
        _, updates = train_apply(variables, x * (1 + step) + 0.5, jax.random.key(step))
        variables = {**variables, **updates}
    return model, variables


def _padded_scene(height, width, bands, window, seed=1):
    cube = np.random.default_rng(seed).standard_normal((height, width, bands)).astype(np.float32)
    return hsi.pad_cube(cube, window)


@pytest.mark.parametrize("name", ["hybridsn", "hybridsn_bn"])
def test_dense_logits_are_the_patch_logits(name):
    model, variables = _model_and_variables(name)
    padded = _padded_scene(13, 9, 16, 11)  # odd sides
    dense = dense_logits(model, variables, jnp.asarray(padded[None]))[0]
    coords = hsi.scene_pixels(13, 9)
    patches = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 11)
    per_patch = model.apply(variables, jnp.asarray(patches), train=False).reshape(13, 9, -1)
    scale = float(jnp.max(jnp.abs(per_patch)))
    np.testing.assert_allclose(dense, per_patch, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(np.argmax(dense, -1), np.argmax(per_patch, -1))


@pytest.mark.parametrize("name", ["hybridsn", "hybridsn_bn"])
@pytest.mark.parametrize("tile", [4, 7, None])  # tiles that do not divide the 17 x 11 scene; the budget's
def test_tiled_map_equals_the_patch_map(name, tile):
    model, variables = _model_and_variables(name)
    padded = _padded_scene(17, 11, 16, 11, seed=2)
    dense = scene_map.predict_scene(model, variables, padded, "dense", probabilities=True, tile=tile)
    patch = scene_map.predict_scene(model, variables, padded, "patch", probabilities=True, batch_size=32)
    np.testing.assert_array_equal(dense.labels, patch.labels)
    np.testing.assert_allclose(dense.probabilities.astype(np.float32), patch.probabilities.astype(np.float32),
                               atol=2e-3)
    assert dense.probabilities.dtype == np.float16 and dense.labels.shape == (17, 11)
    if tile is not None:
        assert dense.tile == (tile, tile)


def test_pixels_are_predicted_the_cheaper_way_with_the_same_classes():
    model, variables = _model_and_variables("hybridsn_bn")
    padded = _padded_scene(17, 11, 16, 11, seed=3)
    per_patch, per_dense_pixel = scene_map.multiply_adds(model)
    assert per_patch > 10 * per_dense_pixel  # each conv output once, not once per patch that holds it
    few = np.array([[0, 0], [16, 10], [8, 5]])
    many = hsi.scene_pixels(17, 11)[::2]
    assert scene_map.cheaper_method(model, len(few), 17 * 11) == "patch"
    assert scene_map.cheaper_method(model, len(many), 17 * 11) == "dense"
    truth = scene_map.predict_scene(model, variables, padded, "patch", batch_size=32).labels
    for coords in (few, many):
        chosen = scene_map.predict_pixels(model, variables, padded, coords, batch_size=32)
        np.testing.assert_array_equal(chosen, truth[coords[:, 0], coords[:, 1]])
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        scene_map.predict_pixels(model, variables, padded, few, method="fast")

def test_tile_side_follows_the_memory_budget():
    small = scene_map.tile_side(25, 30, memory_budget=64 << 20)
    large = scene_map.tile_side(25, 30, memory_budget=1 << 30)
    assert 1 <= small < large
    per_position = scene_map.activation_bytes_per_position(30)
    assert (large + 24) ** 2 * per_position <= 1 << 30 < (large + 26) ** 2 * per_position
    assert scene_map.tile_side(25, 30, devices=4, memory_budget=1 << 30) < large
    assert scene_map.tile_side(25, 30, memory_budget=1) == 1


def test_unknown_method_is_refused():
    model, variables = _model_and_variables("hybridsn")
    with pytest.raises(ValueError, match="unknown method 'fast'; choose one of dense, patch"):
        scene_map.predict_scene(model, variables, _padded_scene(5, 5, 16, 11), "fast")


@pytest.mark.slow
def test_indian_pines_dense_map_equals_the_patch_network():
    # Tiles of 100 put tile borders inside the 145 x 145 scene; checked there and at 1,024 random
    # pixels against the network on each pixel's patch (the whole patch map takes a minute).
    scene = hsi.load_scene("indian_pines")
    padded = hsi.pad_cube(hsi.apply_pca(scene.cube, 30), 25)
    model, variables = _model_and_variables("hybridsn_bn", patch_size=25, bands=30, num_classes=16)
    dense = scene_map.predict_scene(model, variables, padded, "dense", tile=100, probabilities=True)
    assert dense.labels.shape == (145, 145) and dense.tile == (100, 100)
    rng = np.random.default_rng(0)
    border = [(r, c) for r in (99, 100) for c in range(145)] + [(r, c) for c in (99, 100) for r in range(145)]
    coords = np.asarray(border + [tuple(p) for p in rng.integers(0, 145, (1024, 2))], np.int32)
    patches = hsi.gather_patches(padded, coords[:, 0], coords[:, 1], 25)
    eval_apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    logits = np.concatenate([eval_apply(jnp.asarray(patches[i:i + 256])) for i in range(0, len(coords), 256)])
    np.testing.assert_array_equal(dense.labels[coords[:, 0], coords[:, 1]], np.argmax(logits, -1))
    np.testing.assert_allclose(dense.probabilities[coords[:, 0], coords[:, 1]].astype(np.float32),
                               jax.nn.softmax(logits, -1), atol=2e-3)


@pytest.mark.slow
def test_tiles_spread_over_several_devices_give_the_same_map():
    # Four CPU devices: each batch of 4 tiles is sharded one per device (the GEMM kernels there).
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent("""
        import jax, numpy as np
        from tests.test_dense_map import _model_and_variables, _padded_scene
        from lightnets_jax.tasks import scene_map
        assert jax.local_device_count() == 4
        model, variables = _model_and_variables("hybridsn_bn")
        padded = _padded_scene(17, 11, 16, 11, seed=2)
        dense = scene_map.predict_scene(model, variables, padded, "dense", tile=4)  # 15 tiles: a partial last batch
        patch = scene_map.predict_scene(model, variables, padded, "patch", batch_size=32)
        print("EQUAL", model.conv_impl, bool(np.array_equal(dense.labels, patch.labels)))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "EQUAL gemm True" in result.stdout
