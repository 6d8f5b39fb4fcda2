"""The ``lightnets`` command line: every subcommand's arguments, their checks and their help."""

from __future__ import annotations

import argparse

from lightnets_jax import models, ops
from lightnets_jax.checks import argument
from lightnets_jax.data import hyperspectral as hsi_data

POSITIVE_INT = argument(low=1)


def build_parser() -> argparse.ArgumentParser:
    from lightnets_jax import configs

    parser = argparse.ArgumentParser(
        prog="lightnets", description="MobileNetV1, MobileNetV2 and HybridSN in JAX: train, evaluate, predict, "
        "classify, report, export, summary, bench.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and write its report")
    train.add_argument("model", help=f"one of: {', '.join(models.available())}")
    train.add_argument("--config", help=f"a recipe from lightnets_jax/configs ({', '.join(configs.available())}) "
                       "or a .py file with get_config(); the flags below override it")
    recipe = train.add_argument("--recipe", default="default", choices=list(configs.RECIPES),
                       help="HybridSN: 'note' = --config hybridsn_note (the study note's recipe exactly); "
                       "'default' = the model's own config, hybridsn or hybridsn_bn (ours, see README)")
    train.add_argument("--workdir", help="where checkpoints and reports go (default runs/MODEL_SCENE_seedN)")
    train.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    train.add_argument("--dataset", choices=["cifar10", "indian_pines", "folder"],
                       help="default: indian_pines for HybridSN, cifar10 for the MobileNets; folder: --data-dir "
                       "holds one subfolder of images per class (or train/ and val/ folders of them)")
    train.add_argument("--epochs", type=POSITIVE_INT)
    train.add_argument("--batch-size", type=POSITIVE_INT)
    train.add_argument("--lr", type=argument(float, low=0, low_open=True))
    train.add_argument("--schedule", choices=["constant", "cosine", "step", "onecycle"])
    train.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    train.add_argument("--weight-decay", type=argument(float, low=0))
    train.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="SGD with Nesterov momentum")
    train.add_argument("--label-smoothing", type=argument(float, low=0, high=1, high_open=True))
    val_size = train.add_argument("--val-size", type=POSITIVE_INT, help="CIFAR-10: training images held out to pick the best checkpoint")
    train.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 parameters")
    init = train.add_argument("--init", choices=["torch", "glorot"], help="HybridSN: weight initialization")
    train.add_argument("--seed", type=argument(low=0), help="initialization, dropout and shuffling seed")
    train.add_argument("--data-dir", help="CIFAR-10: folder with cifar-10-batches-py/ (or $LIGHTNETS_CIFAR10_DIR; "
                       "default ./data, the note's torchvision root); "
                       "hyperspectral: folder with the scene's usual .mat files; folder: the image folder")
    folder = train.add_argument_group("fine-tuning on an image folder (--dataset folder, --config finetune)")
    folder.add_argument("--weights", help="starting weights: a .safetensors/.pth file (the note's, torchvision's or "
                        "timm's layout; the head is replaced when the class count differs) or a training workdir")
    folder.add_argument("--freeze-backbone", action="store_true", help="train the classifier only (BatchNorm frozen too)")
    folder.add_argument("--image-size", type=POSITIVE_INT, help="crop side the model sees (default 224)")
    folder.add_argument("--val-fraction", type=argument(float, low=0, high=1, low_open=True, high_open=True),
                        help="share of each class held out when there is no val/ folder (default 0.2)")
    folder.add_argument("--workers", type=POSITIVE_INT, help="threads decoding images (default 4)")
    repeat = train.add_argument_group("repeated runs (HybridSN): W/seed_K/ each, then W/summary.md")
    repeat.add_argument("--repeats", type=POSITIVE_INT, help="seeds 0 to N-1")
    repeat.add_argument("--seeds", help="seeds as ranges and lists, e.g. 0-9 or 0,3,7")
    repeat.add_argument("--fixed-split", action="store_true", help="one split for every seed (default: the seed moves it)")
    multi = train.add_argument_group("multi-host (jax.distributed)")
    multi.add_argument("--coordinator", help="host:port of process 0")
    multi.add_argument("--num-processes", type=POSITIVE_INT)
    multi.add_argument("--process-id", type=argument(low=0))
    hsi = train.add_argument_group("hyperspectral data")
    hsi.add_argument("--scene", choices=["indian_pines", "salinas", "paviau"],
                     help="a known scene (default indian_pines, bundled; the others need --data-dir)")
    hsi.add_argument("--name", help="a scene of one's own (--cube/--gt): its name (default: the cube file's)")
    hsi.add_argument("--class-names", help="a scene of one's own: a text file, one class name a line (default: numbered)")
    hsi.add_argument("--cube", help=".mat or .npy image cube (H, W, bands)")
    hsi.add_argument("--gt", help=".mat or .npy ground truth (H, W), 0 = unlabelled")
    hsi.add_argument("--cube-key")
    hsi.add_argument("--gt-key")
    hsi.add_argument("--pca-components", type=POSITIVE_INT)
    hsi.add_argument("--pca-fit", choices=["scene", "train"])
    hsi.add_argument("--patch-size", type=argument(low=1, odd=True))
    hsi.add_argument("--split", choices=["stratified", "disjoint", "per-class"])
    hsi.add_argument("--test-ratio", type=argument(float, low=0, high=1, low_open=True, high_open=True))
    hsi.add_argument("--per-class", type=POSITIVE_INT, help="--split per-class: training pixels per class")
    hsi.add_argument("--per-class-max-fraction", type=argument(float, low=0, high=1, low_open=True),
                     help="--split per-class: take at most this share of a small class (papers use 0.5)")
    hsi.add_argument("--block", type=POSITIVE_INT, help="--split disjoint: block side in pixels (default: the patch size)")
    hsi.add_argument("--split-seed", type=argument(low=0))
    hsi.add_argument("--augment", choices=hsi_data.AUGMENTATIONS,
                     help="flips: each training patch flipped or transposed at random, a new draw each epoch")
    hsi.add_argument("--no-map", action="store_true",
                     help="write no full-scene map (the test pixels are predicted the cheaper way, dense or by patch)")
    # Flags one kind of training reads and the other would silently ignore: refused (main._check_task_flags).
    task_only = {"hyperspectral": [recipe, init, *repeat._group_actions, *hsi._group_actions],
                 "image": [val_size, *folder._group_actions, *multi._group_actions]}
    train.set_defaults(task_only={task: [(a.option_strings[0], a.dest, a.default) for a in actions]
                                  for task, actions in task_only.items()})

    evaluate = sub.add_parser("evaluate", help="re-create the report from a workdir's checkpoint (the latest; an image "
                              "run's best by validation)")
    evaluate.add_argument("--workdir", required=True)

    predict = sub.add_parser("predict", help="map a whole scene with a trained HybridSN run")
    predict.add_argument("--workdir", required=True, help="a finished (or checkpointed) `lightnets train hybridsn` run")
    predict.add_argument("--cube", help="another scene's .mat/.npy cube (H, W, bands) with the run's bands; "
                         "default: the run's own scene")
    predict.add_argument("--gt", help="its ground truth (H, W), drawn beside the map")
    predict.add_argument("--cube-key")
    predict.add_argument("--gt-key")
    predict.add_argument("--out", help="output folder (default WORKDIR/predict/SCENE)")
    predict.add_argument("--method", choices=["dense", "patch"], default="dense",
                         help="dense: fully convolutional over tiles (default); patch: every pixel's patch (slow, for checking)")
    predict.add_argument("--tile", type=POSITIVE_INT, help="output pixels per tile side (default: from a 256 MB budget)")
    predict.add_argument("--probabilities", action="store_true", help="also write probabilities.npy, float16 (H, W, K)")
    predict.add_argument("--mask-nodata", action="store_true",
                         help="leave pixels whose spectrum is all zero or not finite unclassified (0) instead of failing")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    report = sub.add_parser("report", help="runs or repeat folders side by side as one table")
    report.add_argument("folders", nargs="+", metavar="WORKDIR")
    report.add_argument("--csv", action="store_true", help="CSV instead of Markdown")
    report.add_argument("--out", help="also write the table to this file")
    report.add_argument("--plot", metavar="PNG", help="also draw the folders side by side: each score and class, "
                        "mean with min to max")

    export = sub.add_parser("export", help="a model as ONNX or serialized StableHLO (jax.export), batch size symbolic")
    export.add_argument("model", nargs="?", help="a registered model, with its initial weights, --weights, or --workdir")
    export.add_argument("--workdir", help="a training run: its latest checkpoint's weights (an image run's best by "
                        "validation)")
    export.add_argument("--weights", help="with MODEL: a .safetensors/.pth file (the note's, torchvision's or timm's "
                        "layout) or a training workdir")
    export.add_argument("--format", choices=["onnx", "stablehlo"], help="default: onnx for an --out ending in .onnx, else stablehlo")
    export.add_argument("--out", required=True, help="file to write (e.g. hybridsn.onnx, hybridsn.stablehlo)")
    export.add_argument("--options", help="model options as JSON, with MODEL")
    export.add_argument("--seed", type=argument(low=0), default=0, help="initialization seed, with MODEL")
    export.add_argument("--batch-size", type=POSITIVE_INT, help="a fixed batch size (default: any)")

    classify = sub.add_parser("classify", help="top-5 classes of image files (ImageNet weights or a trained run)")
    classify.add_argument("images", nargs="+", help="JPEG/PNG files")
    classify.add_argument("--model", help=f"an image model ({', '.join(models.available(models.IMAGE))}); "
                          "not needed with --weights WORKDIR")
    classify.add_argument("--weights", help="a .safetensors/.pth file (torchvision's, timm's or the note's layout) "
                          "or a training workdir; without it, initial weights")
    classify.add_argument("--options", help="model options as JSON, e.g. '{\"width_multiplier\": 0.5}'")
    classify.add_argument("--seed", type=argument(low=0), default=0, help="initialization seed, without --weights")
    classify.add_argument("--class-names", help="a text file, one class name a line (default: ImageNet's for "
                          "1000 classes, a run's own)")
    classify.add_argument("--top", type=POSITIVE_INT, default=5)
    classify.add_argument("--json", help="also write the results to this file")

    summary = sub.add_parser("summary", help="layer table: output shapes, parameters, multiply-adds")
    summary.add_argument("model")
    summary.add_argument("--json", action="store_true", help="print totals as JSON")
    summary.add_argument("--input-shape", type=int, nargs="+", help="e.g. 1 224 224 3")
    summary.add_argument("--options", help='model options as JSON, e.g. \'{"width_multiplier": 0.5}\'')

    bench = sub.add_parser("bench", help="train-step and eval images/s (optionally against PyTorch)")
    bench.add_argument("models", nargs="+", metavar="MODEL")
    bench.add_argument("--batch-size", type=POSITIVE_INT, default=128)
    bench.add_argument("--steps", type=POSITIVE_INT, default=5, help="timed steps per phase (median reported)")
    bench.add_argument("--warmup", type=POSITIVE_INT, default=None,
                       help="untimed train+eval rounds first (default 3; the first compiles; reported apart)")
    bench.add_argument("--compare-torch", action="store_true", help="time the note's PyTorch code, interleaved")
    bench.add_argument("--conv-impl", choices=list(ops.REQUESTS), default="fast",
                       help="'fast': the backend's fastest kernels (default); 'reference': XLA's own")
    bench.add_argument("--bf16", action="store_true",
                       help="bfloat16 compute, float32 parameters (PyTorch under torch.autocast)")
    bench.add_argument("--json", action="store_true")
    return parser
