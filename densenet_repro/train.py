"""Training with the paper's recipe: `train(RunConfig(...)) -> summary dict` (its CLI is in cli.py).

    python -m densenet_repro train --model densenet_bc100_k12 --dataset c10+ [--epochs N]
        [--budget smoke|cpu|paper] [--out DIR] [--resume] [--amp bf16] [--channels-last] ...

Recipe (paper, section 4.2): SGD with Nesterov momentum 0.9 (no dampening), weight decay 1e-4 on
every parameter (BN and biases included, as in the official code), batch 64, learning rate 0.1
divided by 10 at 50% and 75% of the epochs (a shorter schedule scales the milestones), 300 epochs
on CIFAR and 40 on SVHN, dropout 0.2 exactly when the dataset has no augmentation.

A run lives in `<out>/<experiment>/<model>-<dataset>-<hash>/` (hash of everything that determines
the result, `config_hash`): config.json, metrics.csv (one row per epoch), summary.json (written
last: its presence means "finished") and checkpoint.pt (written atomically after every epoch).
Asking again for a finished run, there or in `results/<experiment>/...` (the committed copies),
returns its summary at once. An unfinished run continues from its checkpoint with `resume`;
on CPU with `deterministic` a resumed run ends with exactly the metrics of an uninterrupted one.

Distributed: launch with torchrun (`torchrun --nproc_per_node 8 -m densenet_repro train ...`);
`batch_size` stays the global batch (64), split across processes. BatchNorm statistics are
synchronised across processes by default (`sync_bn`), so N processes compute what one process
computes on the whole batch of 64, as in the paper; without it each process normalises its own
64/N images, which changes the regularisation of small batches. On CUDA this uses
nn.SyncBatchNorm; on CPU (gloo), where nn.SyncBatchNorm does not run, a small all-reduce
BatchNorm below.

Why one module (~1,000 lines): it is the one training loop, kept in one file to be read top to
bottom like nanoGPT's train.py: the recipe (RunConfig and its hash), the model, optimizer and step where
every speed knob acts, run directories and checkpoints, the distributed helpers and the loop are the
parts of one run, and the hash, the checkpoint and the loop change together.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from densenet_repro import atomic
from densenet_repro import data as data_lib
from densenet_repro.budgets import BUDGETS
from densenet_repro.errors import (CheckpointError, ConfigError, OutputNotWritableError, ResultFileError,
                                   RunExistsError, RunLockedError, TrainingDiverged)

AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "bar", "line", "none")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


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
    download: bool = option(True)            # allow torchvision to download the official datasets

    def validate(self) -> "RunConfig":
        """Check every value where it enters; a bad one raises a ConfigError that says what to do."""
        from densenet_repro import list_models

        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}: use one of {', '.join(list_models())}")
        data_lib.get_spec(self.dataset)
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        for name, allowed in (("amp", AMP_MODES), ("progress", PROGRESS_MODES), ("data_source", data_lib.SOURCES),
                              ("budget", BUDGETS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        epochs = self.resolved().epochs
        if any(not isinstance(e, int) or not 1 <= e <= epochs for e in self.keep_weights_at):
            raise ConfigError(f"keep_weights_at must list epochs between 1 and {epochs}, got {list(self.keep_weights_at)}")
        if self.drop_rate is not None and not 0 <= self.drop_rate < 1:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        parse_device(self.device)
        if self.model_kwargs:
            self._check_model_kwargs()
        return self

    def _check_model_kwargs(self) -> None:
        """Build the model on the meta device (no memory, no time): a bad keyword or value fails here."""
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict such as {{'depth': 22}}, got {self.model_kwargs!r}")
        try:
            with torch.device("meta"):
                build_model(self, data_lib.get_spec(self.dataset).num_classes)
        except (TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"model_kwargs {json.dumps(self.model_kwargs)} do not fit {self.model} ({e}): "
                              f"see help(densenet_repro.DenseNet) for the arguments and valid depths") from None

    def resolved(self) -> "RunConfig":
        """A copy with the paper's defaults filled in (epochs, drop_rate)."""
        spec = data_lib.get_spec(self.dataset)
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
    return f"{config.model}-{config.dataset}-{h}"


def lr_at(config: RunConfig, epoch: int) -> float:
    """Learning rate of (0-based) `epoch`: lr, divided by 10 at each milestone fraction of the epochs."""
    epochs = config.resolved().epochs
    drops = sum(1 for m in config.lr_milestones if 0 < int(m * epochs) <= epoch)
    return config.lr * config.lr_decay ** drops


# ----------------------------------------------------------------------------------------------
# Model, optimizer and step: the one place the performance knobs act
# ----------------------------------------------------------------------------------------------


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The model of a run: create_model with the run's dropout, memory mode and extra kwargs.

    This is the one place where a run's model is made (the performance knobs act here and in
    the step of `_train`).
    """
    from densenet_repro import create_model

    kwargs = dict(config.model_kwargs)
    drop = config.resolved().drop_rate
    if drop:
        kwargs["drop_rate"] = drop
    if config.memory_efficient:
        kwargs["memory_efficient"] = True
    return create_model(config.model, num_classes=num_classes, **kwargs)


def _use_fast_blocks(config: RunConfig, model: nn.Module, dev: torch.device, distributed: bool) -> bool:
    """Switch the model's dense blocks to the fast exact implementation if asked or supported."""
    from densenet_repro import fastpath
    from densenet_repro.models import fast_dense
    from densenet_repro.models.densenet import _DenseBlock

    if config.fast_blocks is None:  # auto: the device's fast path, unless the plain recompute path was asked for
        auto = config.amp != "fp16" and not config.memory_efficient and fastpath.settings(dev)["fast_blocks"]
        if not (auto and fastpath.fast_blocks_supported(model, dev, distributed)):
            return False
    elif not config.fast_blocks:
        return False
    elif distributed:
        raise ConfigError("fast_blocks compute BatchNorm statistics per process: use --no-fast-blocks with "
                         "synchronised BatchNorm (or --no-sync-bn)")
    elif config.amp == "fp16":
        raise ConfigError("fast_blocks support fp32 and bf16 only: use --amp bf16 or --no-fast-blocks")
    elif not any(isinstance(m, _DenseBlock) for m in model.modules()):
        raise ConfigError(f"{config.model} has no dense blocks to make fast: drop --fast-blocks")
    elif not fastpath.fast_blocks_supported(model, "cpu"):
        raise ConfigError("--fast-blocks needs a C++ compiler to build the fast kernels: install g++, or pass "
                          "--no-fast-blocks (the same function, slower)")
    fast_dense.convert(model)
    return True


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on all parameters (BN and biases too), as the official Lua code does.
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, dampening=0.0,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


def autocast(amp: str, device: torch.device):
    """The autocast context of a precision: none (fp32), bf16 or fp16."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch of all DDP processes, on any device (CPU/gloo included).

    Same parameters and buffers as nn.BatchNorm2d (state_dicts are interchangeable). In training
    with more than one process it all-reduces per-channel sums (differentiably) so every process
    normalises with the statistics of the whole global batch; otherwise it is nn.BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, H, W)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_tensor([x.numel() // c])])
        total = _AllReduceSum.apply(local)  # (2C + 1,): sums over all processes; gradients flow back
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as BN normalises with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def _convert_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by AllReduceBatchNorm2d, keeping parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else "cpu")
            setattr(module, name, new)
        else:
            _convert_bn(child)
    return module


# ----------------------------------------------------------------------------------------------
# Run directories, checkpoints, caches
# ----------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: a kill never leaves a half-written checkpoint."""
    atomic.save_torch(state, path)


def load_checkpoint(path: Path, expected_hash: str) -> dict[str, Any]:
    """Read a checkpoint; a corrupt or foreign one raises CheckpointError and is left untouched."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "corrupt"
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); it was left as it is: "
                              "move it away (or delete the run folder) to start the run over") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "config_hash" not in state:
        raise CheckpointError(f"{path} is not a densenet-repro checkpoint (version {CHECKPOINT_VERSION}); "
                              "it was left as it is: move it away to start the run over")
    if state["config_hash"] != expected_hash:
        raise CheckpointError(f"checkpoint {path} belongs to config {state['config_hash']}, not {expected_hash}; "
                              "it was left as it is: move it away to start the run over")
    return state


# What summary.json must hold for a run to count as finished (the engine writes all of these).
SUMMARY_FIELDS = {"finished": bool, "config_hash": str, "model": str, "dataset": str, "epochs": int,
                  "final_test_error_pct": (int, float), "best_test_error_pct": (int, float),
                  "reported_test_error_pct": (int, float), "wall_time_s": (int, float)}


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """A finished run's summary.json, checked: a damaged one raises ResultFileError, never a result."""
    folder = Path(folder)
    path = folder / "summary.json"
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(s, dict) else f"it holds a JSON {type(s).__name__}, not an object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        s, problem = None, f"it cannot be read as JSON ({e})"
    if problem is None:
        missing = [k for k in SUMMARY_FIELDS if k not in s]
        wrong = [k for k, t in SUMMARY_FIELDS.items() if k in s and (not isinstance(s[k], t) or
                                                                      (t is not bool and isinstance(s[k], bool)))]
        if missing:
            problem = f"it lacks {', '.join(missing)}"
        elif wrong:
            problem = f"wrong type of {', '.join(wrong)}"
        elif s["finished"] is not True:
            problem = "it does not say finished"
        elif not folder.name.endswith(s["config_hash"]):
            problem = f"its config_hash {s['config_hash']} is not the one in the folder's name"
    if problem is not None:
        raise ResultFileError(f"{path} is damaged ({problem}) and is not used as a result: restore it "
                              f"(git checkout -- {path}) or delete {folder} to train the run again")
    s["run_dir"] = folder.as_posix()
    return s


def find_finished(config: RunConfig, h: str) -> Path | None:
    """The folder of a finished run with this config hash: in the committed `results`, else in `out`.

    The committed copy comes first, so that a report cites files that a clone has (`out` is not
    committed; its copy of a published run is the same run).
    """
    name = run_name(config, h)
    for root in _run_roots(config):
        folder = root / config.experiment / name
        if (folder / "summary.json").exists():
            read_summary(folder)  # a damaged summary is reported, never taken as finished
            return folder
    return None


def _run_roots(config: RunConfig) -> list[Path]:
    return ([Path(config.results)] if config.results else []) + [Path(config.out)]


def _known_source_ids(config: RunConfig) -> list[str]:
    """The data sources that runs of this model and dataset were made on, as their config.json say."""
    ids = []
    for root in _run_roots(config):
        for cfg in sorted((root / config.experiment).glob(f"{config.model}-{config.dataset}-*/config.json")):
            try:
                sid = json.loads(cfg.read_text(encoding="utf-8")).get("data_source_id")
            except (OSError, ValueError, AttributeError):
                continue  # not a result; read_summary reports damage where a result is asked for
            if isinstance(sid, str) and sid not in ids:
                ids.append(sid)
    return ids


def locate_run(config: RunConfig) -> tuple[data_lib.SourceInfo | None, str, Path | None]:
    """(data source, config hash, folder of the finished run or None) for a resolved config.

    The hash includes the data's identity. Where the data is not on this machine (a fresh clone
    offline), a committed finished run of the same recipe on any data source it names still
    answers, so reports re-render without the dataset; the data is needed only to train.
    """
    try:
        source = data_lib.resolve_source(config.dataset, config.data_root, config.data_source, config.download)
    except data_lib.DataNotFoundError:
        source = None
    if source is not None and source.present:
        h = config_hash(config, source.id)
        return source, h, find_finished(config, h)
    for sid in _known_source_ids(config):
        h = config_hash(config, sid)
        done = find_finished(config, h)
        if done is not None:
            return source, h, done
    if source is None:  # nothing committed either: say where the data belongs
        source = data_lib.resolve_source(config.dataset, config.data_root, config.data_source, config.download)
    return source, config_hash(config, source.id), None


def read_metrics(folder: str | os.PathLike):
    """metrics.csv of a run as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(folder) / "metrics.csv")


# ----------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_dist(device_type: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def parse_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' as a torch.device (auto: cuda if available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    return dev


def pick_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The training device, made current. A CUDA device always gets an index: torch.cuda.set_device
    rejects a bare "cuda", and under torchrun each process takes the GPU of its LOCAL_RANK."""
    dev = parse_device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu")
    count = torch.cuda.device_count()
    index = local_rank if world > 1 else (dev.index if dev.index is not None else torch.cuda.current_device())
    if index >= count:
        raise ConfigError(f"device cuda:{index}: this machine has {count} GPU(s); use cuda:0 to cuda:{count - 1}")
    dev = torch.device("cuda", index)
    torch.cuda.set_device(dev)
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from densenet_repro.provenance import cpu_model

    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------
# Progress output
# ----------------------------------------------------------------------------------------------


def _use_bar(mode: str) -> bool:
    if mode == "auto":
        return sys.stderr.isatty()
    return mode == "bar"


def _epoch_line(name: str, row: dict[str, Any], epochs: int) -> str:
    val = f" val {row['val_err_pct']:.2f}%" if "val_err_pct" in row else ""
    return (f"{name} epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} | train loss {row['train_loss']:.4f} "
            f"err {row['train_err_pct']:.2f}% | test loss {row['test_loss']:.4f} err {row['test_err_pct']:.2f}%{val} "
            f"| {row['epoch_time_s']:.1f} s, {row['train_images_per_s']:.0f} img/s")


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


# compile_time_s: the first compiled step of a process (compilation, CUDA-graph capture), left out
# of epoch_time_s; the evaluation's compilation falls in that epoch's eval_time_s.
# hardware and path: what trained this epoch (a resumable run may meet several machines).
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_err_pct", "test_loss", "test_err_pct", "val_loss",
                  "val_err_pct", "epoch_time_s", "eval_time_s", "train_images_per_s", "compile_time_s",
                  "hardware", "path"]


def _evaluate(model: nn.Module, loader: data_lib.DeviceLoader, config: RunConfig, dev, d: _Dist) -> tuple[float, float]:
    """(mean cross-entropy, error in %) over the whole split (all processes together)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    with torch.inference_mode(), autocast(config.amp, dev):
        for x, y, _ in loader.batches():
            out = model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            wrong += (out.argmax(1) != y).sum()
            n += len(y)
    loss_sum, wrong, n = d.sum([loss_sum.item(), wrong.item(), n], dev)
    return loss_sum / n, 100.0 * wrong / n


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = [c for c in METRIC_COLUMNS if any(c in r for r in rows)]
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})
    atomic.write_text(path, buf.getvalue())


def _summarise(config: RunConfig, h: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    final = rows[-1]
    best = min(rows, key=lambda r: r["test_err_pct"])
    s: dict[str, Any] = {
        "finished": True,
        "model": config.model,
        "dataset": config.dataset,
        "budget": config.budget,
        "experiment": config.experiment,
        "config_hash": h,
        "epochs": config.epochs,
        "model_kwargs": config.model_kwargs,
        # The paper reports the test error at the end of training ...
        "final_test_error_pct": final["test_err_pct"],
        # ... the official code printed the lowest test error over all epochs. Both, labelled.
        "best_test_error_pct": best["test_err_pct"],
        "best_epoch": best["epoch"],
        "final_train_loss": final["train_loss"],
        "final_test_loss": final["test_loss"],
    }
    if "val_err_pct" in final:
        # SVHN protocol: the model with the lowest validation error is the one reported.
        chosen = min(rows, key=lambda r: (r["val_err_pct"], r["epoch"]))
        s.update(reported_test_error_pct=chosen["test_err_pct"], reported_epoch=chosen["epoch"],
                 reported_rule="test error at the epoch of lowest validation error (paper's SVHN protocol)")
    else:
        s.update(reported_test_error_pct=final["test_err_pct"], reported_epoch=final["epoch"],
                 reported_rule="test error after the last epoch (the paper's rule)")
    ips = sorted(r["train_images_per_s"] for r in rows)
    s["train_images_per_s"] = ips[len(ips) // 2]  # median over epochs
    s["wall_time_s"] = round(sum(r["epoch_time_s"] + r["eval_time_s"] + (r.get("compile_time_s") or 0)
                                 for r in rows), 2)
    s.update(extra)
    return s


class RunLock:
    """An exclusive lock on a run folder for the whole run, so two processes never write one folder.

    An OS file lock (fcntl.flock on `<run>/.lock`): the kernel releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock behind. The file names the holder.
    Where fcntl does not exist (Windows) runs are not locked.
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self.file = folder, None

    def __enter__(self) -> "RunLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.file = open(self.folder / ".lock", "a+", encoding="utf-8")
        except OSError as e:
            raise OutputNotWritableError(f"cannot write the run folder {self.folder} ({e.strerror or e}): "
                                         "choose a writable --out (out=...)") from None
        try:
            import fcntl
        except ImportError:
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunLockedError(f"{self.folder} is in use by {holder}: wait for that run to end (or stop it), "
                                 "then try again") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {platform.node()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()  # closing releases the lock


def train(config: RunConfig, *, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or continue, or look up) one run and return its summary (see summary.json).

    on_epoch_end(epoch, row) is called after each epoch's checkpoint is on disk (tests use it to
    interrupt a run).
    """
    config = config.validate().resolved()
    source, h, done = locate_run(config)
    if done is not None:
        return read_summary(done) | {"cached": True}

    run_dir = Path(config.out) / config.experiment / run_name(config, h)
    main_process = int(os.environ.get("RANK", "0")) == 0
    with RunLock(run_dir) if main_process else contextlib.nullcontext():
        ckpt_path = run_dir / CHECKPOINT
        if ckpt_path.exists() and not config.resume:
            raise RunExistsError(f"{run_dir} holds an unfinished run (checkpoint.pt): pass --resume (resume=True) "
                                 "to continue it, or delete the folder to start over")
        saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                 torch.backends.cudnn.benchmark)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        d = _Dist()
        try:
            dev = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")),
                              int(os.environ.get("WORLD_SIZE", "1")))
            d = _setup_dist(dev.type)
            return _train(config, h, source, run_dir, dev, d, on_epoch_end)
        finally:
            if d.initialised_here:
                dist.destroy_process_group()
            torch.set_num_threads(saved[0])
            torch.use_deterministic_algorithms(saved[1])
            torch.backends.cudnn.benchmark = saved[2]


@dataclass
class _Session:
    """What one process trains with: set up once by `_setup`, restored from a checkpoint by `_restore`."""

    config: RunConfig
    dev: torch.device
    d: _Dist
    data: data_lib.Data
    train_loader: data_lib.DeviceLoader
    eval_loaders: dict[str, data_lib.DeviceLoader]  # "test", and "val" where the protocol has one
    model: nn.Module            # the parameters (what checkpoints hold)
    step_model: nn.Module       # what the training step calls: DDP and/or compiled around `model`
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    fast_blocks: bool
    n_params: int
    knobs: dict[str, bool]      # channels_last and compile as resolved for this device
    hardware: str = ""          # hardware_label of this process's device
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics of the finished epochs
    start_epoch: int = 0


def _setup(config: RunConfig, source: data_lib.SourceInfo, dev: torch.device, d: _Dist,
           say: Callable[[str], None] = lambda m: None) -> _Session:
    """Data on the device, the model, its optimizer and scaler; numerics and speed knobs applied."""
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic  # fastest conv algorithms for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True                # TF32 where allowed (Ampere+)
        torch.backends.cudnn.allow_tf32 = True
    if config.batch_size % d.world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {d.world} processes")
    data = data_lib.load_data(config.dataset, config.data_root, config.data_source, dev, config.train_subset,
                              config.test_subset, config.download, resolved=source)
    if config.speed_trial and dev.type == "cpu" and d.world == 1:
        config = dataclasses.replace(config, **speed_trial(config, data.num_classes, dev, say))
    knobs = speed_knobs(config, dev, d.world)
    train_loader = data.train_loader(config.batch_size, config.seed, d.rank, d.world, knobs["channels_last"])
    eval_loaders = {split: data.eval_loader(split, config.eval_batch_size, d.rank, d.world, knobs["channels_last"])
                    for split in ("test", "val") if split == "test" or data.val_x is not None}

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = build_model(config, data.num_classes).to(dev)
    if knobs["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    fast_blocks = _use_fast_blocks(config, model, dev, distributed=d.world > 1 and config.sync_bn)
    n_params = sum(p.numel() for p in model.parameters())
    if d.world > 1 and config.sync_bn:  # before the optimizer: the conversion makes new parameters
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if dev.type == "cuda" else _convert_bn(model)
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=config.amp == "fp16")
    step_model: nn.Module = model
    if d.world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    eval_model: nn.Module = model
    if knobs["compile"]:
        graphs = dev.type == "cuda"
        step_model = CompiledForOneShape(step_model, config.batch_size // d.world, graphs)
        eval_model = CompiledForOneShape(model, config.eval_batch_size // d.world, graphs)
    return _Session(config, dev, d, data, train_loader, eval_loaders, model, step_model, eval_model, optimizer,
                    scaler, fast_blocks, n_params, knobs, hardware_label(dev))


SPEED_TRIAL_STEPS = 3  # timed steps per candidate, after one untimed step that pays for warm-up


def speed_trial(config: RunConfig, num_classes: int, dev: torch.device,
                say: Callable[[str], None]) -> dict[str, bool]:
    """The fastest exact path on this CPU: {"fast_blocks": ..., "channels_last": ...} for the knobs
    left None, from SPEED_TRIAL_STEPS timed training steps of each candidate at the run's batch size.

    Every candidate computes the same function in the run's own precision (the fast blocks are exact,
    tests/test_fast_dense.py; the layout changes only the summation order), so the choice changes
    speed, not the recipe. The trial trains throw-away copies on random images; the RNG is restored.
    """
    from densenet_repro import fastpath

    fast_options = [config.fast_blocks] if config.fast_blocks is not None else [False, True]
    layouts = [config.channels_last] if config.channels_last is not None else [False, True]
    probe = build_model(config, num_classes)
    if True in fast_options and not fastpath.fast_blocks_supported(probe, dev):
        fast_options = [False]
    if len(fast_options) * len(layouts) == 1:
        return {"fast_blocks": fast_options[0], "channels_last": layouts[0]}
    timings: dict[tuple[bool, bool], float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(config.batch_size, 3, 32, 32, device=dev)
        y = torch.randint(0, num_classes, (config.batch_size,), device=dev)
        for fast in fast_options:
            for cl in layouts:
                model = build_model(config, num_classes).to(dev)
                xb = x
                if cl:
                    model, xb = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
                if fast:
                    from densenet_repro.models import fast_dense

                    fast_dense.convert(model)
                model.train()
                opt = build_optimizer(config, model)
                scaler = torch.amp.GradScaler(dev.type, enabled=False)
                times = []
                for i in range(SPEED_TRIAL_STEPS + 1):
                    t0 = time.perf_counter()
                    train_step(model, opt, scaler, xb, y, len(y), config.amp)
                    times.append(time.perf_counter() - t0)
                timings[(fast, cl)] = sorted(times[1:])[len(times[1:]) // 2]  # median of the timed steps
    best = min(timings, key=timings.get)
    say("speed trial on " + device_name(dev) + ": " + ", ".join(
        f"{path_label(f, c, config.amp)} {t:.3g} s/step" for (f, c), t in timings.items())
        + f"; training with {path_label(*best, config.amp)}")
    return {"fast_blocks": best[0], "channels_last": best[1]}


def path_label(fast_blocks: bool, channels_last: bool, amp: str) -> str:
    """How a run trains, in words: blocks, memory layout and precision."""
    return (f"{'fast' if fast_blocks else 'plain'} blocks, {'channels-last' if channels_last else 'NCHW'}, "
            f"{'fp32' if amp == 'none' else amp}")


def hardware_label(dev: torch.device) -> str:
    """What trained an epoch, in one cell: the GPU, or the CPU with its vector ISA, bf16 and threads."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    h = hardware(dev)
    return (f"{h['cpu']}, {h['cpu_capability']}{', bf16 native' if h['bf16_native'] else ''}, "
            f"{h['threads']} threads")


def speed_knobs(config: RunConfig, dev: torch.device, world: int = 1) -> dict[str, bool]:
    """The run's channels_last and compile: as asked, else the device's fast path (fastpath.settings)."""
    from densenet_repro import fastpath

    fast = fastpath.settings(dev, world)
    return {"channels_last": config.channels_last if config.channels_last is not None else fast["channels_last"],
            "compile": config.compile if config.compile is not None else fast["compile"]}


class CompiledForOneShape(nn.Module):
    """A module compiled for its one full batch size, run eagerly for any other size.

    Every epoch ends with a partial batch (50,000 = 781 x 64 + 16): compiling it too would cost a
    second compilation as long as the first, for one step in 782. The eager call uses the same
    parameters and buffers, so the function is the same. On CUDA the compiled call is replayed as
    a CUDA graph (mode "reduce-overhead"): at batch 64 a DenseNet step is ~1,500 small kernels,
    and their launches, not the arithmetic, set its time.
    """

    def __init__(self, module: nn.Module, batch: int, cuda_graphs: bool) -> None:
        super().__init__()
        self.module, self.batch, self.cuda_graphs = module, batch, cuda_graphs
        self.compiled = torch.compile(module, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.batch:
            return self.module(x)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: earlier graph outputs may be overwritten
        return self.compiled(x)


def _restore(s: _Session, ckpt_path: Path, h: str) -> None:
    """Continue from the checkpoint if there is one, else seed the dropout of a new run."""
    if not ckpt_path.exists():
        torch.manual_seed(s.config.seed + s.d.rank)  # dropout: different masks in each process
        return
    state = load_checkpoint(ckpt_path, h)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    s.rows, s.start_epoch = state["rows"], state["epoch"]
    rng = state["rng"]
    if len(rng) == s.d.world:
        torch.set_rng_state(rng[s.d.rank]["cpu"])
        if s.dev.type == "cuda" and rng[s.d.rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[s.d.rank]["cuda"], s.dev)
    else:  # resumed with another number of processes: dropout masks cannot continue exactly
        torch.manual_seed(s.config.seed + 1000 * s.start_epoch + s.d.rank)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
               y: torch.Tensor, global_n: int, amp: str = "none", world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of the recipe: the one step the engine trains with and the benchmarks time.

    Returns the per-sample losses and the logits, detached. The loss is the mean over the *global*
    batch: DDP averages gradients over processes, so each process scales its sum by world/global_n
    (exact even for an uneven last batch).
    """
    with autocast(amp, x.device):
        out = model(x)
        per_sample = F.cross_entropy(out.float(), y, reduction="none")  # (b,)
    loss = per_sample.sum() * (world / global_n)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return per_sample.detach(), out.detach()


def _train_epoch(s: _Session, epoch: int, name: str, say: Callable[[str], None], bar: bool) -> dict[str, Any]:
    """One epoch over every training image; returns the epoch's row without the evaluation."""
    config, dev, d = s.config, s.dev, s.d
    lr = lr_at(config, epoch)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.step_model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    n_local = 0
    batches = s.train_loader.batches(epoch)
    if bar:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(s.train_loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
    warmup_s = 0.0
    for step, (x, y, global_n) in enumerate(batches):
        per_sample, out = train_step(s.step_model, s.optimizer, s.scaler, x, y, global_n, config.amp, d.world)
        loss_sum += per_sample.sum().double()
        wrong += (out.argmax(1) != y).sum()
        n_local += len(y)
        if step == 0 and epoch == s.start_epoch and s.knobs["compile"]:
            # the first compiled step compiles (and captures the CUDA graph): reported apart
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            warmup_s = time.perf_counter() - t0
        if step == ESTIMATE_AFTER_STEPS and epoch == s.start_epoch:
            _say_cost(s, name, epoch, t0 + warmup_s, step, say)
        if step % 50 == 49 and not torch.isfinite(loss_sum):
            break  # no point finishing a diverged epoch
    train_loss, train_wrong, n = d.sum([loss_sum.item(), wrong.item(), n_local], dev)
    if not math.isfinite(train_loss):
        ckpt = Path(config.out) / config.experiment / name / CHECKPOINT
        kept = (f"the checkpoint of epoch {s.rows[-1]['epoch']} is kept in {ckpt}" if s.rows
                else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{name}: the training loss became {train_loss} in epoch {epoch + 1} (lr {lr:g}); "
                               f"stopped, {kept}. {_divergence_advice(config.amp)}.")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    epoch_time = time.perf_counter() - t0 - warmup_s  # the warm-up step's images are few: they stay in n
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / n, "train_err_pct": 100.0 * train_wrong / n,
           "epoch_time_s": round(epoch_time, 3), "train_images_per_s": round(n / epoch_time, 1),
           "hardware": s.hardware, "path": path_label(s.fast_blocks, s.knobs["channels_last"], config.amp)
           + (", compiled" if s.knobs["compile"] else "")}
    if warmup_s:
        row["compile_time_s"] = round(warmup_s, 3)
    return row


def _divergence_advice(amp: str) -> str:
    return "Lower the learning rate" + (" or use amp='none'" if amp != "none" else "")


ESTIMATE_AFTER_STEPS = 5  # steps timed (after the first, which pays for warm-up) to predict the run's cost


def _say_cost(s: _Session, name: str, epoch: int, t0: float, steps: int, say: Callable[[str], None]) -> None:
    """What the rest of the run will cost on this machine, timed from its first steps."""
    per_step = (time.perf_counter() - t0) / steps
    remaining = per_step * len(s.train_loader) * (s.config.epochs - epoch)
    say(f"{name}: {per_step:.3g} s per step on {device_name(s.dev)}; the {s.config.epochs - epoch} epoch(s) to go "
        f"will take about {_duration(remaining)} (evaluation not included)")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _save(s: _Session, ckpt_path: Path, h: str, run_dir: Path) -> None:
    """Checkpoint after an epoch (atomic), with every process's RNG state; then the metrics."""
    dev, d = s.dev, s.d
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
    rngs = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if d.main:
        save_checkpoint(ckpt_path, {
            "version": CHECKPOINT_VERSION, "config_hash": h, "epoch": s.rows[-1]["epoch"],
            "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "rows": s.rows, "rng": rngs, "config": s.config.to_dict()})
        _write_metrics(run_dir / "metrics.csv", s.rows)
    d.barrier()


WEIGHTS = "weights.pt"  # a finished run's final model state_dict (the checkpoint is dropped then)
SNAPSHOTS = "snapshots"  # <run>/snapshots/epoch_NNN.pt: the weights after the epochs of keep_weights_at


def snapshot_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch_{epoch:03d}.pt"


def _keep_snapshot(s: _Session, run_dir: Path) -> None:
    """The weights of the last finished epoch, if keep_weights_at asks for them and they are not kept yet."""
    epoch = s.rows[-1]["epoch"] if s.rows else 0
    path = snapshot_path(run_dir, epoch)
    if s.d.main and epoch in s.config.keep_weights_at and not path.exists():
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(path, s.model.state_dict())


def _train(config: RunConfig, h: str, source: data_lib.SourceInfo, run_dir: Path, dev: torch.device, d: _Dist,
           on_epoch_end) -> dict[str, Any]:
    t_setup = time.perf_counter()
    ckpt_path = run_dir / CHECKPOINT
    name = run_name(config, h)
    say = (lambda m: None) if (config.progress == "none" or not d.main) else (lambda m: print(m, flush=True))
    s = _setup(config, source, dev, d, say)
    _restore(s, ckpt_path, h)
    if d.main:
        from densenet_repro.provenance import git_commit, versions

        commit, dirty = git_commit()
        cfg = config.to_dict() | {"config_hash": h, "data_source_id": source.id, "data_description": source.description,
                                  "versions": versions(), "world_size": d.world, "params": s.n_params,
                                  "commit": commit + ("+changes" if dirty else "")}
        atomic.write_text(run_dir / "config.json", json.dumps(cfg, indent=1, default=str) + "\n")
        if s.rows:
            _write_metrics(run_dir / "metrics.csv", s.rows)  # drop rows of an epoch the checkpoint lacks
        _keep_snapshot(s, run_dir)  # a resumed run asked for the epoch its checkpoint holds
    bar = _use_bar(config.progress) and d.main
    if s.start_epoch:
        say(f"{name}: resuming after epoch {s.start_epoch}/{config.epochs}")
    else:
        say(f"{name}: {config.model} ({s.n_params / 1e6:.2f}M params) on {config.dataset} "
            f"[{s.data.info['train']} train / {s.data.info['test']} test images; {source.description}], "
            f"{config.epochs} epochs, {device_name(dev)}, {d.world} process(es)")
    setup_s = time.perf_counter() - t_setup
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    for epoch in range(s.start_epoch, config.epochs):
        row = _train_epoch(s, epoch, name, say, bar)
        t1 = time.perf_counter()
        for split, loader in s.eval_loaders.items():
            row[f"{split}_loss"], row[f"{split}_err_pct"] = _evaluate(s.eval_model, loader, config, dev, d)
        row["eval_time_s"] = round(time.perf_counter() - t1, 3)
        s.rows.append(row)
        _save(s, ckpt_path, h, run_dir)
        _keep_snapshot(s, run_dir)
        line = _epoch_line(name, row, config.epochs)
        if bar:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            say(line)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    summary = _summarise(config, h, s.rows, {
        "params": s.n_params, "device": device_name(dev), "device_type": dev.type, "world_size": d.world,
        "amp": config.amp, **s.knobs,
        "fast_blocks": s.fast_blocks, "setup_time_s": round(setup_s, 2), "data": s.data.info,
        "python": platform.python_version(), "hardware": hardware(dev),
        # peak memory of tensors allocated by PyTorch on the GPU during training and evaluation
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda"
                                else None),
        "torch": torch.__version__})
    if d.main:
        save_checkpoint(run_dir / WEIGHTS, s.model.state_dict())
        atomic.write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        ckpt_path.unlink(missing_ok=True)  # finished: the summary and the final weights are what is kept
        say(f"{name}: done; final test error {summary['final_test_error_pct']:.2f}%, best "
            f"{summary['best_test_error_pct']:.2f}% (epoch {summary['best_epoch']}), "
            f"{summary['wall_time_s']:.0f} s")
    d.barrier()
    summary["run_dir"] = run_dir.as_posix()
    summary["cached"] = False
    return summary


def hardware(dev: torch.device) -> dict[str, Any]:
    """What decides a run's speed on this machine: the device, and on CPU its vector ISA and bf16."""
    if dev.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(dev), "capability": ".".join(map(str, torch.cuda.get_device_capability(dev)))}
    from densenet_repro.provenance import cpu_model

    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads()}
