"""Models out of JAX: StableHLO (``jax.export``, no new dependency) and ONNX (needs ``onnx``).

Both export the eval-mode model with its weights inside, a symbolic batch size unless one is
fixed, and the portable kernels (XLA's own convolutions), never the CPU runtime's oneDNN calls.
"""

from lightnets_jax.export.onnx_graph import to_onnx
from lightnets_jax.export.stablehlo import from_stablehlo, to_stablehlo

FORMATS = ("stablehlo", "onnx")

__all__ = ["FORMATS", "from_stablehlo", "to_onnx", "to_stablehlo"]
