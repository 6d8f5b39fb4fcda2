#!/usr/bin/env python
"""How fast XLA's f32 matrix products run on this machine, at the shapes HybridSN's convs need.

HybridSN's fast convolutions (``ops.gemm_conv``, the fallback without oneDNN) are GEMMs over unfolded patches, so the dot
rate bounds the whole model: HybridSN is 247.7 M multiply-adds per 25x25x30 patch
(``lightnets summary``), and an inference step at batch 128 cannot take less than
``2 * 128 * MACs / rate`` seconds. This prints GFLOP/s per shape (M x K x N: rows of one
chunk of samples, or of a batch of 128), JAX against PyTorch's ``matmul`` when torch is
installed, and that bound.

Usage: python scripts/bench_gemm.py [--repeats 5] [--scale 1.0]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from lightnets_jax.cli.bench import median_seconds
from lightnets_jax.ops import config
from lightnets_jax.reports import summary

# (label, M, K, N) of HybridSN's GEMMs as the fast path runs them: config.get().unfold_chunk samples at a time
# (unfold H,W or W; depth or row taps as extra outputs), and whole-batch references.
SHAPES = (
    ("square 2048", 2048, 2048, 2048),
    ("conv2 chunk", config.get().unfold_chunk * 24 * 21 * 21, 72, 80),
    ("conv3 chunk", config.get().unfold_chunk * 20 * 19 * 19, 144, 96),
    ("conv4 chunk", config.get().unfold_chunk * 19 * 17, 1728, 192),
    ("conv3 batch", 128 * 20 * 19 * 19, 144, 96),
    ("conv4 im2col", 128 * 17 * 17, 5184, 64),
)


def gemm_rates(shapes=SHAPES, repeats: int = 5, scale: float = 1.0, with_torch: bool = True) -> list[dict]:
    """GFLOP/s of one f32 product per shape (M scaled by ``scale``), JAX and optionally PyTorch."""
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    matmul = jax.jit(jnp.matmul)
    rows = []
    for label, m, k, n in shapes:
        m = max(1, int(m * scale))
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        flops = 2 * m * k * n
        row = {"shape": label, "m": m, "k": k, "n": n,
               "jax_gflops": flops / median_seconds(lambda: matmul(ja, jb).block_until_ready(), repeats) / 1e9}
        if torch is not None and with_torch:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            row["torch_gflops"] = flops / median_seconds(lambda: ta @ tb, repeats) / 1e9
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every M (rows) by this")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0:
        parser.error(f"--repeats must be >= 1 and --scale > 0, got {args.repeats} and {args.scale}")
    rows = gemm_rates(repeats=args.repeats, scale=args.scale)
    for row in rows:
        torch_part = f"  torch {row['torch_gflops']:7.1f}" if "torch_gflops" in row else ""
        print(f"{row['shape']:<13} {row['m']:>6} x {row['k']:>5} x {row['n']:>5}: jax {row['jax_gflops']:7.1f} GFLOP/s{torch_part}")
    best = max(row["jax_gflops"] for row in rows)
    macs_per_patch = summary.summarize("hybridsn").macs  # 247.7 M for a 25x25x30 patch
    bound = 2 * 128 * macs_per_patch / (best * 1e9)
    print(f"HybridSN inference at batch 128 needs >= {bound:.3f} s at JAX's best rate here ({best:.0f} GFLOP/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
