"""Which library runs XLA's CPU convolutions, and when the layers should use them at all.

jaxlib 0.10 hands f32 dots, 2D convolutions and reductions to YNNPACK (XLA flag
``--xla_cpu_experimental_ynn_fusion_type``, default ``individual_dot,individual_convolution,reduce``).
YNNPACK's convolutions are slow at HybridSN's shapes (conv4 at batch 128: 560 ms, against 136 ms
for the GEMM formulation in ``layers.conv_gemm``), which is why the fast path builds convolutions
out of matrix products. With YNNPACK kept to dots and reductions, XLA runs the 2D
convolutions itself through Eigen's spatial convolution, and at inference that beats the GEMM
formulations: HybridSN's conv2 / conv3 (as 2D convolutions with the depth taps as outputs) and
conv4 at batch 128 forward 132 -> 92, 168 -> 117 and 136 -> 118 ms, the eval step 0.53 -> 0.41 s.
In training it gains nothing (docs/performance.md, seventh round), so the layers use it at
inference only, and only when ``eigen_convolutions()`` finds XLA compiling convolutions itself.

The flag is read when JAX creates its CPU client (the first computation), so the ``lightnets``
command sets it at start-up, unless the user chose a value; code that imports the library sets
``XLA_FLAGS`` itself (see the README). The flag replaces the whole default list, so its value is
that default less ``individual_convolution``, known for jaxlib 0.10 only: leaving out ``reduce``
made MobileNetV1's training step 3x slower (0.33 -> 1.12 s). Other jaxlib versions get no flag.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default less individual_convolution: YNNPACK keeps dots and reductions (faster
# than XLA's own here); convolutions go to XLA's Eigen code.
EIGEN_CONVOLUTIONS_FLAG = f"--{FLAG_NAME}=individual_dot,reduce"
FLAG_KNOWN_FOR_JAXLIB = "0.10."


def xla_flags_with_eigen_convolutions(environ: dict[str, str], jaxlib_version: str) -> str | None:
    """``XLA_FLAGS`` with Eigen convolutions added; None when the user already chose, or for a
    jaxlib whose default list is not known."""
    flags = environ.get("XLA_FLAGS", "")
    if FLAG_NAME in flags or not jaxlib_version.startswith(FLAG_KNOWN_FOR_JAXLIB):
        return None
    return f"{flags} {EIGEN_CONVOLUTIONS_FLAG}".strip()


def prefer_eigen_convolutions() -> bool:
    """Add the flag to this process's ``XLA_FLAGS``; returns whether it did.

    Only takes effect before JAX creates its CPU client (its first computation).
    """
    flags = xla_flags_with_eigen_convolutions(dict(os.environ), importlib.metadata.version("jaxlib"))
    if flags is None:
        return False
    os.environ["XLA_FLAGS"] = flags
    return True


@functools.cache
def eigen_convolutions() -> bool:
    """Whether XLA compiles a 2D f32 convolution on the default backend itself, not through YNNPACK.

    Asks the compiler rather than parsing flags: whatever set them, this is what the steps get.
    False off CPU (other backends keep the GEMM formulations, whose speed there is what was measured).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    if jax.default_backend() != "cpu":
        return False
    image = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    conv = jax.jit(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")))
    text = conv.lower(image, kernel).compile().as_text()
    return "convolution(" in text and "ynn" not in text


def describe() -> str:
    """Which library runs XLA's convolutions here, for benchmark records."""
    return "Eigen convs" if eigen_convolutions() else "XLA's default convs"
