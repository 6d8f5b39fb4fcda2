"""What a hostile new user tried (issue 22): each case refused with one clear line, or handled."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lightnets_jax import cli, models
from lightnets_jax.reports import metrics
from lightnets_jax.tasks import hyperspectral
from lightnets_jax.training import checkpoint, workdir_lock
from tests.support import write_tiny_scene

ROOT = Path(__file__).resolve().parents[1]


def _lightnets(*args: str) -> subprocess.Popen:
    env = {**os.environ, "LIGHTNETS_NO_MALLOC_TUNING": "1"}
    return subprocess.Popen([sys.executable, "-m", "lightnets_jax.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_run_into_a_busy_workdir_is_refused_naming_the_first(tmp_path):
    # The repro: the second run starts while the first is in its first epoch.
    cube, gt = write_tiny_scene(tmp_path)
    workdir = tmp_path / "W"
    common = ["train", "hybridsn", "--cube", str(cube), "--gt", str(gt), "--pca-components", "16", "--patch-size", "9",
              "--test-ratio", "0.5", "--batch-size", "8", "--epochs", "3", "--no-map", "--workdir", str(workdir)]
    first = _lightnets(*common)
    deadline = time.time() + 120
    while not (workdir / "config.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = _lightnets(*common, "--seed", "7")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert f"is in use by another run (process {first.pid})" in err and err.count("\n") == 1, err
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert json.loads((workdir / "config.json").read_text())["seed"] == 0
    assert json.loads((workdir / "report.json").read_text())["config"]["seed"] == 0
    assert [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_killed_runs_lock_never_blocks_a_resume(tmp_path):
    workdir = tmp_path / "W"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from lightnets_jax.training import workdir_lock
        with workdir_lock.owned({str(workdir)!r}):
            open({str(workdir / 'config.json')!r}, 'w').write('{{}}')
            print('held', flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirBusy, match=rf"process {holder.pid}\)"):
        with workdir_lock.owned(workdir):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (workdir / workdir_lock.LOCK_FILE).exists()  # stale file, but no lock on it
    with workdir_lock.run_in(workdir, resume=True):
        pass


def _damage(step_dir: Path) -> None:
    """Truncate the checkpoint's data files (TensorStore's chunks, in folders named d)."""
    data = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data, sorted(step_dir.rglob("*"))
    for path in data:
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _state(epoch: int) -> dict:
    return {"w": np.random.default_rng(epoch).standard_normal(5000).astype(np.float32) + epoch}


def test_restore_walks_back_past_damaged_checkpoints(tmp_path):
    target = {"w": np.zeros(5000, np.float32)}
    for epoch in (1, 2, 3):
        checkpoint.save(tmp_path, _state(epoch), epoch)
    _damage(tmp_path / "checkpoints" / "3")
    (tmp_path / "checkpoints" / "2" / "default" / "_METADATA").write_text("")
    said = []
    state, epoch = checkpoint.restore(tmp_path, target, log=said.append)
    assert epoch == 1
    np.testing.assert_array_equal(state["w"], _state(1)["w"])
    assert len(said) == 2 and "checkpoints/3: it does not restore" in said[0] and "checkpoints/2" in said[1]
    _damage(tmp_path / "checkpoints" / "1")
    with pytest.raises(checkpoint.CorruptCheckpoints, match=r"no checkpoint in .*checkpoints restores \(epochs 3, 2, 1"):
        checkpoint.restore(tmp_path, target, log=lambda *_: None)


def test_resume_sets_damaged_checkpoints_aside(tmp_path):
    for epoch in (1, 2):
        checkpoint.save(tmp_path, _state(epoch), epoch)
    _damage(tmp_path / "checkpoints" / "2")
    assert checkpoint.set_aside(tmp_path, 1) == [2]
    assert checkpoint.epochs(tmp_path) == [1] and (tmp_path / "damaged" / "checkpoints" / "2").is_dir()
    checkpoint.save(tmp_path, _state(2), 2)  # the resumed run saves epoch 2 again
    assert checkpoint.restore(tmp_path, {"w": np.zeros(5000, np.float32)})[1] == 2


def test_resume_with_other_settings_names_each_one_that_differs(tmp_path):
    import dataclasses

    config = hyperspectral.make_config(epochs=20)
    checkpoint.save(tmp_path, _state(1), 1)
    checkpoint.write_json(tmp_path / "config.json", dataclasses.asdict(config))
    lr = config.optimizer.learning_rate
    other = dataclasses.replace(config, epochs=30, optimizer=dataclasses.replace(config.optimizer, learning_rate=lr * 10))
    with pytest.raises(ValueError, match=rf"\(epochs 20 -> 30, optimizer.learning_rate {lr!r} -> {lr * 10!r}\); "
                                         "pass the run's own settings"):
        checkpoint.start_or_resume(tmp_path, other, _state(0), resume=True)
    assert checkpoint.start_or_resume(tmp_path, config, _state(0), resume=True, log=lambda *_: None)[1] == 1


@pytest.mark.parametrize("args, message", [
    (["train", "hybridsn", "--batch-size", "-5"], "argument --batch-size: must be an integer >= 1, got -5"),
    (["train", "mobilenet_v1", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["train", "hybridsn", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (["train", "hybridsn", "--test-ratio", "1.5"], "argument --test-ratio: must be a number > 0 and < 1, got 1.5"),
    (["train", "hybridsn", "--patch-size", "24"], "argument --patch-size: must be an odd integer >= 1, got 24"),
    (["train", "hybridsn", "--lr", "-1"], "argument --lr: must be a number > 0, got -1.0"),
    (["bench", "hybridsn", "--batch-size", "-4"], "argument --batch-size: must be an integer >= 1, got -4"),
    (["bench", "hybridsn", "--batch-size", "0", "--warmup", "1"], "argument --batch-size: must be an integer >= 1"),
    (["predict", "--workdir", "W", "--tile", "0"], "argument --tile: must be an integer >= 1, got 0"),
])
def test_impossible_numbers_are_refused_where_they_are_parsed(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_library_refuses_what_the_command_line_refuses():
    with pytest.raises(ValueError, match="width_multiplier must be a number > 0, got -1"):
        models.create("mobilenet_v1", width_multiplier=-1)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        models.create("hybridsn", num_classes=0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        hyperspectral.make_config(epochs=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -5"):
        hyperspectral.make_config(batch_size=-5)
    # A run's settings are refused with the model's limits, under the run's own name, before any data is read.
    with pytest.raises(ValueError, match="pca_components must be an integer >= 13, got 10"):
        hyperspectral.make_config(pca_components=10)
    with pytest.raises(ValueError, match="patch_size must be an odd integer >= 9, got 7"):
        hyperspectral.make_config(patch_size=7)


@pytest.mark.parametrize("args, message", [
    (["train", "mobilenet_v1", "--scene", "salinas"], "--scene: only for hyperspectral training, and mobilenet_v1 trains on cifar10"),
    (["train", "mobilenet_v2", "--seeds", "0-2", "--patch-size", "9"], "--seeds, --patch-size: only for hyperspectral training"),
    (["train", "hybridsn", "--weights", "w.safetensors", "--val-size", "10"],
     "--val-size, --weights: only for image training, and hybridsn trains on indian_pines here; drop them"),
])
def test_flags_the_other_kind_of_training_would_ignore_are_refused_by_name(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["summary", "mobilenet_v1", "--options", '{"width_multiplier": -1}'], "width_multiplier must be a number > 0"),
    (["summary", "mobilenet_v1", "--options", "[1,2]"], "--options must be a JSON object"),
    (["summary", "mobilenet_v2", "--options", '{"input_size": 8}'], "leaves a 1x1 map for its 4x4 average pool"),
    (["train", "hybridsn", "--resume", "--workdir", "{tmp}/missing"], "nothing to resume in"),
    (["train", "hybridsn", "--cube", "{tmp}", "--gt", "{tmp}/g.npy", "--workdir", "{tmp}/w/deeper"],
     "it is a folder; pass the file"),
])
def test_misleading_messages_now_say_what_is_wrong(args, message, tmp_path, capsys):
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "missing").exists() and not (tmp_path / "w").exists()  # nothing left behind


def test_an_unwritable_output_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert cli.main(["export", "hybridsn", "--out", str(tmp_path / "afile" / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and err.count("\n") == 1, err
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path}/gone/r.json: No such file"):
        checkpoint.write_json(tmp_path / "gone" / "r.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_custom_scene_is_named_after_its_file_with_numbered_classes(tmp_path):
    cube, gt = write_tiny_scene(tmp_path, name="c")
    config = hyperspectral.make_config(cube=str(cube), gt=str(gt))
    assert config.scene == "c"
    scene = hyperspectral.load_scene(config)
    assert scene.name == "c" and scene.class_names == ("class 1", "class 2", "class 3")
    named = hyperspectral.load_scene(hyperspectral.make_config(cube=str(cube), gt=str(gt), scene="field",
                                                              class_names=("corn", "soy", "wheat")))
    assert named.name == "field" and named.class_names == ("corn", "soy", "wheat")
    # 16 classes of one's own do not borrow Indian Pines' names.
    labels = np.load(gt)
    labels[labels > 0] = np.resize(np.arange(1, 17), int((labels > 0).sum()))
    np.save(tmp_path / "g16.npy", labels)
    sixteen = hyperspectral.load_scene(hyperspectral.make_config(cube=str(cube), gt=str(tmp_path / "g16.npy")))
    assert sixteen.class_names[0] == "class 1"


def test_a_class_absent_from_the_test_set_is_marked_absent_not_zero():
    confusion = np.array([[5, 1, 0], [0, 0, 0], [0, 2, 8]])
    scores = metrics.scores(confusion)
    assert scores["per_class_accuracy"][1] is None and scores["absent_classes"] == [1]
    assert scores["average_accuracy"] == pytest.approx(100 * (5 / 6 + 8 / 10) / 2)
