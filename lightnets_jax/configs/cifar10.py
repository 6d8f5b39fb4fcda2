"""A MobileNet on CIFAR-10, kuangliu's recipe with Nesterov momentum and label smoothing:

    lightnets train mobilenet_v1 --config cifar10 --data-dir ../shared/data

SGD 0.1, momentum 0.9, weight decay 5e-4, cosine, 10 epochs (the note's), 2,000 training images
held out to pick the best checkpoint; 85.87 % test accuracy for MobileNetV1, 87.39 % for MobileNetV2
(docs/results.md).
"""

from lightnets_jax.tasks.classification import ImageConfig
from lightnets_jax.training.engine import OptimizerConfig


def get_config() -> ImageConfig:
    return ImageConfig(model="mobilenet_v1", epochs=10, batch_size=128, val_size=2000, label_smoothing=0.1,
                       optimizer=OptimizerConfig("sgd", 0.1, "cosine", nesterov=True, weight_decay=5e-4))
