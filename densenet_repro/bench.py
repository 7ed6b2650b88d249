"""Speed and memory benchmark (`python -m densenet_repro bench`), and the fast path's accuracy check.

    python -m densenet_repro bench [--size default|tiny] [--out results/bench] [--repeats N] [--no-compile]
    python -m densenet_repro bench accuracy [--budget cpu|smoke] [--data-root data]

Speed (`bench`, results/bench/bench_<size>.json). Two sections, each measured in one process with
every configuration built side by side and timed *interleaved* (one step of each configuration in
turn, the order rotated every round), so a slow patch of a shared machine hits them all alike:

  cifar     DenseNet-BC (L=100, k=12), 32x32, batch 64 -- the paper's C10+ setting. Baseline: a
            naive implementation in torchvision's style, built from torchvision's own `_DenseBlock`
            and `_Transition` (a list of features, `torch.cat` in every layer) with a CIFAR stem,
            eager fp32 NCHW. Ours: eager fp32, channels_last, bf16 autocast, bf16 + channels_last,
            torch.compile (fp32, and bf16 + channels_last), the fast dense blocks
            (models/fast_dense.py) in fp32 and in bf16 + channels_last, and the memory-efficient
            mode exactly as the training engine runs it for `--memory-efficient` (the model is made
            by train.build_model and train's own fast-blocks decision, which keeps the plain
            checkpointed blocks), in fp32 and in bf16 + channels_last.
  imagenet  DenseNet-121, 224x224, batch 16: torchvision.models.densenet121, timm's densenet121 and
            ours, loaded with the same state_dict, each in fp32 NCHW and bf16 + channels_last; ours
            also with the fast blocks.

For each configuration: training images/s (forward + backward + SGD step; one timed step per
round), inference images/s (eval mode, no_grad), their median and spread over the rounds, the
median of the per-round ratios to the baseline (same round: interleaved), the achieved FLOP rate
(the training step's FLOPs, counted by torch.utils.flop_counter, times images/s) as a fraction of
this machine's matmul peak measured in the same run (a big torch.mm, fp32 and bf16), the
torch.compile time (reported apart, never inside a throughput), and the peak memory of one
training step.

Peak memory is the allocator's own record: torch.profiler with profile_memory=True logs every
allocation and free of PyTorch's CPU allocator; the peak of the running sum over one training step
(gradients, activations, workspaces, optimizer update; model and optimizer state allocated before
the step are not counted) is reported. The fast blocks' scratch buffers are freed before that step,
so their allocation is counted. Memory outside PyTorch's allocator (oneDNN scratch pads, the
Python heap) is not included, for any configuration. The same profiled step gives the share of
time spent in convolutions, which bounds what any implementation keeping those convolutions can
gain (Amdahl): 1 / share.

Equivalence (recorded with the speed results): one fp32 training step of the fast model against
the plain model, of ours against the naive baseline, and of ours and timm's DenseNet-121 against
torchvision's, all from identical weights: largest relative difference of the outputs and of
the gradients.

Accuracy (`bench accuracy`): the fast path changes the rounding (bf16), so its final accuracy is
compared with fp32 on short real runs of the training engine (at the cpu budget: DenseNet-BC at
L = 40, 8 epochs, a CIFAR-10 subset, ACCURACY_CPU_SCALE), two seeds each; finished runs are copied
to results/bench/accuracy-*/ and found there again without the dataset (committed_accuracy).

`--size tiny` runs everything on toy models in seconds (tests); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMA = 2
DEFAULT_OUT = "results/bench"


# ----------------------------------------------------------------------------------------------
# What is measured
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One way of running a model: implementation and speed knobs (nothing that changes the math)."""

    name: str
    impl: str = "ours"                 # naive | ours | torchvision | timm
    bf16: bool = False                 # bf16 autocast (weights and optimizer stay fp32)
    channels_last: bool = False
    compile: bool = False              # torch.compile (inductor), compile time reported apart
    memory_efficient: bool = False     # ours: checkpointed cat-BN-ReLU-conv (Pleiss et al.)
    fast: bool = False                 # ours: fast dense blocks (models/fast_dense.py)
    engine: bool = False               # ours: the model the training engine builds for these flags

    def __post_init__(self) -> None:
        if self.engine and self.fast:
            raise ValueError(f"{self.name}: an engine configuration takes its blocks from the engine, not fast=True")

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def label(self) -> str:
        knobs = [self.precision] + (["channels_last"] if self.channels_last else []) \
            + (["compile"] if self.compile else []) \
            + (["--memory-efficient (engine)" if self.engine else "memory_efficient"] if self.memory_efficient else []) \
            + (["fast blocks"] if self.fast else [])
        return f"{self.impl}: " + " + ".join(knobs)


CIFAR_CONFIGS = (
    Config("naive", impl="naive"),
    Config("ours"),
    Config("ours_cl", channels_last=True),
    Config("ours_bf16", bf16=True),
    Config("ours_bf16_cl", bf16=True, channels_last=True),
    Config("ours_memeff", memory_efficient=True, engine=True),
    Config("ours_memeff_bf16_cl", memory_efficient=True, bf16=True, channels_last=True, engine=True),
    Config("ours_compile", compile=True),
    Config("ours_compile_bf16_cl", compile=True, bf16=True, channels_last=True),
    Config("fast", fast=True),
    Config("fast_bf16_cl", fast=True, bf16=True, channels_last=True),
)
IMAGENET_CONFIGS = (
    Config("torchvision", impl="torchvision"),
    Config("timm", impl="timm"),
    Config("ours"),
    Config("fast", fast=True),
    Config("torchvision_bf16_cl", impl="torchvision", bf16=True, channels_last=True),
    Config("timm_bf16_cl", impl="timm", bf16=True, channels_last=True),
    Config("ours_bf16_cl", bf16=True, channels_last=True),
    Config("fast_bf16_cl", fast=True, bf16=True, channels_last=True),
)
# The CPU fast path (fastpath.BF16_CPU) and the configurations the targets compare.
FAST_PATH = "fast_bf16_cl"
# What `--memory-efficient` gives in the training engine, against the fast mode in the same precision
# and layout (the conservative comparison): (memory-efficient configuration, fast configuration).
MEMORY_EFFICIENT_PAIRS = (("ours_memeff", "fast"), ("ours_memeff_bf16_cl", "fast_bf16_cl"))
MEMORY_EFFICIENT_MODE = "ours_memeff"
# DenseNet-121: ours with the plain blocks is torchvision's computation (same ops, same kernels), so
# its ratio to torchvision is this machine's noise floor for "faster than torchvision".
IMAGENET_SAME_CODE = {"fast": "ours", "fast_bf16_cl": "ours_bf16_cl"}


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    net: dict[str, Any]                # kwargs of densenet_repro.DenseNet
    image_size: int
    batch: int
    baseline: str
    configs: tuple[Config, ...]
    family: str                        # cifar (naive baseline) | imagenet (torchvision/timm)


@dataclass(frozen=True)
class Size:
    sections: tuple[Section, ...]
    rounds: int                        # timed rounds (one step of every configuration each)
    warmup: int                        # untimed steps per configuration before the rounds
    matmul_n: int                      # n of the n x n x n torch.mm that measures the peak
    compile: bool = True               # run the torch.compile configurations


BC100 = dict(depth=100, growth_rate=12, bottleneck=True, compression=0.5)
D121 = dict(block_config=(6, 12, 24, 16), growth_rate=32, bottleneck=True, compression=0.5, stem="imagenet")
SIZES = {
    "default": Size(
        sections=(
            Section("cifar", "DenseNet-BC (L=100, k=12), CIFAR 32x32, batch 64", BC100, 32, 64, "naive",
                    CIFAR_CONFIGS, "cifar"),
            Section("imagenet", "DenseNet-121, ImageNet 224x224, batch 16", D121, 224, 16, "torchvision",
                    IMAGENET_CONFIGS, "imagenet"),
        ),
        rounds=7, warmup=2, matmul_n=2048),
    "tiny": Size(
        sections=(
            Section("cifar", "toy DenseNet-BC (L=16, k=4), 8x8, batch 4", dict(BC100, depth=16, growth_rate=4),
                    8, 4, "naive", CIFAR_CONFIGS, "cifar"),
            Section("imagenet", "toy DenseNet-BC (blocks 2-2, k=8), ImageNet stem, 32x32, batch 2",
                    dict(D121, block_config=(2, 2), growth_rate=8), 32, 2, "torchvision", IMAGENET_CONFIGS,
                    "imagenet"),
        ),
        rounds=2, warmup=1, matmul_n=256, compile=False),
}


# ----------------------------------------------------------------------------------------------
# The naive baseline: torchvision's own dense blocks, CIFAR stem
# ----------------------------------------------------------------------------------------------


class NaiveDenseNet(nn.Module):
    """A DenseNet-BC in torchvision's style for CIFAR: torchvision.models.densenet's `_DenseBlock`
    (a list of feature maps, `torch.cat` in every layer) and `_Transition`, a 3x3 stem conv.

    Same module names as ours, so our state_dict loads strictly (the same weights).
    """

    def __init__(self, depth: int, growth_rate: int, num_classes: int = 10, bottleneck: bool = True,
                 compression: float = 0.5, **_: Any) -> None:
        super().__init__()
        from torchvision.models.densenet import _DenseBlock, _Transition

        if not bottleneck or compression != 0.5:
            raise ValueError("the naive baseline is a DenseNet-BC (torchvision's blocks always have a bottleneck)")
        n = (depth - 4) // 6
        num_features = 2 * growth_rate
        self.features = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, num_features, 3, padding=1, bias=False)))
        for i in range(3):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, num_features, 4, growth_rate, 0.0))
            num_features += n * growth_rate
            if i != 2:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(section: Section, config: Config, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The configuration's model with the given weights, in train mode, layout applied (not compiled)."""
    from densenet_repro import DenseNet

    num_classes = 10 if section.family == "cifar" else 1000
    if config.impl == "naive":
        model = NaiveDenseNet(num_classes=num_classes, **section.net)
    elif config.impl == "torchvision":
        import torchvision

        net = section.net
        model = torchvision.models.DenseNet(growth_rate=net["growth_rate"], block_config=tuple(net["block_config"]),
                                            num_init_features=2 * net["growth_rate"], num_classes=num_classes)
    elif config.impl == "timm":
        from timm.models.densenet import DenseNet as TimmDenseNet

        net = section.net
        model = TimmDenseNet(growth_rate=net["growth_rate"], block_config=tuple(net["block_config"]),
                             num_classes=num_classes)
    elif config.impl == "ours" and config.engine:
        model = engine_model(section, config)
    elif config.impl == "ours":
        model = DenseNet(num_classes=num_classes, memory_efficient=config.memory_efficient, **section.net)
    else:
        raise ValueError(f"unknown implementation {config.impl!r}")
    model.load_state_dict(state_dict, strict=True)
    if config.fast:
        from densenet_repro.models import fast_dense

        fast_dense.convert(model)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def engine_run_config(section: Section, config: Config):
    """The train.RunConfig a user gets for this configuration's flags (--memory-efficient, --amp,
    --channels-last; fast blocks left to the engine's own default)."""
    from densenet_repro.train import RunConfig

    return RunConfig(model="densenet_bc100_k12", dataset="c10+", model_kwargs={"depth": section.net["depth"]},
                     memory_efficient=config.memory_efficient, amp="bf16" if config.bf16 else "none",
                     channels_last=config.channels_last, fast_blocks=None, device="cpu")


def engine_model(section: Section, config: Config) -> nn.Module:
    """The model the training engine trains for this configuration's flags, at the section's size.

    Built as train.build_model builds it (DenseNet with memory_efficient passed through), then the
    engine's own decision whether to switch to the fast blocks is applied (train._use_fast_blocks,
    which keeps the plain checkpointed blocks for --memory-efficient). tests/test_bench.py checks
    that this is the model train.build_model makes for the same RunConfig.
    """
    from densenet_repro import DenseNet, train

    if section.family != "cifar":
        raise ValueError("engine configurations are defined for the CIFAR section")
    run_cfg = engine_run_config(section, config)
    model = DenseNet(num_classes=10, memory_efficient=config.memory_efficient, **section.net)
    train._use_fast_blocks(run_cfg, model, torch.device("cpu"), False)
    return model


# ----------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------


class Runner:
    """A configuration ready to step: model (maybe compiled), optimizer, a fixed batch."""

    def __init__(self, section: Section, config: Config, state_dict, x: torch.Tensor, y: torch.Tensor):
        self.section, self.config = section, config
        self.model = build_model(section, config, state_dict)
        # The paper's optimizer: SGD, Nesterov momentum 0.9, weight decay 1e-4.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32 and bf16 need no loss scaling
        self.x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x.contiguous()
        self.y = y
        self.step_fn = torch.compile(self.model) if config.compile else self.model
        self.compile_s: float | None = None

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16)

    def train_step(self) -> None:
        # The training engine's own step: a speed-up measured here is one its users get.
        from densenet_repro.train import train_step

        train_step(self.step_fn, self.opt, self.scaler, self.x, self.y, len(self.y),
                   amp="bf16" if self.config.bf16 else "none")

    def infer(self) -> None:
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                self.model(self.x)
        finally:
            self.model.train()


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_peak(dtype: torch.dtype, n: int, tries: int = 8) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in `dtype` (2 n^3 FLOPs), torch's current threads."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(tries))
    return 2 * n ** 3 / best / 1e9


def train_flops_per_image(section: Section, batch: int = 2) -> dict[str, float]:
    """FLOPs of one training step (forward + backward) per image, torch.utils.flop_counter, and the
    forward multiply-adds per image from densenet_repro.architecture.macs (the same counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from densenet_repro import DenseNet
    from densenet_repro.architecture import macs

    num_classes = 10 if section.family == "cifar" else 1000
    torch.manual_seed(0)
    model = DenseNet(num_classes=num_classes, **section.net).train()
    x = torch.randn(batch, 3, section.image_size, section.image_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    fwd_macs = macs(model.eval(), image_size=section.image_size)
    return {"train_flops_per_image": counter.get_total_flops() / batch, "forward_macs_per_image": float(fwd_macs)}


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop chatter) for the duration."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters): leave it alone
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_step(runner: Runner) -> dict[str, float | None]:
    """One profiled training step: the allocator's peak, and the share of time in convolutions.

    peak_bytes: peak of the running sum of PyTorch CPU allocator events (allocations > 0, frees
    < 0) during the step; None when this torch's profiler does not expose them.
    conv_share: self CPU time of the convolution ops (forward and backward) over the step's total
    self CPU time (profiled, so small ops are somewhat inflated); what no implementation that keeps
    these convolutions can remove.
    """
    from torch.profiler import ProfilerActivity, profile

    from densenet_repro.models import fast_dense

    fast_dense.clear_workspace()  # so that the fast blocks' scratch memory is counted
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.train_step()
    out: dict[str, float | None] = {"peak_bytes": None, "conv_share": None}
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:  # nbytes > 0: an allocation, < 0: a free
            live += e.nbytes()
            peak = max(peak, live)
        out["peak_bytes"] = float(peak)
    except (AttributeError, RuntimeError):
        pass
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    conv = sum(e.self_cpu_time_total for e in averages
               if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                            "aten::convolution", "aten::conv2d", "aten::mkldnn_convolution_backward"))
    out["conv_share"] = conv / total if total else None
    return out


def peak_step_memory(runner: Runner) -> int | None:
    """Peak bytes allocated by PyTorch's CPU allocator during one training step (see profile_step)."""
    peak = profile_step(runner)["peak_bytes"]
    return None if peak is None else int(peak)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def step_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and parameter gradients of one fp32 training-mode forward/backward."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _grad_diff(g_a: dict[str, torch.Tensor], g_b: dict[str, torch.Tensor]) -> float:
    """Largest gradient difference over all parameters / the largest gradient of b.

    Relative to the model's largest gradient: a per-tensor ratio would be dominated by rounding in
    tensors whose gradient nearly cancels (e.g. 1e-6 everywhere)."""
    if g_a.keys() != g_b.keys():
        raise RuntimeError("the two models have different parameters")
    scale = max(g.double().abs().max().item() for g in g_b.values())
    return max((g_a[n].double() - g_b[n].double()).abs().max().item() for n in g_a) / scale


def equivalence(section: Section, state_dict, x, y, pairs: list[tuple[Config, Config]]) -> dict[str, list]:
    """One training step from the same weights and batch, for the configurations in `pairs` (fp32):

    pairs: for each (a, b), max |out_a - out_b| / max |out_b| and the largest gradient difference
        over all parameters / the largest gradient (_grad_diff);
    vs_float64: the same two numbers for each configuration against a float64 run of our plain model
        (the same function as every implementation here), i.e. each one's own fp32 rounding error --
        the scale against which "equal within float tolerance" is judged.
    """
    configs = {c.name: c for pair in pairs for c in pair}
    steps = {name: step_outputs(build_model(section, c, state_dict), x, y) for name, c in configs.items()}
    rows = []
    for a, b in pairs:
        (out_a, g_a), (out_b, g_b) = steps[a.name], steps[b.name]
        rows.append({"a": a.name, "b": b.name, "a_label": a.label, "b_label": b.label,
                     "max_rel_diff_output": max_rel_diff(out_a, out_b), "max_rel_diff_grad": _grad_diff(g_a, g_b),
                     "num_params": len(g_a)})
    ref_out, ref_g = step_outputs(build_model(section, Config("ours"), state_dict).double(), x.double(), y)
    vs64 = [{"config": name, "label": c.label, "max_rel_diff_output": max_rel_diff(steps[name][0], ref_out),
             "max_rel_diff_grad": _grad_diff(steps[name][1], ref_g)} for name, c in configs.items()]
    return {"pairs": rows, "vs_float64": vs64}


def summary_stats(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    return {"median": statistics.median(vs), "min": vs[0], "max": vs[-1],
            "spread_pct": 100.0 * (vs[-1] - vs[0]) / statistics.median(vs) if statistics.median(vs) else 0.0}


# ----------------------------------------------------------------------------------------------
# One section
# ----------------------------------------------------------------------------------------------


def run_section(section: Section, size: Size, *, do_compile: bool, peaks: dict[str, float],
                log: Callable[[str], None]) -> dict[str, Any]:
    configs = [c for c in section.configs if do_compile or not c.compile]
    num_classes = 10 if section.family == "cifar" else 1000
    torch.manual_seed(0)
    from densenet_repro import DenseNet

    state_dict = DenseNet(num_classes=num_classes, **section.net).state_dict()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(section.batch, 3, section.image_size, section.image_size, generator=g)
    y = torch.randint(0, num_classes, (section.batch,), generator=g)

    flops = train_flops_per_image(section)
    log(f"[bench] {section.name}: {section.title}; {flops['train_flops_per_image'] / 1e9:.2f} GFLOP per image "
        f"per training step")

    runners: dict[str, Runner] = {}
    for c in configs:
        r = runners[c.name] = Runner(section, c, state_dict, x, y)
        first = _timed(r.train_step)  # includes compilation for compiled configurations
        for _ in range(size.warmup - 1):
            r.train_step()
        if c.compile:
            r.compile_s = max(0.0, first - _timed(r.train_step))
        log(f"[bench]   built {c.name:22s} first step {first:7.1f} s" +
            (f" (compile ~{r.compile_s:.0f} s)" if c.compile else ""))

    def rounds(kind: str, cfgs: list[Config]) -> dict[str, list[float]]:
        per: dict[str, list[float]] = {c.name: [] for c in cfgs}
        for rnd in range(size.rounds):
            order = cfgs[rnd % len(cfgs):] + cfgs[:rnd % len(cfgs)]  # rotate the order every round
            for c in order:
                r = runners[c.name]
                dt = _timed(r.train_step if kind == "train" else r.infer)
                per[c.name].append(section.batch / dt)
            log(f"[bench]   {kind} round {rnd + 1}/{size.rounds}: " +
                ", ".join(f"{c.name} {per[c.name][-1]:.1f}" for c in cfgs))
        return per

    train = rounds("train", configs)
    # Inference: a compiled configuration would compile again for eval/no_grad; not measured.
    infer_configs = [c for c in configs if not c.compile]
    for c in infer_configs:
        runners[c.name].infer()  # warm-up
    infer = rounds("infer", infer_configs)

    results = []
    base = section.baseline
    for c in configs:
        r = runners[c.name]
        prof = profile_step(r)
        mem = prof["peak_bytes"]
        t = train[c.name]
        ratios = [a / b for a, b in zip(t, train[base])]
        row: dict[str, Any] = {
            "config": c.name, "label": c.label, **dataclasses.asdict(c),
            "train_img_s": t, "train": summary_stats(t),
            "train_ratio_to_baseline": summary_stats(ratios),
            "infer_img_s": infer.get(c.name), "infer": summary_stats(infer[c.name]) if c.name in infer else None,
            "infer_ratio_to_baseline": (summary_stats([a / b for a, b in zip(infer[c.name], infer[base])])
                                        if c.name in infer else None),
            "compile_s": r.compile_s,
            "peak_step_memory_mb": None if mem is None else mem / 2**20,
            "conv_time_share": prof["conv_share"],
        }
        achieved = flops["train_flops_per_image"] * row["train"]["median"] / 1e9
        row["achieved_gflops"] = achieved
        row["fraction_of_matmul_peak"] = achieved / peaks[c.precision]
        results.append(row)
        log(f"[bench]   {c.name:22s} train {row['train']['median']:7.1f} img/s "
            f"(x{row['train_ratio_to_baseline']['median']:.2f}), peak memory "
            f"{row['peak_step_memory_mb'] or float('nan'):.0f} MB")
    base_mem = next(r["peak_step_memory_mb"] for r in results if r["config"] == base)
    for row in results:
        row["memory_ratio_to_baseline"] = (row["peak_step_memory_mb"] / base_mem
                                           if row["peak_step_memory_mb"] and base_mem else None)

    # Exactness of what is compared, from the same weights, fp32.
    by_name = {c.name: c for c in section.configs}
    if section.family == "cifar":
        pairs = [(by_name["ours"], by_name["naive"]), (by_name["fast"], by_name["ours"])]
    else:
        pairs = [(by_name["ours"], by_name["torchvision"]), (by_name["timm"], by_name["torchvision"]),
                 (by_name["fast"], by_name["torchvision"])]
    equiv = equivalence(section, state_dict, x, y, pairs)
    log(f"[bench]   equivalence (fp32 vs float64, grad): " +
        ", ".join(f"{e['config']} {e['max_rel_diff_grad']:.1e}" for e in equiv["vs_float64"]))
    return {"name": section.name, "title": section.title, "net": section.net, "image_size": section.image_size,
            "batch": section.batch, "baseline": base, **flops, "results": results, "equivalence": equiv}


# ----------------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    from densenet_repro import provenance

    info = provenance.hardware("cpu")
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    info["isa"] = sorted({fl for fl in flags.split() if fl.startswith(("avx512", "amx", "avx_vnni", "avx2"))})
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def _inductor_cache_enabled() -> bool | None:
    """Whether torch.compile could reuse compiled graphs from earlier runs (then compile times are short)."""
    try:
        import torch._inductor.config as inductor_config

        return bool(inductor_config.fx_graph_cache)
    except (ImportError, AttributeError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(size: str = "default", *, do_compile: bool | None = None, rounds: int | None = None,
        threads: int | None = None, log: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
    """Run the speed benchmark and return its result (what `main` writes to JSON)."""
    from densenet_repro import provenance

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
    spec = SIZES[size]
    if rounds is not None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        spec = dataclasses.replace(spec, rounds=rounds)
    do_compile = spec.compile if do_compile is None else do_compile
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        load_before = load_average()
        peaks = {"fp32": matmul_peak(torch.float32, spec.matmul_n), "bf16": matmul_peak(torch.bfloat16, spec.matmul_n)}
        log(f"[bench] matmul peak ({spec.matmul_n}^3): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
            f"{torch.get_num_threads()} threads; load {load_before}")
        sections = [run_section(s, spec, do_compile=do_compile, peaks=peaks, log=log) for s in spec.sections]
        peaks_after = {"fp32": matmul_peak(torch.float32, spec.matmul_n), "bf16": matmul_peak(torch.bfloat16, spec.matmul_n)}
        commit, dirty = provenance.git_commit()
        return {
            "schema": SCHEMA,
            "size": size,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or f"densenet_repro.bench.run({size!r})",
            "commit": commit, "dirty": dirty,
            "versions": provenance.versions(),
            "machine": machine_info(),
            "threads": torch.get_num_threads(),
            "load_average_before": load_before, "load_average_after": load_average(),
            "matmul_peak_gflops": peaks, "matmul_peak_gflops_after": peaks_after, "matmul_n": spec.matmul_n,
            "rounds": spec.rounds, "warmup": spec.warmup, "compile_measured": do_compile,
            "inductor_fx_graph_cache": _inductor_cache_enabled(),
            "fast_path": FAST_PATH, "memory_efficient_mode": MEMORY_EFFICIENT_MODE,
            "sections": sections,
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
    finally:
        torch.set_num_threads(saved_threads)


def write_result(result: dict[str, Any], out_dir: str | os.PathLike = DEFAULT_OUT, name: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or 'bench_' + result['size']}.json"
    from densenet_repro import atomic

    atomic.write_text(path, json.dumps(result, indent=1) + "\n")
    return path


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no benchmark result there; make it with `python -m densenet_repro bench`")
    result = json.loads(p.read_text(encoding="utf-8"))
    if result.get("schema") != SCHEMA:
        raise ValueError(f"{p}: benchmark schema {result.get('schema')!r}, this code reads {SCHEMA}: rerun the benchmark")
    return result


# ----------------------------------------------------------------------------------------------
# Tables and targets (notebook 06)
# ----------------------------------------------------------------------------------------------


def table(result: dict[str, Any], section: str):
    """One row per configuration: throughput, ratios, memory, FLOP-rate fraction, compile time."""
    import pandas as pd

    sec = _section(result, section)
    rows = []
    for r in current_rows(sec):
        rows.append({
            "configuration": r["label"],
            "train img/s": r["train"]["median"],
            "train spread %": r["train"]["spread_pct"],
            f"train x {sec['baseline']}": r["train_ratio_to_baseline"]["median"],
            "ratio range": f"{r['train_ratio_to_baseline']['min']:.2f}-{r['train_ratio_to_baseline']['max']:.2f}",
            "infer img/s": r["infer"]["median"] if r["infer"] else math.nan,
            f"infer x {sec['baseline']}": r["infer_ratio_to_baseline"]["median"] if r["infer_ratio_to_baseline"] else math.nan,
            "peak step memory MB": r["peak_step_memory_mb"] if r["peak_step_memory_mb"] is not None else math.nan,
            f"memory x {sec['baseline']}": r["memory_ratio_to_baseline"] if r["memory_ratio_to_baseline"] else math.nan,
            "% of matmul peak": 100 * r["fraction_of_matmul_peak"],
            "% time in convs": 100 * r["conv_time_share"] if r.get("conv_time_share") else math.nan,
            "compile s": r["compile_s"] if r["compile_s"] is not None else math.nan,
        })
    return pd.DataFrame(rows).round(2)


def current_rows(sec: dict[str, Any]) -> list[dict[str, Any]]:
    """The section's rows for configurations this code still defines (a result made by an older
    version may hold a configuration since removed; it is not shown)."""
    known = {c.name for c in CIFAR_CONFIGS + IMAGENET_CONFIGS}
    return [r for r in sec["results"] if r["config"] in known]


def dropped_configs(result: dict[str, Any]) -> list[str]:
    """Configurations in `result` that this code no longer defines (shown nowhere)."""
    return [r["config"] for sec in result["sections"] for r in sec["results"] if r not in current_rows(sec)]


def missing_configs(result: dict[str, Any]) -> list[str]:
    """Configurations this code defines that `result` lacks (measured by a later version)."""
    have = {r["config"] for sec in result["sections"] for r in sec["results"]}
    want = [c for c in CIFAR_CONFIGS + IMAGENET_CONFIGS if not (c.compile and not result.get("compile_measured", True))]
    return [c.name for c in want if c.name not in have]


def result_notes(result: dict[str, Any]):
    """A sentence on what the result file lacks or holds beyond this code's configurations (Markdown)."""
    from IPython.display import Markdown

    parts = []
    if missing_configs(result):
        parts.append("not measured in this result (made by an earlier version of the benchmark): "
                     + ", ".join(f"`{c}`" for c in missing_configs(result))
                     + "; targets that need them use the readings that exist, and a target with none is unmet")
    if dropped_configs(result):
        parts.append("in this result but no longer a configuration of the benchmark, so not shown: "
                     + ", ".join(f"`{c}`" for c in dropped_configs(result)))
    return Markdown(("**Configurations.** " + "; ".join(parts) + ".") if parts else
                    "**Configurations.** This result holds every configuration of the benchmark.")


def _section(result: dict[str, Any], name: str) -> dict[str, Any]:
    for s in result["sections"]:
        if s["name"] == name:
            return s
    raise KeyError(f"no section {name!r} in this result (have: {[s['name'] for s in result['sections']]})")


def _row(sec: dict[str, Any], config: str) -> dict[str, Any] | None:
    return next((r for r in sec["results"] if r["config"] == config), None)


def equivalence_table(result: dict[str, Any]):
    """Pairs of implementations, and each one against a float64 run (its own fp32 rounding error)."""
    import pandas as pd

    rows = []
    for sec in result["sections"]:
        for e in sec["equivalence"]["pairs"]:
            rows.append({"section": sec["name"], "compared": f"{e['a_label']}  vs  {e['b_label']}",
                         "max rel. diff, output": e["max_rel_diff_output"],
                         "max grad diff / max grad": e["max_rel_diff_grad"]})
        for e in sec["equivalence"]["vs_float64"]:
            rows.append({"section": sec["name"], "compared": f"{e['label']}  vs  float64 reference",
                         "max rel. diff, output": e["max_rel_diff_output"],
                         "max grad diff / max grad": e["max_rel_diff_grad"]})
    return pd.DataFrame(rows)


# "Equal within float tolerance": the same ops give the same numbers (IDENTICAL_TOL); a different but
# equivalent order of operations may differ from a float64 run by at most FLOAT_TOL_FACTOR times what
# the reference implementation's own fp32 rounding does.
IDENTICAL_TOL = 1e-5
FLOAT_TOL_FACTOR = 3.0


def _round_ratio(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Per-round training throughput ratios a / b (the configurations were timed interleaved)."""
    return [x / y for x, y in zip(a["train_img_s"], b["train_img_s"])]


def _target_rows(result: dict[str, Any], accuracy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every target as (target, measured, met), computed from one benchmark result.

    Each target is read conservatively: where two readings of the same number exist (two
    precisions, a ratio and its noise floor, a strict and a lenient test), `met` needs both, and
    `measured` states the conservative one first. A configuration a target needs but the result
    lacks makes the target unmet ("not measured"), never met.
    """
    rows = []
    cifar = _section(result, "cifar")
    fast = _row(cifar, FAST_PATH)
    base = _row(cifar, cifar["baseline"])
    r = fast["train_ratio_to_baseline"]
    rows.append({"target": "DenseNet-BC-100 training >= 3x the naive eager fp32 baseline (fast path)",
                 "measured": f"x{r['median']:.2f} (median of rounds; rounds: {r['min']:.2f}-{r['max']:.2f})",
                 "met": r["median"] >= 3.0})
    if accuracy is not None and accuracy.get("difference_pct") is not None:
        spread = max(accuracy["spread_fp32_pct"], accuracy["spread_fast_pct"])
        rows.append({"target": "... with the same final accuracy as fp32: |fast - fp32| mean test error within "
                               "the larger seed spread",
                     "measured": f"|fast - fp32| = {abs(accuracy['difference_pct']):.2f} points vs a seed spread of "
                                 f"{spread:.2f}: within it: {bool(accuracy['same_within_spread'])} "
                                 f"(means: fast {accuracy['mean_error_pct']['fast']:.2f}, fp32 "
                                 f"{accuracy['mean_error_pct']['fp32']:.2f}; the lenient reading 'fast not worse "
                                 f"by more than the spread': {bool(accuracy['not_worse_within_spread'])})",
                     "met": bool(accuracy["same_within_spread"])})
    # Memory-efficient mode: what --memory-efficient gives in the training engine (plain checkpointed
    # blocks), against the naive baseline and the fast mode in the same precision.
    me = _row(cifar, MEMORY_EFFICIENT_MODE)
    if me is None or me["memory_ratio_to_baseline"] is None:
        rows.append({"target": "--memory-efficient peak memory <= 0.5x the naive baseline's (both fp32)",
                     "measured": f"not measured: no {MEMORY_EFFICIENT_MODE!r} row with a peak memory", "met": False})
    else:
        rows.append({"target": "--memory-efficient peak memory <= 0.5x the naive baseline's (both fp32)",
                     "measured": f"x{me['memory_ratio_to_baseline']:.2f} ({me['peak_step_memory_mb']:.0f} MB vs "
                                 f"{base['peak_step_memory_mb']:.0f} MB)",
                     "met": me["memory_ratio_to_baseline"] <= 0.5})
    readings = []
    for me_name, fast_name in MEMORY_EFFICIENT_PAIRS:
        a, b = _row(cifar, me_name), _row(cifar, fast_name)
        if a and b:
            slower = 1 - statistics.median(_round_ratio(a, b))
            readings.append((slower, f"{100 * slower:+.1f}% ({_prec(a)}: "
                                     f"{a['train']['median']:.1f} vs {b['train']['median']:.1f} img/s)"))
    readings.sort(key=lambda t: -t[0])  # the slowest reading first
    rows.append({"target": "--memory-efficient at most 25% slower than the fast mode (same precision and layout)",
                 "measured": ("slower by " + "; ".join(t for _, t in readings)) if readings
                             else "not measured: no memory-efficient/fast pair in this result",
                 "met": bool(readings) and all(s <= 0.25 for s, _ in readings)})
    imn = _section(result, "imagenet")
    for ours, tv in (("fast", "torchvision"), ("fast_bf16_cl", "torchvision_bf16_cl")):
        a, b = _row(imn, ours), _row(imn, tv)
        if not (a and b):
            continue
        med = statistics.median(_round_ratio(a, b))
        twin = _row(imn, IMAGENET_SAME_CODE[ours])
        text = f"x{med:.2f} vs torchvision"
        conservative = med
        if twin:
            floor = statistics.median(_round_ratio(twin, b))
            own = statistics.median(_round_ratio(a, twin))
            conservative = min(med, own)
            text = (f"x{own:.2f} vs our plain blocks, the same computation as torchvision; x{med:.2f} vs torchvision "
                    f"itself, where the same computation already measures x{floor:.2f} (this machine's noise floor)")
        text += (f"; torchvision runs at {100 * b['fraction_of_matmul_peak']:.0f}% of the "
                 f"{'bf16' if b['bf16'] else 'fp32'} matmul peak, so x1.3 needs "
                 f"{130 * b['fraction_of_matmul_peak']:.0f}% of it for the whole step")
        if b.get("conv_time_share"):
            text += (f"; convolutions are {100 * b['conv_time_share']:.0f}% of its (profiled) step, which caps "
                     f"anything keeping them at x{1 / b['conv_time_share']:.2f}")
        rows.append({"target": f"DenseNet-121 training >= 1.3x torchvision's ({'bf16' if a['bf16'] else 'fp32'}"
                               f"{', channels_last' if a['channels_last'] else ', NCHW'})",
                     "measured": text, "met": conservative >= 1.3})
    eq = imn["equivalence"]
    same_ops = [e for e in eq["pairs"] if e["a"] in ("ours", "timm") and e["b"] == "torchvision"]
    worst_same = max(max(e["max_rel_diff_output"], e["max_rel_diff_grad"]) for e in same_ops)
    v64 = {e["config"]: e for e in eq["vs_float64"]}
    tv_err = max(v64["torchvision"]["max_rel_diff_output"], v64["torchvision"]["max_rel_diff_grad"])
    fast_err = max(v64["fast"]["max_rel_diff_output"], v64["fast"]["max_rel_diff_grad"])
    rows.append({"target": "DenseNet-121 outputs and gradients equal to torchvision's within float tolerance (fp32)",
                 "measured": f"ours and timm vs torchvision: {worst_same:.1e} (<= {IDENTICAL_TOL:g}: same ops); "
                             f"fast blocks vs float64 {fast_err:.1e}, torchvision vs float64 {tv_err:.1e} "
                             f"(ratio {fast_err / tv_err:.1f}, allowed {FLOAT_TOL_FACTOR:g})",
                 "met": worst_same <= IDENTICAL_TOL and fast_err <= FLOAT_TOL_FACTOR * tv_err})
    return rows


def _prec(row: dict[str, Any]) -> str:
    return ("bf16" if row.get("bf16") else "fp32") + (" + channels_last" if row.get("channels_last") else "")


def targets(result: dict[str, Any], accuracy: dict[str, Any] | None = None,
            cross_check: dict[str, Any] | None = None):
    """The targets, each with its measured number and whether it is met (computed here).

    With `cross_check` (the one-thread run), every target is also judged on it, and `met` is True
    only when both runs meet it: the conservative reading comes first.
    """
    import pandas as pd

    rows = _target_rows(result, accuracy)
    if cross_check is None:
        return pd.DataFrame(rows, columns=["target", "measured", "met"])
    other = {r["target"]: r for r in _target_rows(cross_check, accuracy)}
    out = []
    for r in rows:
        o = other.get(r["target"])
        met_other = bool(o and o["met"])
        out.append({"target": r["target"], "met": bool(r["met"]) and met_other,
                    f"met ({result['threads']} threads)": bool(r["met"]),
                    f"met ({cross_check['threads']} thread cross-check)": met_other,
                    "measured": r["measured"],
                    "measured (cross-check)": o["measured"] if o else "not in the cross-check"})
    return pd.DataFrame(out)


def headlines(result: dict[str, Any], accuracy: dict[str, Any] | None = None, verdicts=None) -> dict[str, Any]:
    """Headline numbers for the reports index, the conservative reading first (all computed)."""
    cifar = _section(result, "cifar")
    fast = _row(cifar, FAST_PATH)
    base = _row(cifar, cifar["baseline"])
    out: dict[str, Any] = {}
    if verdicts is not None:
        both = [c for c in verdicts.columns if c.startswith("met (")]
        out["targets met" + (" (in both benchmark runs)" if both else "")] = \
            f"{int(verdicts['met'].sum())}/{len(verdicts)}"
    out["BC-100 fast path x naive fp32 (train)"] = round(fast["train_ratio_to_baseline"]["median"], 2)
    out["BC-100 fast path train img/s"] = round(fast["train"]["median"], 1)
    out["BC-100 naive fp32 train img/s"] = round(base["train"]["median"], 1)
    me = _row(cifar, MEMORY_EFFICIENT_MODE)
    if me and me["memory_ratio_to_baseline"]:
        out["BC-100 --memory-efficient memory x naive (both fp32)"] = round(me["memory_ratio_to_baseline"], 2)
    slowest = [1 - statistics.median(_round_ratio(_row(cifar, a), _row(cifar, b)))
               for a, b in MEMORY_EFFICIENT_PAIRS if _row(cifar, a) and _row(cifar, b)]
    if slowest:
        out["BC-100 --memory-efficient slower than fast mode (%)"] = round(100 * max(slowest), 1)
    if fast["memory_ratio_to_baseline"]:
        out["BC-100 fast path memory x naive (bf16 vs fp32)"] = round(fast["memory_ratio_to_baseline"], 2)
    imn = _section(result, "imagenet")
    a, b, twin = _row(imn, "fast_bf16_cl"), _row(imn, "torchvision_bf16_cl"), _row(imn, "ours_bf16_cl")
    if a and twin:
        out["DenseNet-121 fast x same computation as torchvision (bf16, CL)"] = round(
            statistics.median(_round_ratio(a, twin)), 2)
    if a and b:
        out["DenseNet-121 fast x torchvision (bf16, CL)"] = round(statistics.median(_round_ratio(a, b)), 2)
    if twin and b:
        out["DenseNet-121 noise floor: same computation x torchvision (bf16, CL)"] = round(
            statistics.median(_round_ratio(twin, b)), 2)
    if accuracy is not None:
        out["fast - fp32 final test error (points)"] = round(accuracy["difference_pct"], 2)
    return out


def accuracy_dataset(accuracy: dict[str, Any]) -> str:
    """The data the accuracy runs used, as the training engine described it."""
    for r in accuracy["runs"]:
        cfg = Path(r["run_dir"] or "") / "config.json"
        if cfg.is_file():
            return json.loads(cfg.read_text(encoding="utf-8")).get("data_source", "?")
    return "?"


def files_read(budget: str, result_files: str | list[str], accuracy: dict[str, Any] | None) -> list[str]:
    """The committed result files the notebook read (none of the speed files at the smoke budget)."""
    if isinstance(result_files, (str, os.PathLike)):
        result_files = [result_files]
    files = [] if budget == "smoke" else [str(f) for f in result_files]
    return files + (accuracy_files(accuracy) if accuracy and budget != "smoke" else [])


def plot(result: dict[str, Any], section: str = "cifar", ax=None):
    """Bar chart of training images/s per configuration, with the per-round range."""
    import matplotlib.pyplot as plt

    sec = _section(result, section)
    rows = current_rows(sec)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    labels = [r["label"] for r in rows]
    med = [r["train"]["median"] for r in rows]
    err = [[m - r["train"]["min"] for m, r in zip(med, rows)], [r["train"]["max"] - m for m, r in zip(med, rows)]]
    colours = ["#c44e52" if r["config"] == sec["baseline"] else "#55a868" if r["config"] == FAST_PATH
               else "#4c72b0" for r in rows]
    ax.barh(range(len(rows)), med, xerr=err, color=colours, capsize=3)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("training images/s (median over rounds; bars: min-max)")
    ax.set_title(sec["title"])
    for i, r in enumerate(rows):  # the same ratio as the table: median over rounds of within-round ratios
        ax.text(r["train"]["max"], i, f"  x{r['train_ratio_to_baseline']['median']:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * max(r["train"]["max"] for r in rows))
    return ax


def context_table(result: dict[str, Any]):
    """Where and how the numbers were measured (machine, threads, load, peaks, versions, commit)."""
    import pandas as pd

    m, v = result["machine"], result["versions"]
    rows = [
        ("machine", f"{m.get('cpu')}, {m.get('cpu_cores')} cores, {m.get('memory_gib')} GiB"),
        ("vector ISA (cpuinfo)", ", ".join(m.get("isa", [])) or "?"),
        ("torch threads", str(result["threads"])),
        ("load average before / after (1, 5, 15 min)", f"{result['load_average_before']} / {result['load_average_after']}"),
        ("matmul peak GFLOP/s, fp32 / bf16 (before)", f"{result['matmul_peak_gflops']['fp32']:.0f} / "
                                                      f"{result['matmul_peak_gflops']['bf16']:.0f}"),
        ("matmul peak GFLOP/s, fp32 / bf16 (after)", f"{result['matmul_peak_gflops_after']['fp32']:.0f} / "
                                                     f"{result['matmul_peak_gflops_after']['bf16']:.0f}"),
        ("rounds x configurations (interleaved)", f"{result['rounds']} rounds, {result['warmup']} warm-up steps"),
        ("torch.compile: inductor graph cache on", f"{result.get('inductor_fx_graph_cache')} (compile times are "
                                                   "shorter when an earlier run left compiled graphs)"),
        ("software", ", ".join(f"{k} {val}" for k, val in v.items())),
        ("commit", result["commit"][:12] + (" (uncommitted changes)" if result.get("dirty") else "")),
        ("command, date, wall time", f"{result['command']}; {result['created']}; {result['wall_time_s']:.0f} s"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def result_for_budget(budget: str, path: str | os.PathLike) -> dict[str, Any]:
    """The notebook's speed result: the committed file (cpu, paper), or a tiny run now (smoke)."""
    from densenet_repro.budgets import check_budget

    check_budget(budget)
    if budget == "smoke":
        return run("tiny", log=lambda s: None)
    return load_result(path)


GPU_OUT = "results/gpu"  # where python -m densenet_repro gpu-check's committed result lives


def gpu_results(folder: str | os.PathLike = GPU_OUT):
    """A row per engine mode of the committed gpu-check result (none until it has run on a GPU)."""
    import pandas as pd

    cols = ["gpu", "mode", "epoch s", "compile s", "img/s", "peak GiB", "epoch-1 train loss", "file"]
    path = Path(folder) / "gpu_check.json"
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    r = json.loads(path.read_text(encoding="utf-8"))
    rows = [{"gpu": r.get("env", {}).get("gpu"), "mode": name, "epoch s": m.get("epoch_s"),
             "compile s": m.get("compile_s"), "img/s": m.get("images_per_s"), "peak GiB": m.get("peak_gpu_memory_gib"),
             "epoch-1 train loss": m.get("train_loss"), "file": path.as_posix()}
            for name, m in r.get("epochs", {}).items()]
    return pd.DataFrame(rows, columns=cols)


def gpu_section(folder: str | os.PathLike = GPU_OUT):
    """The GPU results table, or one sentence saying that none has been committed (never an empty table)."""
    df = gpu_results(folder)
    if len(df):
        return df
    from IPython.display import Markdown

    return Markdown(f"No GPU result yet: no `{Path(folder).as_posix()}/gpu_check.json` is committed. The GPU "
                    "targets are **prepared but not run**.")


# ----------------------------------------------------------------------------------------------
# Accuracy of the fast path (short real runs of the training engine)
# ----------------------------------------------------------------------------------------------

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

    A committed run counts when its config.json hashes (train.config_hash with the data source id it
    recorded) to exactly the config this code would train; None when any run is missing. This lets
    the notebook render where the dataset is absent, naming the data the runs used.
    """
    from densenet_repro import train as train_mod

    runs = []
    for variant, cfg in accuracy_configs(budget, None, device):
        cfg = dataclasses.replace(cfg, fast_blocks=variant == "fast")
        found = None
        for cfg_file in sorted((Path(results) / cfg.experiment).glob(f"{cfg.model}-{cfg.dataset}-*/config.json")):
            stored = json.loads(cfg_file.read_text(encoding="utf-8"))
            summary_file = cfg_file.with_name("summary.json")
            if not summary_file.is_file() or "data_source_id" not in stored:
                continue
            if train_mod.config_hash(cfg, stored["data_source_id"]) != stored.get("config_hash"):
                continue
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            if summary.get("finished"):
                found = dict(summary, run_dir=cfg_file.parent.as_posix())
                break
        if found is None:
            return None
        runs.append(_run_entry(variant, cfg, found))
    return compare_accuracy(runs, budget)


def run_accuracy(budget: str = "cpu", data_root: str | None = None, device: str = "cpu", *,
                 out: str = "runs", results: str = "results", publish: bool | None = None,
                 progress: str = "auto") -> dict[str, Any]:
    """Train (or find) the fp32 and fast-path runs and compare their final test errors."""
    from densenet_repro import experiments
    from densenet_repro import train as train_mod

    publish = budget != "smoke" if publish is None else publish
    runs = []
    for variant, cfg in accuracy_configs(budget, data_root, device):
        cfg = dataclasses.replace(cfg, out=out, results=results, progress=progress, resume=True,
                                  fast_blocks=variant == "fast")
        summary = train_mod.train(cfg)
        if publish:
            summary["run_dir"] = experiments.publish(summary, results).as_posix()
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


def accuracy_table(acc: dict[str, Any]):
    import pandas as pd

    df = pd.DataFrame(acc["runs"])
    df["depth"] = [(k or {}).get("depth") for k in df["model_kwargs"]]
    df = df[["variant", "seed", "depth", "epochs", "final_test_error_pct", "train_images_per_s", "amp",
             "channels_last", "fast_blocks"]]
    return df.rename(columns={"final_test_error_pct": "final test error %", "train_images_per_s": "train img/s"})


def accuracy_files(acc: dict[str, Any]) -> list[str]:
    files = []
    for r in acc["runs"]:
        if r.get("run_dir"):
            for name in ("summary.json", "metrics.csv"):
                p = Path(r["run_dir"]) / name
                if p.is_file():
                    files.append(p.as_posix())
    return files


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, says what is valid
        self.exit(2, f"error: {message} (see `python -m densenet_repro bench --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m densenet_repro bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="speed", choices=("speed", "accuracy"),
                   help="speed (default): the throughput/memory benchmark; accuracy: fp32 vs fast path runs")
    p.add_argument("--size", default="default", choices=tuple(SIZES), help="speed: model sizes (tiny: toy, seconds)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"speed: folder of the result JSON (default {DEFAULT_OUT})")
    p.add_argument("--name", default=None, help="speed: file name without .json (default bench_<size>)")
    p.add_argument("--rounds", type=int, default=None, help="speed: timed rounds (default: the size's)")
    p.add_argument("--threads", type=int, default=None, help="speed: torch CPU threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="speed: skip the torch.compile configurations")
    p.add_argument("--budget", default="cpu", choices=("smoke", "cpu"), help="accuracy: run size (default cpu)")
    p.add_argument("--data-root", default=None, help="accuracy: dataset folder (default: the engine's)")
    p.add_argument("--device", default="cpu", help="accuracy: device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.what == "accuracy":
            acc = run_accuracy(args.budget, args.data_root, args.device)
            print(accuracy_table(acc).to_string(index=False))
            print(f"fast - fp32 mean final test error: {acc['difference_pct']:+.2f} points; seed spread "
                  f"fp32 {acc['spread_fp32_pct']:.2f}, fast {acc['spread_fast_pct']:.2f}; |difference| within "
                  f"spread: {acc['same_within_spread']}; not worse: {acc['not_worse_within_spread']}")
            return 0
        result = run(args.size, do_compile=False if args.no_compile else None, rounds=args.rounds,
                     threads=args.threads, command=" ".join(["python -m densenet_repro bench", *(argv or [])]))
        path = write_result(result, args.out, args.name)
        print(f"[bench] wrote {path} ({result['wall_time_s']:.0f} s)")
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
