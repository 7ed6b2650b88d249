"""The fastest exact way to train our DenseNets on a device: the settings train.py makes the default.

Measured by `python -m densenet_repro bench` (results/bench/, notebook 06). On CPU the fast path is

    bf16 autocast + channels-last + fast dense blocks (models/fast_dense.py), no torch.compile:

the fast blocks compute the same function as the plain blocks (tests/test_fast_dense.py) with a
fraction of the element-wise work and activation memory linear in depth; torch.compile adds
minutes of compilation on a small CPU and nothing measurable on top of them (the blocks are opaque
to it). bf16 autocast changes the rounding, not the model: `python -m densenet_repro bench accuracy`
compares its final accuracy with fp32 on short real runs.

On CUDA nothing here has been measured (no GPU was available): the recommendation there is the
standard one, bf16 + channels-last + torch.compile, with the plain blocks; scripts/gpu_benchmark.py
measures it.

Use (training engine):

    from densenet_repro import fastpath
    knobs = fastpath.settings(device)           # {"amp": "bf16", "channels_last": True, ...}
    model = fastpath.apply(model, device, distributed=world > 1 and sync_bn)
"""

from __future__ import annotations

import functools
import json
import statistics
import warnings
from pathlib import Path

import torch
from torch import nn


def settings(device: str | torch.device) -> dict[str, object]:
    """RunConfig knob values of the fast path on `device` (cpu or cuda)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return {"amp": "bf16", "channels_last": True, "compile": False, "fast_blocks": True}
    if dev.type == "cuda":
        return {"amp": "bf16", "channels_last": True, "compile": True, "fast_blocks": False}
    raise ValueError(f"no fast path known for device {str(device)!r}: use 'cpu' or 'cuda'")


def speed_cost() -> str:
    """How much slower the plain blocks train than the fast ones on CPU, from the committed benchmark
    (results/bench/bench_default.json: the fast path against the same precision and layout without
    the fast blocks); a phrase without a number where that file is absent."""
    from densenet_repro import provenance

    root = provenance.repo_root()
    path = (root or Path.cwd()) / "results" / "bench" / "bench_default.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = {r["config"]: r for s in result["sections"] if s["name"] == "cifar" for r in s["results"]}
        fast, plain = rows["fast_bf16_cl"]["train_img_s"], rows["ours_bf16_cl"]["train_img_s"]
        median = statistics.median(a / b for a, b in zip(fast, plain))
        return (f"about x{median:.1f} slower to train on CPU (DenseNet-BC-100, bf16 + channels_last, "
                f"results/bench/{path.name})")
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return "several times slower to train on CPU"


@functools.lru_cache(maxsize=None)
def fast_kernels_available() -> bool:
    """Whether the fast blocks' C++ CPU kernels can be built (or are built) here.

    False (with one warning per process, naming the speed cost) when there is no C++ compiler or the
    build fails: callers then keep the plain blocks, which compute the same function.
    """
    from densenet_repro.models import fast_dense_cpu

    try:
        fast_dense_cpu.load()
        return True
    except RuntimeError as e:
        reason = str(e).split(": ", 1)[-1].split(";")[0]
        warnings.warn(f"densenet_repro: fast dense blocks unavailable ({reason}); using the plain blocks (the same "
                      f"function), {speed_cost()}", RuntimeWarning, stacklevel=2)
        return False


def fast_blocks_supported(model: nn.Module, device: str | torch.device, distributed: bool = False) -> bool:
    """Whether `apply` would convert: a DenseNet, on CPU, without cross-process BatchNorm, with the
    fast blocks' C++ kernels buildable here (fast_kernels_available; else one warning, and False).

    The fast blocks compute each BatchNorm's batch statistics on this process's batch, so they do
    not replace synchronised BN in multi-process training.
    """
    from densenet_repro.models.densenet import _DenseBlock

    has_blocks = any(isinstance(m, _DenseBlock) for m in model.modules())
    if not (has_blocks and torch.device(device).type == "cpu" and not distributed):
        return False
    return fast_kernels_available()


def apply(model: nn.Module, device: str | torch.device, distributed: bool = False) -> nn.Module:
    """Switch the dense blocks of `model` to the fast implementation where it is supported (in place).

    Returns the model. Call it after building the model and before converting BatchNorms for
    multi-process training; a model without dense blocks (ResNets) or on CUDA is returned unchanged.
    Parameters and state_dict keys never change, so checkpoints load either way.
    """
    if fast_blocks_supported(model, device, distributed):
        from densenet_repro.models import fast_dense

        fast_dense.convert(model)
    return model
