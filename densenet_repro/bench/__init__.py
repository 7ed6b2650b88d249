"""Speed and memory benchmark (`python -m densenet_repro bench`), and the fast path's accuracy check.

    python -m densenet_repro bench [--size default|tiny] [--out results/bench] [--rounds N] [--no-compile]
    python -m densenet_repro bench accuracy [--budget cpu|smoke] [--data-root data]

  configs.py   what is measured: the configurations, the cifar and imagenet sections, the sizes, the
               model each configuration builds (the naive baseline: models/naive_densenet.py)
  measure.py   timing the engine's training step and inference, peak memory, FLOPs, equivalence;
               the runner that writes results/bench/bench_<size>.json and reads it back
  accuracy.py  the fast path's accuracy check: short real training runs, fp32 against the fast path,
               committed under results/bench/accuracy-*/ and found there by config hash
  report.py    notebook 06: tables, the targets and their verdicts, headlines, figures, the GPU section
  cli.py       `main`, the command line of both

`--size tiny` runs everything on toy models in seconds (tests); its numbers mean nothing.

This package exports what its callers use (notebook 06, the tests, `python -m densenet_repro bench`);
everything else is imported from its module.
"""

from densenet_repro.bench.accuracy import (ACCURACY_CPU_SCALE, ACCURACY_SEEDS, accuracy_configs, accuracy_for_budget,
                                           committed_accuracy, compare_accuracy, run_accuracy)
from densenet_repro.bench.cli import main
from densenet_repro.bench.configs import (CIFAR_CONFIGS, IMAGENET_CONFIGS, SIZES, NaiveDenseNet, Section,
                                          engine_model, engine_run_config)
from densenet_repro.bench.measure import (DEFAULT_OUT, Runner, load_result, peak_step_memory, result_for_budget,
                                          summary_stats)
from densenet_repro.bench.report import (accuracy_dataset, accuracy_table, context_table, equivalence_table,
                                         files_read, gpu_section, headlines, plot, result_notes, table, targets)

__all__ = [
    "ACCURACY_CPU_SCALE", "ACCURACY_SEEDS", "CIFAR_CONFIGS", "DEFAULT_OUT", "IMAGENET_CONFIGS", "SIZES",
    "NaiveDenseNet", "Runner", "Section",
    "accuracy_configs", "accuracy_dataset", "accuracy_for_budget", "accuracy_table", "committed_accuracy",
    "compare_accuracy", "context_table", "engine_model", "engine_run_config", "equivalence_table", "files_read",
    "gpu_section", "headlines", "load_result", "main", "peak_step_memory", "plot", "result_for_budget",
    "result_notes", "run_accuracy", "summary_stats", "table", "targets",
]
