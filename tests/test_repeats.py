"""Repeated runs and their tables: summaries equal NumPy's statistics, killed repeats resume."""

import json
import shutil

import numpy as np
import pytest

from lightnets_jax import cli
from lightnets_jax.data import hyperspectral as hsi, splits
from lightnets_jax.reports import repeats as tables
from lightnets_jax.tasks import hyperspectral, repeats
from lightnets_jax.training.engine import OptimizerConfig
from tests.support import write_tiny_scene


def _report(seed, oa, aa, kappa, per_class):
    return {"overall_accuracy": oa, "average_accuracy": aa, "kappa": kappa, "per_class_accuracy": per_class,
            "train_wall_seconds": 10.0 + seed, "predict_seconds": 1.0, "class_names": ["a", "b", "c"],
            "split": {"method": f"stratified(test_ratio=0.9, seed={345 + seed})"}, "config": {"model": "hybridsn", "recipe": "default",
                                                          "scene": "toy", "epochs": 3, "seed": seed}}


def test_summary_is_numpys_mean_and_sample_std_with_absent_classes_left_out():
    reports = [_report(0, 98.1, 97.0, 97.9, [100.0, 90.0, None]), _report(1, 98.7, 96.5, 98.4, [95.0, 92.0, 80.0]),
               _report(2, 97.9, 97.7, 97.6, [97.5, 91.0, 70.0])]
    summary = tables.summarize(reports, [0, 1, 2])
    oa = np.array([98.1, 98.7, 97.9])
    assert summary["scores"]["overall_accuracy"]["mean"] == pytest.approx(np.mean(oa))
    assert summary["scores"]["overall_accuracy"]["std"] == pytest.approx(np.std(oa, ddof=1))
    assert (summary["scores"]["kappa"]["min"], summary["scores"]["kappa"]["max"]) == (97.6, 98.4)
    assert summary["per_class"]["c"]["mean"] == pytest.approx(75.0) and summary["per_class"]["c"]["runs"] == 2
    assert summary["per_class"]["b"]["std"] == pytest.approx(np.std([90.0, 92.0, 91.0], ddof=1))
    text = tables.to_markdown(summary)
    assert f"| OA | {np.mean(oa):.2f} ± {np.std(oa, ddof=1):.2f} | 97.90 | 98.70 |" in text


def test_report_puts_folders_side_by_side(tmp_path, capsys):
    (tmp_path / "many").mkdir()
    smoothed = [_report(0, 98.0, 97.0, 97.0, [1.0, 2.0, 3.0]), _report(1, 99.0, 98.0, 98.0, [3.0, 4.0, 5.0])]
    for report in smoothed:
        report["config"].update(label_smoothing=0.1, optimizer={"name": "adam", "learning_rate": 0.001})
    summary = tables.summarize(smoothed, [0, 1])
    (tmp_path / "many" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "one").mkdir()
    one = _report(4, 97.0, 96.0, 96.5, [1.0, None, 3.0])
    one["config"]["optimizer"] = {"name": "adam", "learning_rate": 0.002}
    (tmp_path / "one" / "report.json").write_text(json.dumps(one))
    assert cli.main(["report", str(tmp_path / "many"), str(tmp_path / "one")]) == 0
    table = capsys.readouterr().out
    assert "| OA | 98.50 ± 0.71 | 97.00 |" in table and "| b | 3.00 ± 1.41 | absent |" in table
    assert "| split | stratified(test_ratio=0.9) | stratified(test_ratio=0.9) |" in table  # the protocol, not the seeds
    assert "| label smoothing | 0.1 | 0.0 |" in table  # one recipe name, two recipes: the table tells them apart
    assert "| optimizer.learning_rate | 0.001 | 0.002 |" in table  # so does every other setting that differs
    assert "optimizer.name" not in table and "| seed |" not in table
    plot = tmp_path / "both.png"
    assert cli.main(["report", str(tmp_path / "many"), str(tmp_path / "one"), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "one"), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == ["split,stratified(test_ratio=0.9)", "epochs,3",
                                                          "label smoothing,0.0", "OA,97.00"]
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    (tmp_path / "cifar").mkdir()  # an image run's report has classes too, but one test accuracy
    (tmp_path / "cifar" / "report.json").write_text(json.dumps({"test_accuracy": 85.0, "class_names": ["cat"], "config": {}}))
    assert cli.main(["report", str(tmp_path / "cifar")]) == 2
    assert "cifar is not a hyperspectral run (its report has no overall accuracy)" in capsys.readouterr().err


def test_seeds_are_parsed_and_move_the_split_unless_fixed():
    assert repeats.parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="such as 0-9 or 0,3,7, got 'a-b'"):
        repeats.parse_seeds("a-b")
    with pytest.raises(ValueError, match="range 3-1 runs downwards; write 1-3"):
        repeats.parse_seeds("0,3-1")
    config = hyperspectral.make_config()
    assert repeats.seed_config(config, 3, False).split_seed == config.split_seed + 3
    assert repeats.seed_config(config, 3, True).split_seed == config.split_seed
    assert repeats.seed_config(config, 0, False) == config


def test_a_per_class_split_asking_more_than_a_class_has_is_refused():
    labels = np.zeros((6, 6), np.int32)
    labels[:2] = 1
    labels[2:3, :4] = 2
    with pytest.raises(hsi.DataError, match="class 2 has 4 pixels, not more than --per-class 5; lower it"):
        splits.per_class_split(labels, 5)


def test_only_a_report_of_all_the_epochs_counts_a_seed_finished(tmp_path):
    import dataclasses

    config = hyperspectral.make_config(epochs=20, seed=3)
    write = lambda report: (tmp_path / "report.json").write_text(json.dumps(report))
    stored = json.loads(json.dumps(dataclasses.asdict(config)))
    assert repeats.finished_report(tmp_path, config) is None  # no report yet
    write({"config": stored, "checkpoint_epoch": 12})  # `lightnets evaluate` on a run killed at epoch 12
    assert repeats.finished_report(tmp_path, config) is None
    write({"config": {**stored, "epochs": 30}, "checkpoint_epoch": 30})  # another recipe's run
    assert repeats.finished_report(tmp_path, config) is None
    write({"config": stored, "checkpoint_epoch": 20})
    assert repeats.finished_report(tmp_path, config)["checkpoint_epoch"] == 20
    write({"config": stored})  # a report from before checkpoint_epoch was recorded
    assert repeats.finished_report(tmp_path, config) is not None


@pytest.mark.slow
def test_a_killed_repeat_run_resumes_skipping_finished_seeds_and_seeds_repeat_exactly(tmp_path):
    write_tiny_scene(tmp_path)
    config = hyperspectral.make_config(cube=str(tmp_path / "cube.npy"), gt=str(tmp_path / "gt.npy"), pca_components=16,
                                       patch_size=9, test_ratio=0.5, epochs=1, batch_size=8, predict_map=False,
                                       optimizer=OptimizerConfig("adam", 1e-3, "constant"))
    said = []
    repeats.train(config, tmp_path / "W", [0, 1], log=said.append)
    first = json.loads((tmp_path / "W" / "seed_1" / "report.json").read_text())
    # As if killed during seed 1: its report and checkpoints gone, seed 0 finished.
    (tmp_path / "W" / "seed_1" / "report.json").unlink()
    shutil.rmtree(tmp_path / "W" / "seed_1" / "checkpoints")
    with pytest.raises(FileExistsError, match="pass --resume"):
        repeats.train(config, tmp_path / "W", [0, 1])
    said.clear()
    summary = repeats.train(config, tmp_path / "W", [0, 1], resume=True, log=said.append)
    assert "seed 0: finished, skipped" in said and "seed 1: training in" in " ".join(said)
    again = json.loads((tmp_path / "W" / "seed_1" / "report.json").read_text())
    for key in ("overall_accuracy", "average_accuracy", "kappa", "per_class_accuracy", "confusion_matrix", "split"):
        assert again[key] == first[key], key  # one seed, the same run
    assert summary["runs"] == 2 and (tmp_path / "W" / "summary.md").read_text().startswith("# hybridsn on cube")
    assert (tmp_path / "W" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert first["config"]["split_seed"] == 346  # the seed moved the split (seed 0 keeps the note's 345)


@pytest.mark.slow
def test_seeds_run_side_by_side_one_process_per_device_as_they_would_one_after_another(tmp_path, monkeypatch):
    write_tiny_scene(tmp_path)
    config = hyperspectral.make_config(cube=str(tmp_path / "cube.npy"), gt=str(tmp_path / "gt.npy"), pca_components=16,
                                       patch_size=9, test_ratio=0.5, epochs=1, batch_size=8, predict_map=False,
                                       optimizer=OptimizerConfig("adam", 1e-3, "constant"))
    repeats.train(config, tmp_path / "here", [0, 1], log=lambda *_: None)
    monkeypatch.setattr(repeats, "device_slots", lambda: [{"LIGHTNETS_TEST_SLOT": "a"}, {"LIGHTNETS_TEST_SLOT": "b"}])
    said = []
    summary = repeats.train(config, tmp_path / "apart", [0, 1], log=said.append)
    assert sum("(log: " in line for line in said) == 2 and summary["runs"] == 2
    for seed in (0, 1):
        here = json.loads((tmp_path / "here" / f"seed_{seed}" / "report.json").read_text())
        apart = json.loads((tmp_path / "apart" / f"seed_{seed}" / "report.json").read_text())
        assert apart["confusion_matrix"] == here["confusion_matrix"] and apart["config"] == here["config"]
        assert (tmp_path / "apart" / f"seed_{seed}" / "train.log").read_text()
