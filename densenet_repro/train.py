"""Training with the paper's recipe: `train(RunConfig(...)) -> summary dict` (its CLI is in cli.py).

    python -m densenet_repro train --model densenet_bc100_k12 --dataset c10+ [--epochs N]
        [--budget smoke|cpu|paper] [--out DIR] [--resume] [--amp bf16] [--channels-last] ...

Read top to bottom: `train` plans the run once (plan.py: config, data source, hash, folder, device,
knobs) and returns a finished run's summary at once; otherwise it takes the run folder's lock, sets
the process-wide flags the run needs (and restores them afterwards), then `_setup` puts the data on
the device and builds the model, optimizer and step; `_restore` continues from the checkpoint; the
epoch loop trains, evaluates and checkpoints (`_train_epoch`, `_evaluate`, `_save`); `_finish`
writes the final weights and summary.json. What lives where: the recipe and its hash in config.py,
run folders, checkpoints and summaries in runstore.py, the step in step.py, speed knobs in
fastpath.py, several processes in distributed.py, the data in data/.

On CPU with `deterministic` a resumed run ends with exactly the metrics of an uninterrupted one.
Distributed: launch with torchrun (`torchrun --nproc_per_node 8 -m densenet_repro train ...`).
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from densenet_repro import atomic, distributed, fastpath, provenance
from densenet_repro import data as data_lib
from densenet_repro.config import (AMP_MODES, HASHED_FIELDS, PROGRESS_MODES, RunConfig, build_model,  # noqa: F401
                                   build_optimizer, config_hash, lr_at, option, recipe, run_name)
from densenet_repro.devices import device_name, hardware, hardware_label, parse_device, pick_device  # noqa: F401
from densenet_repro.distributed import AllReduceBatchNorm2d  # noqa: F401
from densenet_repro.errors import (CheckpointError, ConfigError, DataMismatchError,  # noqa: F401
                                   OutputNotWritableError, RunExistsError, TrainingDiverged)
from densenet_repro.fastpath import path_label
from densenet_repro.plan import Knobs, Run, locate_run, plan, speed_knobs, with_knobs  # noqa: F401
from densenet_repro.runstore import (CHECKPOINT, CHECKPOINT_VERSION, METRIC_COLUMNS, SNAPSHOTS,  # noqa: F401
                                     SUMMARY_FIELDS, WEIGHTS, RunLock, load_checkpoint, read_config, read_metrics,
                                     read_summary, save_checkpoint, snapshot_path, summarise, write_metrics)
from densenet_repro.step import CompiledForOneShape, autocast, train_step  # noqa: F401

ESTIMATE_AFTER_STEPS = 5  # steps timed (after the first, which pays for warm-up) to predict the run's cost


def train(config: RunConfig | Run, *, on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
          ) -> dict[str, Any]:
    """Train (or continue, or look up) one run and return its summary (see summary.json).

    `config` may also be the run already planned (plan.plan), which is then not planned again.
    on_epoch_end(epoch, row) is called after each epoch's checkpoint is on disk (tests use it to
    interrupt a run).
    """
    run = config if isinstance(config, Run) else plan(config)
    if run.finished is not None:
        return read_summary(run.finished) | {"cached": True}
    if run.source is None:
        raise data_lib.DataNotFoundError(run.missing_data)
    with RunLock(run.run_dir) if run.rank == 0 else contextlib.nullcontext(), _process_flags(run):
        if (run.run_dir / CHECKPOINT).exists() and not run.config.resume:
            raise RunExistsError(f"{run.run_dir} holds an unfinished run (checkpoint.pt): pass --resume "
                                 "(resume=True) to continue it, or delete the folder to start over")
        procs = distributed.start(run.rank, run.world, run.device.type)
        try:
            return _train(run, procs, on_epoch_end)
        finally:
            procs.close()


@contextlib.contextmanager
def _process_flags(run: Run):
    """Set the process-wide flags this run needs, and restore every one of them afterwards, so that a
    second run in the same process (notebooks, sweeps, gpu-check) starts from the same state."""
    cuda = run.device.type == "cuda"
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.device("cuda", torch.cuda.current_device()) if cuda else None)
    config = run.config
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.use_deterministic_algorithms(config.deterministic)
    if cuda:
        torch.cuda.set_device(run.device)
        torch.backends.cudnn.benchmark = not config.deterministic  # fastest conv algorithms for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.tf32
    if run.knobs.compile:
        torch._dynamo.reset()  # each run compiles afresh: earlier runs' graphs count towards the recompile limit
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:5]
        if cuda:
            torch.cuda.set_device(saved[5])


@dataclass
class _Session:
    """What one process trains with: set up once by `_setup`, restored from a checkpoint by `_restore`."""

    run: Run
    procs: distributed.Processes
    say: Callable[[str], None]
    data: data_lib.Data
    train_loader: data_lib.DeviceLoader
    eval_loaders: dict[str, data_lib.DeviceLoader]  # "test", and "val" where the protocol has one
    model: nn.Module            # the parameters (what checkpoints hold); evaluation calls it eagerly
    step_model: nn.Module       # what the training step calls: DDP and/or compiled around `model`
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    fast_blocks: bool
    n_params: int
    path: str                   # path_label of this process's blocks, layout, precision, compilation
    hardware: str               # hardware_label of this process's device
    code: str                   # provenance.code_commit: the code this process trains with
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics of the finished epochs
    start_epoch: int = 0
    saved_epoch: int = 0        # the epoch of the checkpoint on disk


@contextlib.contextmanager
def _writing(s: _Session):
    """A write into the run folder that fails (a full disk) is one line; the atomic writes leave the
    last checkpoint as it was."""
    try:
        yield
    except OSError as e:
        kept = f"the checkpoint of epoch {s.saved_epoch} is kept" if s.saved_epoch else "no epoch had been saved yet"
        raise OutputNotWritableError(f"cannot write in {s.run.run_dir} ({e.strerror or e}): {kept}; free space (or "
                                     "choose a writable --out) and continue with --resume") from None


def _train(run: Run, procs: distributed.Processes, on_epoch_end) -> dict[str, Any]:
    t_setup = time.perf_counter()
    config, main = run.config, procs.main
    say = (lambda m: None) if (config.progress == "none" or not main) else (lambda m: print(m, flush=True))
    s = _setup(run, procs, say)
    _restore(s)
    run = s.run  # with the knobs the speed trial chose
    if main:
        with _writing(s):
            _write_config(s)
            if s.rows:
                write_metrics(run.run_dir / "metrics.csv", s.rows)  # drop rows of an epoch the checkpoint lacks
        _keep_snapshot(s)  # a resumed run may ask for the epoch its checkpoint holds
    if s.start_epoch:
        say(f"{run.name}: resuming after epoch {s.start_epoch}/{config.epochs}")
    else:
        say(f"{run.name}: {config.model} ({s.n_params / 1e6:.2f}M params) on {config.dataset} "
            f"[{s.data.info['train']} train / {s.data.info['test']} test images; {run.source.description}], "
            f"{config.epochs} epochs, {device_name(run.device)}, {run.world} process(es); no finished run in "
            + ", ".join(str(r) for r in run.roots))
    setup_s = time.perf_counter() - t_setup
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    bar = main and (config.progress == "bar" or (config.progress == "auto" and sys.stderr.isatty()))
    for epoch in range(s.start_epoch, config.epochs):
        row = _train_epoch(s, epoch, bar)
        t1 = time.perf_counter()
        for split, loader in s.eval_loaders.items():
            row[f"{split}_loss"], row[f"{split}_err_pct"] = _evaluate(s, loader)
        row["eval_time_s"] = round(time.perf_counter() - t1, 3)
        s.rows.append(row)
        _save(s)
        _keep_snapshot(s)
        if bar:
            from tqdm.auto import tqdm

            tqdm.write(_epoch_line(run.name, row, config.epochs))
        else:
            say(_epoch_line(run.name, row, config.epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return _finish(s, setup_s)


def _setup(run: Run, procs: distributed.Processes, say: Callable[[str], None]) -> _Session:
    """Data on the device, the model, its optimizer, scaler and step, with the speed knobs applied."""
    config, dev = run.config, run.device
    if config.batch_size % run.world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {run.world} processes")
    data = data_lib.load_data(run.spec, run.source, dev, config.train_subset, config.test_subset, config.download)
    if config.speed_trial and dev.type == "cpu" and run.world == 1:
        run = with_knobs(run, **fastpath.speed_trial(config, data.num_classes, dev, say, device_name(dev)))
    knobs = run.knobs
    train_loader = data.train_loader(config.batch_size, config.seed, procs.rank, run.world, knobs.channels_last)
    eval_loaders = {split: data.eval_loader(split, config.eval_batch_size, procs.rank, run.world, knobs.channels_last)
                    for split in ("test", "val") if split == "test" or data.val_x is not None}

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = build_model(config, data.num_classes).to(dev)
    if knobs.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sync_bn = run.world > 1 and config.sync_bn
    fast_blocks = fastpath.use_fast_blocks(config, model, dev, sync_bn, knobs.fast_blocks)
    n_params = sum(p.numel() for p in model.parameters())
    if sync_bn:  # before the optimizer: the conversion makes new parameters
        model = distributed.sync_batchnorm(model, dev.type)
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=config.amp == "fp16")
    step_model: nn.Module = model
    if run.world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if knobs.compile:
        step_model = CompiledForOneShape(step_model, config.batch_size // run.world, cuda_graphs=dev.type == "cuda")
    return _Session(run, procs, say, data, train_loader, eval_loaders, model, step_model, optimizer, scaler,
                    fast_blocks, n_params, path_label(fast_blocks, knobs.channels_last, config.amp, knobs.compile),
                    hardware_label(dev), provenance.code_commit())


def _restore(s: _Session) -> None:
    """Continue from the checkpoint if there is one, else seed the dropout of a new run."""
    ckpt = s.run.run_dir / CHECKPOINT
    rank, world = s.procs.rank, s.run.world
    if not ckpt.exists():
        torch.manual_seed(s.run.config.seed + rank)  # dropout: different masks in each process
        return
    state = load_checkpoint(ckpt, s.run.hash)
    try:
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as e:  # another architecture's tensors under this run's hash
        raise CheckpointError(f"checkpoint {ckpt} does not fit {s.run.config.model} ({str(e).splitlines()[0]}); it was "
                              "left as it is: move it away to start the run over") from None
    s.scaler.load_state_dict(state["scaler"])
    s.rows, s.start_epoch = state["rows"], state["epoch"]
    s.saved_epoch = s.start_epoch
    rng = state["rng"]
    if len(rng) == world:
        torch.set_rng_state(rng[rank]["cpu"])
        if s.run.device.type == "cuda" and rng[rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[rank]["cuda"], s.run.device)
    else:  # resumed with another number of processes: dropout masks cannot continue exactly
        torch.manual_seed(s.run.config.seed + 1000 * s.start_epoch + rank)


def _write_config(s: _Session) -> None:
    """config.json: the config as given, the data it trains on, versions and commit (HEAD and the code's,
    of the process that wrote it last; metrics.csv names the code of each epoch). A run resumed on
    other data than it started on is refused before anything is overwritten."""
    run, fp = s.run, s.data.info["fingerprint"]
    before = (read_config(run.run_dir) or {}).get("data_fingerprint")
    if before is not None and fp is not None and before.get("digest") != fp["digest"]:
        raise DataMismatchError(f"{run.run_dir} was started on other data ({data_lib.describe_fingerprint(before)}) "
                                f"than {run.source.path} holds ({data_lib.describe_fingerprint(fp)}): point --data-root "
                                "at the copy it started on, or delete the folder to start over")
    cfg = run.config.to_dict() | {"config_hash": run.hash, "data_source_id": run.source.id,
                                  "data_description": run.source.description, "data_fingerprint": fp,
                                  "versions": provenance.versions(), "world_size": run.world, "params": s.n_params,
                                  "commit": provenance.commit_label(*provenance.git_commit()), "code_commit": s.code}
    atomic.write_json(run.run_dir / "config.json", cfg)


def _train_epoch(s: _Session, epoch: int, bar: bool) -> dict[str, Any]:
    """One epoch over every training image; returns the epoch's row without the evaluation."""
    config, dev = s.run.config, s.run.device
    lr = lr_at(config, epoch)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.step_model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    n_local, warmup_s = 0, 0.0
    batches = s.train_loader.batches(epoch)
    if bar:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(s.train_loader), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
    for step, (x, y, global_n) in enumerate(batches):
        per_sample, out = train_step(s.step_model, s.optimizer, s.scaler, x, y, global_n, config.amp, s.run.world)
        loss_sum += per_sample.sum().double()
        wrong += (out.argmax(1) != y).sum()
        n_local += len(y)
        if step == 0 and epoch == s.start_epoch and s.run.knobs.compile:
            # the first compiled step compiles (and captures the CUDA graph): reported apart, and at once
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            warmup_s = time.perf_counter() - t0
            s.say(f"{s.run.name}: first compiled step done after {warmup_s:.1f} s at {time.strftime('%H:%M:%S')}")
        if step == ESTIMATE_AFTER_STEPS and epoch == s.start_epoch:
            per_step = (time.perf_counter() - t0 - warmup_s) / step
            s.say(f"{s.run.name}: {per_step:.3g} s per step on {device_name(dev)}; the {config.epochs - epoch} "
                  f"epoch(s) to go will take about {_duration(per_step * len(s.train_loader) * (config.epochs - epoch))}"
                  " (evaluation not included)")
        if step % 50 == 49 and not torch.isfinite(loss_sum):
            break  # no point finishing a diverged epoch
    train_loss, train_wrong, n = s.procs.sum([loss_sum.item(), wrong.item(), n_local], dev)
    if not math.isfinite(train_loss):
        kept = (f"the checkpoint of epoch {s.rows[-1]['epoch']} is kept in {s.run.run_dir / CHECKPOINT}" if s.rows
                else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{s.run.name}: the training loss became {train_loss} in epoch {epoch + 1} (lr {lr:g}); "
                               f"stopped, {kept}. {divergence_advice(config.amp)}.")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    epoch_time = time.perf_counter() - t0 - warmup_s  # the warm-up step's images are few: they stay in n
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / n, "train_err_pct": 100.0 * train_wrong / n,
           "epoch_time_s": round(epoch_time, 3), "train_images_per_s": round(n / epoch_time, 1),
           "hardware": s.hardware, "path": s.path, "code_commit": s.code}
    if warmup_s:
        row["compile_time_s"] = round(warmup_s, 3)
    return row


def _evaluate(s: _Session, loader: data_lib.DeviceLoader) -> tuple[float, float]:
    """(mean cross-entropy, error in %) over the whole split (all processes together), eagerly."""
    dev = s.run.device
    s.model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    n = 0
    with torch.inference_mode(), autocast(s.run.config.amp, dev):
        for x, y, _ in loader.batches():
            out = s.model(x).float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            wrong += (out.argmax(1) != y).sum()
            n += len(y)
    loss_sum, wrong, n = s.procs.sum([loss_sum.item(), wrong.item(), n], dev)
    return loss_sum / n, 100.0 * wrong / n


def _save(s: _Session) -> None:
    """Checkpoint after an epoch (atomic), with every process's RNG state; then the metrics."""
    dev = s.run.device
    rngs = s.procs.gather({"cpu": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None})
    if s.procs.main:
        with _writing(s):
            save_checkpoint(s.run.run_dir / CHECKPOINT, {
                "version": CHECKPOINT_VERSION, "config_hash": s.run.hash, "epoch": s.rows[-1]["epoch"],
                "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
                "rows": s.rows, "rng": rngs, "config": s.run.config.to_dict()})
            s.saved_epoch = s.rows[-1]["epoch"]
            write_metrics(s.run.run_dir / "metrics.csv", s.rows)
    s.procs.barrier()


def _keep_snapshot(s: _Session) -> None:
    """The weights of the last finished epoch, if keep_weights_at asks for them and they are not kept yet."""
    epoch = s.rows[-1]["epoch"] if s.rows else 0
    path = snapshot_path(s.run.run_dir, epoch)
    if s.procs.main and epoch in s.run.config.keep_weights_at and not path.exists():
        with _writing(s):
            path.parent.mkdir(exist_ok=True)
            save_checkpoint(path, s.model.state_dict())


def _finish(s: _Session, setup_s: float) -> dict[str, Any]:
    """The final weights and summary.json (written last: it means "finished"); the checkpoint goes."""
    run, dev = s.run, s.run.device
    summary = summarise(run.config, run.hash, s.rows, {
        "params": s.n_params, "device": device_name(dev), "device_type": dev.type, "world_size": run.world,
        "amp": run.config.amp, "channels_last": run.knobs.channels_last, "compile": run.knobs.compile,
        "fast_blocks": s.fast_blocks, "setup_time_s": round(setup_s, 2), "data": s.data.info,
        "python": platform.python_version(), "hardware": hardware(dev),
        # peak memory of tensors allocated by PyTorch on the GPU during training and evaluation
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda"
                                else None),
        "torch": torch.__version__})
    if s.procs.main:
        with _writing(s):
            save_checkpoint(run.run_dir / WEIGHTS, s.model.state_dict())
            atomic.write_json(run.run_dir / "summary.json", summary)
        (run.run_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: the summary and the final weights are kept
        s.say(f"{run.name}: done; final test error {summary['final_test_error_pct']:.2f}%, best "
              f"{summary['best_test_error_pct']:.2f}% (epoch {summary['best_epoch']}), {summary['wall_time_s']:.0f} s")
    s.procs.barrier()
    return summary | {"run_dir": run.run_dir.as_posix(), "cached": False}


def divergence_advice(amp: str) -> str:
    return "Lower the learning rate" + (" or use amp='none'" if amp != "none" else "")


def _epoch_line(name: str, row: dict[str, Any], epochs: int) -> str:
    val = f" val {row['val_err_pct']:.2f}%" if "val_err_pct" in row else ""
    return (f"{name} epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} | train loss {row['train_loss']:.4f} "
            f"err {row['train_err_pct']:.2f}% | test loss {row['test_loss']:.4f} err {row['test_err_pct']:.2f}%{val} "
            f"| {row['epoch_time_s']:.1f} s, {row['train_images_per_s']:.0f} img/s")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
