"""One way to show a table in a report, used by every notebook.

    tables.show(df)                                        # the table as a reader sees it
    tables.show(df, decimals={"GMACs": 3}, missing={"GMACs (torchvision)": "torchvision publishes none"},
                notes=["errors quoted from the paper"])

What every table gets:
- no index column: a pandas index that only numbers the rows is dropped; a named one (or one of
  labels) becomes the first column;
- the paper's rounding: floats to 2 decimals (the paper prints its errors so), unless `decimals`
  names another precision for a column (an int, or a format spec such as ".1e"); integers with
  thousands separators (`decimals={"depth": "d"}` prints a column of depths as the paper does, 1001);
- a missing value (None, NaN, "None", "nan") as "—", with a footnote under the table saying why
  (`missing`: column -> reason); a column with no value at all is left out;
- booleans as ✓ / ✗;
- with `scope` (a verdicts.Scope), every verdict in a cell followed by its budget ("holds" ->
  "holds at the cpu budget"), and what that budget scales said once, under the table.

`show` returns a `Table`, which IPython displays as HTML (and as aligned text elsewhere); its
`frame` is the DataFrame it was given, for the code that reads the numbers.
"""

from __future__ import annotations

import html
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

MISSING = "—"
CHECK, CROSS = "✓", "✗"
DEFAULT_DECIMALS = 2
DEFAULT_MISSING_REASON = "no value for this row"
_MISSING_TEXTS = {"None", "nan", "NaN", "NaT", "<NA>"}  # what str() of a missing value prints
_SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"
CSS_CLASS = "densenet-repro-table"


def is_missing(value: Any) -> bool:
    """None, NaN (float, numpy, pandas) or a string that only says so ("None", "nan")."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in _MISSING_TEXTS
    if isinstance(value, (list, tuple, dict, set)):
        return False
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def format_value(value: Any, decimals: int | str | None = None) -> str:
    """One cell's text (call `is_missing` first: a missing value has no text of its own)."""
    if isinstance(value, (bool, np.bool_)):
        return CHECK if value else CROSS
    if isinstance(value, numbers.Integral):
        return format(int(value), decimals) if isinstance(decimals, str) else f"{int(value):,}"
    if isinstance(value, numbers.Real):
        spec = decimals if decimals is not None else DEFAULT_DECIMALS
        return format(float(value), spec) if isinstance(spec, str) else f"{float(value):,.{spec}f}"
    return str(value)


def precision_label(amp: str | None) -> str:
    """A run's precision as a reader names it: the engine's amp "none" is fp32."""
    return {None: "fp32", "none": "fp32"}.get(amp, f"{amp} autocast")


@dataclass
class Table:
    """A formatted table: header, cell texts, footnotes (what `show` returns)."""

    frame: Any
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    notes: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:{'right' if num else 'left'}'>{html.escape(c)}</th>"
                       for c, num in zip(self.columns, self.numeric))
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:{'right' if num else 'left'}'>{html.escape(cell)}</td>"
                             for cell, num in zip(row, self.numeric)) + "</tr>"
            for row in self.rows)
        notes = "".join(f"<br>{html.escape(n)}" for n in self.notes).removeprefix("<br>")
        return (f"<div class='{CSS_CLASS}'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                + (f"<p class='{CSS_CLASS}-notes'><small>{notes}</small></p>" if notes else "") + "</div>")

    def __repr__(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths))]
        lines += ["  ".join(cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(r, widths, self.numeric))
                  for r in self.rows]
        return "\n".join(lines + self.notes)

    def __len__(self) -> int:
        return len(self.rows)


def _without_row_numbers(df):
    """The frame with its index as a column when the index says something (a name, or labels)."""
    index = df.index
    if index.name is None and index.dtype.kind in "iu":
        return df.reset_index(drop=True)
    return df.reset_index().rename(columns={"index": ""})


def show(df, *, decimals: Mapping[str, int | str] | None = None, missing: Mapping[str, str] | None = None,
         notes: Iterable[str] = (), scope=None, keep_empty: Iterable[str] = ()) -> Table:
    """`df` as a report shows it (module doc). `keep_empty` names columns shown even with no value."""
    from densenet_repro import verdicts

    decimals, missing = dict(decimals or {}), dict(missing or {})
    budget = None if scope is None else verdicts.Scope(scope.budget)  # its detail goes under the table
    frame = _without_row_numbers(df)
    columns = [str(c) for c in frame.columns]
    values = [list(row) for row in frame.itertuples(index=False, name=None)]
    keep = [i for i, c in enumerate(columns)
            if c in keep_empty or not all(is_missing(r[i]) for r in values) or not values]
    reasons: list[str] = []
    rows = []
    for r in values:
        cells = []
        for i in keep:
            v = r[i]
            if is_missing(v):
                reason = missing.get(columns[i], DEFAULT_MISSING_REASON)
                if reason not in reasons:
                    reasons.append(reason)
                cells.append((MISSING, reason))
            else:
                text = format_value(v, decimals.get(columns[i]))
                cells.append((verdicts.with_scope(text, budget) if budget is not None else text, None))
        rows.append(cells)
    mark = {} if len(reasons) <= 1 else {r: _SUPERSCRIPTS[i % len(_SUPERSCRIPTS)] for i, r in enumerate(reasons)}
    texts = [[text + mark.get(reason, "") if reason else text for text, reason in row] for row in rows]
    numeric = [all(isinstance(r[i], numbers.Number) and not isinstance(r[i], (bool, np.bool_))
                   for r in values if not is_missing(r[i])) and any(not is_missing(r[i]) for r in values)
               for i in keep]
    footnotes = [f"{MISSING}{mark.get(r, '')} {r}" for r in reasons] + [str(n) for n in notes if n]
    if scope is not None and scope.detail:
        footnotes.append(f"Verdicts reached at {scope}.")
    return Table(df, [columns[i] for i in keep], texts, numeric, footnotes)
