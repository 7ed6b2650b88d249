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

Use:

    from densenet_repro import fastpath
    knobs = fastpath.settings(device)           # {"amp": ..., "channels_last": ..., "compile": ..., "fast_blocks": ...}
    model = fastpath.apply(model, device, distributed=world > 1 and sync_bn)
"""

from __future__ import annotations

import torch
from torch import nn


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
