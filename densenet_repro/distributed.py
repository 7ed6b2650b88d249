"""Training in several processes (torchrun): the process group, and BatchNorm over the global batch.

`batch_size` stays the global batch (64), split across processes. BatchNorm statistics are
synchronised across processes by default (`sync_bn`), so N processes compute what one process
computes on the whole batch of 64, as in the paper; without it each process normalises its own
64/N images, which changes the regularisation of small batches. On CUDA this uses
nn.SyncBatchNorm; on CPU (gloo), where nn.SyncBatchNorm does not run, `AllReduceBatchNorm2d`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Processes:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    initialised_here: bool = False  # this process made the group, so it destroys it at the end

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

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialised_here:
            dist.destroy_process_group()


def start(rank: int, world: int, device_type: str) -> Processes:
    """Join the process group of a torchrun launch (rank and world as the plan read them)."""
    if world <= 1:
        return Processes()
    here = not dist.is_initialized()
    if here:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Processes(rank, world, here)


def sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """BatchNorm over the global batch: nn.SyncBatchNorm on CUDA, AllReduceBatchNorm2d elsewhere."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if device_type == "cuda" else convert_bn(model)


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


def convert_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by AllReduceBatchNorm2d, keeping parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else "cpu")
            setattr(module, name, new)
        else:
            convert_bn(child)
    return module
