"""A verdict never travels without the budget it was reached at, nor without the caveats computed for it.

`stats` decides a verdict from an interval ("holds", "does not hold", "inconclusive at this
budget"); this module says it the way every report and the index print it:

    scope = verdicts.Scope("cpu", "2 epochs, 4k-43k parameters, 2 seeds")
    verdicts.text(stats.FAILS, scope)
        -> "does not hold at the cpu budget (2 epochs, 4k-43k parameters, 2 seeds)"
    verdicts.claim("DenseNet-BC is the most parameter-efficient variant", stats.FAILS, scope,
                   numbers="+1.79 points [+0.11, +3.46] at 27,003 parameters",
                   caveats=[verdicts.edge_caveat(0.11, 3.46, 0.0)])

A `claim` record goes to the index with `provenance.record(claims=[...])`: the index's claims
table is built from these records only, so the verdict, its budget, the numbers behind it and its
caveats are the same there as in the report. Verdicts reached without training (notebook 01's
architecture checks) have the scope `Scope(None, ...)`: "at every budget".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from densenet_repro.budgets import check_budget
from densenet_repro.stats import FAILS, HOLDS, INCONCLUSIVE

VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
# A verdict whose interval ends closer to the threshold than this fraction of the interval's width
# is "at the edge of its interval": a slightly different run could turn it.
EDGE_FRACTION = 0.1


@dataclass(frozen=True)
class Scope:
    """Where a verdict was reached: a budget (None: the same at every budget) and what it scales."""

    budget: str | None
    detail: str = ""

    def __str__(self) -> str:
        where = "every budget" if self.budget is None else f"the {self.budget} budget"
        return where + (f" ({self.detail})" if self.detail else "")

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "detail": self.detail}


def word(verdict: str) -> str:
    """The verdict without a budget of its own: 'inconclusive at this budget' -> 'inconclusive'."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; use one of {', '.join(map(repr, VERDICTS))}")
    return "inconclusive" if verdict == INCONCLUSIVE else verdict


def text(verdict: str, scope: Scope) -> str:
    """'does not hold at the cpu budget (2 epochs, ...)', 'holds at every budget (...)'."""
    return f"{word(verdict)} at {scope}"


# A verdict as the analyses write it, not yet followed by a budget.
_BARE = re.compile(r"\b(inconclusive at this budget|does not hold|holds)\b(?! at (the \w+ budget|every budget))")


def with_scope(text_: str, scope: Scope) -> str:
    """`text_` with every verdict in it followed by its budget ('...: holds' -> '...: holds at the cpu
    budget (...)'); verdicts that already name one are left as they are."""
    return _BARE.sub(lambda m: text(INCONCLUSIVE if m.group(1) == INCONCLUSIVE else m.group(1), scope), text_)


def edge_caveat(low: float, high: float, threshold: float) -> str:
    """'' unless the interval [low, high] ends within EDGE_FRACTION of its width from the threshold."""
    if any(math.isnan(v) for v in (low, high)) or high <= low:
        return ""
    nearest = low if abs(low - threshold) < abs(high - threshold) else high
    if abs(nearest - threshold) >= EDGE_FRACTION * (high - low):
        return ""
    return (f"at the edge of its interval: the bound {nearest:+.3g} lies {abs(nearest - threshold):.2g} from "
            f"{threshold:g}, under {EDGE_FRACTION:.0%} of the interval's width; a slightly different run could "
            "turn the verdict")


def claim(claim: str, verdict: str, scope: Scope, numbers: str, caveats: Iterable[str] = ()) -> dict[str, Any]:
    """One claim record for the index (module doc); raises ValueError on an unknown verdict or budget."""
    word(verdict)
    if scope.budget is not None:
        check_budget(scope.budget)
    if not claim or not numbers:
        raise ValueError("a claim record names its claim and the numbers behind its verdict")
    return {"claim": str(claim), "verdict": verdict, "scope": scope.as_dict(), "numbers": str(numbers),
            "caveats": [str(c) for c in caveats if c]}


def check_claims(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate claim records (as `claim` makes them); returns them as plain dicts."""
    return [claim(r["claim"], r["verdict"], scope_of(r), r["numbers"], r.get("caveats") or ()) for r in records]


def scope_of(record: Mapping[str, Any]) -> Scope:
    s = record["scope"]
    return Scope(s.get("budget"), s.get("detail", ""))


def record_text(record: Mapping[str, Any]) -> str:
    """A claim record as one sentence: 'claim: verdict at its budget (numbers; caveats)'."""
    extra = "; ".join([record["numbers"]] + list(record.get("caveats") or []))
    return f"{record['claim']}: {text(record['verdict'], scope_of(record))}: {extra}"


def tally(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims have each verdict (in VERDICTS order)."""
    records = list(records)
    return {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}


def tally_text(records: Iterable[Mapping[str, Any]]) -> str:
    """'at the cpu budget, 2 hold, 1 does not and 1 is inconclusive; at every budget, 7 hold'."""
    by_budget: dict[str | None, list[Mapping[str, Any]]] = {}
    for r in records:
        by_budget.setdefault(r["scope"].get("budget"), []).append(r)
    parts = []
    for budget, group in by_budget.items():
        n = tally(group)
        one = {HOLDS: "1 holds", FAILS: "1 does not hold", INCONCLUSIVE: "1 is inconclusive"}
        many = {HOLDS: "{} hold", FAILS: "{} do not hold", INCONCLUSIVE: "{} are inconclusive"}
        counts = [one[v] if k == 1 else many[v].format(k) for v, k in n.items() if k]
        listed = ", ".join(counts[:-1]) + (" and " if len(counts) > 1 else "") + counts[-1]
        parts.append(f"{listed} at {Scope(budget)}")
    return "; ".join(parts)
