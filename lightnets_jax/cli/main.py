"""The ``lightnets`` command: train, evaluate, predict, classify, report, export, summary, bench."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

from lightnets_jax import models
from lightnets_jax.cli import cpu_memory
from lightnets_jax.cli.parser import build_parser


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


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "report": _report, "export": _export,
            "classify": _classify, "summary": _summary, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line, not a caller in this process: safe to restart the process
        cpu_memory.restart_with_tunables()
        cpu_memory.use_synchronous_dispatch_if_heap_kept()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, OSError, FloatingPointError) as err:  # OSError: files, permissions, disk
        print(f"lightnets: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lightnets: interrupted; the last finished epoch is checkpointed (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
