"""One plan per run, resolved once: `plan(config) -> Run`.

Everything a run needs to know before it trains (or is found finished) is decided here, once, and
handed down: the validated and resolved config, the dataset spec and its source, the config hash
and the run folder, the finished run if there is one, the device, the process's rank, and the
speed knobs. This module is the only reader of the torchrun environment and the only caller of
`data.resolve_source`, `fastpath.speed_knobs` (so of `fastpath.settings`) and `devices.pick_device`; the CLI, the experiments, the
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
from densenet_repro.config import RunConfig, config_hash, run_name
from densenet_repro.devices import parse_device, pick_device
from densenet_repro.errors import ConfigError, DataNotFoundError
from densenet_repro.fastpath import Knobs, speed_knobs
from densenet_repro.runstore import check_same_data, find_run, known_source_ids, run_roots

__all__ = ["Knobs", "Run", "locate_run", "plan", "speed_knobs", "with_knobs"]


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
    """Resolve `config` once into a Run (see the module docstring). It reads in the order the run is
    decided: the recipe, its data, its folder (hash, lookup), its device, its speed knobs."""
    config = config.validate().resolved()
    spec = data.get_spec(config.dataset)
    try:
        source, missing = data.resolve_source(config.dataset, config.data_root, config.data_source,
                                              config.download), None
    except DataNotFoundError as e:
        source, missing = None, str(e)
    here = source is not None and source.present

    roots = run_roots(config.results, config.out)
    if here:
        ids = [source.id]
    else:  # the data is not here: a run of this recipe on a data source a config.json names answers
        # (an official archive still to be downloaded first: if nothing is found, that is what trains)
        known = known_source_ids(roots, config.experiment, config.model, config.dataset)
        ids = list(dict.fromkeys(([source.id] if source is not None else []) + known)) or ["absent"]
    hashes = [config_hash(config, sid) for sid in ids]
    names = [run_name(config, h) for h in hashes]
    chosen, finished = find_run(roots, config.experiment, names)
    if finished is not None and here:
        check_same_data(finished, source, data.fingerprint(config.dataset, source))

    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1),
                                                                        ("LOCAL_RANK", 0)))
    asked = parse_device(config.device)
    if finished is None and asked.type == "cuda" and config.deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        # cuBLAS reads this once, when CUDA starts (choosing a CUDA device below starts it)
        if torch.cuda.is_initialized():
            raise ConfigError("deterministic CUDA runs need CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts, and "
                              "it has started in this process: export it and start a fresh process")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    # a finished run needs no device: it is found even where the asked one is absent
    device = pick_device(config.device, local_rank, world) if finished is None else asked
    return Run(config, spec, source, hashes[chosen], roots[-1] / config.experiment / names[chosen],
               finished, roots, device, rank, world, local_rank, speed_knobs(config, device, world), missing)


def locate_run(config: RunConfig) -> tuple[data.SourceInfo | None, str, Path | None]:
    """(data source, config hash, finished folder or None): the plan's answer, for older callers."""
    run = plan(config)
    return run.source, run.hash, run.finished


def with_knobs(run: Run, **knobs: bool) -> Run:
    """The same run with some speed knobs set (e.g. by the speed trial)."""
    return dataclasses.replace(run, knobs=dataclasses.replace(run.knobs, **knobs))
