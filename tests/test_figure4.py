"""Figure 4's claims, computed from run summaries built by hand (the analysis, not the training)."""

from __future__ import annotations

import math

import pytest

from densenet_repro import figure4, stats, sweeps
from densenet_repro.sweeps import point


def _summary(params: int, err: float, loss: float = 1.0) -> dict:
    return {"params": params, "epochs": 2, "final_test_error_pct": err, "best_test_error_pct": err,
            "final_train_loss": loss, "wall_time_s": 60.0, "device": "cpu", "amp": "none",
            "data": {"source": "synthetic"}}


def _runs(lines: dict[str, list[tuple[int, int, float]]], noise=(0.0, 0.3)) -> dict:
    """{group: [(depth, params, error)]} -> runs at two seeds, the second `noise` points worse."""
    runs = {}
    for group, pts in lines.items():
        model = {"DenseNet-BC": "densenet_bc", "DenseNet": "densenet", "pre-act ResNet": "preact_resnet"}[group]
        for depth, params, err in pts:
            p = point(group, model, depth=depth, growth_rate=8) if model != "preact_resnet" else \
                point(group, model, depth=depth, width=8)
            for seed, extra in enumerate(noise):
                runs[(p, seed)] = _summary(params, err + extra)
    return runs


def test_bc_most_efficient_holds_when_it_is_better_everywhere_and_fails_when_worse():
    better = _runs({"DenseNet-BC": [(10, 10_000, 30.0), (16, 20_000, 25.0), (22, 40_000, 20.0)],
                    "DenseNet": [(7, 10_000, 35.0), (10, 20_000, 30.0), (13, 40_000, 26.0)]}, noise=(0.0, 0.2))
    table, verdict = figure4.efficiency_by_range(figure4.runs_frame(better))
    assert verdict == stats.HOLDS and len(table) == figure4.GRID_POINTS
    worse = _runs({"DenseNet-BC": [(10, 10_000, 40.0), (16, 20_000, 35.0), (22, 40_000, 30.0)],
                   "DenseNet": [(7, 10_000, 35.0), (10, 20_000, 30.0), (13, 40_000, 26.0)]}, noise=(0.0, 0.2))
    assert figure4.efficiency_by_range(figure4.runs_frame(worse))[1] == stats.FAILS


def test_parameter_ratio_recovers_a_known_factor_of_three():
    runs = _runs({"DenseNet-BC": [(10, 10_000, 30.0), (16, 20_000, 25.0), (22, 40_000, 20.0)],
                  "pre-act ResNet": [(11, 30_000, 30.0), (20, 60_000, 25.0), (29, 120_000, 20.0)]}, noise=(0.0, 0.1))
    r = figure4.parameter_ratio(figure4.runs_frame(runs))
    assert r["seeds"] == 2 and r["ratio"] == pytest.approx(3.0, rel=1e-6)
    assert r["verdict"] == stats.HOLDS and "3.00x" in figure4.ratio_text(r)


def test_parameter_ratio_without_a_common_error_range_is_inconclusive():
    runs = _runs({"DenseNet-BC": [(10, 10_000, 10.0), (16, 20_000, 8.0)],
                  "pre-act ResNet": [(11, 30_000, 40.0), (20, 60_000, 35.0)]})
    r = figure4.parameter_ratio(figure4.runs_frame(runs))
    assert r["seeds"] == 0 and math.isnan(r["ratio"]) and r["verdict"].startswith(stats.INCONCLUSIVE)


def test_curve_claims_lower_loss_and_similar_error():
    bc, res = point("DenseNet-BC", "densenet_bc", depth=10, growth_rate=8), point("pre-act ResNet", "preact_resnet", depth=11)
    runs = {(bc, 0): _summary(10_000, 20.0, loss=0.50), (bc, 1): _summary(10_000, 20.2, loss=0.52),
            (res, 0): _summary(130_000, 20.1, loss=0.30), (res, 1): _summary(130_000, 20.3, loss=0.31)}
    loss, err = figure4.curves_claims(runs)
    assert loss["verdict"] == stats.HOLDS
    assert err["verdict"] == stats.HOLDS  # within SIMILAR_PCT
    far = {**runs, (res, 0): _summary(130_000, 30.0, 0.3), (res, 1): _summary(130_000, 30.2, 0.31)}
    assert figure4.curves_claims(far)[1]["verdict"] == stats.FAILS


def test_every_cpu_plan_point_builds_and_names_its_size():
    from densenet_repro import create_model

    for plan in (sweeps.FIG4_LEFT, sweeps.K_SWEEP, sweeps.RESNETS, sweeps.CURVES, sweeps.SUPERVISION):
        for budget in ("smoke", "cpu"):
            for p in plan[budget]:
                create_model(p.model, **p.model_kwargs)
                assert f"L={p.model_kwargs['depth']}" in p.label()
    # the variants of Figure 4 left keep equal layers per block: L = 3n + 4 or 6n + 4
    depths = {(p.group, p.model_kwargs["depth"]) for p in sweeps.FIG4_LEFT["cpu"]}
    assert ("DenseNet", 13) in depths and ("DenseNet-BC", 22) in depths


def test_every_table_and_claim_renders_before_any_run_has_finished():
    df = figure4.with_flops(figure4.runs_frame({}))
    assert len(figure4.summary_table(df)) == 0
    table, verdict = figure4.efficiency_by_range(df)
    assert verdict.startswith(stats.INCONCLUSIVE)
    assert figure4.parameter_ratio(df)["verdict"].startswith(stats.INCONCLUSIVE)
    assert all(c["verdict"] == stats.INCONCLUSIVE for c in figure4.curves_claims({}))
    from densenet_repro import paper

    assert len(figure4.resnet_rows(df, "cpu")) == sum("ResNet" in r.method for r in paper.TABLE2)  # quoted only
    assert len(figure4.per_epoch({})) == 0
