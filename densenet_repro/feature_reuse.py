"""Feature reuse (the paper's Figure 5): how strongly each layer of a trained DenseNet reads each earlier one.

Inside a dense block, layer l reads the concatenation [x_0, x_1, ..., x_{l-1}]: x_0 is the block's
input (the stem's or the previous transition's output, k_0 maps) and x_s (s >= 1) are the k maps of
layer s. Its first conv (the 3x3 conv, or the 1x1 bottleneck of DenseNet-B/-BC) has one slice of
input channels per source s. The paper colours pixel (s, l) by "the average L1 norm (normalized by
number of input feature-maps) of the weights connecting convolutional layer s to l". We compute,
with W_l the weight of that conv (out, in, kh, kw) and c(s) the input channels that come from x_s:

    raw[s, l] = sum over out, c in c(s), kh, kw of |W_l[out, c, kh, kw]|  /  |c(s)|

i.e. the L1 norm of the slice divided by the number of input maps it reads. Different targets have
different fan-ins, so the heat maps show each target column divided by its largest entry:

    map[s, l] = raw[s, l] / max over s' of raw[s', l]     (1 = the source that target reads most)

Two extra columns per block: the transition layer's 1x1 conv (blocks 1 and 2), which reads
[x_0, ..., x_L] of the block, and the classifier (block 3), whose weight (classes, maps) reads the
same maps after the final BN-ReLU and global pooling (the kernel is 1x1, so the same formula holds).

The paper's four observations become numbers here (`observations`); the verdicts come from
`stats` intervals, never from the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from densenet_repro import stats
from densenet_repro.models.densenet import DenseNet, _DenseBlock, _Transition

SPREAD_THRESHOLD = 0.5  # observations 1 and 2: a target "spreads" its weight when it uses > half its inputs
FINAL_FRACTION = 0.25   # observation 4: the classifier's "final feature maps" = the last quarter of block 3


@dataclass
class BlockMap:
    """One dense block's heat map: rows are sources s = 0..L, columns targets 1..L and one extra."""

    block: int                 # 1-based
    raw: np.ndarray            # (L + 1, L + 1): raw[s, j] for target column j; NaN where s cannot feed it
    extra: str                 # "transition 1", "transition 2" or "classifier": the last column

    @property
    def normalised(self) -> np.ndarray:
        return self.raw / np.nanmax(self.raw, axis=0, keepdims=True)

    @property
    def num_layers(self) -> int:
        return self.raw.shape[0] - 1

    def column_labels(self) -> list[str]:
        return [str(l) for l in range(1, self.num_layers + 1)] + [self.extra]


def _slices(k0: int, k: int, num_sources: int) -> list[slice]:
    """Input channels of x_0 (k_0 maps) and of x_1..x_{n-1} (k maps each)."""
    return [slice(0, k0)] + [slice(k0 + (s - 1) * k, k0 + s * k) for s in range(1, num_sources)]


def _per_source(weight: torch.Tensor, k0: int, k: int, num_sources: int) -> np.ndarray:
    """raw[s] = L1 norm of the weight slice reading x_s, divided by the maps x_s has (module doc)."""
    w = weight.detach().abs().float()
    if w.dim() == 2:  # Linear (classes, maps): a 1x1 kernel
        w = w[:, :, None, None]
    if w.shape[1] != k0 + (num_sources - 1) * k:
        raise ValueError(f"a weight with {w.shape[1]} input maps does not read k_0 = {k0} + {num_sources - 1} x k = {k}")
    return np.array([float(w[:, sl].sum()) / (sl.stop - sl.start) for sl in _slices(k0, k, num_sources)])


def heat_maps(model: DenseNet) -> list[BlockMap]:
    """Figure 5 for a CIFAR DenseNet (any variant): one BlockMap per dense block."""
    if not isinstance(model, DenseNet):
        raise TypeError(f"heat maps are defined for a DenseNet, got {type(model).__name__}")
    modules = list(model.features.named_children())
    blocks = [(i, m) for i, (_, m) in enumerate(modules) if isinstance(m, _DenseBlock)]
    k = model.growth_rate
    maps = []
    for b, (pos, block) in enumerate(blocks, start=1):
        layers = list(block.values())
        n = len(layers)
        k0 = layers[0].conv1.in_channels
        raw = np.full((n + 1, n + 1), np.nan)
        for l, layer in enumerate(layers, start=1):
            raw[:l, l - 1] = _per_source(layer.conv1.weight, k0, k, l)
        after = modules[pos + 1][1] if pos + 1 < len(modules) else None
        if isinstance(after, _Transition):
            raw[:, n] = _per_source(after.conv.weight, k0, k, n + 1)
            extra = f"transition {b}"
        else:
            raw[:, n] = _per_source(model.classifier.weight, k0, k, n + 1)
            extra = "classifier"
        maps.append(BlockMap(b, raw, extra))
    return maps


# ----------------------------------------------------------------------------------------------
# The paper's four observations, as numbers
# ----------------------------------------------------------------------------------------------


def spread(column: np.ndarray) -> float:
    """How evenly a target reads its sources: (sum a)^2 / (n sum a^2), from 1/n (one source) to 1 (all equal).

    The participation ratio of the weights divided by the number of sources: the fraction of its
    inputs that the target effectively uses.
    """
    a = column[~np.isnan(column)]
    return float(a.sum() ** 2 / (len(a) * (a ** 2).sum()))


@dataclass
class Observation:
    name: str
    claim: str
    measure: str
    value: float
    low: float
    high: float
    n: int
    verdict: str
    threshold: float  # the line its interval is judged against

    @property
    def numbers(self) -> str:
        """'+0.995 [+0.993, +0.996]', or the value alone when one layer gives no interval."""
        if np.isnan(self.low):
            return f"{self.value:+.3f} (one value: no interval)"
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _one_sample(name, claim, measure, values, threshold, above: bool) -> Observation:
    iv = stats.mean_interval(list(values))
    return Observation(name, claim, measure, iv.mean, iv.low, iv.high, iv.n,
                       iv.verdict_against(threshold, claim_above=above), threshold)


def observations(maps: list[BlockMap]) -> list[Observation]:
    """The paper's observations (1)-(4) on one network, each with a 95% interval and a verdict.

    (1) and (2): the mean spread of the targets' columns (layers with >= 2 sources; transitions),
    against SPREAD_THRESHOLD. (3): in blocks 2 and 3, per target layer with >= 2 sources, the
    normalised weight on x_0 (the transition's output) minus the mean on the other sources; the
    claim is that it is below 0. (4): the classifier's normalised weight on the last
    FINAL_FRACTION of block 3's layers against the rest (Welch interval; the claim: higher).
    """
    layer_spreads = [spread(m.normalised[:, j]) for m in maps for j in range(1, m.num_layers)]
    transitions = [spread(m.normalised[:, -1]) for m in maps if m.extra.startswith("transition")]
    first_row = [m.normalised[0, j] - np.nanmean(m.normalised[1:, j]) for m in maps[1:]
                 for j in range(1, m.num_layers)]
    last = maps[-1].normalised[:, -1]
    n_final = max(1, int(round(FINAL_FRACTION * maps[-1].num_layers)))
    final, rest = list(last[-n_final:]), list(last[:-n_final])
    d = stats.difference(final, rest)
    return [
        _one_sample("1", "each layer spreads its weights over many inputs of its block",
                    f"mean spread of {len(layer_spreads)} layers (threshold {SPREAD_THRESHOLD})",
                    layer_spreads, SPREAD_THRESHOLD, above=True),
        _one_sample("2", "transition layers spread their weights over all layers of the preceding block",
                    f"mean spread of {len(transitions)} transition layers (threshold {SPREAD_THRESHOLD})",
                    transitions, SPREAD_THRESHOLD, above=True),
        _one_sample("3", "layers in blocks 2 and 3 give the least weight to the transition's output",
                    f"weight on x_0 minus mean weight on the other sources, {len(first_row)} layers",
                    first_row, 0.0, above=False),
        Observation("4", "the classifier concentrates on the final feature maps",
                    f"classifier weight on the last {n_final} layers minus the other {len(rest)} sources",
                    d.diff, d.low, d.high, len(final) + len(rest), d.verdict(claim_a_lower=False), 0.0),
    ]


def observations_table(named: dict[str, list[BlockMap]]):
    """One row per observation, one column group per network (e.g. trained, short-trained, untrained)."""
    import pandas as pd

    rows: dict[str, dict[str, str]] = {}
    for label, maps in named.items():
        for o in observations(maps):
            row = rows.setdefault(o.name, {"Observation (paper)": o.claim, "Measure": o.measure})
            row[label] = f"{o.numbers}: {o.verdict}"
    return pd.DataFrame(list(rows.values()))


def figure(maps: list[BlockMap], title: str = ""):
    """The heat maps side by side, as the paper draws them (source rows, target columns)."""
    from densenet_repro import plots

    fig, axes = plots.figure(ncols=len(maps), width=4.2 * len(maps), height=4.0)
    for ax, m in zip(np.atleast_1d(axes), maps):
        im = ax.imshow(np.ma.masked_invalid(m.normalised), cmap="viridis", vmin=0, vmax=1, origin="upper")
        ax.set_title(f"Dense block {m.block}")
        ax.set_xticks(range(m.num_layers + 1), m.column_labels(), rotation=90, fontsize=7)
        ax.set_yticks(range(m.num_layers + 1), [str(s) for s in range(m.num_layers + 1)], fontsize=7)
        ax.set_xlabel("target layer l")
        ax.set_ylabel("source layer s")
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="weight / column max")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------
# The networks of Figure 5: the headline run as it stands, earlier snapshots of it, untrained
# ----------------------------------------------------------------------------------------------

UNTRAINED = "untrained (initialisation)"  # the label of the untrained network's maps


def figure5_maps(budget: str, *, data_root: str | None = None, device: str = "auto", results: str = "results",
                 out: str = "runs", train_missing: bool = True) -> tuple[dict[str, list[BlockMap]], dict]:
    """The heat maps notebook 05 shows: {label: maps} for the trained network, its earlier snapshots and
    the untrained one, plus where they came from.

    cpu: the Table 2 headline run (DenseNet L=40, k=12, C10+): its weights when finished, else its
    committed checkpoint, and the weights it kept on the way (snapshots/, experiments.headline_snapshots).
    paper: the paper-protocol run of the same cell. smoke: the small DenseNet of the smoke sweep.
    """
    from pathlib import Path

    from densenet_repro import create_model, experiments, sweeps
    from densenet_repro.budgets import check_budget
    from densenet_repro.data import get_spec
    from densenet_repro.plan import plan
    from densenet_repro.run_weights import load_run_weights
    from densenet_repro.runstore import snapshot_path
    from densenet_repro.train import train

    check_budget(budget)
    if budget == "cpu":
        run = experiments.most_trained_headline(data_root=data_root, device=device, results=results)
        cfg, folder = run.config, run.finished or run.run_dir
    elif budget == "paper":
        cfg = experiments.budget_config("densenet40_k12", "c10+", "paper", data_root=data_root, device=device,
                                        experiment=experiments.EXPERIMENT)
        folder = Path(train(cfg)["run_dir"]) if train_missing else plan(cfg).finished
    else:
        p = sweeps.SUPERVISION["smoke"][0]
        runs = sweeps.run_points([p], budget, "smoke_figure5", seeds=(0,), data_root=data_root, device=device,
                                 progress="none", out=out, results=results, weights=True)
        cfg = sweeps.config(p, budget, 0, "smoke_figure5")
        folder = Path(runs[(p, 0)]["run_dir"])
    trained, epoch, finished = load_run_weights(folder, create_model(cfg.model, **cfg.model_kwargs),
                                                "train it first (python -m densenet_repro table2 --headline)")
    info = {"run_dir": folder.as_posix(), "epoch": epoch, "epochs": cfg.epochs, "finished": finished,
            "paper_epochs": get_spec(cfg.dataset).paper_epochs,
            "model": cfg.model, "files": [], "in_progress": [], "snapshots": []}
    if finished:  # the weights the maps come from, and the run's record
        info["files"] = [(folder / name).as_posix() for name in ("summary.json", "metrics.csv", "weights.pt")
                         if (folder / name).is_file()]
    else:  # a checkpoint that moves every epoch: the report records the epoch it showed
        from densenet_repro.table2 import progress_record

        info["in_progress"] = [progress_record(cfg.model, cfg.dataset, folder.as_posix(), epoch, cfg.epochs)]
    named = {f"trained {epoch} of {cfg.epochs} epochs" + ("" if finished else " (so far)"): heat_maps(trained)}
    # the weights the run kept on the way (keep_weights_at): what training changed, epoch by epoch
    for e in sorted((e for e in cfg.keep_weights_at if e < epoch), reverse=True):
        path = snapshot_path(folder, e)
        if path.is_file():
            snap = create_model(cfg.model, **cfg.model_kwargs)
            snap.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            named[f"trained {e} of {cfg.epochs} epochs (snapshot, {lr_phase(cfg, e)})"] = heat_maps(snap.eval())
            info["files"].append(path.as_posix())
            info["snapshots"].append(e)
    torch.manual_seed(cfg.seed)
    named[UNTRAINED] = heat_maps(create_model(cfg.model, **cfg.model_kwargs))
    return named, info


def lr_phase(config, epoch: int) -> str:
    """'the last epoch at LR 0.1' where the learning rate drops after `epoch`, else 'LR 0.1'."""
    from densenet_repro.config import lr_at

    lr = lr_at(config, epoch - 1)
    last = epoch == config.epochs or lr_at(config, epoch) != lr
    return f"{'the last epoch at ' if last else ''}LR {lr:g}"


def source_text(info: dict) -> str:
    state = ("its final weights" if info["finished"] else
             f"its checkpoint after epoch {info['epoch']} of {info['epochs']} (the run is not finished: "
             "these maps show a partly trained network)")
    from densenet_repro.provenance import repo_relative

    return f"Network: `{info['model']}` from `{repo_relative(info['run_dir'])}`, {state}."


def headlines(table) -> dict[str, str]:
    """The observations' numbers for the most-trained network (the table's first network column), for the
    index; their verdicts go to `claims`, with their budget."""
    label = table.columns[2]
    return {f"Figure 5 observation {i + 1} ({label})": row[label].rsplit(": ", 1)[0]
            for i, (_, row) in enumerate(table.iterrows())}


def scope(info: dict, budget: str):
    """The budget Figure 5's verdicts are reached at: the network and how far it trained."""
    from densenet_repro import verdicts

    return verdicts.Scope(budget, f"{info['model']}, {info['epochs']} epochs scheduled of the paper's {info['paper_epochs']}; "
                                  "intervals over the layers of one network")


def claims(named: dict[str, list[BlockMap]], info: dict, budget: str) -> list[dict]:
    """The four observations on the most-trained network as claim records, with their computed caveats:
    the untrained network satisfies it too; the interval ends at the threshold."""
    from densenet_repro import verdicts

    trained = observations(next(iter(named.values())))
    untrained = {o.name: o for o in observations(named[UNTRAINED])} if UNTRAINED in named else {}
    out = []
    for o in trained:
        caveats = [verdicts.edge_caveat(o.low, o.high, o.threshold)]
        if o.verdict == stats.HOLDS and untrained.get(o.name) and untrained[o.name].verdict == stats.HOLDS:
            caveats.append("the untrained network satisfies it as well: this shows the initialisation, not training")
        state = "final weights" if info["finished"] else "checkpoint of the run in progress"
        out.append(verdicts.claim(f"Figure 5 observation {o.name}: {o.claim}", o.verdict, scope(info, budget),
                                  f"after {info['epoch']} of {info['epochs']} epochs ({state}), {o.measure}: "
                                  f"{o.numbers}", caveats))
    return out


def edge_text(named: dict[str, list[BlockMap]]) -> str:
    """The observations of the most-trained network whose interval ends at its threshold, in words ('' if none)."""
    from densenet_repro import verdicts

    label, maps = next(iter(named.items()))
    notes = [f"observation {o.name} is {c}" for o in observations(maps)
             if (c := verdicts.edge_caveat(o.low, o.high, o.threshold))]
    return f"For the network {label}: " + "; ".join(notes) + "." if notes else ""


def coverage_entries(budget: str, info: dict) -> list[dict]:
    from densenet_repro import coverage

    if not info["finished"]:
        return [coverage.entry("Figure 5", "weight heat maps", "in progress",
                               f"the paper's network, from a checkpoint of its {budget} budget run",
                               run=info["in_progress"][0]["run"])]
    if budget == "paper":
        return [coverage.entry("Figure 5", "weight heat maps", "computed", "the paper's network and protocol")]
    return [coverage.entry("Figure 5", "weight heat maps", "scaled",
                           f"the paper's network, trained {info['epoch']} of {info['epochs']} epochs", budget=budget)]


def untrained_caveat(table) -> str:
    """Which observations the untrained network satisfies as well: those say nothing about what training did."""
    untrained = [c for c in table.columns if c.startswith("untrained")]
    trained = table.columns[2]
    if not untrained:
        return ""
    both = [str(i + 1) for i, (_, r) in enumerate(table.iterrows())
            if r[trained].endswith(": holds") and r[untrained[0]].endswith(": holds")]
    if not both:
        return "None of the observations the trained network satisfies is satisfied by the untrained one as well."
    return (f"Observation(s) {', '.join(both)} hold for the untrained network as well: a freshly initialised layer "
            f"already reads all its inputs about equally, so at this point of training they show the "
            f"initialisation, not what training made of it.")
