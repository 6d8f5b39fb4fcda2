#!/usr/bin/env python
"""What the note's CIFAR-10 script does: train a MobileNet for 10 epochs at batch 128, log every
100 minibatches, print the test accuracy. Usage:

    python scripts/train_cifar10.py [mobilenet_v1|mobilenet_v2] [--data-dir ../shared/data] [other lightnets train flags]
"""

import sys

from lightnets_jax.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    model = args.pop(0) if args and not args[0].startswith("-") else "mobilenet_v1"
    sys.exit(main(["train", model, "--dataset", "cifar10", "--epochs", "10", "--batch-size", "128", *args]))
