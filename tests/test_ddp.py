"""DDP through torchrun: 2 CPU processes (gloo) compute what 1 process computes at the same global batch.

BatchNorm statistics are synchronised across processes (train.AllReduceBatchNorm2d on CPU), so
the two runs differ only by float rounding in the reductions: the same per-epoch metrics to 1e-4,
and weights that differ by less than 1% of how far training moved them. (Before BatchNorm was
converted ahead of the optimizer, the BN weights of the 2-process run never moved: this test
caught it.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from densenet_repro import cli
from densenet_repro import train as T

REPO = Path(__file__).resolve().parent.parent
ARGS = ["--model", "densenet40_k12", "--dataset", "c10+", "--budget", "smoke", "--epochs", "2",
        "--model-kwargs", '{"depth": 10}', "--train-subset", "320", "--test-subset", "160", "--device", "cpu",
        "--progress", "line", "--results", ""]


def _checkpoint(out: Path) -> tuple[pd.DataFrame, dict]:
    run = next((out / "train").iterdir())
    return pd.read_csv(run / "metrics.csv"), {"config_hash": T.read_summary(run)["config_hash"],
                                              "model": torch.load(run / T.WEIGHTS)}


def test_two_processes_agree_with_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "densenet_repro", "train", *ARGS, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert cli.train_main([*ARGS, "--out", str(tmp_path / "one")]) == 0

    m2, c2 = _checkpoint(tmp_path / "ddp")
    m1, c1 = _checkpoint(tmp_path / "one")
    assert c2["config_hash"] == c1["config_hash"]  # the same run, only spread over processes
    cols = ["train_loss", "train_err_pct", "test_loss", "test_err_pct"]
    pd.testing.assert_frame_equal(m1[cols], m2[cols], check_exact=False, rtol=1e-4, atol=1e-4)
    # Weights: the two runs differ by far less than training moved them (float rounding only).
    torch.manual_seed(0)  # as train() does before building the model
    init = T.build_model(T.RunConfig(model="densenet40_k12", dataset="c10+", model_kwargs={"depth": 10}), 10).state_dict()
    for k, w1 in c1["model"].items():
        if w1.is_floating_point() and not torch.equal(w1, init[k]):
            moved = (w1 - init[k]).norm()
            assert (c2["model"][k] - w1).norm() < 0.01 * moved, k
