"""The GPU path of the training engine.

On CPU (CI): the compiled step with its eager partial batch computes what the eager step computes,
and compilation time is reported apart. Marked `cuda` (skipped without a GPU; run by
`python -m densenet_repro gpu-check`): bf16 eager and compiled train what fp32 trains, the compiled
step over two epochs (LR drop, evaluation between) matches the eager one, a killed compiled run
resumes compiled, fp32 runs without TF32 and the backend flags come back, the memory-efficient
blocks match the plain ones and train eagerly, fp16 trains with its scaler.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from densenet_repro import DenseNet
from densenet_repro import train as T

REPO = Path(__file__).resolve().parent.parent


def tiny(tmp_path: Path, **kw) -> T.RunConfig:
    base = dict(model="densenet40_k12", dataset="c10+", model_kwargs={"depth": 10}, epochs=1, data_source="synthetic",
                train_subset=200, test_subset=100, out=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                progress="none", num_threads=1, device="cpu", batch_size=64, eval_batch_size=50)
    base.update(kw)
    return T.RunConfig(**base)


def test_speed_knobs_follow_the_device(monkeypatch):
    from densenet_repro import fastpath

    monkeypatch.setattr(fastpath, "bf16_native", lambda: False)
    c = T.RunConfig()
    assert T.speed_knobs(c, torch.device("cpu")) == T.Knobs(channels_last=False, compile=False, fast_blocks=False)
    assert T.speed_knobs(c, torch.device("cuda", 0)) == T.Knobs(channels_last=True, compile=True, fast_blocks=False)
    assert T.speed_knobs(c, torch.device("cuda", 0), world=2).compile is False
    assert T.speed_knobs(dataclasses.replace(c, compile=False), torch.device("cuda", 0)).compile is False
    # torch.utils.checkpoint breaks compiled graphs: no compilation by default, a ConfigError if asked
    assert T.speed_knobs(dataclasses.replace(c, memory_efficient=True), torch.device("cuda", 0)).compile is False
    with pytest.raises(ValueError, match="--no-compile with --memory-efficient"):
        dataclasses.replace(c, memory_efficient=True, compile=True).validate()


def test_compiled_for_one_shape_runs_other_shapes_eagerly():
    calls = []
    net = torch.nn.Linear(3, 2)

    class Recorder(torch.nn.Module):  # stands in for the compiled module
        def forward(self, x):
            calls.append(len(x))
            return net(x)

    wrapped = T.CompiledForOneShape(net, batch=4, cuda_graphs=False)
    wrapped.compiled = Recorder()
    x = torch.randn(4, 3)
    assert torch.equal(wrapped(x), net(x)) and calls == [4]
    wrapped(torch.randn(3, 3))  # the partial last batch
    assert calls == [4]


@pytest.mark.slow
def test_the_compiled_step_computes_the_eager_step():
    """One SGD step from the same weights on the same batch: losses and updated weights agree to fp32
    rounding (torch.testing's fp32 tolerances). Compiled and eager kernels sum in other orders, and
    over many steps a rounding difference grows with the training dynamics, by an amount that
    depends on the CPU's vector width (2e-4 relative after 4 steps on AVX-512, under 1e-4 on AVX2):
    the step itself is what must agree."""
    cfg = tiny(Path("unused"), compile=True, fast_blocks=False)
    torch.manual_seed(0)
    eager = T.build_model(cfg, 10)
    compiled = copy.deepcopy(eager)
    step_model = T.CompiledForOneShape(compiled, cfg.batch_size, cuda_graphs=False)
    x, y = torch.randn(cfg.batch_size, 3, 32, 32), torch.randint(0, 10, (cfg.batch_size,))
    results = []
    for model, called in ((eager, eager), (compiled, step_model)):
        opt = T.build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        model.train()
        losses, _ = T.train_step(called, opt, scaler, x, y, len(y))
        results.append((losses, model.state_dict()))
    (loss_e, state_e), (loss_c, state_c) = results
    torch.testing.assert_close(loss_c, loss_e)
    for k in state_e:
        torch.testing.assert_close(state_c[k], state_e[k], msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_the_engine_trains_with_the_compiled_step_and_reports_compilation_apart(tmp_path):
    """200 images = 3 x 64 + 8: the compiled step for full batches, eager for the last. The step is
    compared to rounding above; here the run must be the same training: within 1 % after an epoch,
    where a wrong update or stale evaluation weights differ by far more."""
    eager = T.train(tiny(tmp_path / "a", compile=False, deterministic=True, fast_blocks=False))
    compiled = T.train(tiny(tmp_path / "b", compile=True, deterministic=True, fast_blocks=False))
    assert compiled["compile"] is True and eager["compile"] is False
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-2)
    assert compiled["final_test_loss"] == pytest.approx(eager["final_test_loss"], rel=1e-2)
    rows = pd.read_csv(Path(compiled["run_dir"]) / "metrics.csv")
    assert rows["compile_time_s"].iloc[0] > 0  # reported apart from the epoch time
    assert rows["path"].iloc[0].endswith("compiled")


@pytest.mark.slow
@pytest.mark.parametrize("reset", [True, False])
def test_each_run_in_one_process_is_compiled_afresh(tmp_path, monkeypatch, reset):
    """Runs looped in one process (sweeps, notebooks) each compile their own step. With dynamo's
    recompile limit at 1 a second network recompiles the same forward code and, without the engine's
    reset between runs, silently falls back to eager: the test shows both halves."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # what earlier tests compiled does not count
    if not reset:
        monkeypatch.setattr(torch._dynamo, "reset", lambda: None)
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=1):
        for depth in (10, 16):
            counters.clear()
            T.train(tiny(tmp_path / str(depth), compile=True, model_kwargs={"depth": depth}, fast_blocks=False,
                         train_subset=128))
            graphs.append(counters["stats"]["unique_graphs"])
    assert (min(graphs) >= 1) is reset, graphs


# ----------------------------------------------------------------------------------------------
# On a GPU: `python -m densenet_repro gpu-check` runs these as `pytest -m cuda tests/test_gpu_path.py`,
# this file alone (it imports nothing the GPU machine lacks: no nbformat, papermill, nbconvert).
# Each mode is compared with the eager fp32 engine, so that a mode that trains something else
# fails, not only one that crashes.
# ----------------------------------------------------------------------------------------------

GPU_MODES = {"eager_bf16_cl": dict(amp="bf16", compile=False, channels_last=True),
             "compiled_bf16_cl": dict(amp="bf16", compile=True, channels_last=True)}
# An epoch of 200 images (4 steps) from the same weights, in bf16 or compiled: the mean losses agree
# with fp32's to bf16 rounding, far closer than a wrong update or stale evaluation weights would.
MODE_LOSS_RTOL = 0.03


def on_gpu(tmp_path: Path, **kw) -> T.RunConfig:
    return tiny(tmp_path, device="cuda", num_threads=None, **kw)


def rows_of(summary) -> pd.DataFrame:
    return pd.read_csv(Path(summary["run_dir"]) / "metrics.csv")


@pytest.fixture(scope="module")
def fp32_on_gpu(tmp_path_factory):
    return T.train(on_gpu(tmp_path_factory.mktemp("fp32"), amp="none", compile=False, channels_last=False))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", list(GPU_MODES))
def test_each_engine_mode_trains_what_fp32_trains(tmp_path, mode, fp32_on_gpu):
    s = T.train(on_gpu(tmp_path, **GPU_MODES[mode]))
    assert s["device_type"] == "cuda" and s["peak_gpu_memory_gib"] > 0
    assert s["compile"] is GPU_MODES[mode]["compile"]
    for key in ("final_train_loss", "final_test_loss"):
        assert s[key] == pytest.approx(fp32_on_gpu[key], rel=MODE_LOSS_RTOL), key


@pytest.mark.cuda
def test_the_compiled_step_over_two_epochs(tmp_path):
    """Two epochs compiled: the learning rate drops under the captured step (0.1, then 0.001 with
    2 epochs) and evaluation runs between the two training epochs; every epoch's losses agree with
    the eager run's, and only the first epoch pays the compilation."""
    kw = dict(epochs=2, amp="bf16", channels_last=True)
    eager, compiled = (rows_of(T.train(on_gpu(tmp_path / name, compile=name == "compiled", **kw)))
                       for name in ("eager", "compiled"))
    assert list(compiled["lr"]) == pytest.approx([0.1, 0.001])
    for column in ("train_loss", "test_loss"):
        assert list(compiled[column]) == pytest.approx(list(eager[column]), rel=MODE_LOSS_RTOL), column
    assert compiled["compile_time_s"].iloc[0] > 0 and pd.isna(compiled["compile_time_s"].iloc[1])


@pytest.mark.cuda
def test_a_killed_compiled_run_resumes_compiled(tmp_path):
    cfg = on_gpu(tmp_path, epochs=2, amp="bf16", channels_last=True, compile=True)
    script = (f"import sys, os, signal; sys.path.insert(0, {str(REPO)!r})\n"
              "from densenet_repro.train import RunConfig, train\n"
              f"train(RunConfig(**{dataclasses.asdict(cfg)!r}), "
              "on_epoch_end=lambda e, r: os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = T.train(dataclasses.replace(cfg, resume=True))
    rows = rows_of(resumed)
    assert resumed["epochs"] == 2 and len(rows) == 2
    assert rows["path"].iloc[1].endswith("compiled") and rows["compile_time_s"].iloc[1] > 0  # compiled again


@pytest.mark.cuda
def test_fp32_trains_without_tf32_and_the_flags_come_back(tmp_path):
    def flags():
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)

    before, during = flags(), []
    T.train(on_gpu(tmp_path, amp="none", compile=False), on_epoch_end=lambda e, r: during.append(flags()[:2]))
    assert during == [(False, False)]  # the paper's fp32, not TF32's 10-bit mantissa
    assert flags() == before


@pytest.mark.cuda
def test_memory_efficient_blocks_match_the_plain_ones_on_the_gpu():
    torch.manual_seed(0)
    plain = DenseNet(depth=16, growth_rate=12, bottleneck=True, compression=0.5, num_classes=10).cuda()
    memeff = DenseNet(depth=16, growth_rate=12, bottleneck=True, compression=0.5, num_classes=10,
                      memory_efficient=True).cuda()
    memeff.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 32, 32, device="cuda")
    for net in (plain, memeff):
        net(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), memeff.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.cuda
def test_memory_efficient_trains_eagerly_on_the_gpu(tmp_path):
    s = T.train(on_gpu(tmp_path, memory_efficient=True))  # the GPU's default would compile: not with checkpointing
    assert s["compile"] is False and s["final_train_loss"] == s["final_train_loss"]


@pytest.mark.cuda
def test_fp16_uses_its_scaler(tmp_path):
    s = T.train(on_gpu(tmp_path, amp="fp16", compile=False))
    assert s["amp"] == "fp16" and s["final_train_loss"] == s["final_train_loss"]
    assert not (Path(s["run_dir"]) / T.CHECKPOINT).exists() and (Path(s["run_dir"]) / T.WEIGHTS).exists()
