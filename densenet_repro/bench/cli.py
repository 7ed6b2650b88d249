"""Speed and memory benchmark (`python -m densenet_repro bench`), and the fast path's accuracy check.

The command line of densenet_repro.bench: `speed` (the default) runs measure.run and writes its JSON,
`accuracy` runs accuracy.run_accuracy and prints report.accuracy_table.
"""

from __future__ import annotations

import argparse
import sys

from densenet_repro import atomic
from densenet_repro.bench.accuracy import run_accuracy
from densenet_repro.bench.configs import SIZES
from densenet_repro.bench.measure import DEFAULT_OUT, run, write_result
from densenet_repro.bench.report import accuracy_table
from densenet_repro.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, says what is valid
        self.exit(2, f"error: {message} (see `python -m densenet_repro bench --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m densenet_repro bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="speed", choices=("speed", "accuracy"),
                   help="speed (default): the throughput/memory benchmark; accuracy: fp32 vs fast path runs")
    p.add_argument("--size", default="default", choices=tuple(SIZES), help="speed: model sizes (tiny: toy, seconds)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"speed: folder of the result JSON (default {DEFAULT_OUT})")
    p.add_argument("--name", default=None, help="speed: file name without .json (default bench_<size>)")
    p.add_argument("--rounds", type=int, default=None, help="speed: timed rounds (default: the size's)")
    p.add_argument("--threads", type=int, default=None, help="speed: torch CPU threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="speed: skip the torch.compile configurations")
    p.add_argument("--budget", default="cpu", choices=("smoke", "cpu"), help="accuracy: run size (default cpu)")
    p.add_argument("--data-root", default=None, help="accuracy: dataset folder (default: the engine's)")
    p.add_argument("--device", default="cpu", help="accuracy: device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.what == "accuracy":
            acc = run_accuracy(args.budget, args.data_root, args.device)
            print(accuracy_table(acc).to_string(index=False))
            print(f"fast - fp32 mean final test error: {acc['difference_pct']:+.2f} points; seed spread "
                  f"fp32 {acc['spread_fp32_pct']:.2f}, fast {acc['spread_fast_pct']:.2f}; |difference| within "
                  f"spread: {acc['same_within_spread']}; not worse: {acc['not_worse_within_spread']}")
            return 0
        atomic.ensure_writable(args.out, "pass a writable --out DIR")  # before minutes of measuring
        result = run(args.size, do_compile=False if args.no_compile else None, rounds=args.rounds,
                     threads=args.threads, command=" ".join(["python -m densenet_repro bench", *(argv or [])]))
        path = write_result(result, args.out, args.name)
        print(f"[bench] wrote {path} ({result['wall_time_s']:.0f} s)")
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UserError as e:  # e.g. an output folder that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 1
