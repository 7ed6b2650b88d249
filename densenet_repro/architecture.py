"""Everything notebook 01 shows about the architecture, computed from the models in this repo.

Nothing here is typed in except what is quoted from the paper or from torchvision and labelled so:
- Table 1 (layer configuration of DenseNet-121/169/201/264) is read off the modules and a forward
  pass at 224x224 with forward hooks (`table1`);
- the parameter column of Table 2 counts our parameters and puts them beside the paper's rounded
  values, quoted in `registry.PAPER_PARAMS` (`param_table`);
- the feature-map growth k_0 + k(l-1) inside a block compares each dense layer's actual input
  channels with the formula (`growth_table`);
- the L(L+1)/2 connections of a small block are found by tracing which tensors each layer
  receives in a forward pass (`connections`, drawn by `draw_connections`);
- FLOPs come from torch.utils.flop_counter.FlopCounterMode, which counts 2 FLOPs per
  multiply-add; we report multiply-adds (MACs), the unit of torchvision's "GFLOPS" (`macs`);
- Figure 3 and the torchvision equivalence check, the ImageNet side of the notebook, are in imagenet.py.

Shapes, parameter counts and FLOPs need no numbers, so the models are built on the "meta" device:
no memory, no initialisation cost, a 224x224 forward pass of DenseNet-264 in well under a second.

Notebook 01's module (with imagenet.py), as figure4.py, feature_reuse.py and deep_supervision.py
serve notebooks 03-05: each function is one of its tables or figures, and `verdicts` and
`coverage_entries` read them all together.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from densenet_repro import paper
from densenet_repro.models import DenseNet, create_model
from densenet_repro.models.registry import PAPER_PARAMS

TABLE1_MODELS = ("densenet121", "densenet169", "densenet201", "densenet264")

# Row labels of the paper's Table 2 (the method as printed, and L), from densenet_repro.paper.
TABLE2_LABELS = {r.model: (r.method, r.depth) for r in paper.TABLE2 if r.model}


def display_name(name: str) -> str:
    """'densenet121' -> 'DenseNet-121', 'resnet50' -> 'ResNet-50'."""
    for prefix, label in (("densenet", "DenseNet-"), ("resnet", "ResNet-")):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return label + name[len(prefix):]
    return name


def _size(shape: Sequence[int]) -> str:
    return f"{shape[-2]} × {shape[-1]}" if len(shape) == 4 else "1 × 1"


def build(name: str, device: str | torch.device = "meta", **kwargs) -> nn.Module:
    """A registered model (ours) or a torchvision model ("tv:resnet50"), in eval mode, on `device`.

    torchvision models are built with weights=None (random init, nothing downloaded).
    """
    with torch.device(device):
        if name.startswith("tv:"):
            import torchvision

            model = getattr(torchvision.models, name[3:])(weights=None, **kwargs)
        else:
            model = create_model(name, **kwargs)
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------


def stage_shapes(model: nn.Module, image_size: int = 224) -> dict[str, tuple[int, ...]]:
    """Output shape of every child of model.features (and of transition conv/pool and the
    classifier), recorded by forward hooks during one forward pass at image_size."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []

    def hook(name):
        return lambda mod, inp, out: shapes.__setitem__(name, tuple(out.shape))

    watched = dict(model.features.named_children())
    for name, mod in model.features.named_children():
        if name.startswith("transition"):
            watched[name + ".conv"] = mod.conv
            watched[name + ".pool"] = mod.pool
    watched["classifier"] = model.classifier
    for name, mod in watched.items():
        hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            dev = next(model.parameters()).device
            model(torch.zeros(1, 3, image_size, image_size, device=dev))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _conv_text(conv: nn.Conv2d) -> str:
    k = conv.kernel_size
    s = f"{k[0]} × {k[1]} conv"
    return s + (f", stride {conv.stride[0]}" if conv.stride[0] != 1 else "")


def _layer_rows(model: DenseNet, image_size: int) -> list[tuple[str, str, str]]:
    """(layer group, output size, configuration) rows of Table 1 for one model."""
    shapes = stage_shapes(model, image_size)
    f = model.features
    rows = []
    rows.append(("Convolution", _size(shapes["conv0"]), _conv_text(f.conv0)))
    if hasattr(f, "pool0"):
        p = f.pool0
        rows.append(("Pooling", _size(shapes["pool0"]),
                     f"{p.kernel_size} × {p.kernel_size} max pool, stride {p.stride}"))
    for name, mod in f.named_children():
        if name.startswith("denseblock"):
            b = name[len("denseblock"):]
            layers = list(mod.children())
            convs = [m for m in layers[0].modules() if isinstance(m, nn.Conv2d)]
            inner = ", ".join(_conv_text(c) for c in convs)
            rows.append((f"Dense Block ({b})", _size(shapes[name]), f"[{inner}] × {len(layers)}"))
        elif name.startswith("transition"):
            t = name[len("transition"):]
            rows.append((f"Transition Layer ({t})", _size(shapes[name + ".conv"]), _conv_text(mod.conv)))
            pool = mod.pool
            kind = "average" if isinstance(pool, nn.AvgPool2d) else "max"
            rows.append((f"Transition Layer ({t})", _size(shapes[name + ".pool"]),
                         f"{pool.kernel_size} × {pool.kernel_size} {kind} pool, stride {pool.stride}"))
    h, w = shapes["norm5"][-2:]
    # the global pooling is functional in forward(): its window is the last feature map's size
    rows.append(("Classification Layer", "1 × 1", f"{h} × {w} global average pool"))
    rows.append(("Classification Layer", _size(shapes["classifier"]),
                 f"{shapes['classifier'][-1]}D fully-connected, softmax"))
    return rows


def table1(names: Sequence[str] = TABLE1_MODELS, image_size: int = 224):
    """The paper's Table 1 regenerated from our models: one row per layer group, one column per net.

    Raises if the nets disagree on the output sizes (they share one column in the paper).
    """
    import pandas as pd

    models = {n: build(n) for n in names}
    per_model = {n: _layer_rows(m, image_size) for n, m in models.items()}
    first = per_model[names[0]]
    for n, rows in per_model.items():
        if [(r[0], r[1]) for r in rows] != [(r[0], r[1]) for r in first]:
            raise ValueError(f"{n} has other layer groups/output sizes than {names[0]}: not one Table 1")
    data = {"Layers": [r[0] for r in first], "Output Size": [r[1] for r in first]}
    for n, rows in per_model.items():
        data[display_name(n) + f" (k = {models[n].growth_rate})"] = [r[2] for r in rows]
    return pd.DataFrame(data)


def stage_channels(names: Sequence[str] = TABLE1_MODELS, image_size: int = 224):
    """Feature maps (channels) after every stage, from the same hooked forward pass (not in Table 1)."""
    import pandas as pd

    cols = {}
    for n in names:
        shapes = stage_shapes(build(n), image_size)
        cols[display_name(n)] = {k: v[1] for k, v in shapes.items() if "." not in k and len(v) == 4
                            and not k.startswith(("norm", "relu"))}
    return pd.DataFrame(cols).rename_axis("stage").reset_index()


# --------------------------------------------------------------------------------------------
# Table 2, parameter column
# --------------------------------------------------------------------------------------------


def _paper_millions(text: str) -> float:
    if not text.endswith("M"):
        raise ValueError(f"paper parameter count {text!r} is not of the form '1.0M'")
    return float(text[:-1])


def param_table(names: Iterable[str] | None = None, num_classes: int = 10):
    """Table 2's parameter column: the paper's rounded value (quoted) beside our exact count."""
    import pandas as pd

    rows = []
    for name in names or PAPER_PARAMS:
        n = count_params(build(name, num_classes=num_classes))
        quoted = PAPER_PARAMS[name]
        label, depth = TABLE2_LABELS.get(name, (name, None))
        rows.append({
            "model": name,
            "Table 2 row": label,
            "depth": depth,
            "paper params (quoted)": quoted,
            "ours (exact)": n,
            "ours (rounded)": f"{n / 1e6:.1f}M",
            "rounds to paper": f"{n / 1e6:.1f}M" == quoted,
            "deviation (%)": round(100 * (n / 1e6 / _paper_millions(quoted) - 1), 2),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Feature-map growth k_0 + k(l-1)
# --------------------------------------------------------------------------------------------


def growth_table(name: str = "densenet40_k12", **kwargs):
    """Per dense layer: the input maps it actually has (its first conv's in_channels) against the
    paper's k_0 + k(l-1), with k_0 the block input's maps (measured by a hook) and k each layer's
    output maps (its last conv's out_channels)."""
    import pandas as pd

    model = build(name, **kwargs)
    block_in: dict[str, int] = {}
    hooks = [mod.register_forward_pre_hook(
        (lambda n: lambda m, args: block_in.__setitem__(n, args[0].shape[1]))(bname))
        for bname, mod in model.features.named_children() if bname.startswith("denseblock")]
    size = 224 if getattr(model.features, "pool0", None) is not None else 32
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for bname, block in model.features.named_children():
        if not bname.startswith("denseblock"):
            continue
        k0 = block_in[bname]
        for l, layer in enumerate(block.children(), start=1):
            convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
            k = convs[-1].out_channels
            rows.append({"block": int(bname[len("denseblock"):]), "layer l": l, "k_0": k0, "k": k,
                         "input maps (model)": convs[0].in_channels, "k_0 + k(l-1)": k0 + k * (l - 1)})
    df = pd.DataFrame(rows)
    df["matches"] = df["input maps (model)"] == df["k_0 + k(l-1)"]
    return df


def growth_plot(df, ax=None, title: str | None = None):
    """Input maps of each dense layer (points) against k_0 + k(l-1) (lines), one colour per block."""
    from densenet_repro import plots

    if ax is None:
        _, ax = plots.figure()
    for i, (b, sub) in enumerate(df.groupby("block")):
        ax.plot(sub["layer l"], sub["k_0 + k(l-1)"], color=f"C{i}", lw=1,
                label="k_0 + k(l-1)" if i == 0 else None)
        ax.plot(sub["layer l"], sub["input maps (model)"], "o", ms=4, color=f"C{i}",
                label=f"block {b}: model")
    ax.set_xlabel("layer l within the block")
    ax.set_ylabel("input feature maps")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


# --------------------------------------------------------------------------------------------
# The L(L+1)/2 connections of a small block
# --------------------------------------------------------------------------------------------


def connections(num_layers: int = 4, growth_rate: int = 4) -> dict[str, Any]:
    """Trace which feature maps every layer of a small dense block receives.

    Builds a DenseNet whose first block has `num_layers` dense layers (followed by a transition,
    as in the paper's Figure 1) and runs one forward pass with hooks. Layer inputs arrive as a
    list of tensors (or one concatenated tensor); each is matched to x_0 (the block input) or to
    an earlier layer's output x_s. The transition's input is matched slice by slice.

    Returns {"nodes": [...], "edges": [(s, t), ...], "L": num_layers + 1}; the paper's count for
    L layers (dense layers + transition) is L(L+1)/2.
    """
    model = DenseNet(block_config=(num_layers, 1), growth_rate=growth_rate).eval()
    block, transition = model.features.denseblock1, model.features.transition1
    captured: dict[str, Any] = {"layer_inputs": [], "layer_outputs": []}

    def layer_pre(mod, args):
        # a copy: the block appends to the very list it hands to its layers
        captured["layer_inputs"].append(list(args[0]) if isinstance(args[0], list) else args[0])

    def layer_out(mod, args, out):
        captured["layer_outputs"].append(out)

    hooks = [block.register_forward_pre_hook(lambda m, a: captured.__setitem__("x0", a[0])),
             transition.register_forward_pre_hook(lambda m, a: captured.__setitem__("transition_in", a[0]))]
    for layer in block.children():
        hooks += [layer.register_forward_pre_hook(layer_pre), layer.register_forward_hook(layer_out)]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 8, 8))
    finally:
        for h in hooks:
            h.remove()

    feats = [captured["x0"]] + captured["layer_outputs"]  # x_0, x_1, ..., x_n

    def sources(inp) -> list[int]:
        if isinstance(inp, (list, tuple)):  # identity of the tensors handed over
            return [next(i for i, f in enumerate(feats) if f is t) for t in inp]
        # one concatenated tensor: match consecutive channel slices against x_0, x_1, ...
        found, c = [], 0
        for i, f in enumerate(feats):
            w = f.shape[1]
            if c + w <= inp.shape[1] and torch.equal(inp[:, c:c + w], f):
                found.append(i)
                c += w
        if c != inp.shape[1]:
            raise ValueError("layer input is not a concatenation of the block's feature maps")
        return found

    edges = []
    for t, inp in enumerate(captured["layer_inputs"], start=1):
        edges += [(s, t) for s in sources(inp)]
    edges += [(s, num_layers + 1) for s in sources(captured["transition_in"])]
    nodes = ["x_0 (input)"] + [f"H_{l}" for l in range(1, num_layers + 1)] + ["Transition"]
    return {"nodes": nodes, "edges": edges, "L": num_layers + 1, "growth_rate": growth_rate}


def draw_connections(conn: dict[str, Any], ax=None):
    """Draw the traced connections as arcs between the layers (the paper's Figure 1, flattened)."""
    from matplotlib.patches import FancyArrowPatch

    from densenet_repro import plots

    nodes, edges, L = conn["nodes"], conn["edges"], conn["L"]
    if ax is None:
        _, ax = plots.figure(width=7.5, height=2.8)
    xs = list(range(len(nodes)))
    for s, t in edges:
        rad = -0.35 if t - s > 1 else 0.0
        ax.add_patch(FancyArrowPatch((xs[s], 0), (xs[t], 0), connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=9, color=f"C{s}", lw=1.3,
                                     shrinkA=11, shrinkB=11, alpha=0.85))
    ax.scatter(xs, [0] * len(xs), s=650, color="white", edgecolor="0.2", zorder=3)
    for x, n in zip(xs, nodes):
        ax.text(x, 0, n.split(" ")[0].replace("Transition", "T"), ha="center", va="center", zorder=4,
                fontsize="small")
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_ylim(-0.35, 0.18 * (len(nodes) - 1) + 0.25)
    ax.axis("off")
    ax.set_title(f"L = {L} layers ({L - 1} dense layers with k = {conn['growth_rate']}, then transition T)\n"
                 f"{len(edges)} connections traced in a forward pass; L(L+1)/2 = {L * (L + 1) // 2}")
    return ax


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def macs(model_or_name: nn.Module | str, image_size: int = 224) -> int:
    """Multiply-adds of one forward pass of one image, from torch.utils.flop_counter.

    FlopCounterMode counts 2 FLOPs per multiply-add (convolutions, matmuls); MACs = FLOPs / 2.
    BN, ReLU, pooling and additions are not counted, as in torchvision's published numbers.
    """
    model = build(model_or_name) if isinstance(model_or_name, str) else model_or_name
    dev = next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    return flops // 2


def model_summary(names: Iterable[str] | None = None):
    """Parameters and MACs of every named model at its native input size (32 or 224).

    The families (`densenet`, `preact_resnet`, ...) are left out: built without arguments they are
    one of the named models again (`densenet` is `densenet40_k12`), and at other sizes they are
    counted where they are trained (notebooks 03-05).
    """
    import pandas as pd

    from densenet_repro.models.registry import FAMILY_MODELS, IMAGENET_MODELS, list_models

    rows = []
    for name in names or [m for m in list_models() if m not in FAMILY_MODELS]:
        size = 224 if name in IMAGENET_MODELS else 32
        model = build(name)
        rows.append({"model": name, "input": f"{size}×{size}", "params": count_params(model),
                     "GMACs": round(macs(model, size) / 1e9, 3)})
    return pd.DataFrame(rows)


# Notebook 01's verdicts need no training: the same at every budget.
SCOPE_TEXT = "computed from the models; nothing is trained"
MEASURED, QUOTED_ERRORS = "measured here", "parameters measured here; errors quoted (paper's Table 3, torchvision)"


def verdicts(growth, conn, params, summary, equiv, fig3):
    """One row per claim of notebook 01: what was measured here, the verdict, and what it rests on.

    The thresholds are stated in the rows; nothing is decided by hand. A claim that compares quoted
    errors rests on them: it is shown, but not counted among the claims measured here.
    """
    import pandas as pd

    from densenet_repro import stats, verdicts as verdict_text

    dense = params[params["model"].str.startswith("densenet")]
    resn = params[~params["model"].str.startswith("densenet")]
    gmacs121 = float(summary.set_index("model").loc["densenet121", "GMACs"])
    f3 = fig3.set_index("model")
    L = conn["L"]
    rows = [
        ("layer l of a block sees k_0 + k(l-1) input maps",
         f"{int(growth['matches'].sum())}/{len(growth)} layers match", bool(growth["matches"].all()), MEASURED),
        ("a block of L layers has L(L+1)/2 direct connections",
         f"{len(conn['edges'])} traced for L = {L}; L(L+1)/2 = {L * (L + 1) // 2}",
         len(conn["edges"]) == L * (L + 1) // 2, MEASURED),
        ("DenseNet parameter counts round to Table 2",
         f"{int(dense['rounds to paper'].sum())}/{len(dense)} round to the quoted value",
         bool(dense["rounds to paper"].all()), MEASURED),
        ("ResNet baselines within 2% of Table 2",
         f"max |deviation| {resn['deviation (%)'].abs().max():.2f}%",
         bool((resn["deviation (%)"].abs() <= 2).all()), MEASURED),
        ("DenseNet-121 costs 2.83 G multiply-adds at 224x224 (torchvision: 2.834)",
         f"{gmacs121:.3f} G", round(gmacs121, 2) == 2.83, MEASURED),
        ("torchvision's DenseNet state_dicts load strictly into ours, same logits",
         f"{int(equiv['strict load'].sum())}/{len(equiv)} strict, max |logit diff| "
         f"{equiv['max |logit diff|'].max():.1e}",
         bool(equiv["strict load"].all() and equiv["same logits (atol 1e-5)"].all()), MEASURED),
        ("DenseNet-201 is about as accurate as ResNet-101 with less than half the parameters",
         f"{f3.loc['DenseNet-201', 'params (M)']:.1f}M vs {f3.loc['ResNet-101', 'params (M)']:.1f}M params; "
         f"{f3.loc['DenseNet-201', 'top-1 error (%)']:.2f}% vs {f3.loc['ResNet-101', 'top-1 error (%)']:.2f}% (quoted)",
         bool(f3.loc["DenseNet-201", "params (M)"] < 0.5 * f3.loc["ResNet-101", "params (M)"]
              and abs(f3.loc["DenseNet-201", "top-1 error (%)"] - f3.loc["ResNet-101", "top-1 error (%)"]) < 0.5),
         QUOTED_ERRORS),
    ]
    scope = verdict_text.Scope(None, SCOPE_TEXT)
    return pd.DataFrame([(claim, measured, ok, verdict_text.text(stats.HOLDS if ok else stats.FAILS, scope), basis)
                         for claim, measured, ok, basis in rows],
                        columns=["claim", "measured here", "holds", "verdict", "rests on"])


def claims(table) -> list[dict[str, Any]]:
    """The verdicts table as claim records for the index (densenet_repro.verdicts)."""
    from densenet_repro import stats, verdicts as verdict_text

    scope = verdict_text.Scope(None, SCOPE_TEXT)
    return [verdict_text.claim(r["claim"], stats.HOLDS if r["holds"] else stats.FAILS, scope,
                               r["measured here"], [] if r["rests on"] == MEASURED else [f"rests on quoted numbers: "
                                                                                         f"{r['rests on']}"])
            for _, r in table.iterrows()]


def holding_text(table) -> str:
    """'6/6' of the claims measured here hold (a claim resting on quoted errors is not counted)."""
    measured = table[table["rests on"] == MEASURED]
    return f"{int(measured['holds'].sum())}/{len(measured)}"


def coverage_entries(params, conn, growth, fig3) -> list[dict[str, Any]]:
    """What notebook 01 covers of the paper, for the reports index (densenet_repro.coverage).

    Table 2 parameter counts are "exact" where ours round to the paper's printed value and
    "computed" otherwise; everything else here is computed from the models, except Figure 3's
    errors, which are quoted.
    """
    from densenet_repro import coverage

    out = [
        coverage.entry("Figure 1", "dense connectivity", "computed",
                       f"{len(conn['edges'])} connections traced in a {conn['L']}-layer block"),
        coverage.entry("Figure 2", "block and transition structure", "computed",
                       f"input maps of all {len(growth)} dense layers of DenseNet (L = 40, k = 12)"),
        coverage.entry("Table 1", "layer configuration", "computed", "read off the modules and a hooked forward pass"),
        coverage.entry("Figure 3", "params and FLOPs", "computed", f"{len(fig3)} models counted here"),
        coverage.entry("Figure 3", "top-1 errors", "quoted", "DenseNets: the paper's Table 3; ResNets: torchvision"),
    ]
    for _, r in params.iterrows():
        item = coverage.TABLE2_ITEM.get(r["model"])
        if item is not None:
            out.append(coverage.entry(item, "params", "exact" if r["rounds to paper"] else "computed",
                                      f"{r['ours (exact)']:,} ({r['deviation (%)']:+.2f}% vs the quoted {r['paper params (quoted)']})"))
    return out


__all__ = [
    "table1", "stage_channels", "param_table", "growth_table", "growth_plot", "connections",
    "draw_connections", "macs", "model_summary", "verdicts", "claims", "holding_text", "coverage_entries",
]
