"""The kernels the layers in ``models/layers.py`` call, one idea per module, each beside the plain
XLA version it must equal (``reference``):

* ``conv``: 2D/3D convolution + bias + activation, per implementation; ``conv_kernel_grad``: its
  kernel gradients as oneDNN convolutions; ``gemm_conv``: convolutions as GEMMs;
* ``epilogue``: the bias and activation after a conv (fused into oneDNN's kernels), its backward;
* ``depthwise``: depthwise convolution; ``pointwise``: 1x1 convs and dense layers as matmuls;
* ``batch_norm``: PyTorch's BatchNorm, BatchNorm + ReLU fused for training, eval BatchNorm folded
  into the conv before it;
* ``onednn``: the binding to oneDNN through XLA's CPU runtime; ``chunks``: batch-chunked loops;
* ``config``: the implementation a model gets and the kernels' tunables, in one place.
"""

from lightnets_jax.ops.batch_norm import batch_norm_relu, batch_norm_train
from lightnets_jax.ops.config import IMPLS, REQUESTS, choose_impl
from lightnets_jax.ops.conv import conv
from lightnets_jax.ops.depthwise import depthwise_conv
from lightnets_jax.ops.pointwise import dense

__all__ = ["IMPLS", "REQUESTS", "batch_norm_relu", "batch_norm_train", "choose_impl", "conv", "dense", "depthwise_conv"]
