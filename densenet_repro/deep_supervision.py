"""Implicit deep supervision (the paper's section 4), measured: gradients and linear probes per layer.

The paper argues that every layer of a DenseNet gets "additional supervision from the loss function
through the shorter connections", as deeply-supervised nets do with auxiliary classifiers. Two
measurements make that checkable against a pre-activation ResNet and a plain CNN (ResNet's layers
without shortcuts) of similar depth and size:

- `gradient_rms`: the root mean square of dLoss/d(output) of each layer, for one batch. A layer
  that the loss reaches through short paths gets a gradient that does not fade with its distance
  from the classifier. The ratio first/last layer summarises the decay.
- `probe_accuracy`: a linear classifier (ridge regression on one-hot labels, closed form) on the
  globally pooled features that each depth hands on, fitted on one split of held-out images and
  scored on another. For a DenseNet, the features at layer l of a block are what layer l + 1
  reads: the block input and layers 1..l, concatenated; for the ResNets, the block's output.

"Layers" are the units each family repeats: a DenseNet's dense layers and transitions, a ResNet's
residual blocks, the plain CNN's blocks of two convs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from densenet_repro.models.densenet import DenseNet, _DenseLayer, _Transition
from densenet_repro.models.resnet import CifarResNet
from densenet_repro.runstore import results_root

PROBE_RIDGE = 1e-2  # ridge penalty of the probes, relative to the mean feature variance (standardised features)


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated units of a network, input to output, with readable names."""
    if isinstance(model, DenseNet):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, (_DenseLayer, _Transition))]
    if isinstance(model, CifarResNet):
        return [(f"{s}.{i}", b) for s in ("layer1", "layer2", "layer3") for i, b in enumerate(getattr(model, s))]
    raise TypeError(f"no layer list for {type(model).__name__}: use a DenseNet or a CifarResNet")


def _capture(model: nn.Module, keep: Callable[[str, nn.Module, torch.Tensor], None]) -> list:
    return [m.register_forward_hook(lambda mod, inp, out, n=n: keep(n, mod, inp, out)) for n, m in layers(model)]


def gradient_rms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """RMS of the loss gradient reaching each layer's output, for one batch (train-mode BN, as in training)."""
    outputs: list[torch.Tensor] = []

    def keep(name, mod, inp, out):
        out.retain_grad()
        outputs.append(out)

    hooks = _capture(model, keep)
    try:
        was_training = model.training
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    grads = [float(o.grad.pow(2).mean().sqrt()) for o in outputs]
    model.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> list[np.ndarray]:
    """Per layer, the (N, C) globally pooled features that the next layer reads (module doc)."""
    model.eval()
    chunks: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        feats: list[torch.Tensor] = []
        state: dict[str, torch.Tensor] = {}

        def keep(name, mod, inp, out):
            pooled = out.float().mean((2, 3))
            if isinstance(mod, _DenseLayer):  # the block's running concatenation, pooled per channel
                block = name.rsplit(".", 1)[0]
                if block not in state:
                    state[block] = torch.cat([t.float().mean((2, 3)) for t in inp[0]], 1)
                state[block] = torch.cat([state[block], pooled], 1)
                feats.append(state[block])
            else:
                feats.append(pooled)

        hooks = _capture(model, keep)
        try:
            model(images[i:i + batch_size])
        finally:
            for h in hooks:
                h.remove()
        chunks.append(feats)
    return [torch.cat([c[j] for c in chunks]).numpy() for j in range(len(chunks[0]))]


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                num_classes: int) -> float:
    """Accuracy (%) of a ridge-regression classifier on standardised features, fitted in closed form."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    a = np.hstack([a, np.ones((len(a), 1))])
    b = np.hstack([b, np.ones((len(b), 1))])
    targets = np.eye(num_classes)[train_y]
    reg = PROBE_RIDGE * len(a) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the bias is not penalised
    w = np.linalg.solve(a.T @ a + reg, a.T @ targets)
    return float(((b @ w).argmax(1) == test_y).mean() * 100)


def probe_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, fit: int,
                   num_classes: int = 10) -> list[float]:
    """Probe accuracy per layer: fitted on images[:fit], scored on images[fit:]."""
    y = labels.numpy()
    return [ridge_probe(f[:fit], y[:fit], f[fit:], y[fit:], num_classes) for f in pooled_features(model, images)]


def depth_fraction(n: int) -> np.ndarray:
    """x positions 0..1 for n layers, so that nets of different depths share an axis."""
    return np.linspace(0, 1, n) if n > 1 else np.zeros(1)


# ----------------------------------------------------------------------------------------------
# The measurements of notebook 05, on trained runs and on the same networks at initialisation
# ----------------------------------------------------------------------------------------------

GRAD_BATCHES = 8     # batches of 64 training images: the intervals of the gradient ratios are over these
PROBE_IMAGES = {"smoke": 320, "cpu": 2000, "paper": 10000}  # held-out test images: half fit, half score


def normalised_images(data, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a split, as the network sees them: class-balanced and in a fixed random order.

    A dataset may be stored sorted by class (the image-folder copy of CIFAR-10 is): its first n images
    would be one or two classes, and a probe fitted on one half and scored on the other would see
    different classes.
    """
    from densenet_repro.data import balanced_subset

    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    idx = np.random.default_rng(0).permutation(balanced_subset(y.cpu().numpy(), n, data.num_classes))
    idx = torch.from_numpy(idx)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    return (x[idx].float() / 255 - mean) / std, y[idx].long()


def measure(networks: dict[str, tuple[nn.Module, nn.Module]], data, probe_images: int):
    """Per network, state (initialisation / trained) and layer: gradient RMS (mean over batches) and probe accuracy.

    `networks` maps a name to (untrained model, trained model). Returns (per-layer DataFrame,
    per-batch gradient ratios first/last layer: {(name, state): [ratio, ...]}).
    """
    import pandas as pd

    train_x, train_y = normalised_images(data, "train", 64 * GRAD_BATCHES)
    probe_x, probe_y = normalised_images(data, "test", probe_images)
    rows, ratios = [], {}
    for name, pair in networks.items():
        for state, model in zip(("initialisation", "trained"), pair):
            torch.manual_seed(0)
            per_batch = np.array([gradient_rms(model, train_x[i:i + 64], train_y[i:i + 64])
                                  for i in range(0, len(train_x), 64)])
            ratios[(name, state)] = list(per_batch[:, 0] / per_batch[:, -1])
            probes = probe_accuracy(model, probe_x, probe_y, fit=probe_images // 2, num_classes=data.num_classes)
            names = [n for n, _ in layers(model)]
            for i, (lname, g, acc) in enumerate(zip(names, per_batch.mean(0), probes)):
                rows.append({"network": name, "state": state, "layer": i + 1, "layer name": lname,
                             "depth fraction": depth_fraction(len(names))[i], "gradient RMS": g,
                             "probe accuracy (%)": acc, "probe images scored": probe_images - probe_images // 2})
    return pd.DataFrame(rows), ratios


def gradient_claims(ratios: dict, dense: str, others: list[str]) -> list[dict[str, str]]:
    """'The loss reaches DenseNet's first layer more strongly (relative to its last) than it reaches the
    first layer of each other network', after training, from log10 ratios per batch (Welch interval)."""
    from densenet_repro import stats

    out = []
    for state in ("initialisation", "trained"):
        d = [float(np.log10(r)) for r in ratios[(dense, state)]]
        for other in others:
            o = [float(np.log10(r)) for r in ratios[(other, state)]]
            diff = stats.difference(d, o)
            out.append({"state": state, "comparison": f"{dense} vs {other}",
                        "log10 first/last gradient RMS": f"{diff.mean_a:+.2f} vs {diff.mean_b:+.2f}",
                        "difference [95% interval]": f"{diff.diff:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]",
                        "verdict: the DenseNet's first layer gets relatively more": diff.verdict(claim_a_lower=False)})
    return out


def probe_summary(df, first_fraction: float = 0.5) -> Any:
    """Mean probe accuracy over the first half of each network's layers, and at its last layer."""
    import pandas as pd

    rows = []
    for (name, state), sub in df.groupby(["network", "state"], sort=False):
        early = sub[sub["depth fraction"] <= first_fraction]["probe accuracy (%)"]
        rows.append({"network": name, "state": state, "layers": len(sub),
                     "probe images scored": int(sub["probe images scored"].iloc[0]),
                     "probe accuracy, first half of the layers (%)": round(float(early.mean()), 1),
                     "probe accuracy, last layer (%)": round(float(sub["probe accuracy (%)"].iloc[-1]), 1)})
    return pd.DataFrame(rows)


def figure(df):
    """Gradient RMS and probe accuracy per layer, one legend for both panels below them."""
    from densenet_repro import plots

    fig, (ax1, ax2) = plots.figure(ncols=2, height=5.0)
    for i, (name, sub) in enumerate(df.groupby("network", sort=False)):
        for state, style in (("initialisation", ":"), ("trained", "-")):
            s = sub[sub["state"] == state]
            ax1.plot(s["depth fraction"], s["gradient RMS"], style, marker="o", ms=3, color=f"C{i}",
                     label=f"{name}, {state}")
            ax2.plot(s["depth fraction"], s["probe accuracy (%)"], style, marker="o", ms=3, color=f"C{i}",
                     label=f"{name}, {state}")
    ax1.set(yscale="log", xlabel="relative depth of the layer (0 = first, 1 = last)",
            ylabel="RMS of dLoss/d(output)", title="Loss gradient reaching each layer")
    ax2.set(xlabel="relative depth of the layer", ylabel="linear probe accuracy (%)",
            title="Linear probe on each layer's features")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def networks(runs: dict) -> dict[str, tuple[nn.Module, nn.Module]]:
    """{network label: (the same architecture at a fresh initialisation of the run's seed, the trained run)}."""
    from densenet_repro import create_model
    from densenet_repro.run_weights import load_run_weights

    out = {}
    for (p, seed), s in runs.items():
        torch.manual_seed(seed)
        untrained = create_model(p.model, **p.model_kwargs)
        trained, _, _ = load_run_weights(s["run_dir"], create_model(p.model, **p.model_kwargs))
        n = sum(t.numel() for t in trained.parameters())
        out[f"{p.label()}, {n / 1e3:.0f}k params"] = (untrained, trained)
    return out


def load_probe_data(budget: str, data_root: str | None):
    """C10+ as the runs saw it (synthetic at the smoke budget)."""
    from densenet_repro.data import SYNTHETIC_SIZE, load

    if budget == "smoke":
        return load("c10+", source="synthetic", train_subset=SYNTHETIC_SIZE[0], test_subset=SYNTHETIC_SIZE[1],
                    download=False)
    return load("c10+", data_root=data_root, download=False)


def dataset_text(data) -> str:
    return data.source.description


# ----------------------------------------------------------------------------------------------
# The measurements, made once on the data and kept beside the runs they measure
# ----------------------------------------------------------------------------------------------

# Bumped whenever what `measure` computes changes: a kept measurement of another version is made again.
MEASUREMENT_VERSION = 1
MEASUREMENTS_DIR = "implicit_supervision"  # under results/, beside the runs


def measurement_key(runs: dict, budget: str) -> dict[str, Any]:
    """What a kept measurement must match to be reused: the runs, the images, the method's settings."""
    return {"version": MEASUREMENT_VERSION, "budget": budget,
            "runs": sorted(Path(s["run_dir"]).name for s in runs.values()), "probe_images": PROBE_IMAGES[budget],
            "gradient_batches": GRAD_BATCHES, "probe_ridge": PROBE_RIDGE}


def measurements(runs: dict, budget: str, data_root: str | None, results: str = "results"):
    """`measure` on the trained runs: (per-layer DataFrame, gradient ratios, source).

    The measurement needs the images; it is made once and kept as
    results/implicit_supervision/measurements-<budget>.json (except at the smoke budget), so that the
    report renders from results/ alone, like every other. A kept file is reused while it matches
    `measurement_key` (the same runs, images and settings); delete it to measure again. `source` says
    which data was measured and which file holds the numbers (for provenance.record).
    """
    import json

    import pandas as pd

    from densenet_repro import atomic

    key = measurement_key(runs, budget)
    path = results_root(results) / MEASUREMENTS_DIR / f"measurements-{budget}.json"
    kept = json.loads(path.read_text(encoding="utf-8")) if budget != "smoke" and path.is_file() else None
    if kept is None or kept.get("key") != key:
        data = load_probe_data(budget, data_root)
        layers, ratios = measure(networks(runs), data, PROBE_IMAGES[budget])
        kept = {"key": key, "dataset": dataset_text(data), "layers": layers.to_dict(orient="records"),
                "ratios": [{"network": n, "state": st, "ratios": [float(x) for x in r]}
                           for (n, st), r in ratios.items()]}
        if budget == "smoke":
            return layers, ratios, {"dataset": kept["dataset"], "files": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, kept)
    layers = pd.DataFrame(kept["layers"])
    ratios = {(r["network"], r["state"]): r["ratios"] for r in kept["ratios"]}
    return layers, ratios, {"dataset": kept["dataset"], "files": [path.as_posix()]}


HEADLINE_LABEL = "DenseNet (L=40, k=12), the Table 2 headline run"


def headline_measurements(budget: str, data_root: str | None, results: str = "results"):
    """`measure` on the Table 2 headline network once it is finished (cpu budget): (per-layer DataFrame
    or None, source). Kept as results/implicit_supervision/headline-<budget>.json, keyed by its weights
    file, like `measurements`; before the run finishes: (None, a source that says so)."""
    import hashlib
    import json

    import pandas as pd

    from densenet_repro import atomic, create_model, experiments
    from densenet_repro.run_weights import load_run_weights
    from densenet_repro.runstore import WEIGHTS

    run = experiments.most_trained_headline(data_root=data_root, results=results) if budget == "cpu" else None
    if run is None or run.finished is None:
        return None, {"dataset": None, "files": [], "note": "the headline run has not finished: not measured yet"}
    weights = run.finished / WEIGHTS
    key = {"version": MEASUREMENT_VERSION, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
           "probe_images": PROBE_IMAGES[budget], "gradient_batches": GRAD_BATCHES, "probe_ridge": PROBE_RIDGE}
    path = results_root(results) / MEASUREMENTS_DIR / f"headline-{budget}.json"
    kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if kept is None or kept.get("key") != key:
        torch.manual_seed(run.config.seed)
        untrained = create_model(run.config.model)
        trained, _, _ = load_run_weights(run.finished, create_model(run.config.model))
        data = load_probe_data(budget, data_root)
        layers, _ = measure({HEADLINE_LABEL: (untrained, trained)}, data, PROBE_IMAGES[budget])
        kept = {"key": key, "dataset": dataset_text(data), "layers": layers.to_dict(orient="records")}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, kept)
    # the row names the schedule: the network is the most-trained finished one (experiments.HEADLINE_SCHEDULES)
    return (pd.DataFrame(kept["layers"]).assign(network=f"{HEADLINE_LABEL}, {run.config.epochs} epochs"),
            {"dataset": kept["dataset"], "files": [path.as_posix(), weights.as_posix()]})


def scope(runs: dict, budget: str):
    """The budget the supervision verdicts are reached at: epochs, one network per family, their sizes."""
    from densenet_repro import verdicts
    from densenet_repro.data import get_spec

    if not runs:
        return verdicts.Scope(budget, "no run finished yet")
    epochs = sorted({s["epochs"] for s in runs.values()})
    params = sorted(s["params"] for s in runs.values())
    sizes = f"{params[0] / 1e3:.0f}k-{params[-1] / 1e3:.0f}k parameters"
    paper = "/".join(map(str, sorted({get_spec(s["dataset"]).paper_epochs for s in runs.values()})))
    schedule = f"{' or '.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''} of the paper's {paper}"
    return verdicts.Scope(budget, f"{schedule}, one network per family ({sizes}), intervals over {GRAD_BATCHES} batches")


def claims(gradients, runs: dict, budget: str) -> list[dict[str, Any]]:
    """The gradient comparisons after training as claim records for the index."""
    from densenet_repro import verdicts

    out = []
    for _, r in gradients[gradients["state"] == "trained"].iterrows():
        low, high = (float(x) for x in r["difference [95% interval]"].split("[", 1)[1].rstrip("]").split(","))
        out.append(verdicts.claim(f"Implicit deep supervision (section 4): the loss reaches the first layer of "
                                  f"{r['comparison'].replace(' vs ', ' relatively more strongly than that of ')}",
                                  r.iloc[-1], scope(runs, budget),
                                  f"log10 first/last-layer gradient RMS {r['log10 first/last gradient RMS']}, "
                                  f"difference {r['difference [95% interval]']}",
                                  [verdicts.edge_caveat(low, high, 0.0)]))
    return out


def scaling_text(points, budget: str) -> str:
    """What this budget scales for section 4's three networks, computed from their configs."""
    from densenet_repro import sweeps
    from densenet_repro.data import SYNTHETIC_SIZE
    from densenet_repro.config import lr_schedule_text

    if budget == "paper":
        return "The paper's protocol: 300 epochs, all 50,000 training images."
    configs = [sweeps.config(p, budget, 0, "implicit_supervision") for p in points]
    epochs = sorted({c.resolved().epochs for c in configs})
    data = (f"{SYNTHETIC_SIZE[0]} synthetic images (numbers mean nothing)" if budget == "smoke"
            else "all 50,000 training and 10,000 test images")
    return (f"Scaled at the {budget} budget: {', '.join(p.label() for p in points)}, "
            f"{' or '.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''} each (the paper trains its "
            f"DenseNets for 300 and trains no comparison networks for this argument); "
            f"{lr_schedule_text(configs[0])}; {data}; seed {', '.join(map(str, sweeps.SUPERVISION_SEEDS))}.")


def headlines(gradients, probes) -> dict[str, str]:
    out = {}
    for _, r in gradients[gradients["state"] == "trained"].iterrows():
        out[f"Deep supervision, trained: {r['comparison']}, log10 first/last gradient (difference)"] = (
            r["difference [95% interval]"])
    for _, r in probes[probes["state"] == "trained"].iterrows():
        out[f"Probe accuracy, first half of layers: {r['network']}"] = r["probe accuracy, first half of the layers (%)"]
    return out


def conclusion(gradients, probes, dense: str, scope=None) -> str:
    """What the numbers say about the claim, computed from the tables above (each verdict at `scope`)."""
    trained = gradients[gradients["state"] == "trained"]
    verdicts = list(trained.iloc[:, -1])
    holds = sum(v == "holds" for v in verdicts)
    trained_probes = probes[probes["state"] == "trained"]
    p = trained_probes.set_index("network")["probe accuracy, first half of the layers (%)"]
    best = p.idxmax()
    # 95% binomial half-width of one accuracy on the scored images: differences below it are noise
    n = int(trained_probes["probe images scored"].iloc[0])
    half = 1.96 * math.sqrt(p.max() / 100 * (1 - p.max() / 100) / n) * 100
    runner_up = p.drop(best).max()
    margin = ("more than" if p.max() - runner_up > half else "within")
    from densenet_repro import verdicts as verdict_text

    text = (f"After training, the loss gradient reaches the first layer of {dense} relatively more strongly (against "
            f"its last layer) than it reaches the first layer of {holds} of the {len(verdicts)} other networks (verdicts: "
            f"{', '.join(verdicts)}). The linear probes on the first half of the layers are most accurate for "
            f"{best} ({p.max():.1f}% against {', '.join(f'{v:.1f}%' for k, v in p.items() if k != best)}), "
            f"{margin} the +-{half:.1f} points that {n} scored images allow. "
            "Short paths to the loss predict both; one network per family and a short schedule make this a "
            "measurement of these networks, not a test over training runs.")
    return text if scope is None else verdict_text.with_scope(text, scope)
