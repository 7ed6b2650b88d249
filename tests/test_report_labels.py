"""The labels a reader of the reports found misleading, each computed now from what it describes."""

from __future__ import annotations

import pandas as pd

from densenet_repro import experiments, figure4, stats, sweeps, table2


def test_an_arm_lists_its_seeds_apart_from_its_spread():
    text = table2._arm_text("DenseNet", [39.30, 38.55], 0.53, 37762)
    assert text == "DenseNet (37,762 params): 38.92 ± 0.53 (seeds: 39.30, 38.55)"


def test_a_two_epoch_schedule_says_both_drops_fall_at_the_start_of_epoch_2():
    cfg = experiments.budget_config("densenet40_k12", "c10+", "cpu")
    assert table2.lr_schedule_text(cfg) == "LR 0.1 in epoch 1, 0.001 in epoch 2"
    assert "both learning-rate drops fall at the start of epoch 2" in table2.schedule_note(cfg)
    assert table2.schedule_note(experiments.headline_config()) == ""  # 30 epochs: three phases
    assert any("never train at 0.01" in n for n in table2.schedule_notes("cpu"))


def test_the_headline_time_to_go_counts_the_evaluation(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,test_err_pct,epoch_time_s,eval_time_s\n1,40.0,500,100\n2,30.0,500,100\n")
    cell = {"model": "densenet40_k12", "dataset": "c10+", "label": "DenseNet (k = 12)", "depth": 40,
            "progress": {"epochs": 30, "epochs_done": 2, "test_err_pct": 30.0, "train_time_s": 1200.0,
                         "epoch_time_s": 500.0, "run_dir": run.as_posix()}}
    text = table2.headline_text(table2.headline([cell], "densenet40_k12", "c10+", 9.0))
    assert "about 4.7 h to go at its median epoch time (training and evaluation)" in text  # 28 x 600 s


def test_the_flops_table_names_each_model_once():
    from densenet_repro import architecture
    from densenet_repro.models.registry import FAMILY_MODELS

    names = list(architecture.model_summary()["model"])
    assert not set(FAMILY_MODELS) & set(names) and "densenet40_k12" in names


def test_figure4_right_states_its_networks_and_their_ratio():
    text = figure4.curve_networks_text(sweeps.CURVES["cpu"])
    assert "126,746 parameters, 13.2x the DenseNet-BC (L=10, k=8)'s 9,630" in text and "width 16" in text


def test_ours_and_the_quoted_resnets_are_said_not_comparable():
    df = pd.DataFrame({"variant": ["pre-act ResNet"] * 2, "parameters": [32786, 79826], "epochs": [2, 2]})
    note = figure4.resnet_rows_note(df, "cpu")
    assert note.startswith("Not comparable") and "1.7M-36.5M" in note and "32,786-79,826" in note


def test_a_fourfold_training_time_between_seeds_is_explained():
    df = pd.DataFrame({"network": ["a", "a", "b", "b"], "training time (min)": [23.1, 5.5, 8.0, 8.2]})
    (note,) = figure4.timing_notes(df)
    assert "a took 23.1 and 5.5 min" in note and "4.2x" in note and "other jobs" in note
    assert figure4.timing_notes(df[df["network"] == "b"]) == []


def test_observations_the_untrained_network_shares_carry_the_caveat_into_the_claims():
    import numpy as np

    from densenet_repro import feature_reuse as fr

    # three blocks of 3 layers whose every layer reads its sources almost equally (source s feeds target >= s)
    raw = np.where(np.tril(np.ones((4, 4)), -1) == 1, np.nan, 1.0 + 0.01 * np.arange(16.0).reshape(4, 4))
    maps = [fr.BlockMap(b, raw.copy(), e) for b, e in ((1, "transition 1"), (2, "transition 2"), (3, "classifier"))]
    named = {"trained 7 of 30 epochs": maps, fr.UNTRAINED: maps}
    info = {"model": "densenet40_k12", "epoch": 7, "epochs": 30, "finished": False, "paper_epochs": 300}
    claims = {c["claim"][:22]: c for c in fr.claims(named, info, "cpu")}
    first = claims["Figure 5 observation 1"]
    assert first["verdict"] == stats.HOLDS and first["scope"]["budget"] == "cpu"
    assert any("untrained network satisfies it as well" in c for c in first["caveats"])
    assert "after 7 of 30 epochs (checkpoint of the run in progress)" in first["numbers"]
