"""Training: the paper's recipe, metrics and summary, run cache, checkpoints, resume, NaN handling."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from densenet_repro import train as T
from densenet_repro.train import RunConfig

REPO = Path(__file__).resolve().parent.parent
TIME_COLUMNS = ["epoch_time_s", "eval_time_s", "train_images_per_s"]


def tiny(tmp_path: Path, **kw) -> RunConfig:
    """A DenseNet with 2 layers per block on 256 synthetic images, one thread: about a second an epoch."""
    base = dict(model="densenet40_k12", dataset="c10+", model_kwargs={"depth": 10}, epochs=3, data_source="synthetic",
                train_subset=256, test_subset=128, out=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                progress="none", num_threads=1, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def interrupted_after_one_epoch(cfg: RunConfig) -> Path:
    """Train `cfg` until its first epoch has been checkpointed, then stop as a Ctrl-C would; its run folder."""

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, on_epoch_end=stop)
    return next((Path(cfg.out) / cfg.experiment).iterdir())


def test_paper_recipe_defaults():
    c = RunConfig(model="densenet40_k12", dataset="c10").resolved()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.nesterov, c.weight_decay) == (300, 64, 0.1, 0.9, True, 1e-4)
    assert c.drop_rate == 0.2 and c.amp == "none"
    assert RunConfig(model="densenet40_k12", dataset="c10+").resolved().drop_rate == 0.0
    assert RunConfig(model="resnet110", dataset="c10").resolved().drop_rate == 0.0  # dropout: DenseNets only
    assert RunConfig(model="densenet40_k12", dataset="svhn").resolved().epochs == 40
    opt = T.build_optimizer(c, torch.nn.Linear(2, 2))
    g = opt.param_groups[0]
    assert g["nesterov"] and g["momentum"] == 0.9 and g["dampening"] == 0 and g["weight_decay"] == 1e-4
    assert len(g["params"]) == 2  # the bias is decayed too


def test_lr_schedule_divides_by_10_at_half_and_three_quarters():
    c = RunConfig(dataset="c10+")
    lrs = [T.lr_at(c, e) for e in range(300)]
    assert lrs[0] == lrs[149] == 0.1
    assert lrs[150] == lrs[224] == pytest.approx(0.01)
    assert lrs[225] == lrs[299] == pytest.approx(0.001)
    short = RunConfig(dataset="c10+", epochs=8)
    assert [round(T.lr_at(short, e), 6) for e in range(8)] == [0.1] * 4 + [0.01] * 2 + [0.001] * 2


def test_config_hash_covers_the_result_not_the_bookkeeping():
    c = RunConfig(dataset="c10+")
    h = T.config_hash(c, "torchvision")
    assert h == T.config_hash(dataclasses.replace(c, device="cuda", progress="none", out="x", compile=True,
                                                  channels_last=True, num_threads=1), "torchvision")
    assert h != T.config_hash(dataclasses.replace(c, lr=0.05), "torchvision")
    assert h != T.config_hash(dataclasses.replace(c, amp="bf16"), "torchvision")
    assert h != T.config_hash(c, "folder:cifar10-jpeg.tar.gz")  # other pixels, another run
    assert h == T.config_hash(dataclasses.replace(c, epochs=300), "torchvision")  # the default, spelled out


def test_train_writes_metrics_summary_and_is_cached(tmp_path):
    cfg = tiny(tmp_path, epochs=4, train_subset=None)
    s = T.train(cfg)
    run = Path(s["run_dir"])
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.epoch) == [1, 2, 3, 4]
    assert {"lr", "train_loss", "train_err_pct", "test_loss", "test_err_pct", *TIME_COLUMNS} <= set(m.columns)
    assert m.train_loss.iloc[-1] < m.train_loss.iloc[0]
    assert s["final_test_error_pct"] == m.test_err_pct.iloc[-1]
    assert s["best_test_error_pct"] == m.test_err_pct.min()
    assert s["reported_test_error_pct"] == s["final_test_error_pct"]
    assert s["final_test_error_pct"] < 50  # the synthetic set is learnable (chance: 90%)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["finished"] and saved["config_hash"] in run.name and saved["device"]
    assert json.loads((run / "config.json").read_text())["versions"]["torch"] == torch.__version__
    again = T.train(cfg)
    assert again["cached"] and again["final_test_error_pct"] == s["final_test_error_pct"]


def test_finished_run_in_results_is_reused_without_training(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=1)
    s = T.train(cfg)
    dst = Path(cfg.results) / cfg.experiment / Path(s["run_dir"]).name
    dst.mkdir(parents=True)
    for name in ("config.json", "metrics.csv", "summary.json"):
        shutil.copy(Path(s["run_dir"]) / name, dst / name)
    shutil.rmtree(cfg.out)
    monkeypatch.setattr(T, "_train", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = T.train(cfg)
    assert again["cached"] and Path(again["run_dir"]) == dst


def test_svhn_reports_the_epoch_of_lowest_validation_error(tmp_path):
    s = T.train(tiny(tmp_path, dataset="svhn", epochs=2, train_subset=None))
    m = pd.read_csv(Path(s["run_dir"]) / "metrics.csv")
    chosen = m.sort_values(["val_err_pct", "epoch"]).iloc[0]
    assert s["reported_epoch"] == chosen.epoch and s["reported_test_error_pct"] == chosen.test_err_pct
    assert "validation" in s["reported_rule"]


def test_fast_paths_run(tmp_path):
    for amp in ("bf16", "fp16"):
        s = T.train(tiny(tmp_path, epochs=1, amp=amp, channels_last=True, memory_efficient=True))
        assert s["final_train_loss"] > 0


def test_run_weights_load_from_the_checkpoint_then_the_final_weights_without_wrapper_prefixes(tmp_path):
    from densenet_repro import create_model
    from densenet_repro.run_weights import load_run_weights

    cfg = tiny(tmp_path, epochs=2)
    run = interrupted_after_one_epoch(cfg)
    model, epochs, finished = load_run_weights(run, create_model(cfg.model, **cfg.model_kwargs))
    assert (epochs, finished, model.training) == (1, False, False)
    s = T.train(dataclasses.replace(cfg, resume=True))
    final = torch.load(run / T.WEIGHTS, weights_only=True)
    # what DDP (module.) and torch.compile (_orig_mod.) would have saved loads the same
    torch.save({f"module._orig_mod.{k}": v for k, v in final.items()}, run / T.WEIGHTS)
    model, epochs, finished = load_run_weights(s["run_dir"], create_model(cfg.model, **cfg.model_kwargs))
    assert (epochs, finished) == (2, True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())
    with pytest.raises(T.CheckpointError, match="neither weights.pt nor checkpoint.pt: train that run first"):
        load_run_weights(tmp_path, create_model(cfg.model, **cfg.model_kwargs))


def test_unfinished_run_needs_resume_and_is_never_overwritten(tmp_path):
    cfg = tiny(tmp_path, epochs=2)
    run = interrupted_after_one_epoch(cfg)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(T.RunExistsError, match="--resume"):
        T.train(cfg)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_corrupt_or_foreign_checkpoint_is_a_clear_error_and_kept(tmp_path):
    cfg = tiny(tmp_path, epochs=2, resume=True)
    h = T.config_hash(cfg, "synthetic")
    run = Path(cfg.out) / cfg.experiment / T.run_name(cfg, h)
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(T.CheckpointError, match="cannot read checkpoint"):
        T.train(cfg)
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    T.save_checkpoint(run / "checkpoint.pt", {"version": T.CHECKPOINT_VERSION, "config_hash": "0123456789"})
    foreign = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(T.CheckpointError, match="belongs to config 0123456789"):
        T.train(cfg)
    assert (run / "checkpoint.pt").read_bytes() == foreign


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    T.save_checkpoint(path, {"version": 1, "epoch": 1})
    real_save = torch.save

    def dies_midway(obj, f, *a, **k):
        f.write(b"half a checkp")
        raise OSError("killed while writing")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError):
        T.save_checkpoint(path, {"version": 1, "epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_build = T.build_model
    calls = {"n": 0}

    class PoisonAfterEpoch1(torch.nn.Module):
        def __init__(self, inner, steps_per_epoch):
            super().__init__()
            self.inner, self.steps = inner, steps_per_epoch

        def forward(self, x):
            out = self.inner(x)
            if self.training:
                calls["n"] += 1
                if calls["n"] > self.steps:  # every training step of epoch 2
                    out = out * float("nan")
            return out

        def state_dict(self, *a, **k):
            return self.inner.state_dict(*a, **k)

        def load_state_dict(self, *a, **k):
            return self.inner.load_state_dict(*a, **k)

    monkeypatch.setattr(T, "build_model", lambda cfg, n: PoisonAfterEpoch1(real_build(cfg, n), 4))
    cfg = tiny(tmp_path, epochs=3)  # 256 images / 64 = 4 steps per epoch
    with pytest.raises(T.TrainingDiverged, match=r"loss became nan in epoch 2.*checkpoint of epoch 1 is kept"):
        T.train(cfg)
    run = next((tmp_path / "runs" / "train").iterdir())
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (run / "summary.json").exists()
    assert len(pd.read_csv(run / "metrics.csv")) == 1


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from densenet_repro.train import RunConfig, train
    cfg = RunConfig(**{cfg!r})
    def die(epoch, row):
        if epoch == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)  # as abrupt as a kill gets: no cleanup at all
    train(cfg, on_epoch_end=die)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    """CPU + deterministic: kill a run after epoch 1 of 3, resume it, compare with a straight run."""
    common = dict(deterministic=True, epochs=3, drop_rate=0.2)  # dropout: the RNG state must resume too
    straight = T.train(tiny(tmp_path / "a", **common))
    cfg_b = tiny(tmp_path / "b", **common)
    d = {k: v for k, v in dataclasses.asdict(cfg_b).items()}
    script = _KILLED_RUN.format(repo=str(REPO), cfg=d, kill_after=1)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = next((tmp_path / "b" / "runs" / "train").iterdir())
    assert len(pd.read_csv(run / "metrics.csv")) == 1 and not (run / "summary.json").exists()
    resumed = T.train(dataclasses.replace(cfg_b, resume=True))
    a = pd.read_csv(Path(straight["run_dir"]) / "metrics.csv").drop(columns=TIME_COLUMNS)
    b = pd.read_csv(Path(resumed["run_dir"]) / "metrics.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa = torch.load(Path(straight["run_dir"]) / T.WEIGHTS)
    wb = torch.load(Path(resumed["run_dir"]) / T.WEIGHTS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fast_blocks_are_the_cpu_default_and_train_like_the_plain_blocks(tmp_path, monkeypatch):
    from densenet_repro import fastpath

    monkeypatch.setattr(fastpath, "bf16_native", lambda: True)  # a CPU whose fast path uses the fast blocks
    fast = T.train(tiny(tmp_path / "a", epochs=1))
    plain = T.train(tiny(tmp_path / "b", epochs=1, fast_blocks=False))
    assert fast["fast_blocks"] is True and plain["fast_blocks"] is False
    # same function, different float summation order: one epoch lands on nearly the same loss
    assert abs(fast["final_train_loss"] - plain["final_train_loss"]) < 1e-3
    assert T.train(tiny(tmp_path / "c", epochs=1, amp="fp16"))["fast_blocks"] is False  # fp32/bf16 only
    with pytest.raises(ValueError, match="fp32 and bf16 only"):
        T.train(tiny(tmp_path / "d", epochs=1, amp="fp16", fast_blocks=True))
    with pytest.raises(ValueError, match="no dense blocks"):
        T.train(tiny(tmp_path / "e", epochs=1, model="resnet110", model_kwargs={}, fast_blocks=True))


def test_speed_trial_picks_a_path_without_changing_the_result_and_every_row_records_it(tmp_path):
    """The trial times throw-away copies: the run then equals one made with the chosen knobs set."""
    tried = T.train(tiny(tmp_path / "a", epochs=2, deterministic=True, speed_trial=True))
    knobs = dict(fast_blocks=tried["fast_blocks"], channels_last=tried["channels_last"])
    direct = T.train(tiny(tmp_path / "b", epochs=2, deterministic=True, **knobs))
    a = pd.read_csv(Path(tried["run_dir"]) / "metrics.csv")
    b = pd.read_csv(Path(direct["run_dir"]) / "metrics.csv")
    pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS), b.drop(columns=TIME_COLUMNS), check_exact=True)
    assert a["hardware"].str.contains("threads").all()
    assert (a["path"] == T.path_label(knobs["fast_blocks"], knobs["channels_last"], "none")).all()


def test_snapshots_are_kept_at_the_asked_epochs_also_when_a_resume_asks_for_the_checkpoints_epoch(tmp_path):
    cfg = tiny(tmp_path, epochs=3)
    run = interrupted_after_one_epoch(cfg)
    assert not (run / T.SNAPSHOTS).exists()
    s = T.train(dataclasses.replace(cfg, resume=True, keep_weights_at=(1, 3)))
    kept = sorted(p.name for p in (run / T.SNAPSHOTS).iterdir())
    assert kept == ["epoch_001.pt", "epoch_003.pt"] and s["run_dir"] == run.as_posix()
    final, last = torch.load(run / T.WEIGHTS), torch.load(T.snapshot_path(run, 3))
    assert all(torch.equal(final[k], last[k]) for k in final)
    first = torch.load(T.snapshot_path(run, 1))
    assert not all(torch.equal(final[k], first[k]) for k in final)
    with pytest.raises(ValueError, match="keep_weights_at"):
        tiny(tmp_path, epochs=3, keep_weights_at=(4,)).validate()
