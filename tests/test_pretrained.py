"""torchvision's and timm's ImageNet MobileNets load into ours and give the same logits."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from lightnets_jax import convert, models
from tests.support import import_torchvision_and_timm, randomize_torch_module

CASES = {
    "torchvision mobilenet_v2": ("mobilenet_v2_imagenet", {}, lambda tv, timm: tv.models.mobilenet_v2()),
    "torchvision mobilenet_v2 0.5": ("mobilenet_v2_imagenet", {"width_multiplier": 0.5},
                                     lambda tv, timm: tv.models.mobilenet_v2(width_mult=0.5)),
    "timm mobilenetv2_100": ("mobilenet_v2_imagenet", {}, lambda tv, timm: timm.create_model("mobilenetv2_100")),
    "timm mobilenetv1_100": ("mobilenet_v1_timm", {}, lambda tv, timm: timm.create_model("mobilenetv1_100")),
}


def _torch_logits(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def _our_logits(name, variables, x, **options):
    model = models.create(name, conv_impl="reference", **options)
    return np.asarray(model.apply(variables, jnp.asarray(x), train=False))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_published_layouts_load_and_match(case, suffix, tmp_path):
    import torch
    from safetensors.torch import save_file

    torchvision, timm = import_torchvision_and_timm()
    name, options, build = CASES[case]
    module = randomize_torch_module(build(torchvision, timm))
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))

    variables = convert.load(name, path, **options)
    x = np.random.default_rng(0).standard_normal((2, 96, 96, 3)).astype(np.float32)
    want = _torch_logits(module, x)
    got = _our_logits(name, variables, x, **options)
    scale = np.abs(want).max()
    assert scale > 1  # randomised weights: logits far from zero
    assert np.abs(got - want).max() <= 1e-4 * scale


def test_layout_is_detected_and_can_be_named():
    torchvision, _ = import_torchvision_and_timm()
    state = torchvision.models.mobilenet_v2().state_dict()
    detected = convert.from_torch("mobilenet_v2_imagenet", state)
    named = convert.from_torch("mobilenet_v2_imagenet", state, layout="torchvision")
    np.testing.assert_array_equal(detected["params"]["conv2"]["kernel"], named["params"]["conv2"]["kernel"])
    with pytest.raises(ValueError, match="key 'features.0.0.weight' is not part of timm's MobileNet layout"):
        convert.from_torch("mobilenet_v2_imagenet", state, layout="timm")


def test_a_thousand_class_checkpoint_gets_a_new_head_for_ten_classes():
    torchvision, _ = import_torchvision_and_timm()
    module = randomize_torch_module(torchvision.models.mobilenet_v2())
    with pytest.warns(UserWarning, match="kept the backbone, initialised a new classifier"):
        variables = convert.from_torch("mobilenet_v2_imagenet", module.state_dict(), num_classes=10)
    assert variables["params"]["linear"]["kernel"].shape == (1280, 10)
    stem = module.state_dict()["features.0.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], stem)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same size: no new head, no warning
        convert.from_torch("mobilenet_v2_imagenet", module.state_dict())


def test_another_architecture_is_refused_naming_the_layout_and_the_first_key():
    torchvision, timm = import_torchvision_and_timm()
    state = timm.create_model("mobilenetv1_100").state_dict()
    with pytest.raises(ValueError, match=r"read as the timm layout; first key that does not fit: blocks\.0\.0\.conv_pw\.weight\)"):
        convert.from_torch("mobilenet_v2_imagenet", state)
    with pytest.raises(ValueError, match="torchvision has no MobileNetV1"):
        convert.from_torch("mobilenet_v1_imagenet", torchvision.models.mobilenet_v2().state_dict())
    with pytest.raises(ValueError, match="not 'hybridsn'"):
        convert.from_torch("hybridsn", state)


def test_unreadable_weight_files_are_clear_errors(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"conv_stem.weight": np.zeros((32, 3, 3, 3), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a complete .safetensors file"):
        convert.load("mobilenet_v1_timm", path)
    (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        convert.load("mobilenet_v1_timm", tmp_path / "w.pth")
    with pytest.raises(ValueError, match="expected a .safetensors, .pth or .pt file"):
        convert.load("mobilenet_v1_timm", tmp_path / "w.pth.txt" if (tmp_path / "w.pth.txt").write_text("x") else None)
