"""The GPU path of the training engine.

On CPU (CI): the compiled step with its eager partial batch computes what the eager step computes,
and compilation time is reported apart. Marked `cuda` (skipped without a GPU; run by
`python -m densenet_repro gpu-check`): each engine mode trains a short epoch on the GPU, a killed
run resumes there, the memory-efficient blocks match the plain ones, fp16 trains with its scaler.
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
    assert T.speed_knobs(c, torch.device("cpu")) == {"channels_last": False, "compile": False}
    assert T.speed_knobs(c, torch.device("cuda", 0)) == {"channels_last": True, "compile": True}
    assert T.speed_knobs(c, torch.device("cuda", 0), world=2)["compile"] is False
    assert T.speed_knobs(dataclasses.replace(c, compile=False), torch.device("cuda", 0))["compile"] is False


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


# ----------------------------------------------------------------------------------------------
# On a GPU (gpu-check runs these)
# ----------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("knobs", [dict(amp="none", compile=False, channels_last=False),
                                   dict(amp="bf16", compile=False, channels_last=True),
                                   dict(amp="bf16", compile=True, channels_last=True),
                                   dict(amp="fp16", compile=False, channels_last=False)])
def test_each_engine_mode_trains_on_the_gpu(tmp_path, knobs):
    s = T.train(tiny(tmp_path, device="cuda", num_threads=None, **knobs))
    assert s["device_type"] == "cuda" and s["final_train_loss"] == s["final_train_loss"]  # finite, not NaN
    assert s["peak_gpu_memory_gib"] > 0


@pytest.mark.cuda
def test_a_killed_gpu_run_resumes(tmp_path):
    cfg = tiny(tmp_path, device="cuda", epochs=2, num_threads=None, compile=False)
    script = (f"import sys, os, signal; sys.path.insert(0, {str(REPO)!r})\n"
              "from densenet_repro.train import RunConfig, train\n"
              f"train(RunConfig(**{dataclasses.asdict(cfg)!r}), "
              "on_epoch_end=lambda e, r: os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = T.train(dataclasses.replace(cfg, resume=True))
    assert resumed["epochs"] == 2 and len(pd.read_csv(Path(resumed["run_dir"]) / "metrics.csv")) == 2


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
def test_fp16_uses_its_scaler(tmp_path):
    s = T.train(tiny(tmp_path, device="cuda", amp="fp16", num_threads=None, compile=False))
    assert s["amp"] == "fp16" and s["final_train_loss"] == s["final_train_loss"]
    assert not (Path(s["run_dir"]) / T.CHECKPOINT).exists() and (Path(s["run_dir"]) / T.WEIGHTS).exists()

