"""The three budgets every experiment is run at.

smoke: seconds, synthetic data; proves every code path runs (tests, CI). Numbers mean nothing.
cpu:   real CIFAR-10, scaled-down models and schedules; ~15 min per notebook on a 2-core CPU.
       The committed reports are made at this budget.
paper: the paper's full protocol (official datasets, full depth, 300 epochs); needs a GPU.
"""

BUDGETS = ("smoke", "cpu", "paper")
DEFAULT_BUDGET = "cpu"


def check_budget(budget: str) -> str:
    """Return `budget` if it is one of BUDGETS, else raise a one-line ValueError."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
    return budget

# Seeds per arm of each comparison of notebook 02 (two at least, so that the spread is visible).
COMPARISON_SEEDS = {"smoke": 2, "cpu": 2, "paper": 3}


def comparison_seeds(budget: str) -> tuple[int, ...]:
    return tuple(range(COMPARISON_SEEDS[check_budget(budget)]))


def run_fields(budget: str) -> dict:
    """The RunConfig fields every run of a budget shares, whatever experiment it belongs to.

    smoke: the synthetic set, small enough for seconds; cpu: all of CIFAR-10, in the precision the
    CPU runs fastest (bf16 where oneDNN has it natively, AVX512-BF16 or AMX; fp32 elsewhere, where
    bf16 is emulated and 100x slower); paper: the official data at the paper's fp32.
    """
    from densenet_repro.data import SYNTHETIC_SIZE
    from densenet_repro.fastpath import bf16_native

    smoke = check_budget(budget) == "smoke"
    return {"train_subset": SYNTHETIC_SIZE[0] if smoke else None, "test_subset": SYNTHETIC_SIZE[1] if smoke else None,
            "data_source": "synthetic" if smoke else "auto",
            "amp": "bf16" if budget == "cpu" and bf16_native() else "none", "budget": budget}
