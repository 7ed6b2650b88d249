"""What the reports cover of the paper: one declared list of the paper's items, and their status.

`PAPER_ITEMS` lists every table and figure of Huang et al. (CVPR 2017), with Table 2 split into
its rows, and for each item the aspects a reproduction can cover (a Table 2 row: its parameter
count and each error column the paper fills). Nothing here says what *is* covered: notebooks
declare that themselves, with

    provenance.record(coverage=[coverage.entry("Table 1", "layer configuration", "exact", "...")])

and the report pipeline also counts every finished Table 2 training run a report read (its
summary.json names model, dataset and budget). `coverage_rows(index_rows)` merges what the
reports recorded; an item or aspect that no report covers is "planned".

Statuses, from strongest to weakest:
    exact      the paper's number, reproduced to the precision it is printed with
    computed   computed here from the code (not necessarily equal to the paper's number)
    scaled     trained here at a reduced budget (label: "scaled (<budget> budget)")
    in progress  a run of it is training (the entry names the run; the index says how far it is now)
    quoted     the paper's (or a library's) number, shown and labelled as quoted
    prepared   a script or config exists, but it has not been run ("prepared but not run")
    planned    nothing yet
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from densenet_repro import paper

STATUSES = ("exact", "computed", "scaled", "in progress", "quoted", "prepared", "planned")
_STATUS_TEXT = {"prepared": "prepared but not run"}


@dataclass(frozen=True)
class Item:
    name: str
    what: str
    aspects: tuple[str, ...]


# Dataset names of the training engine -> Table 2 column.
DATASET_COLUMN = {"c10": "C10", "c10+": "C10+", "c100": "C100", "c100+": "C100+", "svhn": "SVHN"}
# Table 2, in the paper's order (densenet_repro.paper): (method, depth, our model or "", the error
# columns the paper fills).
TABLE2_ROWS: tuple[tuple[str, int, str, tuple[str, ...]], ...] = tuple(
    (r.method, r.depth, r.model or "", tuple(DATASET_COLUMN[c] for c in paper.COLUMNS if r.error(c) is not None))
    for r in paper.TABLE2)
# Our model name -> the item name of its Table 2 row.
TABLE2_ITEM = {model: f"Table 2: {method}, L = {depth}" for method, depth, model, _ in TABLE2_ROWS if model}
PAPER_ITEMS: tuple[Item, ...] = (
    Item("Figure 1", "a 5-layer dense block: every layer takes all preceding feature maps",
         ("dense connectivity",)),
    Item("Figure 2", "a deep DenseNet with three dense blocks and transition layers",
         ("block and transition structure",)),
    Item("Table 1", "DenseNet-121/169/201/264 architectures for ImageNet", ("layer configuration",)),
    *(Item(f"Table 2: {method}, L = {depth}", "error (%) on CIFAR and SVHN", ("params",) + cols)
      for method, depth, _, cols in TABLE2_ROWS),
    Item("Table 3", "ImageNet validation error of DenseNet-121/169/201/264, single-crop and 10-crop",
         ("top-1 and top-5 error",)),
    Item("Figure 3", "ImageNet top-1 error of DenseNets and ResNets against parameters and FLOPs",
         ("params and FLOPs", "top-1 errors")),
    Item("Figure 4 (left)", "C10+ error against parameters: DenseNet, -B, -C, -BC", ("error vs parameters",)),
    Item("Figure 4 (middle)", "C10+ error against parameters: DenseNet-BC vs pre-activation ResNet",
         ("error vs parameters",)),
    Item("Figure 4 (right)", "C10+ training curves: DenseNet-BC-100 vs ResNet-1001", ("training and test curves",)),
    Item("Figure 5", "average absolute filter weights of a trained DenseNet (feature reuse)", ("weight heat maps",)),
)
_ITEMS = {it.name: it for it in PAPER_ITEMS}


def entry(item: str, aspect: str, status: str, note: str = "", budget: str | None = None,
          run: str | None = None) -> dict[str, Any]:
    """One coverage record: `item` (a PAPER_ITEMS name), one of its aspects, a status, a short note;
    an "in progress" record names its run folder (`run`, as provenance.progress_entry does).

    Raises ValueError for an unknown item, aspect or status (a typo must not read as 'planned').
    """
    if item not in _ITEMS:
        raise ValueError(f"unknown paper item {item!r}; known: {', '.join(_ITEMS)}")
    if aspect not in _ITEMS[item].aspects:
        raise ValueError(f"{item!r} has no aspect {aspect!r}; its aspects: {', '.join(_ITEMS[item].aspects)}")
    if status not in STATUSES:
        raise ValueError(f"unknown coverage status {status!r}; use one of {', '.join(STATUSES)}")
    if status == "scaled" and not budget:
        raise ValueError("a 'scaled' entry names its budget")
    if (status == "in progress") != bool(run):
        raise ValueError("an 'in progress' entry, and only one, names its run folder (run=...)")
    out = {"item": item, "aspect": aspect, "status": status, "note": str(note), "budget": budget}
    return out | ({"run": run} if run else {})


def check_entries(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate coverage records (as `entry` makes them); returns them as plain dicts."""
    return [entry(e["item"], e["aspect"], e["status"], e.get("note", ""), e.get("budget"), e.get("run"))
            for e in entries]


def status_name(status: str) -> str:
    """A status as a reader reads it ("prepared" -> "prepared but not run")."""
    return _STATUS_TEXT.get(status, status)


def status_text(e: Mapping[str, Any]) -> str:
    if e["status"] == "scaled":
        return f"scaled ({e['budget']} budget)"
    return status_name(e["status"])


def entries_from_runs(files: Iterable[str], root: Path | None = None) -> list[dict[str, Any]]:
    """Coverage of Table 2 from the finished training runs a report read (their summary.json).

    A run of experiment "table2" on model M and dataset D covers the (M's row, D's column) cell:
    "computed" at the paper budget, "scaled (<budget> budget)" otherwise.
    """
    out = []
    for f in files:
        p = Path(f)
        if p.name != "summary.json":
            continue
        p = p if p.is_absolute() or root is None else root / p
        try:
            s = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if s.get("experiment") != "table2" or not s.get("finished"):
            continue
        item, column = TABLE2_ITEM.get(s.get("model")), DATASET_COLUMN.get(s.get("dataset"))
        if item is None or column not in _ITEMS[item].aspects:
            continue
        budget = s.get("budget") or "?"
        scale = ", ".join(f"{k}={v}" for k, v in (s.get("model_kwargs") or {}).items())
        note = (f"{s.get('epochs')} epochs" + (f", {scale}" if scale else "")
                + f": {s.get('final_test_error_pct')}% final test error ({Path(f).parent.name})")
        if budget == "paper":
            out.append(entry(item, column, "computed", note))
        else:
            out.append(entry(item, column, "scaled", note, budget))
    return out


def coverage_rows(reports: Iterable[Mapping[str, Any]], root: Path | None = None) -> list[dict[str, Any]]:
    """One row per paper item: each aspect's best status over all reports, and where it comes from.

    `reports` are index rows (reports/index.json): their recorded "coverage" entries and the
    Table 2 runs among their result files count. A failed report counts for nothing.
    """
    best: dict[tuple[str, str], list[tuple[dict[str, Any], str]]] = {}
    for r in reports:
        if r.get("status") != "ok":
            continue
        found = list(r.get("coverage") or []) + entries_from_runs(r.get("files") or {}, root)
        for e in found:
            best.setdefault((e["item"], e["aspect"]), []).append((e, r["name"]))
    rows = []
    for it in PAPER_ITEMS:
        aspects = []
        for a in it.aspects:
            got = best.get((it.name, a), [])
            if not got:
                aspects.append({"aspect": a, "status": "planned", "text": "planned", "where": [], "notes": [],
                                "runs": []})
                continue
            rank = min(STATUSES.index(e["status"]) for e, _ in got)
            top = [(e, w) for e, w in got if STATUSES.index(e["status"]) == rank]
            texts = sorted({status_text(e) for e, _ in top})
            aspects.append({"aspect": a, "status": STATUSES[rank], "text": " / ".join(texts),
                            "where": sorted({w for _, w in top}), "notes": [e["note"] for e, _ in top if e["note"]],
                            "runs": sorted({e["run"] for e, _ in top if e.get("run")})})
        rows.append({"item": it.name, "what": it.what, "aspects": aspects,
                     "status": _summary(aspects)})
    return rows


def _summary(aspects: list[dict[str, Any]]) -> str:
    """'exact' when every aspect is exact; else the aspects grouped by status ('C10, C10+: scaled ...')."""
    texts = list(dict.fromkeys(a["text"] for a in aspects))
    if len(texts) == 1:
        return texts[0]
    return "; ".join(f"{', '.join(a['aspect'] for a in aspects if a['text'] == t)}: {t}" for t in texts)


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many (item, aspect) pairs have each status."""
    out = {s: 0 for s in STATUSES}
    for r in rows:
        for a in r["aspects"]:
            out[a["status"]] += 1
    return out
