"""The benchmark runs (tiny size only: the benchmark itself never runs in the test suite), writes a
result the notebook can read, and computes its tables and targets from the numbers; the accuracy
check runs end to end at the smoke budget; the GPU script runs a CPU dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densenet_repro import DenseNet, bench, fastpath
from densenet_repro.config import RunConfig
from densenet_repro.models import fast_dense

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--size", "tiny", "--out", str(out), "--name", "t"]) == 0
    return bench.load_result(out / "t.json")


def test_tiny_result_has_every_configuration(tiny_result):
    sections = {s["name"]: s for s in tiny_result["sections"]}
    assert set(sections) == {"cifar", "imagenet"}
    for name, configs in (("cifar", bench.CIFAR_CONFIGS), ("imagenet", bench.IMAGENET_CONFIGS)):
        sec = sections[name]
        got = {r["config"] for r in sec["results"]}
        assert got == {c.name for c in configs if not c.compile}  # tiny skips torch.compile
        base = next(r for r in sec["results"] if r["config"] == sec["baseline"])
        assert base["train_ratio_to_baseline"]["median"] == pytest.approx(1.0)
        for r in sec["results"]:
            assert len(r["train_img_s"]) == tiny_result["rounds"] and min(r["train_img_s"]) > 0
            assert r["infer"]["median"] > 0 and r["peak_step_memory_mb"] is not None
            assert 0 < r["fraction_of_matmul_peak"]
        assert sec["train_flops_per_image"] > 0
    assert tiny_result["matmul_peak_gflops"]["fp32"] > 0 and tiny_result["matmul_peak_gflops"]["bf16"] > 0
    assert tiny_result["versions"]["torch"] == torch.__version__


def test_tiny_result_equivalences_hold(tiny_result):
    """ours = naive (torchvision's blocks), fast = plain, ours = timm = torchvision, from the same weights."""
    for sec in tiny_result["sections"]:
        for e in sec["equivalence"]["pairs"]:
            assert e["max_rel_diff_output"] < 1e-4 and e["max_rel_diff_grad"] < 1e-3, e
        v64 = sec["equivalence"]["vs_float64"]
        assert {e["config"] for e in v64} >= {"ours", "fast"}
        assert all(e["max_rel_diff_grad"] < 1e-3 for e in v64), v64


def test_tables_targets_plot(tiny_result):
    import matplotlib

    matplotlib.use("Agg")
    t = bench.table(tiny_result, "cifar")
    assert len(t) == len(tiny_result["sections"][0]["results"])
    targets = bench.targets(tiny_result)
    assert targets["met"].map(lambda v: isinstance(v, bool)).all()
    assert any("3x" in t for t in targets["target"]) and any("1.3x" in t for t in targets["target"])
    assert bench.equivalence_table(tiny_result)["max rel. diff, output"].max() < 1e-4
    assert set(bench.headlines(tiny_result)) >= {"BC-100 fast path x naive fp32 (train)"}
    assert bench.plot(tiny_result, "imagenet") is not None
    assert len(bench.context_table(tiny_result)) > 5


def test_peak_memory_fast_blocks_below_naive():
    """The profiler-based peak sees the fast blocks' memory saving (quadratic -> linear in depth)."""
    sec = bench.Section("m", "m", dict(depth=40, growth_rate=12, bottleneck=True, compression=0.5), 16, 8,
                        "naive", bench.CIFAR_CONFIGS, "cifar")
    torch.manual_seed(0)
    sd = DenseNet(num_classes=10, **sec.net).state_dict()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    cfg = {c.name: c for c in sec.configs}
    mem = {}
    for name in ("naive", "fast"):
        r = bench.Runner(sec, cfg[name], sd, x, y)
        r.train_step()
        mem[name] = bench.peak_step_memory(r)
    assert 0 < mem["fast"] < 0.7 * mem["naive"], mem


def test_bad_arguments_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--size", "huge"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert bench.main(["--size", "tiny", "--rounds", "0", "--out", str(tmp_path)]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="python -m densenet_repro bench"):
        bench.load_result(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": -1}))
    with pytest.raises(ValueError, match="rerun the benchmark"):
        bench.load_result(tmp_path / "old.json")


def test_naive_baseline_is_torchvisions_blocks():
    from torchvision.models.densenet import _DenseBlock as TVBlock

    net = dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5)
    torch.manual_seed(0)
    ours = DenseNet(num_classes=10, **net)
    naive = bench.NaiveDenseNet(num_classes=10, **net)
    naive.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(naive.features.denseblock1, TVBlock)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(naive.eval()(x), ours.eval()(x))


def test_compare_accuracy_arithmetic():
    runs = [{"variant": "fp32", "final_test_error_pct": 30.0, "train_images_per_s": 100},
            {"variant": "fp32", "final_test_error_pct": 32.0, "train_images_per_s": 110},
            {"variant": "fast", "final_test_error_pct": 31.5, "train_images_per_s": 300},
            {"variant": "fast", "final_test_error_pct": 34.5, "train_images_per_s": 310}]
    acc = bench.compare_accuracy(runs, "cpu")
    assert acc["difference_pct"] == pytest.approx(2.0)
    assert acc["spread_fp32_pct"] == pytest.approx(2.0) and acc["spread_fast_pct"] == pytest.approx(3.0)
    assert acc["same_within_spread"] and acc["not_worse_within_spread"]
    worse = bench.compare_accuracy(runs[:2] + [dict(runs[2], final_test_error_pct=39.0),
                                               dict(runs[3], final_test_error_pct=40.0)], "cpu")
    assert not worse["same_within_spread"] and not worse["not_worse_within_spread"]
    better = bench.compare_accuracy(runs[:2] + [dict(runs[2], final_test_error_pct=25.0),
                                                dict(runs[3], final_test_error_pct=25.5)], "cpu")
    assert not better["same_within_spread"] and better["not_worse_within_spread"]


def test_fastpath_settings_and_apply(monkeypatch):
    monkeypatch.setattr(fastpath, "bf16_native", lambda: True)
    assert fastpath.settings("cpu") == {"amp": "bf16", "channels_last": True, "compile": False, "fast_blocks": True}
    monkeypatch.setattr(fastpath, "bf16_native", lambda: False)  # e.g. an AVX2-only CPU: bf16 is emulated there
    assert fastpath.settings("cpu") == {"amp": "none", "channels_last": False, "compile": False, "fast_blocks": False}
    assert fastpath.settings("cuda:0")["compile"] and not fastpath.settings("cuda:0", world=2)["compile"]
    with pytest.raises(ValueError, match="no fast path"):
        fastpath.settings("meta")
    cfg, cpu = RunConfig(model="densenet_bc100_k12"), torch.device("cpu")
    model = DenseNet(depth=16, growth_rate=4, bottleneck=True, compression=0.5)
    assert fastpath.use_fast_blocks(cfg, model, cpu, False, wanted=True) and fast_dense.is_fast(model)
    plain = DenseNet(depth=16, growth_rate=4, bottleneck=True, compression=0.5)
    assert not fastpath.use_fast_blocks(cfg, plain, cpu, True, wanted=True)  # sync BN needs plain blocks
    assert not fast_dense.is_fast(plain)
    resnet = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))
    assert not fastpath.use_fast_blocks(RunConfig(model="resnet110"), resnet, cpu, False, wanted=True)


@pytest.mark.slow
def test_accuracy_check_smoke(tmp_path):
    acc = bench.run_accuracy("smoke", None, "cpu", out=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                             progress="none")
    assert [r["variant"] for r in acc["runs"]] == ["fp32", "fp32", "fast", "fast"]
    assert [r["fast_blocks"] for r in acc["runs"]] == [False, False, True, True]
    assert all(0 <= r["final_test_error_pct"] <= 100 for r in acc["runs"])
    assert set(bench.accuracy_table(acc).columns) >= {"variant", "final test error %"}


def test_gpu_section_reads_the_gpu_check_result_and_says_what_is_measured(tmp_path):
    from densenet_repro.gpu_check import REHEARSED

    assert REHEARSED in bench.gpu_section(tmp_path).data  # a sentence, never an empty table
    phase = {"ok": True, "status": "ok", "full_epoch_s": 5.0, "full_epoch_estimated": False, "warmup_s": 80.0,
             "steady_step_s": 0.006, "images_per_s": 10000.0, "peak_gpu_memory_gib": 3.1,
             "first_epoch_train_loss": 1.51}
    result = {"check": "gpu", "phases": {"env": {"gpu": "NVIDIA H200"}, "compiled": phase,
                                         "eager_fp32": phase | {"ok": False, "status": "timed out"}}}
    (tmp_path / "gpu_check.json").write_text(json.dumps(result))
    df = bench.gpu_section(tmp_path)
    assert list(df["mode"]) == ["compiled", "eager_fp32"] and df["warm-up s"].iloc[0] == 80.0
    assert list(df["status"]) == ["measured", "timed out"] and (df["gpu"] == "NVIDIA H200").all()
    (tmp_path / "gpu_check.json").write_text(json.dumps(result | {"check": "rehearsal"}))
    assert bench.gpu_section(tmp_path)["status"].iloc[0] == REHEARSED


def test_memory_efficient_configs_are_what_the_engine_trains():
    """The benchmark's --memory-efficient rows run the model the training engine builds for that flag."""
    from densenet_repro import train
    from densenet_repro.plan import speed_knobs

    section = bench.SIZES["default"].sections[0]
    for name in ("ours_memeff", "ours_memeff_bf16_cl"):
        cfg = next(c for c in bench.CIFAR_CONFIGS if c.name == name)
        assert cfg.engine and cfg.memory_efficient and not cfg.fast
        run_cfg = bench.engine_run_config(section, cfg)
        ours = bench.engine_model(section, cfg)
        engine = train.build_model(run_cfg, num_classes=10)
        cpu = torch.device("cpu")
        fastpath.use_fast_blocks(run_cfg, engine, cpu, False, speed_knobs(run_cfg, cpu).fast_blocks)
        assert [type(m) for m in ours.modules()] == [type(m) for m in engine.modules()]
        assert not fast_dense.is_fast(engine)  # the engine keeps the plain checkpointed blocks
        flags = [getattr(m, "memory_efficient", None) for m in engine.modules()]
        assert True in flags and flags == [getattr(m, "memory_efficient", None) for m in ours.modules()]
    assert not any(c.fast and c.memory_efficient for c in bench.CIFAR_CONFIGS), \
        "the fast blocks ignore memory_efficient: such a row would measure the fast mode twice"


def _with_speed(result, section, config, values):
    import copy

    result = copy.deepcopy(result)
    sec = next(s for s in result["sections"] if s["name"] == section)
    row = next(r for r in sec["results"] if r["config"] == config)
    row["train_img_s"] = list(values)
    row["train"] = bench.summary_stats(list(values))
    return result


def _met(result, target_start, **kw):
    t = bench.targets(result, **kw)
    (met,) = t.loc[t["target"].str.startswith(target_start), "met"]
    return bool(met)


def test_targets_can_fail(tiny_result):
    n = tiny_result["rounds"]
    fast = [100.0] * n
    r = _with_speed(tiny_result, "cifar", "fast", fast)
    r = _with_speed(r, "cifar", "fast_bf16_cl", fast)
    ok = _with_speed(_with_speed(r, "cifar", "ours_memeff", [90.0] * n), "cifar", "ours_memeff_bf16_cl", [90.0] * n)
    assert _met(ok, "--memory-efficient at most 25% slower")
    # the engine's --memory-efficient at 45% of the fast mode's speed must fail the target
    slow = _with_speed(ok, "cifar", "ours_memeff", [45.0] * n)
    assert not _met(slow, "--memory-efficient at most 25% slower")
    # a result without the memory-efficient rows cannot meet the target
    import copy

    missing = copy.deepcopy(ok)
    for sec in missing["sections"]:
        sec["results"] = [x for x in sec["results"] if "memeff" not in x["config"]]
    assert not _met(missing, "--memory-efficient at most 25% slower")
    assert not _met(missing, "--memory-efficient peak memory")
    # DenseNet-121: x1.5 over torchvision, but the same computation already measures x1.5: not met
    imn = _with_speed(tiny_result, "imagenet", "torchvision_bf16_cl", [10.0] * n)
    imn = _with_speed(imn, "imagenet", "fast_bf16_cl", [15.0] * n)
    assert _met(_with_speed(imn, "imagenet", "ours_bf16_cl", [10.0] * n), "DenseNet-121 training >= 1.3x torchvision's (bf16")
    assert not _met(_with_speed(imn, "imagenet", "ours_bf16_cl", [15.0] * n),
                    "DenseNet-121 training >= 1.3x torchvision's (bf16")
    # the cross-check run must meet a target too
    good = _with_speed(imn, "imagenet", "ours_bf16_cl", [10.0] * n)
    t = bench.targets(good, cross_check=_with_speed(good, "imagenet", "fast_bf16_cl", [10.0] * n))
    row = t[t["target"].str.startswith("DenseNet-121 training >= 1.3x torchvision's (bf16")].iloc[0]
    assert not row["met"] and [c for c in t.columns if c.startswith("met (") and row[c]]


def test_accuracy_target_uses_the_strict_reading(tiny_result):
    runs = [{"variant": "fp32", "final_test_error_pct": 47.0, "train_images_per_s": 1},
            {"variant": "fp32", "final_test_error_pct": 47.3, "train_images_per_s": 1},
            {"variant": "fast", "final_test_error_pct": 45.6, "train_images_per_s": 1},
            {"variant": "fast", "final_test_error_pct": 46.2, "train_images_per_s": 1}]
    acc = bench.compare_accuracy(runs, "cpu")  # better by more than the spread: strict False, lenient True
    assert acc["not_worse_within_spread"] and not acc["same_within_spread"]
    assert not _met(tiny_result, "... with the same final accuracy", accuracy=acc)


def test_committed_targets_read_conservatively():
    """The committed benchmark's numbers: the engine's --memory-efficient is far slower than the fast mode."""
    result = bench.load_result(ROOT / bench.DEFAULT_OUT / "bench_default.json")
    t = bench.targets(result)
    assert not _met(result, "--memory-efficient at most 25% slower")
    h = bench.headlines(result, None, t)
    assert list(h)[0].startswith("targets met")
    assert h["BC-100 --memory-efficient memory x naive (both fp32)"] > 0.3  # fp32 vs fp32, not bf16 vs fp32


def test_accuracy_check_has_its_own_scale_and_its_committed_runs_are_found():
    """The cpu accuracy check does not follow retuning of the notebooks' cpu budget, and its committed
    runs are found (without the dataset), so rendering notebook 06 never retrains them."""
    for _, cfg in bench.accuracy_configs("cpu", None):
        assert cfg.model_kwargs == {"depth": 40} and cfg.epochs == 8
        assert (cfg.train_subset, cfg.test_subset) == (5000, 2000)
    acc = bench.committed_accuracy("cpu")
    assert acc is not None, "results/bench/accuracy-* no longer match the check's configs"
    assert len(acc["runs"]) == 2 * len(bench.ACCURACY_SEEDS)


def test_an_unwritable_out_is_refused_before_anything_is_measured(tmp_path, monkeypatch, capsys):
    from densenet_repro.bench import cli as bench_cli

    def measured(*args, **kwargs):
        raise AssertionError("measured before the output folder was checked")

    monkeypatch.setattr(bench_cli, "run", measured)
    (tmp_path / "afile").write_text("")
    assert bench_cli.main(["--size", "tiny", "--out", str(tmp_path / "afile" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to" in err and "writable --out" in err
