"""XLA's Eigen convolutions: the flag, the probe, and the inference path they switch on."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightnets_jax import cpu_convolutions

ROOT = Path(__file__).resolve().parents[1]
# jaxlib 0.10's default, spelled out.
YNN_CONVOLUTIONS = f"--{cpu_convolutions.FLAG_NAME}=individual_dot,individual_convolution,reduce"


def test_flag_is_added_unless_the_user_chose_or_jaxlib_is_unknown():
    add = cpu_convolutions.xla_flags_with_eigen_convolutions
    assert add({}, "0.10.2") == cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG
    assert add({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "0.10.2") == \
        f"--xla_force_host_platform_device_count=2 {cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG}"
    assert add({"XLA_FLAGS": YNN_CONVOLUTIONS}, "0.10.2") is None
    # The flag replaces the default list, which is only known for jaxlib 0.10.
    assert add({}, "0.11.0") is None


@pytest.mark.skipif(not importlib.metadata.version("jaxlib").startswith(cpu_convolutions.FLAG_KNOWN_FOR_JAXLIB),
                    reason="the flag is only set for jaxlib 0.10")
def test_prefer_eigen_convolutions_sets_this_process_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    assert cpu_convolutions.prefer_eigen_convolutions()
    assert os.environ["XLA_FLAGS"].endswith(cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG)
    assert not cpu_convolutions.prefer_eigen_convolutions()  # already there: nothing added twice
    assert os.environ["XLA_FLAGS"].count(cpu_convolutions.FLAG_NAME) == 1


def _run(code: str, xla_flags: str, *args: str) -> str:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=True).stdout.strip().splitlines()[-1]


# A dot, a reduction and a 2D convolution: how many of them YNNPACK runs.
YNN_COUNT = """
import jax, jax.numpy as jnp
from jax import lax
def f(a, w, x, k):
    y = lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return a @ w, jnp.sum(a * 2.0, axis=0), y
shapes = [(64, 64), (64, 64), (1, 8, 8, 32), (3, 3, 32, 32)]
args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
print(jax.jit(f).lower(*args).compile().as_text().count('"kind":"__ynn_fusion"'))
"""


@pytest.mark.slow
def test_the_flag_moves_only_convolutions_off_ynnpack():
    # Leaving a default type out of the list slows other models down (MobileNetV1 training 3x
    # without ``reduce``); the flag must take the convolutions off YNNPACK and nothing else.
    default = int(_run(YNN_COUNT, ""))
    assert int(_run(YNN_COUNT, YNN_CONVOLUTIONS)) == default
    assert int(_run(YNN_COUNT, cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG)) == default - 1


# HybridSN's fast inference path with random weights against the reference (XLA's 3D convolutions).
PROBE = """
import json, jax, numpy as np
from lightnets_jax import cpu_convolutions, models
result = {"eigen": cpu_convolutions.eigen_convolutions()}
x = np.random.default_rng(0).standard_normal((4, 25, 25, 30)).astype(np.float32)
for name in ("hybridsn", "hybridsn_bn"):
    fast, reference = models.create(name), models.create(name, conv_impl="reference")
    variables = fast.init(jax.random.key(0), x[:1])
    step = jax.jit(lambda v, x: fast.apply(v, x, train=False))
    text = step.lower(variables, x).compile().as_text()
    expected = np.asarray(reference.apply(variables, x, train=False))
    error = float(np.abs(np.asarray(step(variables, x)) - expected).max())
    result[name] = {"convolutions": text.count(" convolution("), "error": error,
                    "scale": max(1.0, float(np.abs(expected).max()))}
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.parametrize("flags, eigen", [(cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG, True),
                                          (YNN_CONVOLUTIONS, False)])
def test_inference_uses_xla_convolutions_only_when_eigen_runs_them(flags, eigen):
    result = json.loads(_run(PROBE, flags))
    assert result["eigen"] is eigen
    for name in ("hybridsn", "hybridsn_bn"):
        # conv2, conv3 (2D convs with the depth taps as outputs) and conv4; conv1 stays a GEMM.
        assert result[name]["convolutions"] == (3 if eigen else 0), result
        assert result[name]["error"] <= 1e-4 * result[name]["scale"], result


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (the parity extra)")
def test_eigen_inference_path_matches_torch():
    code = ("import sys, pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_parity.py', "
            "'-k', 'eval_logits and hybridsn and fast']))")
    assert "2 passed" in _run(code, cpu_convolutions.EIGEN_CONVOLUTIONS_FLAG)
