"""Benchmark tools run end to end: the data/memory script on a tiny scene, the GEMM rates, `lightnets bench`."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str = "bench_hyperspectral_data"):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_scene_phase_reports_peak_memory_and_predicted_pixels(tmp_path, capsys):
    out = tmp_path / "records.json"
    assert _load_script().main(["--phases", "scene", "--side", "40", "--bands", "32", "--max-batches", "1",
                                "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["phase"] == "scene" and record["pixels"] == 1600 and record["predicted_pixels"] == 256
    assert 100 < record["peak_rss_mb"] < 4000
    assert record["peak_rss_after_prepare_mb"] <= record["peak_rss_mb"]
    assert "peak RSS" in capsys.readouterr().out


@pytest.mark.slow
def test_scene_maps_from_npy_and_envi_report_anonymous_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _load_script("bench_scene_map").main(["--parts", "scenes", "--sides", "50", "--formats", "npy", "envi"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][1:]
    assert [r["format"] for r in records] == ["npy", "envi"]
    for record in records:
        assert record["side"] == 50 and record["pixels_per_s"] > 0
        assert 100 < record["peak_anonymous_mb"] <= record["peak_rss_mb"] < 4000
    assert not list(tmp_path.iterdir())  # the cubes and the small run are gone


def test_bad_arguments_are_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit):
        _load_script().main(["--phases", "scene,typo"])
    assert "unknown phase(s) typo" in capsys.readouterr().err


@pytest.mark.slow
def test_lightnets_bench_times_both_frameworks_and_the_input_pipeline():
    pytest.importorskip("torch")
    from lightnets_jax import models
    from lightnets_jax.cli import bench

    result = bench.run("mobilenet_v1", batch_size=4, steps=2, compare_torch=True)
    for key in ("jax_train_images_per_s", "jax_eval_images_per_s", "torch_train_images_per_s",
                "torch_eval_images_per_s", "pipeline_images_per_s"):
        assert result[key] > 0, key
    assert result["train_ratio_jax_over_torch"] == pytest.approx(
        result["jax_train_images_per_s"] / result["torch_train_images_per_s"])
    assert "input pipeline" in bench.format_row(result) and "ratio train" in bench.format_row(result)
    assert result["warmup_rounds"] == bench.WARMUP_ROUNDS
    # The ratio travels with what produced it: sizes, the kernels the model got, dtype and machine.
    assert (result["batch_size"], result["steps"], result["conv_impl"], result["compute_dtype"]) == (
        4, 2, "fast", "float32")
    assert result["kernels"] == models.create("mobilenet_v1").conv_impl
    assert "torch" in result["machine"] and "CPUs" in result["machine"]
    for key in ("jax_train_step_s", "torch_eval_step_s"):
        assert len(result[key]["samples_s"]) == 2
        assert result[key]["median_s"] == pytest.approx(sorted(result[key]["samples_s"])[0] / 2
                                                        + sorted(result[key]["samples_s"])[1] / 2)


@pytest.mark.slow
def test_bench_bf16_computes_in_bfloat16_in_both_frameworks(monkeypatch):
    torch = pytest.importorskip("torch")
    from lightnets_jax.cli import bench

    autocast_dtypes = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: autocast_dtypes.append(k["dtype"]) or real_autocast(*a, **k))
    result = bench.run("hybridsn", batch_size=2, steps=1, compare_torch=True, warmup=1, bf16=True)
    assert result["compute_dtype"] == "bfloat16" and "hybridsn bf16" in bench.format_row(result)
    assert set(autocast_dtypes) == {torch.bfloat16} and len(autocast_dtypes) == 4  # warm-up and timed, train and eval
    assert bench.run("hybridsn", batch_size=2, steps=1, warmup=1)["compute_dtype"] == "float32"


def test_bench_refuses_no_warmup():
    from lightnets_jax.cli import bench

    with pytest.raises(ValueError, match="--warmup >= 1"):
        bench.run("mobilenet_v1", batch_size=2, steps=1, warmup=0)


def test_gemm_script_measures_every_shape_and_prints_the_hybridsn_bound(capsys):
    module = _load_script("bench_gemm")
    rows = module.gemm_rates(shapes=(("tiny", 64, 32, 16), ("wide", 8, 64, 128)), repeats=1, with_torch=False)
    assert [(r["shape"], r["m"], r["k"], r["n"]) for r in rows] == [("tiny", 64, 32, 16), ("wide", 8, 64, 128)]
    assert all(r["jax_gflops"] > 0 and "torch_gflops" not in r for r in rows)
    assert module.main(["--repeats", "1", "--scale", "0.0005"]) == 0
    out = capsys.readouterr().out
    assert out.count("GFLOP/s") == len(module.SHAPES) + 1 and "HybridSN inference at batch 128 needs >=" in out
    with pytest.raises(SystemExit):
        module.main(["--repeats", "0"])


@pytest.mark.slow
def test_onnx_bench_times_our_export_against_pytorchs(capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    assert _load_script("bench_onnx").main(["--models", "mobilenet_v1:2", "--rounds", "1", "--steps", "1"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "mobilenet_v1" and record["batch_size"] == 2
    assert record["ours_onnx_images_per_s"] > 0 and record["torch_onnx_images_per_s"] > 0 and record["jax_images_per_s"] > 0
    with pytest.raises(SystemExit):
        _load_script("bench_onnx").main(["--models", "mobilenet_v9:2"])
    assert "NAME:BATCH" in capsys.readouterr().err
