"""A check that looks like a reader: every rendered report (and the index) has a title, a way back to
the index, no index column, no None/NaN in a table, and no verdict without its budget.

It runs on the committed reports/ and on a small report rendered here from hand-made outputs (the
same nbconvert path as the pipeline, without a kernel), once clean and once with each fault, so that
it can be seen to fail.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from densenet_repro import stats, tables, verdicts
from densenet_repro.reports import reader, to_html

ROOT = Path(__file__).resolve().parent.parent
REPORTS = sorted((ROOT / "reports").glob("*.html"))
SCOPE = verdicts.Scope("cpu", "2 epochs, 2 seeds")


def _report(*outputs) -> str:
    """A report rendered by the pipeline's converter from these display outputs (html strings)."""
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# 09 · A tiny report\n\nA claim **holds** when its interval is below zero.")]
    for html in outputs:
        cell = new_code_cell("")
        cell.outputs = [new_output("display_data", data={"text/html": html, "text/plain": ""})]
        nb.cells.append(cell)
    return to_html(nb)


def _clean_table() -> str:
    df = pd.DataFrame({"claim": ["a < b"], "error (%)": [float("nan")], "ok": [True], "verdict": [stats.FAILS]},
                      index=[3])
    return tables.show(df, scope=SCOPE, missing={"error (%)": "not measured"})._repr_html_()


def test_a_clean_report_passes():
    html = _report(_clean_table(), f"<p>The claim: {verdicts.text(stats.INCONCLUSIVE, SCOPE)}.</p>")
    assert reader.problems(html) == []
    assert "<title>09 · A tiny report</title>" in html and "href='index.html'" in html.replace('"', "'")


@pytest.mark.parametrize("output, problem", [
    (pd.DataFrame({"a": [1, 2]}).to_html(), "a raw pandas table"),
    (pd.DataFrame({"a": [1, 2]}).to_html(), "an index column"),
    ("<table><tbody><tr><td>None</td></tr></tbody></table>", "a table cell says 'None'"),
    ("<table><tbody><tr><td>NaN</td></tr></tbody></table>", "a table cell says 'NaN'"),
    (f"<p>the claim: {stats.FAILS}. Next sentence at the cpu budget.</p>", "a verdict without its budget"),
    (f"<table><tbody><tr><td>{stats.INCONCLUSIVE}</td></tr></tbody></table>", "a verdict without its budget"),
], ids=["raw table", "index column", "None", "NaN", "bare verdict in text", "bare verdict in a cell"])
def test_each_fault_is_found(output, problem):
    found = reader.problems(_report(_clean_table(), output))
    assert any(p.startswith(problem) for p in found), found


def test_a_page_without_title_or_way_back_is_found():
    assert reader.problems("<html><head><title>Notebook</title></head><body></body></html>") == [
        "no title that names the page (<title>Notebook</title>)", "no link back to the index (index.html)"]


@pytest.mark.skipif(not REPORTS, reason="no committed reports")
@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_committed_reports_read_well(path):
    assert reader.problems(path.read_text(encoding="utf-8"), report=path.name != "index.html") == [], \
        "re-render: python -m densenet_repro reports --budget cpu"
