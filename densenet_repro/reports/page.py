"""reports/index.html: what is reproduced, on its first screen.

From top to bottom: a summary (the paper's items by status, the claims by verdict, each run in
progress, the reports), the claims table (claim, verdict at its budget, the numbers behind it, its
caveats), the coverage table (every table, figure and Table 2 row of the paper), and the reports
table, whose input files and hashes sit in a collapsed section per report. Everything here is read
from the index rows (`index.py`) and, for a run in progress, from its metrics.csv now.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping

from densenet_repro import atomic, coverage, provenance, verdicts
from densenet_repro.reports.index import (INDEX_HTML, INDEX_JSON, repo_root, runs_in_progress, training_behind,
                                          training_text)

TITLE = "densenet-repro: what is reproduced"
_STATUS_COLOUR = {"exact": "#070", "computed": "#070", "scaled": "#a60", "in progress": "#a60", "quoted": "#555",
                  "prepared": "#a60", "planned": "#c00"}
_VERDICT_COLOUR = {verdicts.HOLDS: "#070", verdicts.FAILS: "#c00", verdicts.INCONCLUSIVE: "#a60"}
_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left} th{background:#eee}
.glance li{margin-bottom:0.3em} details summary{cursor:pointer;color:#336} small{color:#444}"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _report_link(name: str) -> str:
    return f"<a href='{_e(name)}.html'>{_e(name[:2])}</a>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _claims(rows: list[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(report, claim) of every good report: the claims judged on trained networks first, then those that
    need no training (the same at every budget)."""
    found = [(r["name"], c) for r in rows if r.get("status") == "ok" for c in r.get("claims") or []]
    return sorted(found, key=lambda rc: rc[1]["scope"].get("budget") is None)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def progress_line(p: Mapping[str, Any]) -> str:
    """One run in progress: its status (the same words as everywhere), error so far, time spent and left,
    and how far its schedule is from the paper's."""
    e, now = p["entry"], p["now"]
    parts = [f"<b>{_e(e['label'])}</b>: {_e(p['text'])}"]
    if now["test_err_pct"] is not None:
        parts.append(f"test error after epoch {now['epochs_done']}: {now['test_err_pct']:.2f}% (not a final error)")
    left = e["epochs"] - now["epochs_done"]
    time = f"{now['time_s'] / 3600:.1f} h of training and evaluation so far"
    if now["epoch_time_s"] and left > 0:
        time += (f", about {left * now['epoch_time_s'] / 3600:.1f} h to go at its median epoch time "
                 f"({now['epoch_time_s'] / 60:.1f} min, training and evaluation)")
    parts.append(time)
    if e.get("paper_epochs"):
        quoted = f" (the paper: {e['paper_error_pct']:.2f}% after {e['paper_epochs']}, quoted)" \
            if e.get("paper_error_pct") is not None else ""
        parts.append(f"{e['epochs']} epochs scheduled, {e['epochs'] / e['paper_epochs']:.0%} of the paper's "
                     f"{e['paper_epochs']}{quoted}")
    return "; ".join(parts)


def glance_html(rows: list[Mapping[str, Any]], cov: list[Mapping[str, Any]], progress: Mapping[str, Any]) -> str:
    n = coverage.counts(cov)
    status = ", ".join(f"{coverage.status_name(s)} <b>{k}</b>" for s, k in n.items())
    items = [f"<li><b>The paper</b>: {len(cov)} tables, figures and Table 2 rows, {sum(n.values())} (item, aspect) "
             f"pairs: {status}.</li>"]
    claims = [c for _, c in _claims(rows)]
    if claims:
        items.append(f"<li><b>Claims judged</b>: {len(claims)}; {_e(verdicts.tally_text(claims))} "
                     "(each row of the claims table names its budget).</li>")
    items += [f"<li><b>Run in progress</b>: {progress_line(p)}.</li>" for p in progress.values()]
    ok = sum(r["status"] == "ok" for r in rows)
    render = sum(r.get("wall_time_s") or 0.0 for r in rows)
    files = sorted({f for r in rows for f in r.get("files") or {}})
    furthest: dict[str, Mapping[str, Any]] = {}
    for e in (e for r in rows for e in r.get("in_progress") or []):
        if e["run"] not in furthest or e["epoch"] > furthest[e["run"]]["epoch"]:
            furthest[e["run"]] = e
    total = training_behind(files, list(furthest.values()))
    items.append(f"<li><b>Reports</b>: {len(rows)}, {ok} rendered ok, {len(rows) - ok} failed; rendering them took "
                 f"{provenance.fmt_seconds(render)}; the training behind them: {_e(training_text(total))}.</li>")
    return f"<ul class='glance'>{''.join(items)}</ul>"


def claims_html(rows: list[Mapping[str, Any]]) -> str:
    """Every claim the reports judged: the verdict with its budget, the numbers behind it, its caveats."""
    claims = _claims(rows)
    if not claims:
        return "<h2>Claims</h2><p>No report has judged a claim yet.</p>"
    trs = []
    for name, c in claims:
        scope = verdicts.scope_of(c)
        verdict = (f"<b style='color:{_VERDICT_COLOUR[c['verdict']]}'>{_e(verdicts.word(c['verdict']))}</b> "
                   f"at {_e(scope)}")
        caveats = "<br>".join(_e(x) for x in c.get("caveats") or [])
        trs.append(f"<tr><td>{_e(c['claim'])}</td><td>{verdict}</td><td>{_e(c['numbers'])}</td>"
                   f"<td>{caveats}</td><td>{_report_link(name)}</td></tr>")
    return ("<h2>Claims</h2><p>Each verdict is computed from a 95% interval in its report, and speaks for the "
            "budget its row names, not for the paper's protocol.</p>"
            "<table><tr><th>Claim</th><th>Verdict, at its budget</th><th>Numbers behind it</th><th>Caveats</th>"
            "<th>Report</th></tr>" + "\n".join(trs) + "</table>")


def coverage_html(cov: list[Mapping[str, Any]], progress: Mapping[str, Any] | None = None) -> str:
    """The coverage table: one row per paper item, each aspect's status and the report(s) behind it."""
    progress = progress or {}
    trs = []
    for c in cov:
        parts = []
        for a in c["aspects"]:
            where = ", ".join(_report_link(w) for w in a["where"])
            text = " / ".join(progress[run]["text"] for run in a.get("runs") or [] if run in progress) or a["text"]
            parts.append(f"{_e(a['aspect'])}: <b style='color:{_STATUS_COLOUR[a['status']]}'>{_e(text)}</b>"
                         + (f" ({where})" if where else ""))
        trs.append(f"<tr><td>{_e(c['item'])}</td><td>{_e(c['what'])}</td><td>{'<br>'.join(parts)}</td></tr>")
    return ("<h2>Coverage of the paper</h2><p>Computed from what each report recorded (and the Table 2 runs it "
            "read); <i>planned</i> means no report covers it yet.</p>"
            "<table><tr><th>Paper item</th><th>What</th><th>Status here (report)</th></tr>"
            + "\n".join(trs) + "</table>")


def _inputs(r: Mapping[str, Any]) -> str:
    """The report's inputs and their sha256, in a collapsed section."""
    lines = [f"<code>{_e(r['notebook'])}</code> {r['notebook_sha256'][:12]}"]
    lines += [f"<code>{_e(f)}</code> {(h or 'missing')[:12]}" for f, h in r["files"].items()]
    lines += [f"<code>{_e(e['run'])}</code> in progress, epoch {e['epoch']} of {e['epochs']} shown"
              for e in r.get("in_progress") or []]
    if r.get("code"):
        lines.append(f"{len(r['code'])} package source files (sha256 in index.json)")
    n = 1 + len(r["files"]) + len(r.get("in_progress") or [])
    return f"<details><summary>{n} input file{'s' if n != 1 else ''} (sha256)</summary>{'<br>'.join(lines)}</details>"


def reports_html(rows: list[Mapping[str, Any]], progress: Mapping[str, Any]) -> str:
    head = ["Report", "Status", "Budget", "Dataset", "Device", "Render time", "Training behind it", "Commit",
            "Headline numbers", "Inputs"]
    trs = []
    for r in rows:
        ok = r["status"] == "ok"
        status = _e(r["status"]) + (f"<br><small>{_e(r['error'])}</small>" if r.get("error") else "")
        link = f"<a href='{_e(r['html'])}'>{_e(r['name'])}</a>"
        if not ok:
            status += "<br><small>no good report yet: the link is the failure page</small>"
        for e in r.get("in_progress") or []:
            if e["run"] in progress:
                now = progress[e["run"]]["now"]
                status += (f"<br><small>{_e(e['label'])}: "
                           f"{_e(provenance.progress_text(now['epochs_done'], e['epochs'], e['epoch']))}</small>")
        fa = r.get("failed_attempt")
        if fa:
            link += (f"<br><small>last good report; latest attempt ({_e(fa['started'])}) failed: "
                     f"<a href='{_e(fa['html'])}'>failure page</a></small>")
            status += f"<br><span style='color:#c00'><small>latest render failed: {_e(fa['error'])}</small></span>"
        heads = ("<div style='min-width:22em'>" + "<br>".join(f"{_e(k)}: <b>{_e(_fmt(v))}</b>"
                                                           for k, v in r["headlines"].items()) + "</div>")
        commit = _e(str(r["commit"])[:12]) + (" (dirty)" if r.get("dirty") else "")
        training = training_text(training_behind(r.get("files") or {}, r.get("in_progress") or []))
        cells = [link, f"<span style='color:{'#070' if ok else '#c00'}'>{status}</span>", _e(r["budget"]),
                 _e(r["dataset"]), _e(r["device"]), provenance.fmt_seconds(r["wall_time_s"]), _e(training), commit,
                 heads, _inputs(r)]
        trs.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    budgets = sorted({r["budget"] for r in rows})
    meaning = "".join(f"<li><b>{_e(b)}</b>: {_e(provenance.BUDGET_MEANING.get(b, '?'))}</li>" for b in budgets)
    return (f"<h2>Reports</h2><ul>{meaning}</ul><p><i>Render time</i> is how long executing the notebook took; "
            "<i>training behind it</i> adds up the runs it read (their summaries, and the epochs shown of a run in "
            "progress).</p><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n"
            + "\n".join(trs) + "</table>")


def index_html(rows: list[Mapping[str, Any]], cov: list[Mapping[str, Any]] | None = None,
               progress: Mapping[str, Any] | None = None) -> str:
    """The whole page (cov and progress are computed from `rows` when not given)."""
    rows = list(rows)
    cov = coverage.coverage_rows(rows, repo_root()) if cov is None else cov
    progress = runs_in_progress(rows) if progress is None else progress
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{TITLE}</title>
<style>{_STYLE}</style>
</head><body>
<h1>{TITLE}</h1>
<p>A reproduction of Huang et al., <i>Densely Connected Convolutional Networks</i> (CVPR 2017). Each report was
executed by <code>python -m densenet_repro reports</code>; its numbers are computed in that run, loaded from the
committed result files it lists (with their sha256), or quoted from the paper and labelled so.</p>
{glance_html(rows, cov, progress)}
{claims_html(rows)}
{coverage_html(cov, progress)}
{reports_html(rows, progress)}
</body></html>
"""


def write_index(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write index.json (machine-readable) and index.html (the page people read), both or neither."""
    rows = sorted(rows, key=lambda r: r["name"])
    root = repo_root()
    cov = coverage.coverage_rows(rows, root)
    progress = runs_in_progress(rows, root)
    now = {run: {k: v for k, v in p["now"].items() if k != "exists"} for run, p in progress.items()}
    atomic.write_texts({
        Path(out_dir) / INDEX_JSON: json.dumps({"reports": rows, "coverage": cov, "runs_in_progress": now},
                                               indent=1) + "\n",
        Path(out_dir) / INDEX_HTML: index_html(rows, cov, progress),
    })
