"""Shared by the tests: markers and the comparison of a fast kernel with its reference."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax.ops import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="XLA's CPU runtime here has no oneDNN")


def assert_same_values_and_gradients(fast, reference, x, k):
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


def random_arrays(*shapes, seed: int = 0) -> list[jax.Array]:
    """Standard-normal float32 arrays of the given shapes, drawn in order from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in shapes]


def write_tiny_scene(folder, height: int = 16, width: int = 16, bands: int = 20, name: str = "cube"):
    """A learnable 3-class scene (12 x 12 labelled pixels, spectra offset by class) saved as
    ``name.npy`` and ``gt.npy`` in ``folder``; returns the two paths."""
    from pathlib import Path

    rng = np.random.default_rng(0)
    labels = np.zeros((height, width), np.int32)
    labels[2:14, 2:14] = np.repeat(np.arange(3) + 1, 48).reshape(12, 12)
    cube = rng.standard_normal((height, width, bands)).astype(np.float32) + labels[..., None] * np.linspace(-3, 3, bands)
    np.save(Path(folder) / f"{name}.npy", cube)
    np.save(Path(folder) / "gt.npy", labels)
    return Path(folder) / f"{name}.npy", Path(folder) / "gt.npy"


def write_envi(binary, raster, interleave: str = "bsq", big_endian: bool = False, code: int = 4,
               offset: int = 0, extra: str = "") -> None:
    """``raster`` (lines, samples, bands) as an ENVI binary at ``binary`` with ``binary``.hdr
    beside it (the header name AVIRIS products use)."""
    from lightnets_jax.data import envi

    binary = Path(binary)
    axes, _ = envi.LAYOUTS[interleave]
    order = {"lines": 0, "samples": 1, "bands": 2}
    stored = np.ascontiguousarray(raster.transpose([order[a] for a in axes]))
    dtype = np.dtype(envi.DTYPES.get(code, np.float32)).newbyteorder(">" if big_endian else "<")
    binary.write_bytes(b"\0" * offset + stored.astype(dtype).tobytes())
    lines, samples, bands = raster.shape
    Path(str(binary) + ".hdr").write_text(
        f"ENVI\ndescription = {{written by the tests,\n  two lines}}\nsamples = {samples}\nlines   = {lines}\n"
        f"bands = {bands}\nheader offset = {offset}\nfile type = ENVI Standard\ndata type = {code}\n"
        f"interleave = {interleave}\nbyte order = {int(big_endian)}\n"
        f"wavelength = {{\n {', '.join(str(400 + 10 * b) for b in range(bands))}}}\n{extra}")


def import_torchvision_and_timm():
    """torchvision and timm, or skip. torchvision 0.28's wheel is built against CUDA: beside the
    CPU torch its compiled ops do not register and its fake-op module fails at import; its models
    are pure Python, so an empty stand-in for that module is enough (timm imports torchvision)."""
    import sys
    import types

    pytest.importorskip("torch")
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    return pytest.importorskip("torchvision"), pytest.importorskip("timm")


def randomize_torch_module(module, seed: int = 0):
    """Every floating tensor of a PyTorch module's state redrawn (untrained nets give near-zero
    logits, a weak check): weights scaled by fan-in, BN scales and variances around 1."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if not value.dtype.is_floating_point:
                continue
            if key.endswith("running_var") or (key.endswith("weight") and value.ndim == 1):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            else:
                fan_in = max(1, value[0].numel()) if value.ndim > 1 else 1
                value.copy_(torch.randn(value.shape, generator=generator) / fan_in ** 0.5)
    return module.eval()


def random_variables(model, seed: int = 0) -> dict:
    """A model's variables with every leaf redrawn (kernels by fan-in, BN scales and variances
    around 1, biases and means small), so outputs depend on the input at every scale."""
    import jax

    from lightnets_jax import models

    variables = model.init(jax.random.key(seed), jnp.zeros(models.example_shape(model)), train=False)
    rng = np.random.default_rng(seed)
    flat = jax.tree_util.tree_flatten_with_path(variables)

    def draw(path, leaf):
        name = str(path[-1])
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in))
        if "scale" in name or "var" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32))
        return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * 0.1)

    return jax.tree_util.tree_unflatten(flat[1], [draw(path, leaf) for path, leaf in flat[0]])
