"""What notebooks 03-05 train: each figure's networks at each budget, as RunConfigs for the engine.

A `Point` is one network of a figure (a registry family and its depth, growth rate or width). At the
`paper` budget the points are the paper's networks with its protocol (300 epochs); at `cpu` they are
the same families scaled down (smaller L and k, narrower ResNets, a short schedule) and trained on all
50,000 CIFAR-10 images; at `smoke`, toy sizes on synthetic data. Every point is trained at every
seed of `SEEDS`, cached by config hash, and published to results/<experiment>/ like Table 2's runs.

How the cpu budget was sized: one SGD step of 64 images, fp32, two threads of a 2-core AVX2 EPYC
(782 steps per epoch): DenseNet L=13 k=12 0.39 s, DenseNet-BC L=22 k=12 0.48 s, DenseNet-BC L=16
k=24 0.89 s, pre-activation ResNet L=20 0.54 s, plain CNN L=20 0.21 s. At k = 12 the Figure 4 grid
alone would take about 2.8 h at two epochs and two seeds, so the cpu budget uses k = 8 (about 0.6x
the time) and ResNets of half width; `plan_table` prints the cost that each plan's runs measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from densenet_repro.budgets import check_budget
from densenet_repro.config import RunConfig, lr_schedule_text
from densenet_repro.data import SYNTHETIC_SIZE
from densenet_repro.experiments import run_fields, train_or_read

SEEDS = {"smoke": (0, 1), "cpu": (0, 1), "paper": (0, 1, 2)}
EPOCHS = {"smoke": 1, "cpu": 2, "paper": 300}


@dataclass(frozen=True)
class Point:
    """One network of a figure."""

    group: str                       # the line it belongs to, e.g. "DenseNet-BC"
    model: str                       # registry family, e.g. "densenet_bc"
    kwargs: tuple[tuple[str, Any], ...]  # depth, growth_rate, width (a tuple: points are hashable)
    epochs: int | None = None        # None: the budget's EPOCHS

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def label(self) -> str:
        names = {"depth": "L={}", "growth_rate": "k={}", "width": "width {}"}
        kwargs = self.model_kwargs
        if ("resnet" in self.model or "plain" in self.model) and "width" not in kwargs:
            kwargs = kwargs | {"width": PAPER_WIDTH}  # the factory's default, named: widths differ between points
        parts = [names[key].format(value) for key, value in kwargs.items() if key in names]
        return f"{self.group} ({', '.join(parts)})"


def point(group: str, model: str, epochs: int | None = None, **kwargs) -> Point:
    return Point(group, model, tuple(sorted(kwargs.items())), epochs)


VARIANTS = {"DenseNet": "densenet", "DenseNet-B": "densenet_b", "DenseNet-C": "densenet_c",
            "DenseNet-BC": "densenet_bc"}


def _variant_grid(k: int, layers_per_block: tuple[int, ...]) -> list[Point]:
    """Every variant at n layers per block: L = 3n + 4 without bottleneck, 6n + 4 with it."""
    from densenet_repro.models.densenet import VARIANTS as BC

    return [point(group, model, depth=(6 if BC[model][0] else 3) * n + 4, growth_rate=k)
            for group, model in VARIANTS.items() for n in layers_per_block]


# Figure 4 left: the paper trains the four variants at several depths with k = 12 for 300 epochs.
FIG4_LEFT = {
    "paper": _variant_grid(12, (6, 12, 16)),     # L = 40, 76, 100 (3n+4) and 40, 76, 100 (6n+4)
    "cpu": _variant_grid(8, (1, 2, 3)),          # L = 7, 10, 13 and 10, 16, 22; 4k to 43k parameters
    "smoke": _variant_grid(4, (1, 2)),
}
# Beyond the paper: the growth rate swept at a fixed depth of DenseNet-BC.
K_SWEEP = {
    "paper": [point("DenseNet-BC", "densenet_bc", depth=100, growth_rate=k) for k in (6, 12, 24, 40)],
    "cpu": [point("DenseNet-BC", "densenet_bc", depth=16, growth_rate=k) for k in (4, 8, 16)],
    "smoke": [point("DenseNet-BC", "densenet_bc", depth=10, growth_rate=k) for k in (2, 4)],
}
# Figure 4 middle: pre-activation ResNets of several sizes against the DenseNet-BC line of FIG4_LEFT.
RESNETS = {
    "paper": [point("pre-act ResNet", "preact_resnet", depth=d) for d in (164, 1001)],
    "cpu": [point("pre-act ResNet", "preact_resnet", depth=d, width=8) for d in (11, 20, 29)],
    "smoke": [point("pre-act ResNet", "preact_resnet", depth=d, width=4) for d in (11, 20)],
}
# Figure 4 right: training curves of a ResNet with about 12x the parameters of a DenseNet-BC
# (paper: pre-act ResNet-1001, 10.2M, against DenseNet-BC-100, 0.8M). cpu: 127k against 9.6k (13x),
# with the DenseNet-BC run of FIG4_LEFT (the same point: trained once) and the budget's 2 epochs.
CURVES = {
    "paper": [point("DenseNet-BC", "densenet_bc", depth=100, growth_rate=12),
              point("pre-act ResNet", "preact_resnet", depth=1001)],
    "cpu": [point("DenseNet-BC", "densenet_bc", depth=10, growth_rate=8),
            point("pre-act ResNet", "preact_resnet", depth=11)],
    "smoke": [point("DenseNet-BC", "densenet_bc", epochs=2, depth=10, growth_rate=4),
              point("pre-act ResNet", "preact_resnet", epochs=2, depth=11, width=4)],
}
# Section 4 (notebook 05): a DenseNet, a pre-activation ResNet and a plain CNN of similar depth and
# size, for the gradient and probe measurements (one seed: they measure one network each).
SUPERVISION = {
    "paper": [point("DenseNet", "densenet", depth=40, growth_rate=12),
              point("pre-act ResNet", "preact_resnet", depth=38),
              point("plain CNN", "plain_cnn", depth=38)],
    "cpu": [point("DenseNet", "densenet", epochs=1, depth=16, growth_rate=12),
            point("pre-act ResNet", "preact_resnet", epochs=1, depth=20),
            point("plain CNN", "plain_cnn", epochs=1, depth=14)],
    "smoke": [point("DenseNet", "densenet", depth=10, growth_rate=4),
              point("pre-act ResNet", "preact_resnet", depth=11, width=4),
              point("plain CNN", "plain_cnn", depth=8, width=4)],
}
SUPERVISION_SEEDS = (0,)


def config(p: Point, budget: str, seed: int, experiment: str, *, data_root: str | None = None,
           device: str = "auto") -> RunConfig:
    """The RunConfig of one point at a budget (C10+, the paper's recipe, the budget's schedule and data)."""
    return RunConfig(model=p.model, dataset="c10+", model_kwargs=p.model_kwargs,
                     epochs=p.epochs or EPOCHS[check_budget(budget)], seed=seed, experiment=experiment,
                     num_threads=1 if budget == "smoke" else None, data_root=data_root, device=device,
                     **run_fields(budget))


def run_points(points: list[Point], budget: str, experiment: str, *, seeds: tuple[int, ...] | None = None,
               data_root: str | None = None, device: str = "auto", progress: str = "auto",
               train_missing: bool = True, weights: bool = False, out: str = "runs",
               results: str = "results") -> dict[tuple[Point, int], dict[str, Any]]:
    """Train (or read) every point at every seed: {(point, seed): summary} for the finished ones.

    With train_missing=False only finished runs are read (a report of work in progress). Finished
    runs of the cpu and paper budgets are published to results/<experiment>/ (with weights.pt when
    `weights`, for the analyses that read the trained network).
    """
    done: dict[tuple[Point, int], dict[str, Any]] = {}
    for seed in seeds or SEEDS[check_budget(budget)]:  # seed 0 of every point first: a partial sweep is usable
        for p in points:
            cfg = dataclasses.replace(config(p, budget, seed, experiment, data_root=data_root, device=device),
                                      progress=progress, resume=True, out=out, results=results)
            summary = train_or_read(cfg, train_missing=train_missing, publish_results=budget != "smoke",
                                    results=results, weights=weights)
            if summary is not None:
                done[(p, seed)] = summary
    return done


# What `python -m densenet_repro sweeps` trains: the experiment, the plans, the seeds, whether weights are kept.
PLANS = {
    "supervision": ("implicit_supervision", (SUPERVISION,), SUPERVISION_SEEDS, True),
    "figure4": ("figure4", (FIG4_LEFT, RESNETS, CURVES, K_SWEEP), None, False),
}


def run_plans(budget: str, only: tuple[str, ...] = tuple(PLANS), **kwargs) -> dict[str, dict]:
    """Train every plan of a budget, seed by seed (seed 0 of every point first), resumable and cached."""
    out = {}
    for name in only:
        experiment, plans, seeds, weights = PLANS[name]
        points = list(dict.fromkeys(p for plan in plans for p in plan[check_budget(budget)]))
        for seed in seeds or SEEDS[budget]:
            out[name] = out.get(name, {}) | run_points(points, budget, experiment, seeds=(seed,), weights=weights,
                                                       **kwargs)
    return out


def planned(points: list[Point], budget: str, seeds: tuple[int, ...] | None = None) -> int:
    return len(points) * len(seeds or SEEDS[budget])


def plan_table(points: list[Point], budget: str, runs: dict, seeds: tuple[int, ...] | None = None):
    """Each point: parameters, schedule, data, seeds finished and the training time they measured."""
    import pandas as pd

    from densenet_repro import create_model

    rows = []
    for p in points:
        mine = [s for (q, _), s in runs.items() if q == p]
        params = sum(t.numel() for t in create_model(p.model, **p.model_kwargs).parameters())
        rows.append({
            "network": p.label(), "parameters": f"{params:,}", "epochs": p.epochs or EPOCHS[budget],
            "training images": f"{SYNTHETIC_SIZE[0]} synthetic" if budget == "smoke" else "all 50,000",
            "seeds finished": f"{len(mine)} of {len(seeds or SEEDS[budget])}",
            "training time per run": (f"{sum(s['wall_time_s'] for s in mine) / len(mine) / 60:.1f} min"
                                      if mine else "-"),
            "device": ", ".join(sorted({s["device"] for s in mine})) or "-",
        })
    return pd.DataFrame(rows)


PAPER_K, PAPER_WIDTH, PAPER_EPOCHS = 12, 16, 300  # Figure 4's growth rate, the ResNets' first-stage width, CIFAR epochs


def scaling_text(points: list[Point], budget: str) -> str:
    """What a budget scales against the paper, computed from its points (one sentence per kind)."""
    if budget == "paper":
        return "The paper's networks and protocol: 300 epochs, all 50,000 training images."
    ks = sorted({p.model_kwargs["growth_rate"] for p in points if "growth_rate" in p.model_kwargs})
    widths = sorted({p.model_kwargs.get("width", PAPER_WIDTH) for p in points if "resnet" in p.model or "plain" in p.model})
    depths = sorted({p.model_kwargs["depth"] for p in points})
    schedules = {p.epochs or EPOCHS[budget]: lr_schedule_text(config(p, budget, 0, "scaling")) for p in points}
    parts = [f"depths L = {', '.join(map(str, depths))}",
             " or ".join(f"{e} epoch(s) ({text})" for e, text in sorted(schedules.items()))
             + f" instead of {PAPER_EPOCHS}"]
    if ks:
        parts.insert(0, f"growth rate k = {', '.join(map(str, ks))} (the paper's Figure 4: {PAPER_K})")
    if widths:
        parts.insert(1, f"ResNet width {', '.join(map(str, widths))} (the papers': {PAPER_WIDTH})")
    data = (f"{SYNTHETIC_SIZE[0]} synthetic images (numbers mean nothing)" if budget == "smoke"
            else "all 50,000 training and 10,000 test images")
    return f"Scaled at the {budget} budget: " + "; ".join(parts) + f"; {data}."

