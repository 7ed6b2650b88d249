"""Measuring speed and memory (`python -m densenet_repro bench`, results/bench/bench_<size>.json).

Each section (configs.py) is measured in one process with every configuration built side by side
and timed *interleaved* (one step of each configuration in turn, the order rotated every round), so
a slow patch of a shared machine hits them all alike. The step timed is the training engine's own
(train.train_step).

For each configuration: training images/s (forward + backward + SGD step; one timed step per
round), inference images/s (eval mode, no_grad), their median and spread over the rounds, the
median of the per-round ratios to the baseline (same round: interleaved), the achieved FLOP rate
(the training step's FLOPs, counted by torch.utils.flop_counter, times images/s) as a fraction of
this machine's matmul peak measured in the same run (a big torch.mm, fp32 and bf16), the
torch.compile time (reported apart, never inside a throughput), and the peak memory of one
training step.

Peak memory is the allocator's own record: torch.profiler with profile_memory=True logs every
allocation and free of PyTorch's CPU allocator; the peak of the running sum over one training step
(gradients, activations, workspaces, optimizer update; model and optimizer state allocated before
the step are not counted) is reported. The fast blocks' scratch buffers are freed before that step,
so their allocation is counted. Memory outside PyTorch's allocator (oneDNN scratch pads, the
Python heap) is not included, for any configuration. The same profiled step gives the share of
time spent in convolutions, which bounds what any implementation keeping those convolutions can
gain (Amdahl): 1 / share.

Equivalence (recorded with the speed results): one fp32 training step of the fast model against
the plain model, of ours against the naive baseline, and of ours and timm's DenseNet-121 against
torchvision's, all from identical weights: largest relative difference of the outputs and of
the gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from densenet_repro.bench.configs import FAST_PATH, MEMORY_EFFICIENT_MODE, SIZES, Config, Section, Size, build_model

SCHEMA = 2
DEFAULT_OUT = "results/bench"


# ----------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------


class Runner:
    """A configuration ready to step: model (maybe compiled), optimizer, a fixed batch."""

    def __init__(self, section: Section, config: Config, state_dict, x: torch.Tensor, y: torch.Tensor):
        self.section, self.config = section, config
        self.model = build_model(section, config, state_dict)
        # The paper's optimizer: SGD, Nesterov momentum 0.9, weight decay 1e-4.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32 and bf16 need no loss scaling
        self.x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x.contiguous()
        self.y = y
        self.step_fn = torch.compile(self.model) if config.compile else self.model
        self.compile_s: float | None = None

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16)

    def train_step(self) -> None:
        # The training engine's own step: a speed-up measured here is one its users get.
        from densenet_repro.train import train_step

        train_step(self.step_fn, self.opt, self.scaler, self.x, self.y, len(self.y),
                   amp="bf16" if self.config.bf16 else "none")

    def infer(self) -> None:
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                self.model(self.x)
        finally:
            self.model.train()


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_peak(dtype: torch.dtype, n: int, tries: int = 8) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in `dtype` (2 n^3 FLOPs), torch's current threads."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(tries))
    return 2 * n ** 3 / best / 1e9


def train_flops_per_image(section: Section, batch: int = 2) -> dict[str, float]:
    """FLOPs of one training step (forward + backward) per image, torch.utils.flop_counter, and the
    forward multiply-adds per image from densenet_repro.architecture.macs (the same counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from densenet_repro import DenseNet
    from densenet_repro.architecture import macs

    num_classes = 10 if section.family == "cifar" else 1000
    torch.manual_seed(0)
    model = DenseNet(num_classes=num_classes, **section.net).train()
    x = torch.randn(batch, 3, section.image_size, section.image_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
    fwd_macs = macs(model.eval(), image_size=section.image_size)
    return {"train_flops_per_image": counter.get_total_flops() / batch, "forward_macs_per_image": float(fwd_macs)}


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop chatter) for the duration."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters): leave it alone
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profile_step(runner: Runner) -> dict[str, float | None]:
    """One profiled training step: the allocator's peak, and the share of time in convolutions.

    peak_bytes: peak of the running sum of PyTorch CPU allocator events (allocations > 0, frees
    < 0) during the step; None when this torch's profiler does not expose them.
    conv_share: self CPU time of the convolution ops (forward and backward) over the step's total
    self CPU time (profiled, so small ops are somewhat inflated); what no implementation that keeps
    these convolutions can remove.
    """
    from torch.profiler import ProfilerActivity, profile

    from densenet_repro.models import fast_dense

    fast_dense.clear_workspace()  # so that the fast blocks' scratch memory is counted
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.train_step()
    out: dict[str, float | None] = {"peak_bytes": None, "conv_share": None}
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:  # nbytes > 0: an allocation, < 0: a free
            live += e.nbytes()
            peak = max(peak, live)
        out["peak_bytes"] = float(peak)
    except (AttributeError, RuntimeError):
        pass
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    conv = sum(e.self_cpu_time_total for e in averages
               if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                            "aten::convolution", "aten::conv2d", "aten::mkldnn_convolution_backward"))
    out["conv_share"] = conv / total if total else None
    return out


def peak_step_memory(runner: Runner) -> int | None:
    """Peak bytes allocated by PyTorch's CPU allocator during one training step (see profile_step)."""
    peak = profile_step(runner)["peak_bytes"]
    return None if peak is None else int(peak)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def step_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and parameter gradients of one fp32 training-mode forward/backward."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _grad_diff(g_a: dict[str, torch.Tensor], g_b: dict[str, torch.Tensor]) -> float:
    """Largest gradient difference over all parameters / the largest gradient of b.

    Relative to the model's largest gradient: a per-tensor ratio would be dominated by rounding in
    tensors whose gradient nearly cancels (e.g. 1e-6 everywhere)."""
    if g_a.keys() != g_b.keys():
        raise RuntimeError("the two models have different parameters")
    scale = max(g.double().abs().max().item() for g in g_b.values())
    return max((g_a[n].double() - g_b[n].double()).abs().max().item() for n in g_a) / scale


def equivalence(section: Section, state_dict, x, y, pairs: list[tuple[Config, Config]]) -> dict[str, list]:
    """One training step from the same weights and batch, for the configurations in `pairs` (fp32):

    pairs: for each (a, b), max |out_a - out_b| / max |out_b| and the largest gradient difference
        over all parameters / the largest gradient (_grad_diff);
    vs_float64: the same two numbers for each configuration against a float64 run of our plain model
        (the same function as every implementation here), i.e. each one's own fp32 rounding error --
        the scale against which "equal within float tolerance" is judged.
    """
    configs = {c.name: c for pair in pairs for c in pair}
    steps = {name: step_outputs(build_model(section, c, state_dict), x, y) for name, c in configs.items()}
    rows = []
    for a, b in pairs:
        (out_a, g_a), (out_b, g_b) = steps[a.name], steps[b.name]
        rows.append({"a": a.name, "b": b.name, "a_label": a.label, "b_label": b.label,
                     "max_rel_diff_output": max_rel_diff(out_a, out_b), "max_rel_diff_grad": _grad_diff(g_a, g_b),
                     "num_params": len(g_a)})
    ref_out, ref_g = step_outputs(build_model(section, Config("ours"), state_dict).double(), x.double(), y)
    vs64 = [{"config": name, "label": c.label, "max_rel_diff_output": max_rel_diff(steps[name][0], ref_out),
             "max_rel_diff_grad": _grad_diff(steps[name][1], ref_g)} for name, c in configs.items()]
    return {"pairs": rows, "vs_float64": vs64}


def summary_stats(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    return {"median": statistics.median(vs), "min": vs[0], "max": vs[-1],
            "spread_pct": 100.0 * (vs[-1] - vs[0]) / statistics.median(vs) if statistics.median(vs) else 0.0}


# ----------------------------------------------------------------------------------------------
# One section
# ----------------------------------------------------------------------------------------------


def run_section(section: Section, size: Size, *, do_compile: bool, peaks: dict[str, float],
                log: Callable[[str], None]) -> dict[str, Any]:
    configs = [c for c in section.configs if do_compile or not c.compile]
    num_classes = 10 if section.family == "cifar" else 1000
    torch.manual_seed(0)
    from densenet_repro import DenseNet

    state_dict = DenseNet(num_classes=num_classes, **section.net).state_dict()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(section.batch, 3, section.image_size, section.image_size, generator=g)
    y = torch.randint(0, num_classes, (section.batch,), generator=g)

    flops = train_flops_per_image(section)
    log(f"[bench] {section.name}: {section.title}; {flops['train_flops_per_image'] / 1e9:.2f} GFLOP per image "
        f"per training step")

    runners: dict[str, Runner] = {}
    for c in configs:
        r = runners[c.name] = Runner(section, c, state_dict, x, y)
        first = _timed(r.train_step)  # includes compilation for compiled configurations
        for _ in range(size.warmup - 1):
            r.train_step()
        if c.compile:
            r.compile_s = max(0.0, first - _timed(r.train_step))
        log(f"[bench]   built {c.name:22s} first step {first:7.1f} s" +
            (f" (compile ~{r.compile_s:.0f} s)" if c.compile else ""))

    def rounds(kind: str, cfgs: list[Config]) -> dict[str, list[float]]:
        per: dict[str, list[float]] = {c.name: [] for c in cfgs}
        for rnd in range(size.rounds):
            order = cfgs[rnd % len(cfgs):] + cfgs[:rnd % len(cfgs)]  # rotate the order every round
            for c in order:
                r = runners[c.name]
                dt = _timed(r.train_step if kind == "train" else r.infer)
                per[c.name].append(section.batch / dt)
            log(f"[bench]   {kind} round {rnd + 1}/{size.rounds}: " +
                ", ".join(f"{c.name} {per[c.name][-1]:.1f}" for c in cfgs))
        return per

    train = rounds("train", configs)
    # Inference: a compiled configuration would compile again for eval/no_grad; not measured.
    infer_configs = [c for c in configs if not c.compile]
    for c in infer_configs:
        runners[c.name].infer()  # warm-up
    infer = rounds("infer", infer_configs)

    results = []
    base = section.baseline
    for c in configs:
        r = runners[c.name]
        prof = profile_step(r)
        mem = prof["peak_bytes"]
        t = train[c.name]
        ratios = [a / b for a, b in zip(t, train[base])]
        row: dict[str, Any] = {
            "config": c.name, "label": c.label, **dataclasses.asdict(c),
            "train_img_s": t, "train": summary_stats(t),
            "train_ratio_to_baseline": summary_stats(ratios),
            "infer_img_s": infer.get(c.name), "infer": summary_stats(infer[c.name]) if c.name in infer else None,
            "infer_ratio_to_baseline": (summary_stats([a / b for a, b in zip(infer[c.name], infer[base])])
                                        if c.name in infer else None),
            "compile_s": r.compile_s,
            "peak_step_memory_mb": None if mem is None else mem / 2**20,
            "conv_time_share": prof["conv_share"],
        }
        achieved = flops["train_flops_per_image"] * row["train"]["median"] / 1e9
        row["achieved_gflops"] = achieved
        row["fraction_of_matmul_peak"] = achieved / peaks[c.precision]
        results.append(row)
        log(f"[bench]   {c.name:22s} train {row['train']['median']:7.1f} img/s "
            f"(x{row['train_ratio_to_baseline']['median']:.2f}), peak memory "
            f"{row['peak_step_memory_mb'] or float('nan'):.0f} MB")
    base_mem = next(r["peak_step_memory_mb"] for r in results if r["config"] == base)
    for row in results:
        row["memory_ratio_to_baseline"] = (row["peak_step_memory_mb"] / base_mem
                                           if row["peak_step_memory_mb"] and base_mem else None)

    # Exactness of what is compared, from the same weights, fp32.
    by_name = {c.name: c for c in section.configs}
    if section.family == "cifar":
        pairs = [(by_name["ours"], by_name["naive"]), (by_name["fast"], by_name["ours"])]
    else:
        pairs = [(by_name["ours"], by_name["torchvision"]), (by_name["timm"], by_name["torchvision"]),
                 (by_name["fast"], by_name["torchvision"])]
    equiv = equivalence(section, state_dict, x, y, pairs)
    log("[bench]   equivalence (fp32 vs float64, grad): " +
        ", ".join(f"{e['config']} {e['max_rel_diff_grad']:.1e}" for e in equiv["vs_float64"]))
    return {"name": section.name, "title": section.title, "net": section.net, "image_size": section.image_size,
            "batch": section.batch, "baseline": base, **flops, "results": results, "equivalence": equiv}


# ----------------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    from densenet_repro import devices

    info = devices.machine("cpu")
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    info["isa"] = sorted({fl for fl in flags.split() if fl.startswith(("avx512", "amx", "avx_vnni", "avx2"))})
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def _inductor_cache_enabled() -> bool | None:
    """Whether torch.compile could reuse compiled graphs from earlier runs (then compile times are short)."""
    try:
        import torch._inductor.config as inductor_config

        return bool(inductor_config.fx_graph_cache)
    except (ImportError, AttributeError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(size: str = "default", *, do_compile: bool | None = None, rounds: int | None = None,
        threads: int | None = None, log: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
    """Run the speed benchmark and return its result (what `main` writes to JSON)."""
    from densenet_repro import provenance

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
    spec = SIZES[size]
    if rounds is not None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        spec = dataclasses.replace(spec, rounds=rounds)
    do_compile = spec.compile if do_compile is None else do_compile
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        load_before = load_average()
        peaks = {"fp32": matmul_peak(torch.float32, spec.matmul_n), "bf16": matmul_peak(torch.bfloat16, spec.matmul_n)}
        log(f"[bench] matmul peak ({spec.matmul_n}^3): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
            f"{torch.get_num_threads()} threads; load {load_before}")
        sections = [run_section(s, spec, do_compile=do_compile, peaks=peaks, log=log) for s in spec.sections]
        peaks_after = {"fp32": matmul_peak(torch.float32, spec.matmul_n), "bf16": matmul_peak(torch.bfloat16, spec.matmul_n)}
        commit, dirty = provenance.git_commit()
        return {
            "schema": SCHEMA,
            "size": size,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command or f"densenet_repro.bench.measure.run({size!r})",
            "commit": commit, "dirty": dirty,
            "versions": provenance.versions(),
            "machine": machine_info(),
            "threads": torch.get_num_threads(),
            "load_average_before": load_before, "load_average_after": load_average(),
            "matmul_peak_gflops": peaks, "matmul_peak_gflops_after": peaks_after, "matmul_n": spec.matmul_n,
            "rounds": spec.rounds, "warmup": spec.warmup, "compile_measured": do_compile,
            "inductor_fx_graph_cache": _inductor_cache_enabled(),
            "fast_path": FAST_PATH, "memory_efficient_mode": MEMORY_EFFICIENT_MODE,
            "sections": sections,
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
    finally:
        torch.set_num_threads(saved_threads)


def write_result(result: dict[str, Any], out_dir: str | os.PathLike = DEFAULT_OUT, name: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or 'bench_' + result['size']}.json"
    from densenet_repro import atomic

    atomic.write_text(path, json.dumps(result, indent=1) + "\n")
    return path


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no benchmark result there; make it with `python -m densenet_repro bench`")
    result = json.loads(p.read_text(encoding="utf-8"))
    if result.get("schema") != SCHEMA:
        raise ValueError(f"{p}: benchmark schema {result.get('schema')!r}, this code reads {SCHEMA}: rerun the benchmark")
    return result


def result_for_budget(budget: str, path: str | os.PathLike) -> dict[str, Any]:
    """The notebook's speed result: the committed file (cpu, paper), or a tiny run now (smoke)."""
    from densenet_repro.budgets import check_budget

    check_budget(budget)
    if budget == "smoke":
        return run("tiny", log=lambda s: None)
    return load_result(path)
