"""The device a run trains on: which one (an indexed CUDA device under torchrun), and how it is named
in metrics, summaries and messages."""

from __future__ import annotations

from typing import Any

import torch

from densenet_repro.config import parse_device
from densenet_repro.errors import ConfigError


def pick_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The training device. A CUDA device always gets an index: torch.cuda.set_device rejects a bare
    "cuda", and under torchrun each process takes the GPU of its LOCAL_RANK."""
    dev = parse_device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available here; use --device cpu")
    count = torch.cuda.device_count()
    index = local_rank if world > 1 else (dev.index if dev.index is not None else torch.cuda.current_device())
    if index >= count:
        raise ConfigError(f"device cuda:{index}: this machine has {count} GPU(s); use cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from densenet_repro.provenance import cpu_model

    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def hardware(dev: torch.device) -> dict[str, Any]:
    """What decides a run's speed on this machine: the device, and on CPU its vector ISA and bf16."""
    if dev.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(dev), "capability": ".".join(map(str, torch.cuda.get_device_capability(dev)))}
    from densenet_repro.provenance import cpu_model

    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads()}


def hardware_label(dev: torch.device) -> str:
    """What trained an epoch, in one cell: the GPU, or the CPU with its vector ISA, bf16 and threads."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    h = hardware(dev)
    return (f"{h['cpu']}, {h['cpu_capability']}{', bf16 native' if h['bf16_native'] else ''}, "
            f"{h['threads']} threads")
