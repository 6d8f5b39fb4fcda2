"""The switches of the fast kernels, in one place: which implementation a model gets, whether
oneDNN may be used, and the chunk sizes the CPU kernels were tuned with (docs/performance.md).

``models.create`` calls :func:`choose_impl` once per model; the kernels read :func:`get` while
they are traced. Change settings with :func:`override` (a context manager, as tests do) or
:func:`update`; a function already jitted keeps the settings it was traced with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Iterator

import jax
import jax.numpy as jnp

# Concrete implementations a layer runs: XLA's own convolutions and dots (portable, the parity
# reference); GEMM formulations of the convolutions (any backend, fastest CPU path without oneDNN);
# oneDNN's convolutions and matmuls through XLA's CPU runtime, GEMMs where oneDNN does not apply.
IMPLS = ("reference", "gemm", "onednn")
# What a caller may ask ``models.create`` for: "fast" is resolved per backend by ``choose_impl``.
REQUESTS = ("fast",) + IMPLS
DISABLE_ONEDNN_ENV = "LIGHTNETS_NO_ONEDNN"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Tunables of the CPU kernels; the defaults are what the benchmarks chose on a 2-core Xeon."""

    # False keeps every oneDNN custom call out (also set by LIGHTNETS_NO_ONEDNN=1).
    onednn: bool = True
    # Input bytes per chunk of the depthwise kernel gradient: a chunk that stays in L2.
    depthwise_grad_chunk_bytes: int = 1 << 20
    # Samples per chunk of the GEMM convolutions: the MobileNet stems' im2col at inference, and
    # the unfold-and-shift-add formulations (training and inference).
    im2col_chunk: int = 8
    unfold_chunk: int = 2
    # Samples per convolution of the kernel gradients that take the samples as input channels.
    sample_channels_chunk: int = 4
    # Smallest GEMM contraction worth the unfold-and-shift-add formulation.
    min_contraction: int = 64
    # Output-gradient bytes per chunk of ``conv_kernel_grad`` (the conv's kernel stays in L2), and
    # the least conv batch (unfolded taps times C_in) that its unfolding aims for.
    kernel_grad_chunk_bytes: int = 7 << 17
    kernel_grad_min_batch: int = 16
    # Output depths per block of the depth-Toeplitz 3D conv (few input channels).
    depth_block: int = 8


def _from_environment() -> Settings:
    return Settings(onednn=os.environ.get(DISABLE_ONEDNN_ENV, "") in ("", "0"))


_settings = _from_environment()


def get() -> Settings:
    """The settings in force."""
    return _settings


def update(**changes) -> Settings:
    """Change settings for the rest of the process; returns the previous ones."""
    global _settings
    previous = _settings
    _settings = dataclasses.replace(_settings, **changes)
    return previous


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """Settings changed inside a ``with`` block only (for tests and experiments)."""
    previous = update(**changes)
    try:
        yield _settings
    finally:
        update(**dataclasses.asdict(previous))


def choose_impl(request: str, dtype: jnp.dtype | None = None) -> str:
    """The implementation a model built now gets for ``request``: "fast" is oneDNN on a CPU whose
    XLA runtime runs its custom calls for ``dtype``, the GEMM formulations on other CPUs, and
    XLA's own convolutions on GPU and TPU (cuDNN beat the CPU formulations there: docs/performance.md).
    A concrete implementation is returned as it is."""
    from lightnets_jax.ops import onednn

    if request not in REQUESTS:
        raise ValueError(f"unknown conv_impl {request!r}; choose one of {', '.join(map(repr, REQUESTS))}")
    if (dtype is not None and jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"
            and not onednn.NATIVE_BFLOAT16_CPU_FLAGS & onednn.cpu_flags()):
        warnings.warn("bfloat16 compute on a CPU without AMX or AVX512_BF16 is emulated and slower than float32 "
                      "(HybridSN trained 4x slower on a 2-core AVX2 EPYC): leave out --bf16 (dtype=jnp.bfloat16) "
                      "on this machine", stacklevel=3)
    if request != "fast":
        return request
    if jax.default_backend() != "cpu":
        return "reference"
    return "onednn" if onednn.available(dtype or jnp.float32) else "gemm"


def check_impl(impl: str) -> None:
    """Layers take a concrete implementation; "fast" is for ``models.create`` to resolve."""
    if impl not in IMPLS:
        hint = " ('fast' is resolved by lightnets_jax.models.create)" if impl == "fast" else ""
        raise ValueError(f"unknown conv impl {impl!r}{hint}; choose one of {', '.join(map(repr, IMPLS))}")
