"""Figure 4 analysis: parameter efficiency of the DenseNet variants and of DenseNet-BC against ResNets.

Every number here is read from the runs `sweeps.run_points` made; the paper's are quoted from
`densenet_repro.paper` and labelled so. The three claims of Figure 4, as we test them:

- Left, "DenseNet-BC is consistently the most parameter-efficient variant". Each variant's error is
  interpolated, seed by seed, at log-spaced parameter counts (linear in log parameters, only inside
  the range the variant was trained on). At each count that DenseNet-BC and another variant cover,
  DenseNet-BC is compared with the best other variant there by a Welch interval over seeds. The
  claim holds when it holds at every such count, and does not hold when it fails at one.
- Middle, "DenseNet-BC needs about 1/3 of the parameters of a ResNet for the same accuracy". Per seed,
  both curves are inverted (log parameters as a function of error) and compared at the error in the
  middle of their common error range; the ratio ResNet / DenseNet-BC gets a t-interval over seeds.
  The claim "fewer parameters" holds when the interval of the ratio is above 1; the table also says
  whether the paper's 3 lies inside it.
- Right, "ResNet reaches a lower training loss but a similar test error": the final-epoch training
  loss and test error of the two runs, Welch intervals over seeds. "Similar" means the interval of
  the difference lies within +-SIMILAR_PCT points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from densenet_repro import stats, verdicts
from densenet_repro.sweeps import Point
from densenet_repro.tables import precision_label

SIMILAR_PCT = 1.0   # Figure 4 right: test errors within 1 point count as similar
GRID_POINTS = 6     # Figure 4 left: parameter counts compared, log-spaced over the range trained
TIME_SPREAD_NOTE = 1.5  # a network whose training time differs more than this between seeds gets a note
PAPER_EPOCHS = 300      # the paper's CIFAR schedule (quoted)


def runs_frame(runs: dict[tuple[Point, int], dict[str, Any]]):
    """One row per finished run: the network, its size and its errors."""
    import pandas as pd

    columns = ["variant", "network", "model", "depth", "k", "width", "parameters", "seed", "epochs",
               "final test error (%)", "best test error (%)", "final train loss", "training time (min)",
               "device", "precision"]
    rows = []
    for (p, seed), s in runs.items():
        kw = p.model_kwargs
        rows.append({"variant": p.group, "network": p.label(), "model": p.model, "depth": kw["depth"],
                     "k": kw.get("growth_rate"), "width": kw.get("width"),
                     "parameters": s["params"], "seed": seed, "epochs": s["epochs"],
                     "final test error (%)": s["final_test_error_pct"], "best test error (%)": s["best_test_error_pct"],
                     "final train loss": s["final_train_loss"], "training time (min)": round(s["wall_time_s"] / 60, 1),
                     "device": s["device"], "precision": precision_label(s["amp"])})
    return pd.DataFrame(rows, columns=columns)  # the columns also when no run has finished yet


def with_flops(df):
    """Add the multiply-adds of one 32x32 forward pass (torch.utils.flop_counter)."""
    from densenet_repro import architecture, create_model

    cache: dict[tuple, float] = {}

    def mmacs(row) -> float:
        kw = {"depth": int(row["depth"])}
        for key, name in (("k", "growth_rate"), ("width", "width")):
            if row[key] == row[key] and row[key] is not None:  # not NaN / None
                kw[name] = int(row[key])
        key = (row["model"], tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = round(architecture.macs(create_model(row["model"], **kw), image_size=32) / 1e6, 2)
        return cache[key]

    return df.assign(**{"MMACs per image": [mmacs(r) for _, r in df.iterrows()]})


def summary_table(df):
    """Mean and seed spread of the final error per network."""
    g = df.groupby(["variant", "network", "parameters"], sort=False)["final test error (%)"]
    out = g.agg(["mean", "std", "count"]).reset_index().sort_values(["variant", "parameters"])
    return out.rename(columns={"mean": "final test error, mean (%)", "std": "sd over seeds", "count": "seeds"})


# ----------------------------------------------------------------------------------------------
# Interpolation, seed by seed
# ----------------------------------------------------------------------------------------------


def _curves(df, variant: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{seed: (log10 parameters, final error)} of one variant, sorted by size."""
    out = {}
    for seed, sub in df[df["variant"] == variant].groupby("seed"):
        sub = sub.sort_values("parameters")
        out[int(seed)] = (np.log10(sub["parameters"].to_numpy(float)), sub["final test error (%)"].to_numpy(float))
    return out


def _error_at(curve: tuple[np.ndarray, np.ndarray], log_params: float) -> float:
    x, y = curve
    if len(x) < 2 or not x[0] <= log_params <= x[-1]:
        return math.nan
    return float(np.interp(log_params, x, y))


def efficiency_by_range(df, best: str = "DenseNet-BC") -> tuple[Any, str]:
    """Figure 4 left's claim at common parameter counts: (table, overall verdict)."""
    import pandas as pd

    variants = list(dict.fromkeys(df["variant"]))
    curves = {v: _curves(df, v) for v in variants}
    spans = [c[0] for cs in curves.values() for c in cs.values() if len(c[0]) >= 2]
    rows, verdicts = [], []
    # Log-spaced counts over the whole range trained; at each, the variants whose range covers it.
    grid = np.linspace(min(x[0] for x in spans), max(x[-1] for x in spans), GRID_POINTS) if spans else []
    for lp in grid:
        errs = {v: [e for e in (_error_at(c, lp) for c in curves[v].values()) if not math.isnan(e)] for v in variants}
        means = {v: float(np.mean(e)) for v, e in errs.items() if e}
        if best not in means or len(means) < 2:
            continue
        rival = min((v for v in means if v != best), key=means.get)
        d = stats.difference(errs[best], errs[rival])
        verdict = d.verdict()
        verdicts.append(verdict)
        rows.append({"parameters": f"{10 ** lp:,.0f}",
                     **{f"{v} (%)": f"{means[v]:.2f}" if v in means else None for v in variants},
                     "best variant here": min(means, key=means.get), "best other": rival,
                     f"{best} - best other (points, 95% interval)": f"{d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}]",
                     "verdict": verdict})
    if not verdicts:
        return (pd.DataFrame(rows),
                stats.INCONCLUSIVE + " (DenseNet-BC shares no parameter range with another variant yet)")
    if all(v == stats.HOLDS for v in verdicts):
        overall = stats.HOLDS
    elif any(v == stats.FAILS for v in verdicts):
        overall = stats.FAILS
    else:
        overall = stats.INCONCLUSIVE
    return pd.DataFrame(rows), overall


def parameter_ratio(df, a: str = "pre-act ResNet", b: str = "DenseNet-BC") -> dict[str, Any]:
    """Figure 4 middle: parameters a / b at equal error, per seed, with a t-interval."""
    ca, cb = _curves(df, a), _curves(df, b)
    ratios = []
    for seed in sorted(set(ca) & set(cb)):
        (xa, ya), (xb, yb) = ca[seed], cb[seed]
        if len(xa) < 2 or len(xb) < 2:
            continue
        top, bottom = min(ya.max(), yb.max()), max(ya.min(), yb.min())
        if bottom >= top:
            continue  # the two curves share no error range at this seed
        err = (top + bottom) / 2
        # log parameters as a function of error: each curve sorted by error (it falls with size)
        la = np.interp(err, ya[np.argsort(ya)], xa[np.argsort(ya)])
        lb = np.interp(err, yb[np.argsort(yb)], xb[np.argsort(yb)])
        ratios.append(10 ** (la - lb))
    out: dict[str, Any] = {"seeds": len(ratios), "ratios": ratios}
    if not ratios:
        out.update(ratio=math.nan, low=math.nan, high=math.nan,
                   verdict=stats.INCONCLUSIVE + " (no seed has both curves over a common error range)")
        return out
    iv = stats.mean_interval([math.log10(r) for r in ratios])
    out.update(ratio=10 ** iv.mean, low=10 ** iv.low if not math.isnan(iv.low) else math.nan,
               high=10 ** iv.high if not math.isnan(iv.high) else math.nan,
               verdict=iv.verdict_against(0.0, claim_above=True),
               paper_ratio_inside=(not math.isnan(iv.low)) and 10 ** iv.low <= 3 <= 10 ** iv.high)
    return out


def ratio_text(r: dict[str, Any]) -> str:
    if not r["seeds"]:
        return f"Parameters of a pre-activation ResNet / DenseNet-BC at equal error: {r['verdict']}."
    spread = "" if math.isnan(r["low"]) else f" (95% interval {r['low']:.2f} to {r['high']:.2f})"
    inside = {True: "inside", False: "outside"}.get(r.get("paper_ratio_inside"), "not testable with")
    return (f"At equal test error a pre-activation ResNet needs **{r['ratio']:.2f}x** the parameters of "
            f"DenseNet-BC{spread}, over {r['seeds']} seed(s) ({', '.join(f'{x:.2f}' for x in r['ratios'])}). "
            f"'DenseNet-BC needs fewer parameters': **{r['verdict']}**. The paper's 3x is {inside} this interval.")


# ----------------------------------------------------------------------------------------------
# Figure 4 right: training curves
# ----------------------------------------------------------------------------------------------


def curves_claims(runs: dict, a: str = "pre-act ResNet", b: str = "DenseNet-BC") -> list[dict[str, str]]:
    """'a reaches a lower training loss' and 'a and b reach a similar test error', from the last epoch."""
    final = {g: {"loss": [], "err": []} for g in (a, b)}
    for (p, seed), s in runs.items():
        if p.group in final:
            final[p.group]["loss"].append(s["final_train_loss"])
            final[p.group]["err"].append(s["final_test_error_pct"])
    if not (final[a]["loss"] and final[b]["loss"]):
        return [{"claim": "ResNet reaches a lower training loss", "measured": "not trained yet",
                 "verdict": stats.INCONCLUSIVE},
                {"claim": "... but a similar test error", "measured": "not trained yet", "verdict": stats.INCONCLUSIVE}]
    loss = stats.difference(final[a]["loss"], final[b]["loss"])
    err = stats.difference(final[a]["err"], final[b]["err"])
    if math.isnan(err.low):
        similar = stats.INCONCLUSIVE
    elif -SIMILAR_PCT <= err.low and err.high <= SIMILAR_PCT:
        similar = stats.HOLDS
    elif err.low > SIMILAR_PCT or err.high < -SIMILAR_PCT:
        similar = stats.FAILS
    else:
        similar = stats.INCONCLUSIVE
    n = f"{loss.n_a} and {loss.n_b} seeds"
    return [
        {"claim": "ResNet reaches a lower training loss",
         "measured": f"final train loss {loss.mean_a:.3f} vs {loss.mean_b:.3f}, difference {loss.diff:+.3f} "
                     f"[{loss.low:+.3f}, {loss.high:+.3f}] ({n})",
         "verdict": loss.verdict()},
        {"claim": f"... but a similar test error (within {SIMILAR_PCT:g} point)",
         "measured": f"final test error {err.mean_a:.2f} vs {err.mean_b:.2f} %, difference {err.diff:+.2f} "
                     f"[{err.low:+.2f}, {err.high:+.2f}] ({n})",
         "verdict": similar},
    ]


def per_epoch(runs: dict):
    """metrics.csv of every run, stacked, with its network and seed."""
    import pandas as pd

    from densenet_repro.train import read_metrics

    frames = [read_metrics(s["run_dir"]).assign(network=p.label(), variant=p.group, seed=seed)
              for (p, seed), s in runs.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def error_vs_params(ax, df, title: str) -> None:
    """Mean final error against parameters, one line per variant, seed spread as error bars."""
    for i, (variant, sub) in enumerate(df.groupby("variant", sort=False)):
        g = sub.groupby("parameters")["final test error (%)"]
        m, sd = g.mean(), g.std().fillna(0)
        ax.errorbar(m.index, m.values, yerr=sd.values, marker="o", capsize=3, label=variant, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.legend()


def curves_figure(epochs):
    """Training loss and test error per epoch (one point per epoch trained), mean over seeds."""
    from matplotlib.ticker import MaxNLocator

    from densenet_repro import plots

    fig, (ax1, ax2) = plots.figure(ncols=2)
    for i, (name, sub) in enumerate(epochs.groupby("network", sort=False)):
        g = sub.groupby("epoch")
        ax1.plot(g["train_loss"].mean(), marker="o", color=f"C{i}", label=name)
        ax2.plot(g["test_err_pct"].mean(), marker="o", color=f"C{i}", label=name)
    n = int(epochs["epoch"].max()) if len(epochs) else 0
    ax1.set(xlabel="epoch", ylabel="training loss", title=f"Training loss (mean over seeds, {n} epochs)")
    ax2.set(xlabel="epoch", ylabel="test error (%)", title=f"Test error (mean over seeds, {n} epochs)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(fontsize="small")
    return fig


# ----------------------------------------------------------------------------------------------
# Tables for the reports
# ----------------------------------------------------------------------------------------------


def growth_rate_table(df):
    """The k sweep: depth, error (mean, sd over seeds), parameters, multiply-adds and training time per k."""
    g = df.groupby("k")
    return g.agg(**{"network": ("network", "first"), "parameters": ("parameters", "first"),
                    "MMACs per image": ("MMACs per image", "first"),
                    "final test error, mean (%)": ("final test error (%)", "mean"),
                    "sd over seeds": ("final test error (%)", "std"), "seeds": ("seed", "count"),
                    "training time per run (min)": ("training time (min)", "mean")}).reset_index()


def resnet_rows(df, budget: str):
    """Table 2's ResNet rows (quoted) and the pre-activation ResNets we trained at this budget."""
    import pandas as pd

    from densenet_repro import paper

    rows = [{"network": f"{r.method}, L={r.depth} (paper, quoted)", "parameters": r.params,
             "C10+ error (%)": f"{r.error('c10+'):.2f}"} for r in paper.TABLE2 if "ResNet" in r.method]
    mark = "" if budget == "paper" else " †"
    ours = df[df["variant"] == "pre-act ResNet"].groupby(["network", "parameters"], sort=False)["final test error (%)"]
    for (name, params), errs in ours:
        sd = f" ± {errs.std():.2f}" if len(errs) > 1 else ""
        rows.append({"network": f"{name} (ours, {budget} budget, {len(errs)} seed(s))", "parameters": f"{params:,}",
                     "C10+ error (%)": f"{errs.mean():.2f}{sd}{mark}"})
    return pd.DataFrame(rows)


def resnet_rows_note(df, budget: str) -> str:
    """Why the quoted rows and ours are not comparable, from their sizes and schedules ('' at the paper budget)."""
    from densenet_repro import paper

    ours = df[df["variant"] == "pre-act ResNet"]
    if budget == "paper" or not len(ours):
        return ""
    quoted = [r.params for r in paper.TABLE2 if "ResNet" in r.method]
    millions = sorted(float(q.rstrip("M")) for q in quoted)
    return (f"Not comparable: the quoted networks have {millions[0]:g}M-{millions[-1]:g}M parameters and train "
            f"{PAPER_EPOCHS} epochs; ours at the {budget} budget have {ours['parameters'].min():,}-"
            f"{ours['parameters'].max():,} and train {' or '.join(map(str, sorted(ours['epochs'].unique())))}. "
            "They are listed together to show the scale, not to compare errors.")


def curve_networks_text(points: list[Point]) -> str:
    """The two networks of Figure 4 (right): their sizes and ratio, beside the paper's (quoted)."""
    from densenet_repro import create_model

    by_group = {p.group: p for p in points}
    resnet, dense = by_group.get("pre-act ResNet"), by_group.get("DenseNet-BC")
    if not (resnet and dense):
        return ""
    size = {p.group: sum(t.numel() for t in create_model(p.model, **p.model_kwargs).parameters())
            for p in (resnet, dense)}
    ratio = size[resnet.group] / size[dense.group]
    return (f"The {resnet.label()} has {size[resnet.group]:,} parameters, {ratio:.1f}x the "
            f"{dense.label()}'s {size[dense.group]:,} (the paper: "
            f"ResNet-1001 with 10.2M against DenseNet-BC-100 with 0.8M, {10.2 / 0.8:.2f}x, quoted).")


def scope(df, budget: str) -> verdicts.Scope:
    """The budget Figure 4's verdicts are reached at: growth rates, epochs, sizes, seeds."""
    if not len(df):
        return verdicts.Scope(budget, "no run finished yet")
    ks = sorted({int(k) for k in df["k"].dropna()})
    parts = [f"k = {', '.join(map(str, ks))}"] if ks else []
    parts += [f"{' or '.join(map(str, sorted(df['epochs'].unique())))} epochs of the paper's {PAPER_EPOCHS}",
              f"{_short(df['parameters'].min())}-{_short(df['parameters'].max())} parameters",
              f"{df['seed'].nunique()} seed{'s' if df['seed'].nunique() != 1 else ''}"]
    return verdicts.Scope(budget, ", ".join(parts))


def _short(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def timing_notes(df) -> list[str]:
    """A note when one network's training time differs much between its seeds: the machine was shared."""
    g = df.groupby("network")["training time (min)"]
    spread = (g.max() / g.min()).dropna()
    if not len(spread) or spread.max() < TIME_SPREAD_NOTE:
        return []
    worst = spread.idxmax()
    return [f"Training times measure the machine as much as the network: {worst} took {g.max()[worst]:.1f} and "
            f"{g.min()[worst]:.1f} min at two seeds ({spread.max():.1f}x). The runs shared a 2-core machine with other "
            "jobs for part of the time, and their summaries do not record the load."]


def efficiency_claim(table, verdict: str, df, budget: str) -> dict[str, Any]:
    """Figure 4 left's claim as a claim record for the index: the differences at each parameter count."""
    col = "DenseNet-BC - best other (points, 95% interval)"
    rows = [r for _, r in table.iterrows()] if len(table) and col in table else []
    numbers = "; ".join(f"{r['parameters']} params: {r[col]}" for r in rows) or "no common parameter range"
    caveats = [f"at {r['parameters']} params, {c}" for r in rows
               if (c := verdicts.edge_caveat(*_interval(r[col]), 0.0))]
    word, _, why = verdict.partition(" (")
    return verdicts.claim("DenseNet-BC is consistently the most parameter-efficient variant (Figure 4 left): BC minus "
                          "the best other variant at equal parameters", word, scope(df, budget), numbers,
                          caveats + ([why.rstrip(")")] if why else []))


def _interval(text: str) -> tuple[float, float]:
    """'+1.79 [+0.11, +3.46]' -> (0.11, 3.46)."""
    low, high = text.split("[", 1)[1].rstrip("]").split(",")
    return float(low), float(high)


def ratio_claim(r: dict[str, Any], df, budget: str) -> dict[str, Any]:
    """Figure 4 middle's claim as a claim record for the index."""
    word, _, why = r["verdict"].partition(" (")
    caveats = [why.rstrip(")")] if why else []
    if r["seeds"] and not math.isnan(r["low"]):
        caveats += [verdicts.edge_caveat(r["low"], r["high"], 1.0),
                    f"the paper's 3x is {'inside' if r.get('paper_ratio_inside') else 'outside'} the interval"]
    return verdicts.claim("DenseNet-BC needs fewer parameters than a pre-activation ResNet for the same error "
                          "(Figure 4 middle; the paper: about 1/3)", word, scope(df, budget),
                          ratio_headline(r) if r["seeds"] else "no seed has both curves over a common error range",
                          caveats)


def curve_claims_records(claims: list[dict[str, str]], df, budget: str) -> list[dict[str, Any]]:
    """Figure 4 right's two claims (`curves_claims`) as claim records for the index."""
    return [verdicts.claim("Figure 4 right: " + c["claim"].replace("... but ", "the larger ResNet reaches "),
                           c["verdict"], scope(df, budget), c["measured"]) for c in claims]


def ratio_headline(r: dict[str, Any]) -> str:
    """The ratio and its interval, without the verdict (which `ratio_claim` carries with its budget)."""
    if not r["seeds"]:
        return "not measured: no seed has both curves over a common error range"
    spread = "" if math.isnan(r["low"]) else f" [{r['low']:.2f}, {r['high']:.2f}]"
    return f"{r['ratio']:.2f}x{spread} over {r['seeds']} seed{'s' if r['seeds'] != 1 else ''}"


def dataset_used(runs: dict) -> str:
    sources = sorted({s["data"]["source"] for s in runs.values() if "data" in s})
    return "; ".join(sources) if sources else "no run finished yet"


def coverage_entries(item: str, budget: str, runs: dict, planned: int) -> list[dict]:
    from densenet_repro import coverage

    aspect = {"Figure 4 (right)": "training and test curves"}.get(item, "error vs parameters")
    if not runs:
        return [coverage.entry(item, aspect, "prepared", f"{budget} budget: 0 of {planned} runs finished")]
    note = f"{len(runs)} of {planned} runs finished"
    if budget == "paper":
        return [coverage.entry(item, aspect, "computed", note)]
    return [coverage.entry(item, aspect, "scaled", f"smaller networks, short schedule; {note}", budget=budget)]
