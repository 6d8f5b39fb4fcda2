#!/usr/bin/env python
"""What the note's HybridSN script does: Indian Pines, PCA 30, 25x25 patches, 10% stratified
training split (random_state 345), Adam 1e-3, batch 128, 100 epochs, the per-epoch loss line and
a 4-digit classification report. Usage:

    python scripts/train_hybridsn.py [hybridsn|hybridsn_bn] [other lightnets train flags]
"""

import sys

from lightnets_jax.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    model = args.pop(0) if args and not args[0].startswith("-") else "hybridsn"
    sys.exit(main(["train", model, "--recipe", "note", *args]))
