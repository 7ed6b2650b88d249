"""One SGD step of the recipe, eager or compiled: what the engine trains with, the speed trial
tries and the benchmarks time."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def autocast(amp: str, device: torch.device):
    """The autocast context of a precision: none (fp32), bf16 or fp16."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
               y: torch.Tensor, global_n: int, amp: str = "none", world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of the recipe. Returns the per-sample losses and the logits, detached.

    The loss is the mean over the *global* batch: DDP averages gradients over processes, so each
    process scales its sum by world/global_n (exact even for an uneven last batch).
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


class CompiledForOneShape(nn.Module):
    """A module compiled for its one full batch size, run eagerly for any other size.

    Every epoch ends with a partial batch (50,000 = 781 x 64 + 16): compiling it too would cost a
    second compilation as long as the first, for one step in 782. The eager call uses the same
    parameters and buffers, so the function is the same. On CUDA the compiled call is replayed as
    a CUDA graph (mode "reduce-overhead"): at batch 64 a DenseNet step is ~1,500 small kernels,
    and their launches, not the arithmetic, set its time. Only the training step is compiled:
    evaluation (20 batches of 500 an epoch) runs eagerly, so there is one compilation and one
    cudagraph tree per process.
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
