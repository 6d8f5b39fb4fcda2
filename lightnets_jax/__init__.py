"""lightnets_jax: MobileNetV1/V2 and HybridSN in JAX/Flax, with PyTorch parity."""

__version__ = "0.1.0"
