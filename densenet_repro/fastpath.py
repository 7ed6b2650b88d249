"""The fastest exact way to train our DenseNets on a device: the one place the engine's speed defaults live.

`settings(device)` gives the RunConfig knob values that train.py takes wherever a run leaves them
unset (channels_last, compile, fast_blocks; None in RunConfig) and the precision that the cpu budget
picks (amp; the engine itself never changes a run's precision, which is part of its recipe):

    CPU with native bf16 (AVX512-BF16, AMX)   bf16 autocast + channels-last + fast dense blocks
    CPU without (e.g. AVX2 only)              fp32, plain blocks, NCHW
    one CUDA GPU                              bf16 autocast + channels-last + a compiled step
                                              replayed as a CUDA graph; plain blocks
    several CUDA processes (DDP)              the same without compilation

Why (numbers: results/bench/, notebook 06, README "Performance notes"): with native bf16 the CPU
fast path trains DenseNet-BC-100 several times faster than naive eager fp32, and the fast blocks
compute the same function as the plain blocks (tests/test_fast_dense.py); torch.compile adds
minutes of compilation on a small CPU and nothing measurable on top of them. Without native bf16,
bf16 is emulated (a matmul >100x slower than fp32) and the fast blocks do not beat the plain ones in
fp32. On a GPU a DenseNet step at batch 64 is ~1,500 small kernels: launches, not FLOPs, set its
time, which CUDA graphs remove.

`speed_knobs` applies these defaults to a run (the one caller of `settings`; plan() calls it), `use_fast_blocks`
switches a model's blocks, and `speed_trial` measures which exact path is fastest on the machine at
hand, for a long run that meets several kinds of CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from densenet_repro.config import RunConfig, build_model, build_optimizer
from densenet_repro.errors import ConfigError
from densenet_repro.step import train_step


# The CPU fast path measured by the benchmark (bf16 + channels-last + fast blocks) and the CPU
# fallback where bf16 is not native.
BF16_CPU = {"amp": "bf16", "channels_last": True, "compile": False, "fast_blocks": True}
FP32_CPU = {"amp": "none", "channels_last": False, "compile": False, "fast_blocks": False}


def bf16_native() -> bool:
    """Whether oneDNN runs bf16 in hardware on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def settings(device: str | torch.device, world: int = 1) -> dict[str, object]:
    """RunConfig knob values of the fast path on `device` (cpu or cuda) with `world` processes."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dict(BF16_CPU if bf16_native() else FP32_CPU)
    if dev.type == "cuda":
        return {"amp": "bf16", "channels_last": True, "compile": world == 1, "fast_blocks": False}
    raise ValueError(f"no fast path known for device {str(device)!r}: use 'cpu' or 'cuda'")


@dataclass(frozen=True)
class Knobs:
    """How fast a run trains, never what it computes: resolved for its device (`speed_knobs`)."""

    channels_last: bool
    compile: bool
    fast_blocks: bool   # wanted: asked for, or the device's fast path (use_fast_blocks decides)


def speed_knobs(config: RunConfig, device: torch.device, world: int = 1) -> Knobs:
    """The run's knobs: as asked, else the device's fast path (`settings`)."""
    fast = settings(device, world)
    compile_auto = fast["compile"] and not config.memory_efficient  # checkpointed layers break graphs
    blocks_auto = fast["fast_blocks"] and config.amp != "fp16" and not config.memory_efficient
    return Knobs(channels_last=config.channels_last if config.channels_last is not None else fast["channels_last"],
                 compile=config.compile if config.compile is not None else compile_auto,
                 fast_blocks=config.fast_blocks if config.fast_blocks is not None else blocks_auto)


def fast_blocks_supported(model: nn.Module, device: str | torch.device, distributed: bool = False) -> bool:
    """Whether `apply` would convert: a DenseNet, on CPU, without cross-process BatchNorm, with the
    fast blocks' C++ kernels buildable here (fast_dense_cpu.fast_kernels_available; else one warning, and False).

    The fast blocks compute each BatchNorm's batch statistics on this process's batch, so they do
    not replace synchronised BN in multi-process training.
    """
    from densenet_repro.models.densenet import _DenseBlock

    has_blocks = any(isinstance(m, _DenseBlock) for m in model.modules())
    if not (has_blocks and torch.device(device).type == "cpu" and not distributed):
        return False
    from densenet_repro.models.fast_dense_cpu import fast_kernels_available

    return fast_kernels_available()


def use_fast_blocks(config: RunConfig, model: nn.Module, device: torch.device, distributed: bool,
                    wanted: bool) -> bool:
    """Switch the model's dense blocks to the fast exact implementation (in place) when `wanted` (the
    run's knob: asked for, or the device's fast path). Asked for explicitly and impossible: a
    ConfigError that says what to do; by default, the plain blocks where they are not supported."""
    from densenet_repro.models import fast_dense
    from densenet_repro.models.densenet import _DenseBlock

    if not wanted:
        return False
    if config.fast_blocks is None:
        if not fast_blocks_supported(model, device, distributed):
            return False
    elif distributed:
        raise ConfigError("fast_blocks compute BatchNorm statistics per process: use --no-fast-blocks with "
                          "synchronised BatchNorm (or --no-sync-bn)")
    elif config.amp == "fp16":
        raise ConfigError("fast_blocks support fp32 and bf16 only: use --amp bf16 or --no-fast-blocks")
    elif not any(isinstance(m, _DenseBlock) for m in model.modules()):
        raise ConfigError(f"{config.model} has no dense blocks to make fast: drop --fast-blocks")
    elif not fast_blocks_supported(model, "cpu"):
        raise ConfigError("--fast-blocks needs a C++ compiler to build the fast kernels: install g++, or pass "
                          "--no-fast-blocks (the same function, slower)")
    fast_dense.convert(model)
    return True


def path_label(fast_blocks: bool, channels_last: bool, amp: str, compiled: bool = False) -> str:
    """How a run trains, in words: blocks, memory layout and precision."""
    return (f"{'fast' if fast_blocks else 'plain'} blocks, {'channels-last' if channels_last else 'NCHW'}, "
            f"{'fp32' if amp == 'none' else amp}" + (", compiled" if compiled else ""))


SPEED_TRIAL_STEPS = 3  # timed steps per candidate, after one untimed step that pays for warm-up


def speed_trial(config: RunConfig, num_classes: int, device: torch.device, say: Callable[[str], None],
                device_label: str) -> dict[str, bool]:
    """The fastest exact path on this CPU: {"fast_blocks": ..., "channels_last": ...} for the knobs
    the config leaves None, from SPEED_TRIAL_STEPS timed training steps of each candidate at the
    run's batch size.

    Every candidate computes the same function in the run's own precision (the fast blocks are
    exact, tests/test_fast_dense.py; the layout changes only the summation order), so the choice
    changes speed, not the recipe. Which one wins depends on the CPU: on a 2-core Sapphire Rapids
    fast blocks + channels-last take 0.68 s a DenseNet-40 step against 1.5 s for plain NCHW. The
    trial trains throw-away copies on random images; the global RNG is restored.
    """
    fast_options = [config.fast_blocks] if config.fast_blocks is not None else [False, True]
    layouts = [config.channels_last] if config.channels_last is not None else [False, True]
    if True in fast_options and not fast_blocks_supported(build_model(config, num_classes), device):
        fast_options = [False]
    if len(fast_options) * len(layouts) == 1:
        return {"fast_blocks": fast_options[0], "channels_last": layouts[0]}
    timings: dict[tuple[bool, bool], float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(config.batch_size, 3, 32, 32, device=device)
        y = torch.randint(0, num_classes, (config.batch_size,), device=device)
        for fast in fast_options:
            for cl in layouts:
                timings[(fast, cl)] = _time_steps(config, num_classes, device, fast, cl, x, y)
    best = min(timings, key=timings.get)
    say(f"speed trial on {device_label}: " + ", ".join(
        f"{path_label(f, c, config.amp)} {t:.3g} s/step" for (f, c), t in timings.items())
        + f"; training with {path_label(*best, config.amp)}")
    return {"fast_blocks": best[0], "channels_last": best[1]}


def _time_steps(config: RunConfig, num_classes: int, device: torch.device, fast: bool, channels_last: bool,
                x: torch.Tensor, y: torch.Tensor) -> float:
    """Median seconds of SPEED_TRIAL_STEPS training steps of a fresh model on one path."""
    from densenet_repro.models import fast_dense

    model = build_model(config, num_classes).to(device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if fast:
        fast_dense.convert(model)
    model.train()
    optimizer = build_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    times = []
    for _ in range(SPEED_TRIAL_STEPS + 1):
        t0 = time.perf_counter()
        train_step(model, optimizer, scaler, x, y, len(y), config.amp)
        times.append(time.perf_counter() - t0)
    timed = sorted(times[1:])
    return timed[len(timed) // 2]
