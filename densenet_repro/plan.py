"""One plan per run, resolved once: `plan(config) -> Run`.

Everything a run needs to know before it trains (or is found finished) is decided here, once, and
handed down: the validated and resolved config, the dataset spec and its source, the config hash
and the run folder, the finished run if there is one, the device, the process's rank, and the
speed knobs. This module is the only reader of the torchrun environment and the only caller of
`data.resolve_source`, `fastpath.settings` and `devices.pick_device`; the CLI, the experiments, the
sweeps, the analyses and the benchmark ask `plan(config)` and use `run.finished`, `run.run_dir` and
`run.hash`.

How a run is found again: its hash covers the recipe and the data source's id. Where the data is
not on this machine (a fresh clone offline), a committed run of the same recipe on any data source
that a committed config.json names still answers, finished or in progress, so reports render
without the dataset; the data is needed only to train. Where the data is here, a finished run is
reused only if the content fingerprint it recorded matches the data at hand.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from densenet_repro import data
from densenet_repro.config import RunConfig, config_hash, parse_device, run_name
from densenet_repro.devices import pick_device
from densenet_repro.errors import ConfigError, DataMismatchError, DataNotFoundError
from densenet_repro.runstore import find_run, known_source_ids, read_config, read_summary, run_roots


@dataclass(frozen=True)
class Knobs:
    """How fast a run trains, never what it computes: resolved for its device (fastpath.settings)."""

    channels_last: bool
    compile: bool
    fast_blocks: bool   # wanted: asked for, or the device's fast path (fastpath.use_fast_blocks decides)


@dataclass(frozen=True)
class Run:
    """A run, planned: what it is, where it lives, whether it is finished, where it trains."""

    config: RunConfig                # validated, with the paper's defaults filled in
    spec: data.DatasetSpec
    source: data.SourceInfo | None   # None: the data is not on this machine (`missing_data` says why)
    hash: str
    run_dir: Path                    # where it trains: <out>/<experiment>/<model>-<dataset>-<hash>
    finished: Path | None            # the folder of the finished run (results/ first), or None
    roots: tuple[Path, ...]          # where finished runs were looked up, in order
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    knobs: Knobs = Knobs(False, False, False)
    missing_data: str | None = None  # the one-line error that training would raise without the data

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan(config: RunConfig) -> Run:
    """Resolve `config` once into a Run (see the module docstring)."""
    config = config.validate().resolved()
    roots = run_roots(config.results, config.out)
    source, missing = _source(config)
    if source is not None and source.present:
        ids = [source.id]
    else:  # the data is not here: a run of this recipe on a data source a config.json names answers
        # (an official archive still to be downloaded first: if nothing is found, that is what trains)
        known = known_source_ids(roots, config.experiment, config.model, config.dataset)
        ids = list(dict.fromkeys(([source.id] if source is not None else []) + known)) or ["absent"]
    hashes = [config_hash(config, sid) for sid in ids]
    chosen, finished = find_run(roots, config.experiment, [run_name(config, h) for h in hashes])
    if finished is not None and source is not None and source.present:
        _check_same_data(finished, config.dataset, source)
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1),
                                                                        ("LOCAL_RANK", 0)))
    cuda = parse_device(config.device).type == "cuda"
    if finished is None and cuda and config.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        # cuBLAS reads this once, when CUDA starts (choosing a CUDA device below starts it)
        if torch.cuda.is_initialized():
            raise ConfigError("deterministic CUDA runs need CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts, and "
                              "it has started in this process: export it and start a fresh process")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    # a finished run needs no device: it is found even where the asked one is absent
    device = pick_device(config.device, local_rank, world) if finished is None else parse_device(config.device)
    h = hashes[chosen]
    return Run(config, data.get_spec(config.dataset), source, h, roots[-1] / config.experiment / run_name(config, h),
               finished, roots, device, rank, world, local_rank, speed_knobs(config, device, world), missing)


def locate_run(config: RunConfig) -> tuple[data.SourceInfo | None, str, Path | None]:
    """(data source, config hash, finished folder or None): the plan's answer, for older callers."""
    run = plan(config)
    return run.source, run.hash, run.finished


def speed_knobs(config: RunConfig, device: torch.device, world: int = 1) -> Knobs:
    """The run's knobs: as asked, else the device's fast path (fastpath.settings)."""
    from densenet_repro import fastpath

    fast = fastpath.settings(device, world)
    compile_auto = fast["compile"] and not config.memory_efficient  # checkpointed layers break graphs
    blocks_auto = fast["fast_blocks"] and config.amp != "fp16" and not config.memory_efficient
    return Knobs(channels_last=config.channels_last if config.channels_last is not None else fast["channels_last"],
                 compile=config.compile if config.compile is not None else compile_auto,
                 fast_blocks=config.fast_blocks if config.fast_blocks is not None else blocks_auto)


def _source(config: RunConfig) -> tuple[data.SourceInfo | None, str | None]:
    try:
        return data.resolve_source(config.dataset, config.data_root, config.data_source, config.download), None
    except DataNotFoundError as e:
        return None, str(e)


def _check_same_data(folder: Path, dataset: str, source: data.SourceInfo) -> None:
    """A finished run is reused only on the data it was made on: its recorded fingerprint (or, for a
    run from before fingerprints, its image counts) must match the data at hand."""
    here = data.fingerprint(dataset, source)
    recorded = (read_config(folder) or {}).get("data_fingerprint")
    if here is None:
        return
    if recorded is not None:
        same = recorded.get("digest") == here["digest"]
        what = data.describe_fingerprint(recorded)
    else:
        info = read_summary(folder).get("data") or {}
        train_here = sum(n for s in ("train", "extra") for n in here.get(s, {}).values())
        same = (info.get("train_full", 0) + info.get("val", 0) == train_here
                and info.get("test_full") == sum(here["test"].values()))
        what = f"{info.get('train_full', 0) + info.get('val', 0):,} training / {info.get('test_full', 0):,} test images"
    if not same:
        raise DataMismatchError(
            f"the finished run {folder} was made on other data ({what}) than {source.path} holds "
            f"({data.describe_fingerprint(here)}), under the same name {source.id!r}: point --data-root at the "
            f"copy that run used, or give this copy a name of its own (a copy is known by its name)")


def with_knobs(run: Run, **knobs: bool) -> Run:
    """The same run with some speed knobs set (e.g. by the speed trial)."""
    return dataclasses.replace(run, knobs=dataclasses.replace(run.knobs, **knobs))
