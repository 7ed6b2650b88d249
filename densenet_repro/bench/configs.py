"""What the benchmark measures: the configurations, the two sections, the sizes, and the model each
configuration builds (densenet_repro.bench.measure times them, .report reads the results).

  cifar     DenseNet-BC (L=100, k=12), 32x32, batch 64 -- the paper's C10+ setting. Baseline: a
            naive implementation in torchvision's style, built from torchvision's own `_DenseBlock`
            and `_Transition` (a list of features, `torch.cat` in every layer) with a CIFAR stem,
            eager fp32 NCHW (models/naive_densenet.py). Ours: eager fp32, channels_last, bf16
            autocast, bf16 + channels_last, torch.compile (fp32, and bf16 + channels_last), the fast
            dense blocks (models/fast_dense.py) in fp32 and in bf16 + channels_last, and the
            memory-efficient mode exactly as the training engine runs it for `--memory-efficient`
            (the model is made by train.build_model and train's own fast-blocks decision, which keeps
            the plain checkpointed blocks), in fp32 and in bf16 + channels_last.
  imagenet  DenseNet-121, 224x224, batch 16: torchvision.models.densenet121, timm's densenet121 and
            ours, loaded with the same state_dict, each in fp32 NCHW and bf16 + channels_last; ours
            also with the fast blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from densenet_repro.models.naive_densenet import NaiveDenseNet


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
# The model of each configuration
# ----------------------------------------------------------------------------------------------


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
    from densenet_repro.config import RunConfig

    return RunConfig(model="densenet_bc100_k12", dataset="c10+", model_kwargs={"depth": section.net["depth"]},
                     memory_efficient=config.memory_efficient, amp="bf16" if config.bf16 else "none",
                     channels_last=config.channels_last, fast_blocks=None, device="cpu")


def engine_model(section: Section, config: Config) -> nn.Module:
    """The model the training engine trains for this configuration's flags, at the section's size.

    Built as train.build_model builds it (DenseNet with memory_efficient passed through), then the
    engine's own decision whether to switch to the fast blocks is applied (fastpath.use_fast_blocks
    with the knobs plan.speed_knobs gives, which keep the plain checkpointed blocks for --memory-efficient). tests/test_bench.py checks
    that this is the model train.build_model makes for the same RunConfig.
    """
    from densenet_repro import DenseNet, fastpath
    from densenet_repro.plan import speed_knobs

    if section.family != "cifar":
        raise ValueError("engine configurations are defined for the CIFAR section")
    run_cfg = engine_run_config(section, config)
    model = DenseNet(num_classes=10, memory_efficient=config.memory_efficient, **section.net)
    cpu = torch.device("cpu")
    fastpath.use_fast_blocks(run_cfg, model, cpu, False, speed_knobs(run_cfg, cpu).fast_blocks)
    return model
