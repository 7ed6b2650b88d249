"""The ImageNet side of notebook 01: Figure 3 and the equivalence of our ImageNet DenseNets with torchvision's.

- Figure 3 puts params and MACs of our DenseNet-121/169/201/264 and torchvision's ResNet-18..152
  beside their published ImageNet top-1 errors (`figure3_table`, `figure3_plot`): the errors are
  quoted (the paper's Table 3; torchvision's weights' metadata, read locally), nothing is trained;
- the equivalence check loads torchvision's state_dict into ours strictly and compares the logits
  (`torchvision_equivalence`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from densenet_repro.architecture import TABLE1_MODELS, display_name, build, count_params, macs

FIGURE3_DENSENETS = TABLE1_MODELS
FIGURE3_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EQUIVALENCE_MODELS = ("densenet121", "densenet161", "densenet169", "densenet201")

# Quoted from the paper, Table 3: ImageNet validation top-1 error (%), single-crop.
PAPER_TABLE3_TOP1_SINGLE_CROP = {"densenet121": 25.02, "densenet169": 23.80, "densenet201": 22.58,
                                 "densenet264": 22.15}


def _torchvision_weights(name: str):
    import torchvision

    enum_name = {"densenet": "DenseNet", "resnet": "ResNet"}[name.rstrip("0123456789")] + \
        name.lstrip("abcdefghijklmnopqrstuvwxyz") + "_Weights"
    enum = getattr(torchvision.models, enum_name, None)
    return None if enum is None else enum.IMAGENET1K_V1


def torchvision_published(name: str) -> dict[str, float] | None:
    """What torchvision publishes with its IMAGENET1K_V1 weights (read locally, no download):
    top-1 accuracy (%) and GFLOPS (multiply-adds). None for nets torchvision does not have."""
    w = _torchvision_weights(name)
    if w is None:
        return None
    return {"acc@1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"], "gmacs": w.meta.get("_ops"),
            "params": w.meta.get("num_params")}


def figure3_table(densenets: Sequence[str] = FIGURE3_DENSENETS, resnets: Sequence[str] = FIGURE3_RESNETS,
                  image_size: int = 224):
    """Params and MACs (measured here) against published ImageNet top-1 error (quoted) for Figure 3.

    DenseNets: our models; error from the paper's Table 3 (single-crop).
    ResNets: torchvision's models (weights=None); error = 100 - the acc@1 torchvision publishes
    with its IMAGENET1K_V1 weights. (The paper's Figure 3 used fb.resnet.torch's ResNets.)
    """
    import pandas as pd

    rows = []
    for name in list(densenets) + list(resnets):
        is_dense = name in densenets
        model = build(name if is_dense else "tv:" + name)
        pub = torchvision_published(name)
        if is_dense:
            err, source = PAPER_TABLE3_TOP1_SINGLE_CROP[name], "paper Table 3, single-crop (quoted)"
        else:
            err, source = round(100 - pub["acc@1"], 3), "100 - torchvision acc@1, IMAGENET1K_V1 (quoted)"
        rows.append({
            "model": display_name(name),
            "family": "DenseNet" if is_dense else "ResNet",
            "params (M)": round(count_params(model) / 1e6, 2),
            "GMACs (ours)": round(macs(model, image_size) / 1e9, 3),
            "GMACs (torchvision, quoted)": None if pub is None else pub["gmacs"],
            "top-1 error (%)": err,
            "error source": source,
        })
    return pd.DataFrame(rows)


def figure3_plot(df):
    """The two panels of Figure 3: top-1 error against parameters and against multiply-adds."""
    from densenet_repro import plots

    fig, (a, b) = plots.figure(ncols=2)
    df = df.assign(name=df["model"].str.split("-").str[1])
    for ax, x, xlabel in ((a, "params (M)", "parameters (millions)"),
                          (b, "GMACs (ours)", "multiply-adds (G) per 224×224 image")):
        plots.lines_by_family(ax, df, x, "top-1 error (%)", label="name")
        ax.set_xlabel(xlabel)
    # below the panels, not inside one: inside, it ran into the labels of the lowest points
    fig.supxlabel("errors quoted: DenseNet, paper Table 3; ResNet, torchvision", fontsize="x-small", color="0.4")
    fig.suptitle("Figure 3: ImageNet top-1 error (single-crop) vs. parameters and FLOPs")
    return fig


def torchvision_equivalence(names: Sequence[str] = EQUIVALENCE_MODELS, image_size: int = 64, seed: int = 0):
    """Load torchvision's state_dict (random init, weights=None) strictly into ours and compare
    the eval-mode logits on a random batch of two image_size x image_size images."""
    import pandas as pd

    rows = []
    for name in names:
        torch.manual_seed(seed)
        tv = build("tv:" + name, device="cpu")
        ours = build(name, device="cpu")
        result = ours.load_state_dict(tv.state_dict(), strict=True)  # raises on any mismatch
        ours.eval()
        x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            a, b = tv(x), ours(x)
        diff = (a - b).abs().max().item()
        rows.append({
            "model": name,
            "params (ours)": count_params(ours),
            "params (torchvision)": count_params(tv),
            "strict load": not result.missing_keys and not result.unexpected_keys,
            "max |logit diff|": diff,
            "same logits (atol 1e-5)": bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5)),
        })
        del tv, ours
    return pd.DataFrame(rows)
