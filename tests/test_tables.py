"""The one table helper every notebook shows its tables with, and verdicts that carry their budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from densenet_repro import stats, tables, verdicts


def test_a_table_as_a_reader_sees_it():
    df = pd.DataFrame({"model": ["a", "b", "c"], "params": [1019722, 7, 8], "error (%)": [5.2412, np.nan, 6.0],
                       "sd": [0.123456, 0.5, None], "ok": [True, np.False_, True], "width": [None] * 3},
                      index=[0, 9, 6])
    t = tables.show(df, missing={"error (%)": "not trained"})
    assert t.columns == ["model", "params", "error (%)", "sd", "ok"]  # no index column, the empty one left out
    assert t.rows[0] == ["a", "1,019,722", "5.24", "0.12", "✓"]  # the paper's rounding, thousands, ✓
    assert t.rows[1][2] == "—¹" and t.rows[2][3] == "—²" and t.rows[1][4] == "✗"
    assert t.notes == ["—¹ not trained", "—² no value for this row"]
    html = t._repr_html_()
    assert "None" not in html and "NaN" not in html and "<th>width</th>" not in html
    assert tables.show(df, decimals={"error (%)": ".1e"}).rows[0][2] == "5.2e+00"
    assert tables.show(df, decimals={"params": "d"}).rows[0][1] == "1019722"


def test_a_named_index_becomes_a_column_and_one_reason_needs_no_number():
    df = pd.DataFrame({"x": [1.0, None]}, index=pd.Index(["conv0", "pool0"], name="stage"))
    t = tables.show(df, missing={"x": "not measured"})
    assert t.columns == ["stage", "x"] and t.rows == [["conv0", "1.00"], ["pool0", "—"]]
    assert t.notes == ["— not measured"]
    assert "stage" in repr(t) and "— not measured" in repr(t)


def test_verdicts_in_cells_carry_the_budget():
    scope = verdicts.Scope("cpu", "2 epochs, 2 seeds")
    t = tables.show(pd.DataFrame({"v": [stats.HOLDS, "+0.1 [0, 1]: " + stats.INCONCLUSIVE, stats.FAILS]}), scope=scope)
    assert [r[0] for r in t.rows] == ["holds at the cpu budget", "+0.1 [0, 1]: inconclusive at the cpu budget",
                                      "does not hold at the cpu budget"]
    assert t.notes == ["Verdicts reached at the cpu budget (2 epochs, 2 seeds)."]  # what it scales, said once
    assert verdicts.with_scope(t.rows[0][0], scope) == t.rows[0][0]  # a verdict gets its budget once
    assert verdicts.text(stats.HOLDS, verdicts.Scope(None, "no training")) == "holds at every budget (no training)"


def test_a_claim_record_is_validated_and_its_caveats_computed():
    scope = verdicts.Scope("cpu")
    with pytest.raises(ValueError, match="unknown verdict"):
        verdicts.claim("c", "sort of", scope, "1")
    with pytest.raises(ValueError, match="unknown budget"):
        verdicts.claim("c", stats.HOLDS, verdicts.Scope("huge"), "1")
    assert verdicts.edge_caveat(-0.012, -0.0001, 0.0).startswith("at the edge of its interval")
    assert verdicts.edge_caveat(-0.012, -0.006, 0.0) == ""
    records = [verdicts.claim(c, v, scope, "n") for c, v in (("a", stats.HOLDS), ("b", stats.FAILS),
                                                              ("c", stats.INCONCLUSIVE), ("d", stats.INCONCLUSIVE))]
    assert verdicts.tally_text(records) == "1 holds, 1 does not hold and 2 are inconclusive at the cpu budget"


def test_an_error_rate_interval_is_wilsons_and_judges_a_target():
    import math

    from scipy.optimize import brentq

    # Wilson's bounds are the p where |p_hat - p| = z sqrt(p (1 - p) / n); solve for them independently
    p_hat, n, z = 0.118, 10_000, 1.959963984540054
    gap = lambda p: abs(p_hat - p) - z * math.sqrt(p * (1 - p) / n)  # noqa: E731
    low, high = brentq(gap, 1e-9, p_hat), brentq(gap, p_hat, 1 - 1e-9)
    r = stats.error_rate(11.8, n)
    assert math.isclose(r.low, 100 * low, abs_tol=1e-9) and math.isclose(r.high, 100 * high, abs_tol=1e-9)
    assert r.verdict_at_most(9.0) == stats.FAILS and r.verdict_at_most(13.0) == stats.HOLDS
    assert r.verdict_at_most(12.0) == stats.INCONCLUSIVE
    assert math.isclose(stats.error_rate(0.0, 100).low, 0.0, abs_tol=1e-12)
    assert math.isclose(stats.error_rate(100.0, 100).high, 100.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="n >= 1"):
        stats.error_rate(5.0, 0)
