"""The fast path's accuracy check (`python -m densenet_repro bench accuracy`): short real runs of the
training engine, fp32 against the fast path.

The fast path changes the rounding (bf16), so its final accuracy is compared with fp32 on short
real runs of the training engine (at the cpu budget: DenseNet-BC at L = 40, 8 epochs, a CIFAR-10
subset, ACCURACY_CPU_SCALE), two seeds each; finished runs are copied to results/bench/accuracy-*/
and found there again without the dataset (committed_accuracy). A committed run is found by its
config hash (train.config_hash): a change to a hashed field of what accuracy_configs returns
leaves them unfound (tests/test_bench.py checks that they are found).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import torch

ACCURACY_MODEL = "densenet_bc100_k12"
ACCURACY_DATASET = "c10+"
ACCURACY_SEEDS = (0, 1)
# The cpu-budget check's own scale, fixed here rather than following the notebooks' cpu budget
# (experiments.budget_config), so that its committed runs stay the runs of this check when that
# budget is retuned: DenseNet-BC at L = 40, 8 epochs, a 5,000/2,000-image CIFAR-10 subset.
ACCURACY_CPU_SCALE = dict(model_kwargs={"depth": 40}, epochs=8, train_subset=5000, test_subset=2000)


def accuracy_configs(budget: str, data_root: str | None, device: str = "cpu",
                     seeds: tuple[int, ...] = ACCURACY_SEEDS) -> list[tuple[str, Any]]:
    """(variant, RunConfig) pairs: 'fp32' (plain blocks, paper precision) and 'fast' (the fast path)."""
    from densenet_repro import experiments, fastpath

    out = []
    for variant in ("fp32", "fast"):
        for seed in seeds:
            cfg = experiments.budget_config(ACCURACY_MODEL, ACCURACY_DATASET, budget, seed=seed, data_root=data_root,
                                            device=device, experiment=f"bench/accuracy-{variant}")
            if budget == "cpu":
                cfg = dataclasses.replace(cfg, **ACCURACY_CPU_SCALE)
            if variant == "fp32":
                cfg = dataclasses.replace(cfg, amp="none", channels_last=False, compile=False, fast_blocks=False)
            else:  # the fast path the benchmark measures, whichever CPU runs the check
                fp = fastpath.BF16_CPU if torch.device(device).type == "cpu" else fastpath.settings(device)
                cfg = dataclasses.replace(cfg, amp=fp["amp"], channels_last=fp["channels_last"], compile=fp["compile"],
                                          fast_blocks=fp["fast_blocks"])
            out.append((variant, cfg))
    return out


def _run_entry(variant: str, cfg, summary: dict[str, Any]) -> dict[str, Any]:
    return {"variant": variant, "seed": cfg.seed, "final_test_error_pct": summary["final_test_error_pct"],
            "train_images_per_s": summary.get("train_images_per_s"), "run_dir": summary.get("run_dir"),
            "amp": cfg.amp, "channels_last": cfg.channels_last, "fast_blocks": variant == "fast",
            "epochs": summary.get("epochs"), "model_kwargs": summary.get("model_kwargs")}


def committed_accuracy(budget: str = "cpu", device: str = "cpu", results: str = "results") -> dict[str, Any] | None:
    """The accuracy comparison from finished runs under results/bench/accuracy-*, found without the data.

    A committed run counts when the plan of exactly the config this code would train finds it
    finished (by config hash, on any data source a committed config.json names when the data is
    absent); None when any run is missing. This lets the notebook render where the dataset is
    absent, naming the data the runs used.
    """
    from densenet_repro.plan import plan
    from densenet_repro.runstore import read_summary

    runs = []
    for variant, cfg in accuracy_configs(budget, None, device):
        cfg = dataclasses.replace(cfg, fast_blocks=variant == "fast", results=results)
        done = plan(cfg).finished
        found = None if done is None else read_summary(done)
        if found is None:
            return None
        runs.append(_run_entry(variant, cfg, found))
    return compare_accuracy(runs, budget)


def run_accuracy(budget: str = "cpu", data_root: str | None = None, device: str = "cpu", *,
                 out: str = "runs", results: str = "results", publish: bool | None = None,
                 progress: str = "auto") -> dict[str, Any]:
    """Train (or find) the fp32 and fast-path runs and compare their final test errors."""
    from densenet_repro import train as train_mod
    from densenet_repro.runstore import publish as publish_run

    publish = budget != "smoke" if publish is None else publish
    runs = []
    for variant, cfg in accuracy_configs(budget, data_root, device):
        cfg = dataclasses.replace(cfg, out=out, results=results, progress=progress, resume=True,
                                  fast_blocks=variant == "fast")
        summary = train_mod.train(cfg)
        if publish:
            summary["run_dir"] = publish_run(summary, results).as_posix()
        runs.append(_run_entry(variant, cfg, summary))
    return compare_accuracy(runs, budget)


def compare_accuracy(runs: list[dict[str, Any]], budget: str) -> dict[str, Any]:
    """Mean final test error per variant, their difference, and the seed spread (max - min)."""
    err = {v: [r["final_test_error_pct"] for r in runs if r["variant"] == v] for v in ("fp32", "fast")}
    mean = {v: statistics.mean(e) for v, e in err.items()}
    spread = {v: max(e) - min(e) for v, e in err.items()}
    diff = mean["fast"] - mean["fp32"]
    # With two seeds per variant no test is possible; the numbers are shown with two readings:
    # "same": |difference of the means| <= the larger seed spread; "not worse": the fast path's
    # mean error exceeds fp32's by at most the larger seed spread (it may be better by any amount).
    same = abs(diff) <= max(spread.values())
    not_worse = diff <= max(spread.values())
    speed = {v: statistics.median(r["train_images_per_s"] for r in runs if r["variant"] == v and r["train_images_per_s"])
             for v in ("fp32", "fast") if any(r["train_images_per_s"] for r in runs if r["variant"] == v)}
    return {"budget": budget, "runs": runs, "mean_error_pct": mean, "difference_pct": diff,
            "spread_fp32_pct": spread["fp32"], "spread_fast_pct": spread["fast"], "same_within_spread": same,
            "not_worse_within_spread": not_worse,
            "engine_train_images_per_s": speed}


def accuracy_for_budget(budget: str, data_root: str | None, device: str = "cpu") -> dict[str, Any]:
    """The notebook's accuracy comparison: smoke trains toy runs now; cpu finds the committed runs
    (results/bench/accuracy-*) or trains them (about 20 minutes on 2 cores)."""
    from densenet_repro.budgets import check_budget

    check_budget(budget)
    if budget == "paper":
        raise ValueError("the accuracy check has smoke and cpu budgets (a paper-protocol comparison is two "
                         "300-epoch runs per variant): use budget='cpu'")
    if budget != "smoke":
        found = committed_accuracy(budget, device)
        if found is not None:
            return found
    return run_accuracy(budget, data_root, device, progress="none")
