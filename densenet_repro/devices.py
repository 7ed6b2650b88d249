"""The device a run trains on: which one (an indexed CUDA device under torchrun), and how it is named
in metrics, summaries and messages."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from densenet_repro.errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def parse_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' as a torch.device (auto: cuda if available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    return dev


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
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def hardware(dev: torch.device) -> dict[str, Any]:
    """What decides a run's speed on this machine: the device, and on CPU its vector ISA and bf16."""
    if dev.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(dev), "capability": ".".join(map(str, torch.cuda.get_device_capability(dev)))}
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "threads": torch.get_num_threads()}


def hardware_label(dev: torch.device) -> str:
    """What trained an epoch, in one cell: the GPU, or the CPU with its vector ISA, bf16 and threads."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    h = hardware(dev)
    return (f"{h['cpu']}, {h['cpu_capability']}{', bf16 native' if h['bf16_native'] else ''}, "
            f"{h['threads']} threads")


def cpu_model() -> str:
    """Marketing name of the CPU (from /proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine a report was made on: CPU model and cores, memory, torch threads, and the GPU when
    `device` is a CUDA device (the engine's per-run record is `hardware`)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": None if _memory_gib() is None else round(_memory_gib(), 1),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info
