"""CPU kernels of the fast dense block (see fast_dense.py), compiled on first use.

A dense layer's BatchNorm-ReLU reads all earlier feature maps of its block, so its element-wise work
grows quadratically with the block's depth, and PyTorch's own kernels take slow paths on a
channel slice of a channels-last buffer (a strided view). Each function below is one pass over
memory (col_stats: two), per-channel arithmetic in fp32, sums over rows in fp32 within blocks of
256 rows and in double across blocks:

    affine_relu(x, z, s, t)                 z = max(0, x * s + t)            BN (given statistics) + ReLU
    relu_bwd(dz, x, d, s, t, mean, gamma, accumulate)
                                            dy = dz * [x * s + t > 0];  d = (d if accumulate else 0) + gamma * dy;
                                            returns (sum dy, sum dy * (x - mean))
    col_stats(y)                            per-channel mean and biased variance (two passes)
    lincomb(g, d, x, out, a, b, c)          out = g + a * d + b * x + c  (g may be None)

Every tensor is a 2-D (rows, channels) view of a channels-last (N, C, H, W) tensor: rows = N*H*W,
channels contiguous, consecutive rows `stride(0)` elements apart, so a channel slice of the block's
buffer needs no copy. Per-channel vectors are contiguous float32. Data dtypes: float32 and bfloat16
(rounded to nearest even, as torch does). With AVX-512 (F, BW, VL, BF16) the rows are processed 16
channels at a time with masked tails (a 12-channel feature map is one masked vector); without, gcc's
auto-vectorised scalar loops. Parallel over rows with ATen's thread pool (torch.set_num_threads).

The C++ is fast_dense_cpu.cpp, next to this file, built with torch.utils.cpp_extension.load (about
20 s once, then cached by torch in ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR under a name
that includes a hash of the source and flags, so an edited .cpp is rebuilt); `load()` raises a
one-line error when it cannot be built, at once when there is no C++ compiler (`$CXX`, else `c++`,
as torch looks it up).
Callers that can do without the kernels ask `fast_kernels_available()` (below) first, which falls
back to the plain blocks with a one-line warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import statistics
import warnings
from pathlib import Path

CPP_PATH = Path(__file__).with_name("fast_dense_cpu.cpp")
# -fopenmp: at::parallel_for is inline OpenMP code; without it, it runs serially
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def extension_name() -> str:
    """The extension's name (and so its build directory): a hash of the source and flags in it, so that
    an edited .cpp, or two checkouts with different sources, never share a stale build."""
    digest = hashlib.sha256(CPP_PATH.read_bytes())
    digest.update(repr((CFLAGS, LDFLAGS)).encode())
    return f"densenet_repro_fast_dense_cpu_{digest.hexdigest()[:12]}"


def compiler() -> str | None:
    """The C++ compiler torch.utils.cpp_extension would call ($CXX, else c++), if it exists here."""
    return shutil.which(os.environ.get("CXX", "c++"))


@functools.lru_cache(maxsize=None)
def load():
    """Compile (first call, ~20 s) or load (cached) the extension; returns the module."""
    import logging

    if compiler() is None:
        raise RuntimeError(f"could not build the fast dense block's CPU kernels: no C++ compiler "
                           f"({os.environ.get('CXX', 'c++')!r} not found); install one (g++) or pass fast=False")
    quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found": irrelevant here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load as load_extension

        return load_extension(extension_name(), sources=[str(CPP_PATH)], extra_cflags=CFLAGS,
                              extra_ldflags=LDFLAGS, verbose=False)
    except Exception as e:  # noqa: BLE001 - re-raised as one actionable line
        raise RuntimeError(f"could not build the fast dense block's CPU kernels ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}); install a C++ "
                           f"compiler (g++) and ninja, or pass fast=False / kernels='torch'") from e
    finally:
        quiet.setLevel(level)


def speed_cost() -> str:
    """How much slower the plain blocks train than the fast ones on CPU, from the committed benchmark
    (results/bench/bench_default.json: the fast path against the same precision and layout without
    the fast blocks); a phrase without a number where that file is absent."""
    path = Path(__file__).resolve().parents[2] / "results" / "bench" / "bench_default.json"
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
    try:
        load()
        return True
    except RuntimeError as e:
        reason = str(e).split(": ", 1)[-1].split(";")[0]
        warnings.warn(f"densenet_repro: fast dense blocks unavailable ({reason}); using the plain blocks (the same "
                      f"function), {speed_cost()}", RuntimeWarning, stacklevel=2)
        return False
