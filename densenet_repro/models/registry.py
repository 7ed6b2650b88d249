"""Models by name. `MODELS` is the one table: the names, their factories and their metadata (timm's
`pretrained_cfg`); `WEIGHTS`, next to it, is the one table of trained weights, the only place that names
the run folders they come from.

    create_model("densenet_bc100_k12", num_classes=10)   any name of list_models(), any factory argument
    create_model("densenet40_k12", pretrained=True)       the weights a finished run of this repository published
    create_model("densenet40_k12.repro_c10plus", pretrained=True)   those of one run, by their tag
    list_pretrained()                                     those weights: test error, data, epochs, commit
    pretrained_cfg("densenet40_k12")                      the metadata: input size, mean/std, first conv, ...

timm sees the same tables through densenet_repro_timm.py (registered on `import densenet_repro`), under
the names `timm_name` gives: the paper's own names (Table 2's rows, DenseNet-264), and the families at
any size with the prefix `densenet_repro_`; timm's own densenet121/161/169/201 are left to timm.

Nothing here imports timm: the cfgs are plain dicts with timm's field names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from densenet_repro import paper, runstore
from densenet_repro.errors import ConfigError, UserError
from densenet_repro.models import densenet, resnet

TIMM_PREFIX = "densenet_repro_"  # the families' names in timm's registry: densenet_repro_densenet_bc, ...


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    arxiv: str

    @property
    def id(self) -> str:  # timm's paper_ids format
        return f"arXiv:{self.arxiv}"


DENSENET_PAPER = Paper("Densely Connected Convolutional Networks",
                       "Huang, Liu, van der Maaten, Weinberger, CVPR 2017", "1608.06993")
RESNET_PAPER = Paper("Deep Residual Learning for Image Recognition", "He, Zhang, Ren, Sun, CVPR 2016", "1512.03385")
PREACT_PAPER = Paper("Identity Mappings in Deep Residual Networks", "He, Zhang, Ren, Sun, ECCV 2016", "1603.05027")

# Normalisation of the untrained CIFAR nets' cfgs: the official CIFAR-10 training set's per-channel mean and
# (population) std on the 0-1 scale, what densenet_repro.data.channel_stats computes from it. The data
# pipeline computes these per run from the training set and keeps no constant, so they are stated here,
# once; trained weights carry the statistics their run recorded (summary.json) instead.
# tests/test_timm.py checks them against those recorded by the committed runs.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Arch:
    """What timm's cfg says about a kind of network: its input, its last map, its first and last layer."""

    input_size: tuple[int, int, int]
    pool_size: tuple[int, int]  # the last feature map at input_size
    first_conv: str
    classifier: str
    mean: tuple[float, ...] | None  # None: timm's ImageNet defaults (torchvision's)
    std: tuple[float, ...] | None
    crop_pct: float
    feature_maps: int  # len(model.feature_info): features_only returns them all unless out_indices says otherwise
    in_features: bool  # the feature_info modules are children of model.features (timm's flatten_sequential)


CIFAR_DENSENET = Arch((3, 32, 32), (8, 8), "features.conv0", "classifier", CIFAR10_MEAN, CIFAR10_STD, 1.0, 6, True)
IMAGENET_DENSENET = Arch((3, 224, 224), (7, 7), "features.conv0", "classifier", None, None, 0.875, 8, True)
CIFAR_RESNET = Arch((3, 32, 32), (8, 8), "conv1", "fc", CIFAR10_MEAN, CIFAR10_STD, 1.0, 4, False)


@dataclass(frozen=True)
class Model:
    factory: Callable[..., nn.Module]
    arch: Arch
    papers: tuple[Paper, ...]   # the architecture's paper first; DenseNet's for the baselines it compares
    where: str                  # where in the DenseNet paper
    family: bool = False        # a family at any size: in timm as TIMM_PREFIX + name
    in_timm: bool = True        # False: timm has its own model of this name, which we leave alone

    @property
    def timm_name(self) -> str | None:
        if not self.in_timm:
            return None
        return TIMM_PREFIX + self.name if self.family else self.name

    @property
    def name(self) -> str:
        return self.factory.__name__

    @property
    def description(self) -> str:  # the factory's docstring says what it builds, once
        return inspect.getdoc(self.factory).splitlines()[0]

    @property
    def default_num_classes(self) -> int:
        return inspect.signature(self.factory).parameters["num_classes"].default


_D, _R, _P = (DENSENET_PAPER,), (RESNET_PAPER, DENSENET_PAPER), (PREACT_PAPER, DENSENET_PAPER)

MODELS: dict[str, Model] = {m.name: m for m in (
    # Table 2, DenseNet rows (CIFAR/SVHN); each takes `depth` to build its family at another L
    Model(densenet.densenet40_k12, CIFAR_DENSENET, _D, "Table 2"),
    Model(densenet.densenet100_k12, CIFAR_DENSENET, _D, "Table 2"),
    Model(densenet.densenet100_k24, CIFAR_DENSENET, _D, "Table 2"),
    Model(densenet.densenet_bc100_k12, CIFAR_DENSENET, _D, "Table 2"),
    Model(densenet.densenet_bc250_k24, CIFAR_DENSENET, _D, "Table 2"),
    Model(densenet.densenet_bc190_k40, CIFAR_DENSENET, _D, "Table 2"),
    # Table 1 / Table 3 (ImageNet), and torchvision's DenseNet-161: timm has its own 121/161/169/201
    Model(densenet.densenet121, IMAGENET_DENSENET, _D, "Table 1", in_timm=False),
    Model(densenet.densenet161, IMAGENET_DENSENET, _D, "torchvision's, not in the paper", in_timm=False),
    Model(densenet.densenet169, IMAGENET_DENSENET, _D, "Table 1", in_timm=False),
    Model(densenet.densenet201, IMAGENET_DENSENET, _D, "Table 1", in_timm=False),
    Model(densenet.densenet264, IMAGENET_DENSENET, _D, "Table 1"),
    # ResNet baselines of Table 2 (CIFAR/SVHN)
    Model(resnet.resnet110, CIFAR_RESNET, _R, "Table 2 (baseline)"),
    Model(resnet.preact_resnet164, CIFAR_RESNET, _P, "Table 2 (baseline)"),
    Model(resnet.preact_resnet1001, CIFAR_RESNET, _P, "Table 2 (baseline)"),
    # Families at any depth (and growth rate or width): Figure 4's sweeps and the baselines of section 4
    Model(densenet.densenet, CIFAR_DENSENET, _D, "Figure 4", family=True),
    Model(densenet.densenet_b, CIFAR_DENSENET, _D, "Figure 4", family=True),
    Model(densenet.densenet_c, CIFAR_DENSENET, _D, "Figure 4", family=True),
    Model(densenet.densenet_bc, CIFAR_DENSENET, _D, "Figure 4", family=True),
    Model(resnet.resnet, CIFAR_RESNET, _R, "Figure 4 (baseline)", family=True),
    Model(resnet.preact_resnet, CIFAR_RESNET, _P, "Figure 4 (baseline)", family=True),
    Model(resnet.plain_cnn, CIFAR_RESNET, _R, "section 4 (baseline)", family=True),
)}

# Parameter counts as printed in the paper's Table 2 (quoted in densenet_repro.paper), DenseNets first,
# for comparison with the exact counts of our models (notebook 01, tests/test_models.py).
PAPER_PARAMS: dict[str, str] = {r.model: r.params for r in sorted(paper.TABLE2, key=lambda r: not r.is_densenet)
                                if r.model}
CIFAR_MODELS = tuple(PAPER_PARAMS)
FAMILY_MODELS = tuple(n for n, m in MODELS.items() if m.family)
IMAGENET_MODELS = tuple(n for n, m in MODELS.items() if m.arch is IMAGENET_DENSENET)


# ----------------------------------------------------------------------------------------------
# Trained weights: what this repository's finished runs published
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    model: str   # a name of MODELS
    tag: str     # timm's pretrained tag: timm.create_model(f"{model}.{tag}", pretrained=True)
    run: str     # the run folder under the results root; its weights.pt, summary.json and config.json
    train: str   # the command that trains (or resumes) that run

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def folder(self) -> Path:
        return RESULTS / self.run

    @property
    def file(self) -> Path:
        return self.folder / runstore.WEIGHTS

    @property
    def available(self) -> bool:
        """The run has finished and published its weights (its summary.json is written last)."""
        return self.file.is_file() and (self.folder / "summary.json").is_file()


WEIGHTS: tuple[Weights, ...] = (
    # Table 2's headline cell: DenseNet (L=40, k=12) on C10+ at the cpu budget, at 300, 100 and 30 epochs
    # (experiments.HEADLINE_SCHEDULES). Most trained first: a name's default (pretrained=True without a
    # tag) is its first weights whose run has finished, so longer-trained weights become the default the
    # moment their run publishes them, and the shorter ones serve until then.
    Weights("densenet40_k12", "repro_c10plus_e300", "table2/densenet40_k12-c10+-01b99540a5",
            "python -m densenet_repro table2 --headline"),
    Weights("densenet40_k12", "repro_c10plus_e100", "table2/densenet40_k12-c10+-5da474e00f",
            "python -m densenet_repro table2 --headline"),
    Weights("densenet40_k12", "repro_c10plus", "table2/densenet40_k12-c10+-4bd6f77af9",
            "python -m densenet_repro table2 --headline"),
)
RESULTS = runstore.results_root("results")  # the committed results of this checkout (absolute)


# ----------------------------------------------------------------------------------------------
# Lookups
# ----------------------------------------------------------------------------------------------

def list_models() -> list[str]:
    """All registered model names, in registration order."""
    return list(MODELS)


def _model(name: str) -> Model:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    return MODELS[name]


def split_name(name: str) -> tuple[str, str | None]:
    """("model", "tag") of a name as list_pretrained() and timm write it ("densenet40_k12.repro_c10plus"), or
    (name, None) of a bare model name."""
    model, _, tag = name.partition(".")
    return model, tag or None


def _finished_default(name: str) -> Weights | None:
    """A model's default weights, the first listed whose run has finished; None while none has."""
    return next((w for w in WEIGHTS if w.model == name and w.available), None)


def find_weights(name: str, tag: str | None = None) -> Weights:
    """The weights of a model tagged `tag`, or its default: the first whose run has finished, else its first
    (whose error then says how to train it). ConfigError when the model has none."""
    _model(name)
    mine = [w for w in WEIGHTS if w.model == name]
    if not mine:
        raise ConfigError(f"{name}: densenet-repro has no trained weights for it (densenet_repro.list_pretrained() "
                          f"names those it has); use pretrained=False")
    if tag is None:
        return _finished_default(name) or mine[0]
    for w in mine:
        if w.tag == tag:
            return w
    raise ConfigError(f"{name}: no trained weights tagged {tag!r}; use one of {', '.join(w.tag for w in mine)}")


def _run_record(w: Weights) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json, config.json) of the weights' finished run, checked; ConfigError while it is not finished."""
    if not w.available:
        state = "is still training" if (w.folder / runstore.CHECKPOINT).is_file() else "has not been trained here"
        raise ConfigError(f"{w.name}: no trained weights yet: {w.file} appears when its run finishes, and the run "
                          f"{state}; train or resume it with `{w.train}`, or use pretrained=False")
    return runstore.read_summary(w.folder), runstore.read_config(w.folder) or {}


def default_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained_cfg of a model without trained weights: its input, normalisation, layers, citation."""
    m = _model(name)
    a = m.arch
    cfg: dict[str, Any] = dict(
        num_classes=m.default_num_classes, input_size=a.input_size, pool_size=a.pool_size, crop_pct=a.crop_pct,
        first_conv=a.first_conv, classifier=a.classifier,
        paper_name=f"{m.papers[0].title} ({m.papers[0].authors})", paper_ids=tuple(p.id for p in m.papers),
        description=f"{m.description} densenet-repro, untrained.",
        notes=(f"{m.where} of {DENSENET_PAPER.title} ({DENSENET_PAPER.authors}), {DENSENET_PAPER.id}",))
    if a.mean is not None:
        cfg.update(mean=a.mean, std=a.std)
    if m.timm_name:
        cfg["architecture"] = m.timm_name
    return cfg


def weights_cfg(w: Weights) -> dict[str, Any]:
    """The cfg of trained weights: file= the weights, mean/std those their run normalised with, its numbers
    in `notes`. Read from the run's files now; ConfigError while the run has not finished."""
    summary, config = _run_record(w)
    info = _describe(w, summary, config)
    cfg = default_cfg(w.model)
    data = summary.get("data") or {}
    if data.get("mean") and data.get("std"):
        cfg.update(mean=tuple(data["mean"]), std=tuple(data["std"]))
    numbers = (f"{info['epochs']} epochs on {info['dataset']}: final test error {info['final_test_error_pct']} %, "
               f"best {info['best_test_error_pct']} %")
    cfg.update(file=str(w.file), tag=w.tag,
               description=cfg["description"].replace("untrained", f"trained on {info['dataset']} (run {w.run})"),
               notes=(*cfg["notes"], numbers, f"data: {info['data_source']}", f"commit: {info['commit']}"))
    return cfg


def pretrained_cfg(name: str, tag: str | None = None) -> dict[str, Any]:
    """A model's cfg: that of its trained weights where they are there (or of those tagged `tag`), else the default."""
    if tag is not None:
        return weights_cfg(find_weights(name, tag))
    w = _finished_default(name)
    return weights_cfg(w) if w else default_cfg(name)


def _describe(w: Weights, summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return dict(name=w.name, model=w.model, tag=w.tag, available=True, file=str(w.file), dataset=summary["dataset"],
                final_test_error_pct=summary["final_test_error_pct"], best_test_error_pct=summary["best_test_error_pct"],
                epochs=summary["epochs"], data_source=config.get("data_description"),
                data_source_id=config.get("data_source_id"), commit=config.get("commit"),
                versions=config.get("versions"), run=w.run)


def list_pretrained(include_unavailable: bool = False) -> list[dict[str, Any]]:
    """The trained weights this repository has: one dict each, with its name (`model.tag`, as timm names it),
    final and best test error (%), dataset, data source, epochs and commit, read from its run's summary.json
    and config.json. Weights whose run has not finished are left out, or with include_unavailable=True
    listed as {"name", "model", "tag", "available": False, "file", "run", "train"}."""
    out = []
    for w in WEIGHTS:
        if w.available:
            out.append(_describe(w, *_run_record(w)))
        elif include_unavailable:
            out.append(dict(name=w.name, model=w.model, tag=w.tag, available=False, file=str(w.file), run=w.run,
                            train=w.train))
    return out


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------

def _load_weights(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Load cfg["file"] into model, as timm does: strictly, unless the model has another number of classes
    (fine-tuning): then the trained classifier is left out."""
    state = runstore.bare_state_dict(torch.load(cfg["file"], map_location="cpu", weights_only=True))
    prefix = cfg["classifier"] + "."
    strict = getattr(model, "num_classes", cfg["num_classes"]) == cfg["num_classes"]
    if not strict:
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # torch's message: a header, then one line per kind of difference
        first = (str(e).splitlines()[1:] or [str(e)])[0].strip()
        raise ConfigError(f"{cfg['file']} does not fit this model (built with other arguments than its run's?): "
                          f"{first[:200]}") from None
    if not strict and (unexpected or any(not k.startswith(prefix) for k in missing)):
        raise ConfigError(f"{cfg['file']} does not fit this model: missing {missing}, unexpected {unexpected}")


def run_model_kwargs(w: Weights) -> dict[str, Any]:
    """The factory arguments the weights' run built its model with (summary.json's model_kwargs)."""
    return dict(_run_record(w)[0].get("model_kwargs") or {})


def create_model(name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model. `num_classes` defaults to 10 (CIFAR nets) or 1000 (ImageNet); 0 gives a model
    that returns its pooled features. pretrained=True loads this repository's trained weights for the name
    (list_pretrained()): a bare model name loads its default weights, a name with a tag, as timm writes it
    ("densenet40_k12.repro_c10plus"), those weights; a ConfigError says when they are not there yet.

    The model's `pretrained_cfg` (alias `default_cfg`) is its timm cfg (input size, mean/std, ...): as in
    timm, that of its trained weights where they are there, also with pretrained=False.
    """
    name, tag = split_name(name)
    m = _model(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:
        w = find_weights(name, tag)
        cfg = weights_cfg(w)
        for k, v in run_model_kwargs(w).items():
            kwargs.setdefault(k, v)
    else:
        try:
            cfg = pretrained_cfg(name, tag)
        except UserError:  # a damaged run record: never used, and no reason not to build an untrained model
            cfg = default_cfg(name)
    model = m.factory(**kwargs)
    if pretrained:
        _load_weights(model, cfg)
    model.pretrained_cfg = model.default_cfg = _with_timm_defaults(cfg)
    return model


def _with_timm_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """The cfg as timm completes it (its defaults for the fields we do not set); as it is without timm."""
    try:
        from timm.models import PretrainedCfg
    except ImportError:
        return dict(cfg)
    return PretrainedCfg(**cfg).to_dict()
