"""A run's recipe: `RunConfig`, its hash, the learning-rate rule, and the model and optimizer it names.

Every field of RunConfig is declared with `recipe(...)` (it determines the result: part of the config
hash) or `option(...)` (where or how fast the run is made: not hashed). A run made on a GPU with
channels_last and a compiled step is therefore the same run as one made on a CPU, and is found again
by its hash from either. `config_hash` also covers the data source's identity.

Recipe (paper, section 4.2): SGD with Nesterov momentum 0.9 (no dampening), weight decay 1e-4 on
every parameter (BN and biases included, as in the official code), batch 64, learning rate 0.1
divided by 10 at 50% and 75% of the epochs (a shorter schedule scales the milestones), 300 epochs
on CIFAR and 40 on SVHN, dropout 0.2 exactly when the dataset has no augmentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from densenet_repro.budgets import BUDGETS
from densenet_repro.data.specs import DATASETS, SOURCES, get_spec
from densenet_repro.errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "bar", "line", "none")


def recipe(default: Any = dataclasses.MISSING, **kw) -> Any:
    """A RunConfig field that determines the result: part of the config hash."""
    return field(default=default, metadata={"hashed": True}, **kw)


def option(default: Any = dataclasses.MISSING, **kw) -> Any:
    """A RunConfig field that changes where or how fast a run is made, not its result: not hashed.

    Every field is declared with one of the two (tests/test_train.py checks), so a new field can
    never fall into the hash, or out of it, by accident: either would orphan committed results.
    """
    return field(default=default, metadata={"hashed": False}, **kw)


@dataclass
class RunConfig:
    """Everything that defines a training run. Defaults are the paper's recipe (section 4.2)."""

    # --- the run's recipe: what is computed (hashed) -------------------------------------------
    model: str = recipe("densenet_bc100_k12")
    dataset: str = recipe("c10+")
    # Extra keyword arguments for create_model, e.g. {"depth": 22} for a scaled-down budget.
    model_kwargs: dict[str, Any] = recipe(default_factory=dict)
    epochs: int | None = recipe(None)        # None: the paper's, 300 on CIFAR, 40 on SVHN
    batch_size: int = recipe(64)             # paper: 64 (global batch, split across DDP processes)
    lr: float = recipe(0.1)                  # paper: initial learning rate 0.1 ...
    lr_milestones: tuple[float, ...] = recipe((0.5, 0.75))  # ... divided by 10 at 50% and 75% of the epochs
    lr_decay: float = recipe(0.1)
    momentum: float = recipe(0.9)            # paper: Nesterov momentum 0.9, no dampening
    nesterov: bool = recipe(True)
    weight_decay: float = recipe(1e-4)       # paper: 1e-4; the official code decays every parameter
    drop_rate: float | None = recipe(None)   # None: 0.2 for DenseNets on data without augmentation, else 0
    train_subset: int | None = recipe(None)  # reduced budgets: a class-balanced subset of the training set
    test_subset: int | None = recipe(None)   # reduced budgets: a class-balanced subset of the test set
    # Mixed precision changes the rounding of every step, so a bf16 run is a run of its own.
    amp: str = recipe("none")                # none | bf16 | fp16 (fp16 with a GradScaler); paper: fp32
    seed: int = recipe(0)
    sync_bn: bool = recipe(True)             # DDP: BatchNorm statistics over the whole global batch
    # (The data enters the hash as the resolved source's id: official, a JPEG copy, or synthetic.)

    # --- run options: where and how fast (not hashed) -----------------------------------------
    # A run made on a GPU with channels_last and compile is found again by a CPU render.
    data_root: str | None = option(None)     # None: $DENSENET_DATA or ./data (see densenet_repro.data)
    data_source: str = option("auto")        # auto | torchvision | folder | synthetic
    eval_batch_size: int = option(500)       # evaluation only; does not change the numbers
    # Speed knobs, None = the device's fast path (fastpath.settings, via `speed_knobs`): on one CUDA
    # GPU channels_last and a compiled step replayed as a CUDA graph; on a CPU with native bf16
    # channels_last and the fast dense blocks; never compilation on CPU.
    channels_last: bool | None = option(None)  # NHWC memory layout
    compile: bool | None = option(None)        # torch.compile the step (CUDA: with CUDA graphs)
    memory_efficient: bool = option(False)   # recompute concat-BN-ReLU-conv in backward (Pleiss et al.)
    # The exact fast dense blocks (models/fast_dense.py: shared BN statistics, one feature buffer,
    # fused kernels; the same function). None: where the device's fast path uses them and they are
    # supported (a DenseNet on CPU in one process, fastpath.fast_blocks_supported); False: plain.
    fast_blocks: bool | None = option(None)
    # CPU: time a few steps of each exact path (plain or fast blocks, NCHW or channels-last) at the
    # start of the process and train with the fastest, for the knobs left None. Which one wins
    # depends on the CPU (fast + channels-last on AVX-512, plain on some AVX2
    # parts), and a long resumable run meets several machines; each epoch's row records the path.
    speed_trial: bool = option(False)
    # Epochs (1-based) whose weights are kept beside the run as snapshots/epoch_NNN.pt, after the
    # final weights replace the checkpoint: Figure 5 drawn at several points of training.
    keep_weights_at: tuple[int, ...] = option(())
    deterministic: bool = option(False)      # deterministic kernels: bit-exact reruns and resumes (slower on GPU)
    device: str = option("auto")             # auto: cuda if available, else cpu
    experiment: str = option("train")        # runs/<experiment>/...
    out: str = option("runs")                # root of run directories
    results: str | None = option("results")  # committed finished runs, looked up before training
    budget: str = option("paper")            # the budget this config was made for (a label)
    resume: bool = option(False)             # continue an unfinished run from its checkpoint
    progress: str = option("auto")           # auto: a tqdm bar in a terminal, one line per epoch otherwise
    num_threads: int | None = option(None)   # torch CPU threads; None: torch's default
    # CUDA: TF32 tensor cores for fp32 matmuls and convolutions (10-bit mantissa). Off by default, so
    # that amp="none" is the paper's fp32 on every device; on for speed where that rounding is fine.
    tf32: bool = option(False)
    download: bool = option(True)            # allow torchvision to download the official datasets

    def validate(self) -> "RunConfig":
        """Check every value where it enters; a bad one raises a ConfigError that says what to do."""
        from densenet_repro import list_models

        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}: use one of {', '.join(list_models())}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}: use one of {', '.join(DATASETS)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        # torch.optim.SGD would refuse these with a traceback, after the data had loaded
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs momentum > 0: set momentum, or nesterov=False")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of the epochs in (0, 1), got {list(self.lr_milestones)}")
        for name, allowed in (("amp", AMP_MODES), ("progress", PROGRESS_MODES), ("data_source", SOURCES),
                              ("budget", BUDGETS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.drop_rate is not None and not 0 <= self.drop_rate < 1:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        epochs = self.resolved().epochs
        if any(not isinstance(e, int) or not 1 <= e <= epochs for e in self.keep_weights_at):
            raise ConfigError(f"keep_weights_at must list epochs between 1 and {epochs}, got {list(self.keep_weights_at)}")
        if self.memory_efficient and self.compile:
            raise ConfigError("memory_efficient recomputes each layer with torch.utils.checkpoint, which "
                              "torch.compile cannot capture in one graph: pass --no-compile with --memory-efficient")
        # the device name is checked where the device is chosen (plan, devices.parse_device)
        if self.model_kwargs:
            self._check_model_kwargs()
        return self

    def _check_model_kwargs(self) -> None:
        """Build the model on the meta device (no memory, no time): a bad keyword or value fails here."""
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict such as {{'depth': 22}}, got {self.model_kwargs!r}")
        try:
            with torch.device("meta"):
                build_model(self, get_spec(self.dataset).num_classes)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"model_kwargs {json.dumps(self.model_kwargs)} do not fit {self.model} ({e}): "
                              f"see help(densenet_repro.DenseNet) for the arguments and valid depths") from None

    @property
    def is_resolved(self) -> bool:
        return self.epochs is not None and self.drop_rate is not None

    def resolved(self) -> "RunConfig":
        """A copy with the paper's defaults filled in (epochs, drop_rate); itself when already resolved."""
        if self.is_resolved:
            return self
        spec = get_spec(self.dataset)
        epochs = self.epochs if self.epochs is not None else spec.paper_epochs
        drop = self.drop_rate
        if drop is None:  # "All DenseNet results without augmentation use dropout 0.2"
            drop = spec.paper_drop_rate if self.model.startswith("densenet") else 0.0
        return dataclasses.replace(self, epochs=epochs, drop_rate=drop)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["keep_weights_at"] = list(self.keep_weights_at)
        return d


HASHED_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata["hashed"])


def config_hash(config: RunConfig, source_id: str) -> str:
    """Short hash of everything that determines a run's result: the recipe fields and the data."""
    d = {k: v for k, v in config.resolved().to_dict().items() if k in HASHED_FIELDS}
    d["data"] = source_id  # which pixels: official, a JPEG copy, or synthetic
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_name(config: RunConfig, h: str) -> str:
    """The run folder's name: <model>-<dataset>-<config hash>."""
    return f"{config.model}-{config.dataset}-{h}"


def lr_at(config: RunConfig, epoch: int) -> float:
    """Learning rate of (0-based) `epoch`: lr, divided by 10 at each milestone fraction of the epochs."""
    epochs = config.resolved().epochs
    drops = sum(1 for m in config.lr_milestones if 0 < int(m * epochs) <= epoch)
    return config.lr * config.lr_decay ** drops


def lr_schedule_text(config) -> str:
    """The learning rate of every epoch of a run, in words: 'LR 0.1 in epochs 1-15, 0.01 in 16-22, 0.001 in 23-30'."""
    config = config.resolved()
    lrs = [lr_at(config, e) for e in range(config.epochs)]
    spans = []
    for e, lr in enumerate(lrs, start=1):
        if spans and spans[-1][2] == lr:
            spans[-1][1] = e
        else:
            spans.append([e, e, lr])
    return "LR " + ", ".join(f"{lr:g} in epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}"
                             for a, b, lr in spans)


# ----------------------------------------------------------------------------------------------
# The model and optimizer a recipe names
# ----------------------------------------------------------------------------------------------


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The model of a run: create_model with the run's dropout, memory mode and extra kwargs (the one
    place a run's model is made; the speed knobs then act on it in fastpath and train)."""
    from densenet_repro import create_model

    kwargs = dict(config.model_kwargs)
    drop = config.resolved().drop_rate
    if drop:
        kwargs["drop_rate"] = drop
    if config.memory_efficient:
        kwargs["memory_efficient"] = True
    return create_model(config.model, num_classes=num_classes, **kwargs)


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on all parameters (BN and biases too), as the official Lua code does.
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, dampening=0.0,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)
