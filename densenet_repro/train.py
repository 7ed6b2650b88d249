"""Training with the paper's recipe: `train(RunConfig(...)) -> summary dict`, and the `train` CLI.

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
"""

from __future__ import annotations

import argparse
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

from densenet_repro import data as data_lib
from densenet_repro.budgets import BUDGETS

AMP_MODES = ("none", "bf16", "fp16")
PROGRESS_MODES = ("auto", "bar", "line", "none")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, or written by a different config."""


class RunExistsError(RuntimeError):
    """An unfinished run is in the way and `resume` was not asked for."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines a training run. Defaults are the paper's recipe (section 4.2)."""

    model: str = "densenet_bc100_k12"
    dataset: str = "c10+"
    # Extra keyword arguments for create_model, e.g. {"depth": 22} for a scaled-down budget.
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    # --- the paper's recipe ------------------------------------------------------------------
    epochs: int | None = None        # None: the paper's, 300 on CIFAR, 40 on SVHN
    batch_size: int = 64             # paper: 64 (global batch, split across DDP processes)
    lr: float = 0.1                  # paper: initial learning rate 0.1 ...
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # ... divided by 10 at 50% and 75% of the epochs
    lr_decay: float = 0.1
    momentum: float = 0.9            # paper: Nesterov momentum 0.9, no dampening
    nesterov: bool = True
    weight_decay: float = 1e-4       # paper: 1e-4; the official code decays every parameter
    drop_rate: float | None = None   # None: 0.2 for DenseNets on data without augmentation, else 0

    # --- data --------------------------------------------------------------------------------
    data_root: str | None = None     # None: $DENSENET_DATA or ./data (see densenet_repro.data)
    data_source: str = "auto"        # auto | torchvision | folder | synthetic
    train_subset: int | None = None  # reduced budgets: a class-balanced subset of the training set
    test_subset: int | None = None   # reduced budgets: a class-balanced subset of the test set
    eval_batch_size: int = 500       # evaluation only; does not change the numbers

    # --- numerics and speed (the performance issue makes the fast path the default) ------------
    amp: str = "none"                # none | bf16 | fp16 (fp16 with a GradScaler); paper: fp32
    channels_last: bool = False      # NHWC memory layout: faster convolutions on GPUs and CPUs
    compile: bool = False            # torch.compile the model
    memory_efficient: bool = False   # recompute concat-BN-ReLU-conv in backward (Pleiss et al.)
    # The exact fast dense blocks (models/fast_dense.py: shared BN statistics, one feature buffer,
    # fused kernels; same function, ~3x faster training on CPU). None: wherever they are supported
    # (a DenseNet on CPU in one process, see fastpath.fast_blocks_supported); False: plain blocks.
    fast_blocks: bool | None = None
    deterministic: bool = False      # deterministic kernels: bit-exact reruns and resumes (slower on GPU)
    seed: int = 0
    sync_bn: bool = True             # DDP: BatchNorm statistics over the whole global batch

    # --- bookkeeping: where and how, not what (not part of the config hash) --------------------
    device: str = "auto"             # auto: cuda if available, else cpu
    experiment: str = "train"        # runs/<experiment>/...
    out: str = "runs"                # root of run directories
    results: str | None = "results"  # committed finished runs, looked up before training
    budget: str = "paper"            # the budget this config was made for (a label)
    resume: bool = False             # continue an unfinished run from its checkpoint
    progress: str = "auto"           # auto: a tqdm bar in a terminal, one line per epoch otherwise
    num_threads: int | None = None   # torch CPU threads; None: torch's default
    download: bool = True            # allow torchvision to download the official datasets

    # Fields that do not change what is computed, only where, how fast, or in which float
    # rounding: excluded from the hash, so a run made on a GPU with channels_last and compile is
    # found again by a CPU render. (data_root/data_source enter through the resolved source id;
    # the library versions are recorded in config.json but do not invalidate committed results.)
    NOT_HASHED = ("eval_batch_size", "channels_last", "compile", "memory_efficient", "fast_blocks", "deterministic", "device",
                  "experiment", "out", "results", "budget", "resume", "progress", "num_threads", "download",
                  "data_root", "data_source")

    def validate(self) -> "RunConfig":
        from densenet_repro import list_models

        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}: use one of {', '.join(list_models())}")
        data_lib.get_spec(self.dataset)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp {self.amp!r}: use one of {', '.join(AMP_MODES)}")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"unknown progress {self.progress!r}: use one of {', '.join(PROGRESS_MODES)}")
        if self.data_source not in data_lib.SOURCES:
            raise ValueError(f"unknown data source {self.data_source!r}: use one of {', '.join(data_lib.SOURCES)}")
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}: use one of {', '.join(BUDGETS)}")
        if self.drop_rate is not None and not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        return self

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
        return d


def config_hash(config: RunConfig, source_id: str) -> str:
    """Short hash of everything that determines a run's result (see RunConfig.NOT_HASHED)."""
    d = {k: v for k, v in config.resolved().to_dict().items() if k not in RunConfig.NOT_HASHED}
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


# The CIFAR/SVHN DenseNets of Table 2 by family: growth rate k, bottleneck (B), compression (C).
# Reduced budgets build a family at another depth L: model_kwargs={"depth": L}.
CIFAR_DENSENETS: dict[str, dict[str, Any]] = {
    "densenet40_k12": dict(growth_rate=12),
    "densenet100_k12": dict(growth_rate=12),
    "densenet100_k24": dict(growth_rate=24),
    "densenet_bc100_k12": dict(growth_rate=12, bottleneck=True, compression=0.5),
    "densenet_bc250_k24": dict(growth_rate=24, bottleneck=True, compression=0.5),
    "densenet_bc190_k40": dict(growth_rate=40, bottleneck=True, compression=0.5),
}


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The model of a run: create_model with the run's dropout, memory mode and extra kwargs.

    This is the one place where a run's model is made (the performance knobs act here and in
    the step of `_train`).
    """
    from densenet_repro import DenseNet, create_model

    kwargs = dict(config.model_kwargs)
    drop = config.resolved().drop_rate
    if drop:
        kwargs["drop_rate"] = drop
    if config.memory_efficient:
        kwargs["memory_efficient"] = True
    if "depth" in kwargs and config.model in CIFAR_DENSENETS:
        # The named factories fix L; a scaled model is the same family at another depth.
        return DenseNet(num_classes=num_classes, **CIFAR_DENSENETS[config.model], **kwargs)
    return create_model(config.model, num_classes=num_classes, **kwargs)


def _use_fast_blocks(config: RunConfig, model: nn.Module, dev: torch.device, distributed: bool) -> bool:
    """Switch the model's dense blocks to the fast exact implementation if asked or supported."""
    from densenet_repro import fastpath
    from densenet_repro.models import fast_dense

    if config.fast_blocks is None:  # auto: not where the user asked for the plain recompute path
        auto = config.amp != "fp16" and not config.memory_efficient
        if not (auto and fastpath.fast_blocks_supported(model, dev, distributed)):
            return False
    elif not config.fast_blocks:
        return False
    elif distributed:
        raise ValueError("fast_blocks compute BatchNorm statistics per process: use --no-fast-blocks with "
                         "synchronised BatchNorm (or --no-sync-bn)")
    elif config.amp == "fp16":
        raise ValueError("fast_blocks support fp32 and bf16 only: use --amp bf16 or --no-fast-blocks")
    fast_dense.convert(model)  # raises a one-line error for a model without dense blocks
    return True


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on all parameters (BN and biases too), as the official Lua code does.
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, dampening=0.0,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


def autocast(config: RunConfig, device: torch.device):
    if config.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
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


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old or the new file


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then os.replace: a kill never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def find_finished(config: RunConfig, h: str) -> Path | None:
    """The folder of a finished run with this config hash: in `out`, else in the committed `results`."""
    name = run_name(config, h)
    roots = [Path(config.out)] + ([Path(config.results)] if config.results else [])
    for root in roots:
        folder = root / config.experiment / name
        summary = folder / "summary.json"
        if summary.is_file():
            try:
                s = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if s.get("finished") and s.get("config_hash") == h:
                return folder
    return None


def read_summary(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    s["run_dir"] = folder.as_posix()
    return s


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


def _pick_device(config: RunConfig, d: _Dist) -> torch.device:
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r}: CUDA is not available here; use --device cpu")
        if d.world > 1:
            dev = torch.device("cuda", d.local_rank)
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


METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_err_pct", "test_loss", "test_err_pct", "val_loss",
                  "val_err_pct", "epoch_time_s", "eval_time_s", "train_images_per_s"]


def _evaluate(model: nn.Module, loader: data_lib.DeviceLoader, config: RunConfig, dev, d: _Dist) -> tuple[float, float]:
    """(mean cross-entropy, error in %) over the whole split (all processes together)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    with torch.inference_mode(), autocast(config, dev):
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
    atomic_write_text(path, buf.getvalue())


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
    s["wall_time_s"] = round(sum(r["epoch_time_s"] + r["eval_time_s"] for r in rows), 2)
    s.update(extra)
    return s


def train(config: RunConfig, *, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train (or continue, or look up) one run and return its summary (see summary.json).

    on_epoch_end(epoch, row) is called after each epoch's checkpoint is on disk (tests use it to
    interrupt a run).
    """
    config = config.validate().resolved()
    source = data_lib.resolve_source(config.dataset, config.data_root, config.data_source, config.download)
    h = config_hash(config, source.id)
    done = find_finished(config, h)
    if done is not None:
        s = read_summary(done)
        s["cached"] = True
        return s

    run_dir = Path(config.out) / config.experiment / run_name(config, h)
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists() and not config.resume:
        raise RunExistsError(f"{run_dir} holds an unfinished run (checkpoint.pt): pass --resume (resume=True) to "
                             "continue it, or delete the folder to start over")

    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.benchmark)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    d = _Dist()
    try:
        dev = _pick_device(config, _Dist(local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
        d = _setup_dist(dev.type)
        return _train(config, h, source, run_dir, ckpt_path, dev, d, on_epoch_end)
    finally:
        if d.initialised_here:
            dist.destroy_process_group()
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _train(config: RunConfig, h: str, source: data_lib.SourceInfo, run_dir: Path, ckpt_path: Path,
           dev: torch.device, d: _Dist, on_epoch_end) -> dict[str, Any]:
    t_setup = time.perf_counter()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic  # fastest conv algorithms for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True                # TF32 where allowed (Ampere+)
        torch.backends.cudnn.allow_tf32 = True

    data = data_lib.load_data(config.dataset, config.data_root, config.data_source, dev, config.train_subset,
                              config.test_subset, config.download, resolved=source)
    if config.batch_size % d.world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {d.world} processes")
    train_loader = data.train_loader(config.batch_size, config.seed, d.rank, d.world, config.channels_last)
    test_loader = data.eval_loader("test", config.eval_batch_size, d.rank, d.world, config.channels_last)
    val_loader = (data.eval_loader("val", config.eval_batch_size, d.rank, d.world, config.channels_last)
                  if data.val_x is not None else None)

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = build_model(config, data.num_classes).to(dev)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast_blocks = _use_fast_blocks(config, model, dev, distributed=d.world > 1 and config.sync_bn)
    n_params = sum(p.numel() for p in model.parameters())
    if d.world > 1 and config.sync_bn:  # before the optimizer: the conversion makes new parameters
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if dev.type == "cuda" else _convert_bn(model)
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=config.amp == "fp16")

    rows: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, h)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rows = state["rows"]
        start_epoch = state["epoch"]
        rng = state["rng"]
        if len(rng) == d.world:
            torch.set_rng_state(rng[d.rank]["cpu"])
            if dev.type == "cuda" and rng[d.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[d.rank]["cuda"], dev)
        else:  # resumed with another number of processes: dropout masks cannot continue exactly
            torch.manual_seed(config.seed + 1000 * start_epoch + d.rank)
    else:
        torch.manual_seed(config.seed + d.rank)  # dropout: different masks in each process

    step_model: nn.Module = model
    if d.world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if config.compile:
        step_model = torch.compile(step_model)
    eval_model = torch.compile(model) if config.compile else model

    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from densenet_repro.provenance import versions

        cfg = config.to_dict() | {"config_hash": h, "data_source_id": source.id, "data_source": source.description,
                                  "versions": versions(), "world_size": d.world, "params": n_params}
        atomic_write_text(run_dir / "config.json", json.dumps(cfg, indent=1, default=str) + "\n")
        if rows:
            _write_metrics(run_dir / "metrics.csv", rows)  # drop rows of an epoch the checkpoint lacks
    name = run_name(config, h)
    bar = _use_bar(config.progress) and d.main
    say = (lambda s: None) if (config.progress == "none" or not d.main) else (lambda s: print(s, flush=True))
    if start_epoch:
        say(f"{name}: resuming after epoch {start_epoch}/{config.epochs}")
    elif d.main:
        say(f"{name}: {config.model} ({n_params / 1e6:.2f}M params) on {config.dataset} "
            f"[{data.info['train']} train / {data.info['test']} test images; {source.description}], "
            f"{config.epochs} epochs, {device_name(dev)}, {d.world} process(es)")
    setup_s = time.perf_counter() - t_setup
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    for epoch in range(start_epoch, config.epochs):
        lr = lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        wrong = torch.zeros((), dtype=torch.int64, device=dev)
        n_local = 0
        batches = train_loader.batches(epoch)
        if bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=len(train_loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for step, (x, y, global_n) in enumerate(batches):
            with autocast(config, dev):
                out = step_model(x)
                per_sample = F.cross_entropy(out.float(), y, reduction="none")  # (b,)
            # The mean over the *global* batch: DDP averages gradients over processes, so each
            # process scales its sum by world/global_n (exact even for an uneven last batch).
            loss = per_sample.sum() * (d.world / global_n)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += per_sample.detach().sum().double()
            wrong += (out.detach().argmax(1) != y).sum()
            n_local += len(y)
            if step % 50 == 49 and not torch.isfinite(loss_sum):
                break  # no point finishing a diverged epoch
        train_loss, train_wrong, n = d.sum([loss_sum.item(), wrong.item(), n_local], dev)
        if not math.isfinite(train_loss):
            kept = f"the checkpoint of epoch {start_epoch if not rows else rows[-1]['epoch']} is kept in {ckpt_path}" \
                if ckpt_path.exists() else "no checkpoint had been written yet"
            raise TrainingDiverged(f"{name}: the training loss became {train_loss} in epoch {epoch + 1} (lr {lr:g}); "
                                   f"stopped, {kept}. Lower the learning rate or use amp='none'.")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        epoch_time = time.perf_counter() - t0

        t1 = time.perf_counter()
        test_loss, test_err = _evaluate(eval_model, test_loader, config, dev, d)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / n,
                               "train_err_pct": 100.0 * train_wrong / n, "test_loss": test_loss,
                               "test_err_pct": test_err}
        if val_loader is not None:
            row["val_loss"], row["val_err_pct"] = _evaluate(eval_model, val_loader, config, dev, d)
        row.update(epoch_time_s=round(epoch_time, 3), eval_time_s=round(time.perf_counter() - t1, 3),
                   train_images_per_s=round(n / epoch_time, 1))
        rows.append(row)

        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
        rngs = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if d.main:
            save_checkpoint(ckpt_path, {
                "version": CHECKPOINT_VERSION, "config_hash": h, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rows": rows, "rng": rngs,
                "config": config.to_dict()})
            _write_metrics(run_dir / "metrics.csv", rows)
        d.barrier()
        line = _epoch_line(name, row, config.epochs)
        if bar:
            from tqdm.auto import tqdm

            tqdm.write(line)
        else:
            say(line)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    summary = _summarise(config, h, rows, {
        "params": n_params, "device": device_name(dev), "device_type": dev.type, "world_size": d.world,
        "amp": config.amp, "channels_last": config.channels_last, "compile": config.compile,
        "fast_blocks": fast_blocks, "setup_time_s": round(setup_s, 2), "data": data.info, "python": platform.python_version(),
        # peak memory of tensors allocated by PyTorch on the GPU during training and evaluation
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda"
                                else None),
        "torch": torch.__version__})
    if d.main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        say(f"{name}: done; final test error {summary['final_test_error_pct']:.2f}%, best "
            f"{summary['best_test_error_pct']:.2f}% (epoch {summary['best_epoch']}), "
            f"{summary['wall_time_s']:.0f} s")
    d.barrier()
    summary["run_dir"] = run_dir.as_posix()
    summary["cached"] = False
    return summary


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (with the valid values) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"depth\": 22}}' ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"depth\": 22}'")
    return value


def build_parser() -> OneLineParser:
    from densenet_repro import list_models

    p = OneLineParser(prog="python -m densenet_repro train",
                      description="Train one model on one Table 2 dataset with the paper's recipe.")
    p.add_argument("--model", required=True, choices=list_models(), metavar="MODEL",
                   help="one of: " + ", ".join(list_models()))
    p.add_argument("--dataset", required=True, choices=data_lib.DATASETS, help="Table 2 column")
    p.add_argument("--budget", choices=BUDGETS, default="paper",
                   help="paper (default): the model and recipe as named; cpu: scaled down as notebook 02 does; "
                        "smoke: tiny, synthetic data")
    p.add_argument("--epochs", type=positive_int, help="default: the budget's (paper: 300 CIFAR, 40 SVHN)")
    p.add_argument("--batch-size", type=positive_int, help="global batch (paper: 64)")
    p.add_argument("--lr", type=float, help="initial learning rate (paper: 0.1)")
    p.add_argument("--drop-rate", type=float, help="dropout (paper: 0.2 without augmentation, else 0)")
    p.add_argument("--model-kwargs", type=_json_dict, help="extra create_model arguments as JSON")
    p.add_argument("--train-subset", type=positive_int, help="train on a class-balanced subset of this size")
    p.add_argument("--test-subset", type=positive_int, help="test on a class-balanced subset of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision (default: the budget's; paper: none)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--memory-efficient", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fast-blocks", action=argparse.BooleanOptionalAction, default=None,
                   help="exact fast dense blocks (default: wherever supported, i.e. on CPU)")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--no-sync-bn", action="store_true", help="DDP: per-process BatchNorm statistics")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--data-root", help="dataset folder (default: $DENSENET_DATA or ./data)")
    p.add_argument("--data-source", choices=data_lib.SOURCES, help="default: the budget's (auto; smoke: synthetic)")
    p.add_argument("--no-download", action="store_true", help="never download the official datasets")
    p.add_argument("--experiment", default="train", help="runs are kept in OUT/EXPERIMENT/ (default: train)")
    p.add_argument("--out", default="runs", help="root of run folders (default: runs)")
    p.add_argument("--results", default="results", help="committed finished runs to reuse (default: results)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run from its checkpoint")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from densenet_repro.experiments import budget_config

    cfg = budget_config(args.model, args.dataset, args.budget, seed=args.seed, data_root=args.data_root,
                        device=args.device, experiment=args.experiment)
    overrides = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "drop_rate": args.drop_rate,
        "train_subset": args.train_subset, "test_subset": args.test_subset, "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile, "memory_efficient": args.memory_efficient,
        "fast_blocks": args.fast_blocks, "data_source": args.data_source, "num_threads": args.threads,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.model_kwargs:
        cfg.model_kwargs = {**cfg.model_kwargs, **args.model_kwargs}
    cfg.deterministic = cfg.deterministic or args.deterministic
    cfg.sync_bn = not args.no_sync_bn
    cfg.download = not args.no_download
    cfg.out, cfg.results, cfg.resume, cfg.progress = args.out, args.results or None, args.resume, args.progress
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args).validate()
        summary = train(config)
    except (ValueError, FileNotFoundError, RunExistsError, CheckpointError, TrainingDiverged, ImportError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if summary.get("cached"):
        print(f"finished run found in {summary['run_dir']} (not retrained)")
    print(json.dumps({k: summary[k] for k in ("run_dir", "final_test_error_pct", "best_test_error_pct",
                                              "reported_test_error_pct", "wall_time_s")}, indent=1))
    return 0
