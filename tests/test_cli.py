"""`python -m densenet_repro train|table2`: bad arguments get one line and exit code 2; runs work."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from densenet_repro import budgets, cli, experiments, paper
from densenet_repro.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _error_line(capsys, argv, main=cli.train_main) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--model", "densenet999", "--dataset", "c10"], "densenet40_k12"),      # lists the valid models
    (["--model", "densenet40_k12", "--dataset", "c11"], "c10+"),             # lists the valid datasets
    (["--model", "densenet40_k12", "--dataset", "c10", "--epochs", "0"], "must be an integer >= 1, got 0"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--batch-size", "-3"], "must be an integer >= 1"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--budget", "huge"], "smoke"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--amp", "fp8"], "bf16"),
    (["--dataset", "c10"], "--model"),
])
def test_train_bad_arguments(capsys, argv, expected):
    assert expected in _error_line(capsys, argv)


def test_table2_bad_budget(capsys):
    assert "smoke" in _error_line(capsys, ["--budget", "gpu"], main=cli.table2_main)


def test_entry_point_exit_code_and_one_line():
    proc = subprocess.run([sys.executable, "-m", "densenet_repro", "train", "--model", "nope", "--dataset", "c10"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'nope'" in proc.stderr and "densenet_bc100_k12" in proc.stderr


def test_train_smoke_end_to_end_then_cached(tmp_path, capsys):
    argv = ["--model", "densenet_bc100_k12", "--dataset", "c10+", "--budget", "smoke", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--progress", "line", "--device", "cpu", "--epochs", "1"]
    assert cli.train_main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "final test error" in out
    summary = json.loads(out[out.index("{"):])
    assert Path(summary["run_dir"], "summary.json").is_file()
    assert cli.train_main(argv) == 0
    assert "finished run found" in capsys.readouterr().out


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    argv = ["--model", "densenet40_k12", "--dataset", "c100", "--data-root", str(tmp_path), "--no-download",
            "--out", str(tmp_path / "runs")]
    assert cli.train_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "put the official files" in err


def test_table2_list_shows_every_cell(capsys):
    assert cli.table2_main(["--budget", "cpu", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("not run") == 27 - 1  # cpu budget: the headline cell only; the families are compared apart
    assert "all 50,000" in out and "30 (paper 300)" in out


# --- the table2 command's plan and analysis ------------------------------------------------------

def test_budgets_cover_the_promised_cells():
    paper = experiments.table2_cells("paper")
    assert len(paper) == 27 and all(c.config is not None for c in paper)  # the cells the paper reports
    for c in paper:
        r = c.config.resolved()
        assert r.model_kwargs == {} and r.train_subset is None and r.amp == "none"
        assert r.epochs == (40 if c.dataset == "svhn" else 300)
    cpu = [c for c in experiments.table2_cells("cpu") if c.config is not None]
    assert [(c.model, c.dataset) for c in cpu] == [("densenet40_k12", "c10+")]
    head = cpu[0].config.resolved()
    assert (head.epochs, head.amp, head.train_subset, head.test_subset, head.model_kwargs) == (30, "none", None, None, {})
    assert all(c.config.data_source == "synthetic" for c in experiments.table2_cells("smoke") if c.config)


def test_the_headline_config_keeps_its_committed_hash():
    """The run in progress is committed under this hash: changing the config would orphan it."""
    from densenet_repro.train import config_hash

    cfg = experiments.headline_config()
    assert config_hash(cfg, "folder:cifar10-jpeg.tar.gz") == "4bd6f77af9"
    assert cfg.out == cfg.results == "results" and cfg.experiment == "table2"


def test_the_headline_schedules_differ_only_in_their_length(tmp_path):
    """The longer schedules are the headline's recipe with more epochs (their checkpoints are committed
    under these hashes), keeping their snapshots at the same points of the schedule; no other length is
    a schedule."""
    from densenet_repro.train import config_hash

    short, *longer = (experiments.headline_config(epochs=e) for e in experiments.HEADLINE_SCHEDULES)
    assert [config_hash(c, "folder:cifar10-jpeg.tar.gz") for c in longer] == ["5da474e00f", "01b99540a5"]
    for long in longer:
        assert dataclasses.replace(long, epochs=short.epochs, keep_weights_at=short.keep_weights_at) == short
    assert [c.keep_weights_at for c in (short, *longer)] == [(3, 15, 22), (10, 50, 75), (30, 150, 225)]
    with pytest.raises(ConfigError, match="the headline is trained at 30, 100 or 300 epochs, not 50"):
        experiments.headline_config(epochs=50)
    rows = experiments.headline_runs(results=str(tmp_path))  # nothing trained there: each shows no progress
    assert [(r["progress"]["epochs"], r["progress"]["epochs_done"]) for r in rows] == [(30, 0), (100, 0), (300, 0)]
    assert all(r["progress"]["run_dir"].startswith(tmp_path.as_posix()) for r in rows)


def test_the_evaluation_names_a_schedule_of_the_headline(capsys):
    from densenet_repro.cli import evaluate_main

    with pytest.raises(SystemExit) as e:
        evaluate_main(["--epochs", "50"])
    assert e.value.code == 2 and "invalid choice: 50 (choose from 30, 100, 300)" in capsys.readouterr().err


def test_comparisons_train_on_the_full_set_with_seeds():
    for comp in paper.COMPARISONS:
        for arm in (comp.a, comp.b):
            cfgs = [experiments.arm_config(arm, "cpu", s) for s in budgets.comparison_seeds("cpu")]
            assert len(cfgs) >= 2 and all(c.train_subset is None and c.test_subset is None for c in cfgs)
            assert len({c.epochs for c in cfgs}) == 1 and {c.seed for c in cfgs} == {0, 1}
    aug = next(c for c in paper.COMPARISONS if c.key == "augmentation")
    assert aug.a.drop_rate in (None, 0.0) and aug.b.drop_rate == 0.0  # dropout separated from augmentation
    assert experiments.arm_config(aug.b, "cpu", 0).resolved().drop_rate == 0.0
    assert experiments.arm_config(aug.a, "cpu", 0).resolved().drop_rate == 0.0


def test_cpu_budget_picks_precision_from_the_cpu(monkeypatch):
    import torch

    from densenet_repro import fastpath, train

    for native, amp in ((False, "none"), (True, "bf16")):
        monkeypatch.setattr(fastpath, "bf16_native", lambda native=native: native)
        cfg = experiments.budget_config("densenet40_k12", "c10+", "cpu")
        assert cfg.amp == amp and cfg.fast_blocks is None  # the engine takes the same fast path
        assert train.speed_knobs(cfg, torch.device("cpu")).channels_last is native


def _summary(final, best=None, params=76_018, **kw):
    return {"reported_test_error_pct": final, "best_test_error_pct": best if best is not None else final,
            "best_epoch": 3, "epochs": 3, "params": params, "final_train_loss": 1.0, "wall_time_s": 60.0,
            "model_kwargs": {"depth": 13}, "data": {"train": 50000, "test": 10000, "source": "CIFAR-10 test copy"},
            "amp": "none", "device": "cpu", **kw}


def _cells(head=None):
    cells = []
    for c in experiments.table2_cells("cpu"):
        row = {"model": c.model, "label": c.label, "depth": c.depth, "k": c.k, "dataset": c.dataset}
        if c.config is None:
            row["reason"] = c.reason
        elif head is None:
            row["progress"] = {"epochs": 30, "epochs_done": 4, "test_err_pct": 20.5, "train_time_s": 7200.0,
                               "epoch_time_s": 1600.0, "run_dir": "x"}
        else:
            row["summary"] = _summary(head, epochs=30, run_dir="x")  # read_summary adds the folder
        cells.append(row)
    return cells


def test_headline_verdict_is_computed_from_the_run():
    from densenet_repro import stats, table2, verdicts

    progress = table2.headline(_cells(), "densenet40_k12", "c10+", 9.0)
    text = table2.headline_text(progress)
    assert "In progress, no verdict yet" in text and "4 of 30 epochs" in text and "11.6 h to go" in text
    assert table2.table2_matrix(_cells(), "cpu").set_index("Depth").loc[40, "C10+"].startswith("5.24 / 20.50 after epoch 4/30")
    # one seed: the verdict comes from the Wilson interval over the 10,000 test images (about +-0.6 points)
    for final, verdict in ((8.3, stats.HOLDS), (8.9, stats.INCONCLUSIVE), (9.1, stats.INCONCLUSIVE),
                           (9.7, stats.FAILS)):
        h = table2.headline(_cells(final), "densenet40_k12", "c10+", 9.0)
        assert h["verdict"] == verdict and h["rate"].low < final < h["rate"].high
        assert f"the target **{verdicts.word(verdict)} at the cpu budget" in table2.headline_text(h, "cpu") and "10,000 test images" in table2.headline_text(h)
        claim = table2.claims({}, "cpu", [h])[0]
        assert claim["claim"].startswith("DenseNet (k = 12), L=40") and claim["verdict"] == verdict and claim["scope"]["budget"] == "cpu" and "one seed" in claim["numbers"]
    assert table2.claims({}, "cpu", [progress]) == table2.claims({}, "cpu")  # no headline verdict while it trains
    assert table2.headlines(_cells(9.7), "cpu", heads=[h])["DenseNet (k = 12), L=40, C10+: target <= 9% at 30 epochs"] == (
        "does not hold at the cpu budget (30 epochs of the paper's 300, one seed)")
    matrix = table2.table2_matrix(_cells(8.9), "cpu")
    assert len(matrix) == 13 and matrix.loc[0, "C10"] == "13.63"  # every row of the paper, quoted
    assert table2.counts(_cells(8.9)) == {"cells": 27, "finished": 1, "in progress": 0, "not run": 26}


def test_comparison_verdicts_come_from_intervals():
    from densenet_repro import stats, table2

    def runs(errors):  # arm label -> errors over seeds
        return {(arm, seed): _summary(e) for comp in paper.COMPARISONS for arm in (comp.a, comp.b)
                for seed, e in enumerate(errors[arm.label])}

    # every claim true, by a margin far beyond the seed spread
    ordered = {"DenseNet-BC": [20.0, 20.4], "DenseNet": [30.0, 30.6], "DenseNet, C10+": [30.0, 30.6],
               "DenseNet, C10, dropout 0.2": [40.0, 40.2], "DenseNet, C10 without dropout": [50.0, 50.5]}
    holds = table2.comparison_results(runs(ordered), "cpu")
    assert {r["verdict"] for r in holds} == {stats.HOLDS}
    reversed_ = {k: [100 - e for e in v] for k, v in ordered.items()}
    assert {r["verdict"] for r in table2.comparison_results(runs(reversed_), "cpu")} == {stats.FAILS}
    noisy = {k: [30.0, 34.0] if i % 2 else [31.0, 33.0] for i, k in enumerate(ordered)}
    assert table2.comparison_results(runs(noisy), "cpu")[0]["verdict"] == stats.INCONCLUSIVE
    d = holds[0]["difference"]
    assert d.diff == pytest.approx(-10.1) and d.low < d.diff < d.high
    table = table2.comparisons_table(runs(ordered), "cpu")
    assert (table["Verdict"] == "holds").all() and "20.00, 20.40" in table.iloc[0]["A: final test error %"]


def test_welch_interval_matches_scipy():
    from scipy import stats as ss

    from densenet_repro import stats

    a, b = [1.0, 2.0, 4.0], [3.0, 5.0]
    d = stats.difference(a, b)
    res = ss.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))


def test_a_longer_schedule_is_drawn_beside_the_shorter_at_the_same_fraction():
    import matplotlib
    import pandas as pd

    from densenet_repro import table2

    matplotlib.use("Agg")
    cols = lambda errs, lrs: pd.DataFrame({"epoch": range(1, len(errs) + 1), "train_loss": 1.0, "test_loss": 1.0,  # noqa: E731
                                           "test_err_pct": errs, "lr": lrs})
    h = {"label": "DenseNet", "paper_pct": 5.24, "paper_epochs": 300, "target_pct": 9.0, "epochs": 100,
         "status": "in progress", "epochs_done": 2}
    fig = table2.headline_curves_figure(cols([40.0, 30.0], [0.1, 0.1]), h,
                                        (cols([45.0, 35.0, 30.0], [0.1, 0.1, 0.01]), {"epochs": 3}))
    ours, shorter = fig.axes[1].lines[:2]
    assert list(ours.get_xdata()) == [1, 2] and list(shorter.get_ydata()) == [45.0, 35.0, 30.0]
    assert list(shorter.get_xdata()) == pytest.approx([100 / 3, 200 / 3, 100.0])  # epoch e of 3 at e/3 of 100
    assert "3-epoch run" in shorter.get_label() and "so far (2 of 100)" in fig._suptitle.get_text()
