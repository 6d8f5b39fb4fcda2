"""The ``lightnets`` command: train, evaluate, predict, classify, report, export, summary, bench."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from lightnets_jax import models, ops
from lightnets_jax.checks import argument
from lightnets_jax.cli import cpu_memory
from lightnets_jax.data import hyperspectral as hsi_data

POSITIVE_INT = argument(low=1)


def _train(args) -> int:
    from lightnets_jax import configs
    from lightnets_jax.tasks import classification, hyperspectral

    spec = models.spec(args.model)
    base = configs.load(args.config) if args.config else None
    dataset = args.dataset or spec.dataset
    if base is not None:
        dataset = base.dataset if isinstance(base, classification.ImageConfig) else "indian_pines"
        if args.dataset and args.dataset != dataset:
            raise ValueError(f"--config {args.config} is a {dataset} recipe, not --dataset {args.dataset}")
    _check_task_flags(args, "image" if dataset in ("cifar10", "folder") else "hyperspectral", dataset)
    if dataset in ("cifar10", "folder"):
        return _train_images(args, base or configs.load("cifar10" if dataset == "cifar10" else "finetune"))
    hyperspectral_models = models.available(models.HYPERSPECTRAL)
    if args.model not in hyperspectral_models:
        raise ValueError(f"--dataset {dataset} takes {' or '.join(hyperspectral_models)}, got {args.model!r}")
    base = base or configs.load(configs.recipe_config(args.recipe, args.model))
    config = configs.override(
        base, model=args.model, scene=hyperspectral.scene_name(args.name or args.scene, args.cube),
        class_names=_class_names(args.class_names), cube=args.cube, gt=args.gt, data_dir=args.data_dir,
        cube_key=args.cube_key, gt_key=args.gt_key, pca_components=args.pca_components, pca_fit=args.pca_fit,
        patch_size=args.patch_size, split=args.split, test_ratio=args.test_ratio, per_class=args.per_class,
        per_class_max_fraction=args.per_class_max_fraction, disjoint_block=args.block, split_seed=args.split_seed,
        seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, label_smoothing=args.label_smoothing,
        augment=args.augment, init_scheme=args.init, optimizer=_optimizer(base.optimizer, args), predict_map=False if args.no_map else None,
        bf16=args.bf16 or None,
    )
    if args.repeats or args.seeds:
        return _train_repeats(args, config)
    workdir = Path(args.workdir or f"runs/{args.model}_{config.scene}_seed{config.seed}")
    report = hyperspectral.train(config, workdir, resume=args.resume)
    print(f"results in {workdir}: report.json, classification_report.txt, classification_map.png")
    print("OA %.2f  AA %.2f  Kappa %.2f  (train %.0f s)" % (report["overall_accuracy"], report["average_accuracy"],
                                                          report["kappa"], report["train_wall_seconds"]))
    return 0


def _check_task_flags(args, task: str, dataset: str) -> None:
    """Refuse the flags that only the other kind of training reads, naming them."""
    other = "image" if task == "hyperspectral" else "hyperspectral"
    given = [flag for flag, dest, default in args.task_only[other] if getattr(args, dest) != default]
    if given:
        raise ValueError(f"{', '.join(given)}: only for {other} training, and {args.model} trains on {dataset} here; "
                         "drop " + ("it" if len(given) == 1 else "them"))


def _train_repeats(args, config) -> int:
    from lightnets_jax.tasks import repeats

    seeds = repeats.parse_seeds(args.seeds) if args.seeds else list(range(args.repeats))
    workdir = Path(args.workdir or f"runs/{args.model}_{config.scene}_{config.recipe}_seeds{seeds[0]}-{seeds[-1]}")
    summary = repeats.train(config, workdir, seeds, fixed_split=args.fixed_split, resume=args.resume)
    scores = summary["scores"]
    print(f"results in {workdir}: summary.md, summary.json, seed_*/")
    print("over %d seeds: OA %.2f ± %.2f  AA %.2f ± %.2f  Kappa %.2f ± %.2f" % (
        summary["runs"], *(v for key in ("overall_accuracy", "average_accuracy", "kappa")
                           for v in (scores[key]["mean"], scores[key]["std"]))))
    return 0


def _report(args) -> int:
    from lightnets_jax.reports import repeats as tables

    folders = [Path(f) for f in args.folders]
    summaries = [tables.load(folder) for folder in folders]
    names = [tables.column_name(summary, folder) for summary, folder in zip(summaries, folders)]
    text = tables.side_by_side(summaries, names, "csv" if args.csv else "markdown")
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        from lightnets_jax.reports import plots

        plots.save_repeats_summary(Path(args.plot), summaries, names)
    print(text, end="")
    return 0


def _class_names(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--class-names {path}: no such file (one class name a line)")
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def _optimizer(base, args):
    import dataclasses

    changes = {"name": args.optimizer, "learning_rate": args.lr, "schedule": args.schedule,
               "weight_decay": args.weight_decay, "nesterov": args.nesterov}
    return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def _train_images(args, base) -> int:
    from lightnets_jax import configs
    from lightnets_jax.tasks import classification
    from lightnets_jax.training.parallel import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if base.dataset == "folder" and not args.data_dir and not args.config:
        raise ValueError("--dataset folder needs --data-dir: a folder with one subfolder of images per class")
    config = configs.override(base, model=args.model, data_dir=args.data_dir, epochs=args.epochs,
                              batch_size=args.batch_size, seed=args.seed, label_smoothing=args.label_smoothing,
                              val_size=args.val_size, bf16=args.bf16 or None, optimizer=_optimizer(base.optimizer, args),
                              image_size=args.image_size, val_fraction=args.val_fraction, weights=args.weights,
                              freeze_backbone=args.freeze_backbone or None, workers=args.workers)
    workdir = Path(args.workdir or f"runs/{args.model}_{config.dataset}_seed{config.seed}")
    report = classification.train(config, workdir, resume=args.resume)
    print(f"results in {workdir}: report.json, metrics.jsonl, training_curves.png")
    print("test accuracy %.2f %% after %d epochs (%.0f s)" % (report["test_accuracy"], report["epochs"],
                                                             report["wall_seconds"]))
    return 0


def _evaluate(args) -> int:
    from lightnets_jax.tasks import hyperspectral, load_run
    from lightnets_jax.training import workdir_lock

    workdir = Path(args.workdir)
    task, config = load_run(workdir)
    with workdir_lock.owned(workdir):  # not while a run is writing there
        report = task.evaluate(workdir, config=config)
    if task is hyperspectral:
        print("OA %.2f  AA %.2f  Kappa %.2f" % (report["overall_accuracy"], report["average_accuracy"], report["kappa"]))
    return 0


def _predict(args) -> int:
    from lightnets_jax.tasks import predict

    predict.predict(args.workdir, cube=args.cube, gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key,
                    out=args.out, method=args.method, probabilities=args.probabilities, mask_nodata=args.mask_nodata,
                    overwrite=args.overwrite, tile=args.tile)
    return 0


def _export(args) -> int:
    from lightnets_jax import export
    from lightnets_jax.training import checkpoint

    model, variables, source, _ = _model_with_weights(args)
    fmt = args.format or ("onnx" if args.out.endswith(".onnx") else "stablehlo")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        blob = export.to_onnx(model, variables, batch=args.batch_size).SerializeToString()
        how = "run with onnxruntime.InferenceSession(path).run(['logits'], {'input': x})"
    else:
        blob = export.to_stablehlo(model, variables, batch=args.batch_size)
        how = "load with lightnets_jax.export.from_stablehlo or jax.export.deserialize"
    checkpoint.atomic_write(out, blob)
    batch = args.batch_size or "batch"
    print(f"{out}: {fmt} of {type(model).__name__} ({source}), input {(batch,) + models.example_shape(model)[1:]} "
          f"float32, {len(blob) / 2**20:.1f} MiB ({how})")
    return 0


def _classify(args) -> int:
    import json

    from lightnets_jax.data import images
    from lightnets_jax.tasks import classify

    model, variables, source, run = _model_with_weights(args)
    task, run_config = (run.task, run.config) if run else (None, None)
    if run_config is not None and not hasattr(run_config, "image_size"):
        raise ValueError(f"{run.workdir} is a hyperspectral run; classify takes image models (use lightnets predict)")
    name = run_config.model if run_config is not None else args.model
    preprocessing = classify.preprocessing_for(name, run_config)
    if args.class_names:
        names = list(_class_names(args.class_names))
    elif run:
        names = list(task.class_names(run.workdir, run_config))
    elif model.num_classes == 1000:
        names = images.imagenet_class_names()
    else:
        names = [f"class {k}" for k in range(model.num_classes)]
    results = classify.classify(args.images, model, variables, preprocessing, names, top=args.top)
    print(f"{name} ({source}); resize {preprocessing.resize}, centre crop {preprocessing.size}")
    for result in results:
        print(result["file"])
        for label, probability in result["top"]:
            print(f"  {100 * probability:6.2f} %  {label}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


class _Run(typing.NamedTuple):
    workdir: Path
    task: object  # the task module that trained it (lightnets_jax.tasks.*)
    config: object


def _model_with_weights(args):
    """(model, eval variables, where the weights came from, the training run or None) for MODEL
    [--weights FILE|WORKDIR] or --workdir."""
    import jax

    from lightnets_jax import convert
    from lightnets_jax.tasks import hyperspectral, load_run

    run = getattr(args, "workdir", None)  # export's --workdir
    weights_run = args.weights if args.weights and Path(args.weights).is_dir() else None
    if (args.model and run) or not (args.model or run or weights_run):
        raise ValueError("pass a MODEL (its initial weights, or --weights FILE) or --workdir W (a trained run's), "
                         "not both or neither")
    workdir = run or weights_run
    if workdir:
        run = _Run(Path(workdir), *load_run(Path(workdir)))
        if run.task is hyperspectral:
            num_classes = len(run.task.class_names(run.workdir, run.config))
            model, variables, epoch = run.task.trained_model(run.workdir, run.config, num_classes)
        else:
            model, variables, epoch = run.task.trained_model(run.workdir, run.config)
        if args.model and models.spec(args.model).build is not type(model):
            raise ValueError(f"{workdir} trained a {type(model).__name__}, not {args.model}")
        return model, variables, f"{workdir}, epoch {epoch}", run
    options = _json_options(args.options)
    model = models.create(args.model, **options)
    if args.weights:
        return model, convert.load(args.model, args.weights, **options), str(args.weights), None
    variables = models.init(model, jax.random.key(args.seed))
    return model, variables, f"initial weights, seed {args.seed}", None


def _json_options(text: str | None) -> dict:
    """``--options``: a JSON object of model options."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--options is not valid JSON ({err.msg} at character {err.pos}): {text}") from None
    if not isinstance(options, dict):
        raise ValueError(f'--options must be a JSON object such as \'{{"width_multiplier": 0.5}}\', got {text}')
    return options


def _summary(args) -> int:
    from lightnets_jax.reports.summary import summarize

    options = _json_options(args.options)
    shape = tuple(args.input_shape) if args.input_shape else None
    summary = summarize(args.model, shape, **options)
    print(summary.to_json() if args.json else summary.to_table())
    return 0


def _bench(args) -> int:
    from lightnets_jax.cli import bench

    results = []
    for name in args.models:
        models.create(name)  # unknown names fail before any compile
        result = bench.run(name, args.batch_size, args.steps, args.compare_torch, args.conv_impl,
                           bench.WARMUP_ROUNDS if args.warmup is None else args.warmup, bf16=args.bf16)
        results.append(result)
        print(json.dumps(result) if args.json else bench.format_row(result), flush=True)
    if not args.json:
        print(results[0]["machine"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lightnets_jax import configs

    parser = argparse.ArgumentParser(prog="lightnets", description=__doc__)
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
    # Flags one kind of training reads and the other would silently ignore: refused there (_check_task_flags).
    task_only = {"hyperspectral": [recipe, init, *repeat._group_actions, *hsi._group_actions],
                 "image": [val_size, *folder._group_actions, *multi._group_actions]}
    train.set_defaults(func=_train, task_only={task: [(a.option_strings[0], a.dest, a.default) for a in actions]
                                               for task, actions in task_only.items()})

    evaluate = sub.add_parser("evaluate", help="re-create the report from a workdir's latest checkpoint")
    evaluate.add_argument("--workdir", required=True)
    evaluate.set_defaults(func=_evaluate)

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
    predict.set_defaults(func=_predict)

    report = sub.add_parser("report", help="runs or repeat folders side by side as one table")
    report.add_argument("folders", nargs="+", metavar="WORKDIR")
    report.add_argument("--csv", action="store_true", help="CSV instead of Markdown")
    report.add_argument("--out", help="also write the table to this file")
    report.add_argument("--plot", metavar="PNG", help="also draw the folders side by side: each score and class, "
                        "mean with min to max")
    report.set_defaults(func=_report)

    export = sub.add_parser("export", help="a model as ONNX or serialized StableHLO (jax.export), batch size symbolic")
    export.add_argument("model", nargs="?", help="a registered model, with its initial weights, --weights, or --workdir")
    export.add_argument("--workdir", help="a training run: its latest checkpoint's weights")
    export.add_argument("--weights", help="with MODEL: a .safetensors/.pth file (the note's, torchvision's or timm's "
                        "layout) or a training workdir")
    export.add_argument("--format", choices=["onnx", "stablehlo"], help="default: onnx for an --out ending in .onnx, else stablehlo")
    export.add_argument("--out", required=True, help="file to write (e.g. hybridsn.onnx, hybridsn.stablehlo)")
    export.add_argument("--options", help="model options as JSON, with MODEL")
    export.add_argument("--seed", type=argument(low=0), default=0, help="initialization seed, with MODEL")
    export.add_argument("--batch-size", type=POSITIVE_INT, help="a fixed batch size (default: any)")
    export.set_defaults(func=_export)

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
    classify.set_defaults(func=_classify)

    summary = sub.add_parser("summary", help="layer table: output shapes, parameters, multiply-adds")
    summary.add_argument("model")
    summary.add_argument("--json", action="store_true", help="print totals as JSON")
    summary.add_argument("--input-shape", type=int, nargs="+", help="e.g. 1 224 224 3")
    summary.add_argument("--options", help='model options as JSON, e.g. \'{"width_multiplier": 0.5}\'')
    summary.set_defaults(func=_summary)

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
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a caller in this process: safe to restart the process
        cpu_memory.restart_with_tunables()
        cpu_memory.use_synchronous_dispatch_if_heap_kept()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:  # OSError: files, permissions, disk
        print(f"lightnets: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lightnets: interrupted; the last finished epoch is checkpointed (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
