"""Fine-tune an ImageNet MobileNet on an image folder (one subfolder per class), from published
weights:

    lightnets train mobilenet_v2_imagenet --config finetune --data-dir FOLDER --weights mobilenetv2_100.safetensors

Adam 1e-3 with a cosine decay over 10 epochs, batch 32, 224x224 random resized crops; a fifth
of each class held out to pick the checkpoint unless FOLDER has train/ and val/.
"""

from lightnets_jax.tasks.classification import ImageConfig
from lightnets_jax.training.engine import OptimizerConfig


def get_config() -> ImageConfig:
    return ImageConfig(model="mobilenet_v2_imagenet", dataset="folder", data_dir="images", epochs=10, batch_size=32,
                       image_size=224, val_fraction=0.2, label_smoothing=0.1,
                       optimizer=OptimizerConfig("adam", 1e-3, "cosine"))
