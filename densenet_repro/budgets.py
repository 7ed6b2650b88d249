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

