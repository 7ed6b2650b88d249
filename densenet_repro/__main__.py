"""Command line: `python -m densenet_repro <command> [options]`.

    train    train one model on one dataset (densenet_repro.cli, the engine in densenet_repro.train)
    table2   notebook 02's Table 2 runs of a budget (densenet_repro.cli, the plan in densenet_repro.experiments)
    sweeps   the runs of notebooks 03-05 (Figure 4, section 4) at a budget (densenet_repro.cli, plans in densenet_repro.sweeps)
    bench    training/inference speed and memory benchmark (densenet_repro.bench)
    reports  execute the notebooks and render reports/ (densenet_repro.reports)
    gpu-check  what one short GPU slot measures: cuda tests, engine epochs, the headline run (densenet_repro.gpu_check)
    evaluate  the headline run's test error recomputed from its weights without the engine (densenet_repro.independent_eval)
    upgrade-runs  bring run records that older versions wrote up to date (densenet_repro.records)

Each command parses its own options; `python -m densenet_repro <command> --help` lists them.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("densenet_repro.cli", "train_main"),
    "table2": ("densenet_repro.cli", "table2_main"),
    "sweeps": ("densenet_repro.cli", "sweeps_main"),
    "bench": ("densenet_repro.bench", "main"),
    "reports": ("densenet_repro.reports", "main"),
    "gpu-check": ("densenet_repro.gpu_check", "main"),
    "upgrade-runs": ("densenet_repro.cli", "upgrade_runs_main"),
    "evaluate": ("densenet_repro.cli", "evaluate_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
