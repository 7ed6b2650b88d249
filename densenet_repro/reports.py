"""Execute the notebooks headlessly and render the reports people read.

    python -m densenet_repro reports [--budget cpu] [--data-root DIR] [--device cpu]
                                     [--seed 0] [--only 01] [--out reports] [-p NAME=VALUE]

--data-root defaults to $DENSENET_DATA, else ./data (inside the repository).

For every notebooks/NN_*.ipynb, in order:
  1. check the parameters we inject (budget, data_root, device, seed and any -p NAME=VALUE)
     against the notebook's `parameters` cell (papermill.inspect_notebook); an unknown one fails
     loudly before anything runs;
  2. execute it with papermill on a kernel that is *this* python (sys.executable), so "kernel not
     found" cannot happen, with the repository root as working directory;
  3. patch the provenance block that `provenance.start` displayed with what only we know here
     (wall time, status), and write <out>/NN_name.ipynb;
  4. convert it with nbconvert to <out>/NN_name.html: code hidden, plots as embedded PNG with alt
     text, at most MAX_HTML_BYTES (a bigger report is an error);
  5. add a row to <out>/index.json and <out>/index.html: status, budget, dataset, device, wall time,
     commit, headline numbers, and the sha256 of the notebook, of every result file it read and of
     every package source file it imported. The index opens with the coverage table: one row per
     table, figure and Table 2 row of the paper, computed from what the reports recorded
     (densenet_repro.coverage).

A notebook that raises gets a failure page, NN_name.failed.html (papermill keeps the partly
executed notebook and marks the failing cell), written *beside* the last good NN_name.html, which
is kept; the index says which is which. The command renders the others and exits 1. Usage errors
exit 2.

`stale_reports(reports_dir)` recomputes the hashes and lists the reports that no longer match
their notebook, result files or package code (tests/test_reports.py fails on a stale committed report).

papermill and nbconvert are imported lazily: the rest of the package must import without them.

Why one module (~650 lines): rendering and the staleness check are two halves of one
contract: the index rows (index.json) that a render writes are what stale_reports and the
index page read, so the row format and both of its readers stay together.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from densenet_repro import coverage, provenance
from densenet_repro.budgets import BUDGETS, DEFAULT_BUDGET, check_budget

MAX_HTML_BYTES = 5 * 1024 * 1024
NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_\-]+\.ipynb$")
INDEX_JSON = "index.json"
INDEX_HTML = "index.html"
REQUIRED_PARAMETERS = ("budget", "data_root", "device", "seed")
PROVENANCE_CELL_TAG = "provenance-injected"


class ReportError(ValueError):
    """A usage error: reported as one line, exit code 2."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _root() -> Path:
    """Repository root (where notebooks/ and reports/ live); the cwd when not run from a checkout."""
    return provenance.repo_root() or Path.cwd()


def _rel(path: Path, root: Path | None = None) -> str:
    """`path` relative to the repo root when inside it (posix), else absolute."""
    root = root or _root()
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _abs(path: str, root: Path | None = None) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (root or _root()) / p


def find_notebooks(notebooks_dir: Path, only: Iterable[str] = ()) -> list[Path]:
    """notebooks_dir/NN_*.ipynb in order; `only` selects by number ("01") or by name ("01_architecture")."""
    if not notebooks_dir.is_dir():
        raise ReportError(f"notebook folder {str(notebooks_dir)!r} does not exist: pass --notebooks DIR")
    found = sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_RE.match(p.name))
    only = [o.removesuffix(".ipynb") for o in only]
    if only:
        chosen = [p for p in found if p.stem[:2] in only or p.stem in only]
        unknown = [o for o in only if not any(p.stem[:2] == o or p.stem == o for p in found)]
        if unknown:
            valid = ", ".join(p.stem for p in found) or "none"
            raise ReportError(f"--only {', '.join(unknown)}: no such notebook in {notebooks_dir} (valid: {valid})")
        found = chosen
    if not found:
        raise ReportError(f"no notebooks named NN_name.ipynb in {notebooks_dir}")
    return found


# --------------------------------------------------------------------------------------------
# Kernel: always this python
# --------------------------------------------------------------------------------------------


# timm imports huggingface_hub, which imports tqdm.auto; inside a kernel without ipywidgets that
# prints "TqdmWarning: IProgress not found" into the first cell that imports the package.
_KERNEL_EXEC_LINES = ["import warnings; warnings.filterwarnings('ignore', message='IProgress not found')"]


def _kernel_manager_class():
    """A jupyter KernelManager whose kernel is sys.executable, whatever kernelspecs are installed.

    The notebooks declare kernelspec "python3"; looking that name up can find another
    environment's python (or nothing: "No such kernel named python3"). We bypass the lookup.
    """
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    root = str(_root())
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)

    class ThisPythonKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self):  # noqa: D401 - property of the parent class
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                      "--IPKernelApp.log_level=ERROR", f"--IPKernelApp.exec_lines={_KERNEL_EXEC_LINES!r}"],
                display_name=f"Python {sys.version.split()[0]} ({sys.executable})",
                language="python",
                # the package is importable in the kernel even when it is not pip-installed
                env={"PYTHONPATH": pythonpath},
            )

    return ThisPythonKernelManager


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and defaults of the notebook's `parameters` cell, as papermill sees them."""
    import papermill

    return papermill.inspect_notebook(str(path))


def check_parameters(path: Path, parameters: Mapping[str, Any]) -> None:
    """Raise ReportError when we would inject a parameter the notebook does not declare."""
    declared = notebook_parameters(path)
    if not declared:
        raise ReportError(f"{path.name}: no cell tagged 'parameters'; every notebook needs one "
                          f"declaring {', '.join(REQUIRED_PARAMETERS)}")
    unknown = [k for k in parameters if k not in declared]
    if unknown:
        raise ReportError(f"{path.name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          f"its parameters cell declares: {', '.join(declared)}")


def parse_parameter(text: str) -> tuple[str, Any]:
    """'NAME=VALUE' -> (NAME, value); VALUE is a python literal when it parses as one, else a string."""
    if "=" not in text:
        raise ReportError(f"-p {text!r}: expected NAME=VALUE")
    name, value = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise ReportError(f"-p {text!r}: {name!r} is not a valid parameter name")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


# --------------------------------------------------------------------------------------------
# Reading the executed notebook
# --------------------------------------------------------------------------------------------


def _outputs(nb) -> Iterable[tuple[int, dict]]:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            yield i, out


def extract(nb) -> dict[str, Any]:
    """Provenance (from provenance.start), merged records (from provenance.record) and the error."""
    prov = None
    rec = {"headlines": {}, "dataset": None, "files": [], "coverage": [], "code": None}
    error = None
    for i, out in _outputs(nb):
        data = out.get("data", {})
        if provenance.PROVENANCE_MIME in data and prov is None:
            prov = dict(data[provenance.PROVENANCE_MIME])
        if provenance.RECORD_MIME in data:
            r = data[provenance.RECORD_MIME]
            heads = r.get("headlines") or {}
            # the order the notebook gave (the executed notebook's JSON has its keys sorted)
            order = [k for k in r.get("order") or [] if k in heads]
            for k in order + [k for k in sorted(heads) if k not in order]:
                rec["headlines"][k] = heads[k]
            rec["coverage"] += [e for e in r.get("coverage") or [] if e not in rec["coverage"]]
            if r.get("code") is not None:
                rec["code"] = dict(rec["code"] or {}, **r["code"])
            if r.get("dataset"):
                rec["dataset"] = r["dataset"]
            rec["files"] += [f for f in r.get("files", []) if f not in rec["files"]]
        if out.get("output_type") == "error" and error is None:
            cell = nb.cells[i]
            error = {"cell_index": i, "execution_count": cell.get("execution_count"),
                     "ename": out.get("ename"), "evalue": out.get("evalue")}
    return {"provenance": prov, "record": rec, "error": error}


def _patch_provenance(nb, info: dict[str, Any]) -> None:
    """Replace the provenance output by the completed block; insert one if the notebook had none."""
    bundle = {"text/html": provenance.provenance_html(info), "text/plain": provenance.provenance_text(info),
              provenance.PROVENANCE_MIME: info}
    for _, out in _outputs(nb):
        if provenance.PROVENANCE_MIME in out.get("data", {}):
            out["data"] = bundle
            return
    # The notebook failed before (or never called) provenance.start: the report still opens with
    # the block, in an output-only cell after the first (title) cell.
    import nbformat

    cell = nbformat.v4.new_code_cell(source="# provenance added by densenet_repro.reports")
    cell.metadata["tags"] = [PROVENANCE_CELL_TAG]
    cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)]
    first_title = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                        and "papermill-error-cell-tag" not in c.metadata.get("tags", [])), -1)
    nb.cells.insert(first_title + 1, cell)


_NBCONVERT_DEFAULT_ALT = "No description has been provided for this image"


def image_descriptions(nb) -> list[str]:
    """An alt text for every image output, in order: the output's own `alt` metadata if it has one,
    else the heading of the section it is in and the first sentence under that heading."""
    out = []
    heading, sentence = "", ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [ln.strip() for ln in cell.source.splitlines() if ln.strip()]
            starts = [i for i, ln in enumerate(lines) if ln.startswith("#")]
            if starts:
                heading = lines[starts[-1]].lstrip("#").strip()
                lines = lines[starts[-1] + 1:]
            body = " ".join(lines)
            sentence = re.split(r"(?<=\.)\s", body, maxsplit=1)[0] if body else ""
            continue
        for o in cell.get("outputs", []):
            if "image/png" in o.get("data", {}):
                alt = (o.get("metadata", {}).get("image/png", {}) or {}).get("alt")
                if not alt:
                    alt = "Figure" + (f" in section '{heading}'" if heading else "") + \
                        (f". {sentence}" if sentence else "")
                    alt = re.sub(r"[*`]", "", alt)
                out.append(alt if len(alt) <= 300 else alt[:297] + "...")
    return out


def to_html(nb) -> str:
    """nbconvert HTML with code hidden (inputs and prompts excluded); images stay embedded PNG, each
    with an alt text (image_descriptions)."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    alts = image_descriptions(nb)
    soup = BeautifulSoup(body, features="html.parser")
    images = [img for img in soup.select("img") if str(img.get("src", "")).startswith("data:image/png")]
    if len(images) != len(alts):  # cannot pair them up: leave nbconvert's output as it is
        return body
    for img, alt in zip(images, alts):
        if img.get("alt") in (None, "", _NBCONVERT_DEFAULT_ALT):
            img["alt"] = alt
    return str(soup)


# --------------------------------------------------------------------------------------------
# Rendering one notebook
# --------------------------------------------------------------------------------------------


def failed_name(stem: str, suffix: str) -> str:
    """File name of a failure page: NN_name.failed.html (beside the last good NN_name.html)."""
    return f"{stem}.failed{suffix}"


def render_notebook(path: Path, out_dir: Path, parameters: Mapping[str, Any], *,
                    log=print) -> dict[str, Any]:
    """Execute one notebook and return its index row.

    Success: writes <out>/NAME.ipynb and NAME.html (replacing the previous ones) and removes an old
    failure page. Failure: writes <out>/NAME.failed.ipynb and NAME.failed.html and leaves the last
    good NAME.html untouched (`merge_row` then keeps the good report in the index and notes the
    failed attempt beside it).
    """
    import nbformat
    import papermill

    root = _root()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_nb = out_dir / f"{path.stem}.rendering.ipynb"
    notebook_sha = provenance.sha256_file(path)
    work_nb.unlink(missing_ok=True)  # never report a previous run's output as this one's
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log(f"[reports] {path.name}: running (budget={parameters['budget']})")
    t0 = time.perf_counter()
    status, exec_error = "ok", None
    try:
        papermill.execute_notebook(
            str(path), str(work_nb), parameters=dict(parameters), kernel_name="python3", language="python",
            cwd=str(root), progress_bar=False, log_output=False, request_save_on_cell_execute=False,
            kernel_manager_class=_kernel_manager_class(),
        )
    except papermill.PapermillExecutionError as e:
        status, exec_error = "failed", f"{e.ename}: {e.evalue}"
    except Exception as e:  # noqa: BLE001 - kernel died, timeout...: still write what we have
        status, exec_error = "failed", f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0

    if work_nb.is_file():
        nb = nbformat.read(str(work_nb), as_version=4)
    else:  # papermill failed before writing anything: report the unexecuted notebook
        nb = nbformat.read(str(path), as_version=4)
    work_nb.unlink(missing_ok=True)
    found = extract(nb)
    if found["error"] is not None:
        status = "failed"
        err = found["error"]
        exec_error = f"cell In [{err['execution_count']}]: {err['ename']}: {err['evalue']}"
    rec = found["record"]
    commit, dirty = provenance.git_commit(root)
    info = found["provenance"] or {
        # provenance.start never ran: what the pipeline itself knows
        "budget": parameters["budget"], "data_root": parameters["data_root"], "device": parameters["device"],
        "seed": parameters["seed"], "dataset": "unknown (provenance.start did not run)",
        "hardware": provenance.hardware("cpu"), "versions": provenance.versions(),
        "commit": commit, "dirty": dirty, "started": started,
    }
    if rec["dataset"]:
        info["dataset"] = rec["dataset"]
    info.update(status=status, wall_time_s=round(wall, 1))
    if exec_error:
        info["error"] = exec_error
    _patch_provenance(nb, info)
    body = to_html(nb)
    size = len(body.encode("utf-8"))
    if size > MAX_HTML_BYTES:
        status = "failed"
        exec_error = (f"{path.stem}.html would be {size / 2**20:.1f} MB, over the {MAX_HTML_BYTES / 2**20:.0f} MB "
                      "limit: make the figures smaller (fewer points, lower dpi)")
    if status == "ok":
        out_nb, out_html = out_dir / path.name, out_dir / (path.stem + ".html")
        for old in (failed_name(path.stem, ".ipynb"), failed_name(path.stem, ".html")):
            (out_dir / old).unlink(missing_ok=True)
    else:
        out_nb = out_dir / failed_name(path.stem, ".ipynb")
        out_html = out_dir / failed_name(path.stem, ".html")
    nbformat.write(nb, str(out_nb))
    out_html.write_text(body, encoding="utf-8")

    files = {}
    for f in rec["files"]:
        p = _abs(f, root)
        files[f] = provenance.sha256_file(p) if p.is_file() else None
    row = {
        "name": path.stem,
        "notebook": _rel(path, root),
        "notebook_sha256": notebook_sha,
        "status": status,
        "error": exec_error,
        "budget": parameters["budget"],
        "parameters": dict(parameters),
        "dataset": info.get("dataset"),
        "device": parameters["device"],
        "hardware": info.get("hardware"),
        "versions": info.get("versions"),
        "wall_time_s": round(wall, 1),
        "started": info.get("started", started),
        "commit": info.get("commit", commit),
        "dirty": info.get("dirty", dirty),
        "headlines": rec["headlines"],
        "coverage": rec["coverage"],
        "files": files,
        "code": rec["code"],
        "html": out_html.name,
        "html_bytes": size,
        "ipynb": out_nb.name,
    }
    log(f"[reports] {path.name}: {status} in {wall:.1f} s -> {_rel(out_html, root)}"
        + (f" ({exec_error})" if exec_error else ""))
    return row


def merge_row(previous: Mapping[str, Any] | None, new: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The index row after a render: the new row if it succeeded (or nothing good existed before);
    after a failure, the last good row, kept with its report, plus a `failed_attempt` pointing at
    the failure page."""
    if new["status"] == "ok" or previous is None:
        return new
    good = previous.get("status") == "ok" and (out_dir / previous.get("html", "")).is_file()
    if not good:
        return new
    kept = dict(previous)
    kept["failed_attempt"] = {k: new[k] for k in ("error", "started", "commit", "dirty", "budget", "parameters",
                                                  "wall_time_s", "html", "ipynb")}
    return kept


# --------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------


def read_index(out_dir: Path) -> list[dict[str, Any]]:
    p = out_dir / INDEX_JSON
    if not p.is_file():
        return []
    return json.loads(p.read_text(encoding="utf-8"))["reports"]


def write_index(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write index.json (machine-readable) and index.html (coverage of the paper, one row per report)."""
    rows = sorted(rows, key=lambda r: r["name"])
    cov = coverage.coverage_rows(rows, _root())
    (out_dir / INDEX_JSON).write_text(json.dumps({"reports": rows, "coverage": cov}, indent=1) + "\n",
                                      encoding="utf-8")
    (out_dir / INDEX_HTML).write_text(index_html(rows, cov), encoding="utf-8")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


_STATUS_COLOUR = {"exact": "#070", "computed": "#070", "scaled": "#a60", "quoted": "#555", "prepared": "#a60",
                  "planned": "#c00"}


def coverage_html(cov: list[dict[str, Any]]) -> str:
    """The coverage table: one row per paper item, each aspect's status and the report(s) behind it."""
    trs = []
    for c in cov:
        parts = []
        for a in c["aspects"]:
            where = ", ".join(f"<a href='{html.escape(w)}.html'>{html.escape(w[:2])}</a>" for w in a["where"])
            parts.append(f"{html.escape(a['aspect'])}: <b style='color:{_STATUS_COLOUR[a['status']]}'>"
                         f"{html.escape(a['text'])}</b>" + (f" ({where})" if where else ""))
        trs.append(f"<tr><td>{html.escape(c['item'])}</td><td>{html.escape(c['what'])}</td>"
                   f"<td>{'<br>'.join(parts)}</td></tr>")
    n = coverage.counts(cov)
    total = sum(n.values())
    summary = ", ".join(f"{coverage._STATUS_TEXT.get(s, s)} {k}" for s, k in n.items() if k)
    return (f"<h2>Coverage of the paper</h2><p>{total} (item, aspect) pairs over {len(cov)} tables, figures and "
            f"Table 2 rows: {summary}. Computed from what each report recorded (and the Table 2 runs it read); "
            "<i>planned</i> means no report covers it yet.</p>"
            "<table><tr><th>Paper item</th><th>What</th><th>Status here (report)</th></tr>"
            + "\n".join(trs) + "</table>")


def index_html(rows: list[dict[str, Any]], cov: list[dict[str, Any]] | None = None) -> str:
    cov = coverage.coverage_rows(rows, _root()) if cov is None else cov
    head = ["Report", "Status", "Budget", "Dataset", "Device", "Wall time", "Commit", "Headline numbers",
            "Notebook / result files (sha256)"]
    trs = []
    for r in rows:
        colour = "#070" if r["status"] == "ok" else "#c00"
        status = html.escape(r["status"]) + (f"<br><small>{html.escape(r['error'])}</small>" if r.get("error") else "")
        link = f"<a href='{html.escape(r['html'])}'>{html.escape(r['name'])}</a>"
        if r["status"] != "ok":
            status += "<br><small>no good report yet: the link is the failure page</small>"
        fa = r.get("failed_attempt")
        if fa:
            link += (f"<br><small>last good report; latest attempt ({html.escape(str(fa['started']))}) failed: "
                     f"<a href='{html.escape(fa['html'])}'>failure page</a></small>")
            status += (f"<br><span style='color:#c00'><small>latest render failed: "
                       f"{html.escape(str(fa['error']))}</small></span>")
        heads = "<br>".join(f"{html.escape(k)}: <b>{html.escape(_fmt(v))}</b>" for k, v in r["headlines"].items())
        hashes = [f"<code>{html.escape(r['notebook'])}</code> {r['notebook_sha256'][:12]}"]
        hashes += [f"<code>{html.escape(f)}</code> {(h or 'missing')[:12]}" for f, h in r["files"].items()]
        if r.get("code"):
            hashes.append(f"{len(r['code'])} package source files (sha256 in index.json)")
        commit = html.escape(str(r["commit"])[:12]) + (" (dirty)" if r.get("dirty") else "")
        cells = [link, f"<span style='color:{colour}'>{status}</span>", html.escape(r["budget"]),
                 html.escape(str(r["dataset"])), html.escape(r["device"]),
                 provenance._fmt_seconds(r["wall_time_s"]), commit, heads, "<br>".join(hashes)]
        trs.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    budgets = sorted({r["budget"] for r in rows})
    meaning = "".join(f"<li><b>{b}</b>: {html.escape(provenance.BUDGET_MEANING.get(b, '?'))}</li>" for b in budgets)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>densenet-repro reports</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}} th{{background:#eee}}</style>
</head><body>
<h1>densenet-repro reports</h1>
<p>Reproduction of Huang et al., <i>Densely Connected Convolutional Networks</i> (CVPR 2017).
Each report was executed by <code>python -m densenet_repro reports</code>; numbers are computed in
that run, loaded from the committed result files listed (with their sha256), or quoted and labelled as quoted.</p>
{coverage_html(cov)}
<h2>Reports</h2>
<ul>{meaning}</ul>
<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>
{chr(10).join(trs)}
</table></body></html>
"""


def stale_reports(reports_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> list[str]:
    """Reports in reports_dir/index.json that no longer match their inputs, one line each.

    A report is stale when its notebook, one of the result files it read or one of the package
    source files it imported changed (sha256) or disappeared, when it recorded no code hashes, or
    when it (or its latest render) failed. With `notebooks_dir`, a notebook there without a report
    counts too.
    """
    reports_dir = Path(reports_dir)
    root = _root()
    problems = []
    rows = read_index(reports_dir)
    for r in rows:
        nb = _abs(r["notebook"], root)
        if not nb.is_file():
            problems.append(f"{r['name']}: notebook {r['notebook']} no longer exists")
        elif provenance.sha256_file(nb) != r["notebook_sha256"]:
            problems.append(f"{r['name']}: notebook {r['notebook']} changed since the report was rendered")
        for f, h in r["files"].items():
            p = _abs(f, root)
            if not p.is_file():
                problems.append(f"{r['name']}: result file {f} no longer exists")
            elif provenance.sha256_file(p) != h:
                problems.append(f"{r['name']}: result file {f} changed since the report was rendered")
        if r.get("code") is None and r["status"] == "ok":
            problems.append(f"{r['name']}: no package code hashes recorded (rendered before they were): re-render")
        for f, h in (r.get("code") or {}).items():
            p = _abs(f, root)
            if not p.is_file():
                problems.append(f"{r['name']}: package file {f} no longer exists")
            elif provenance.sha256_file(p) != h:
                problems.append(f"{r['name']}: package file {f} changed since the report was rendered")
        if r["status"] != "ok":
            problems.append(f"{r['name']}: status {r['status']} ({r.get('error')})")
        if r.get("failed_attempt"):
            problems.append(f"{r['name']}: latest render failed ({r['failed_attempt'].get('error')}); "
                            f"the report shown is the last good one")
        if not (reports_dir / r["html"]).is_file():
            problems.append(f"{r['name']}: {r['html']} is missing")
    if notebooks_dir is not None:
        have = {r["name"] for r in rows}
        for p in sorted(Path(notebooks_dir).glob("*.ipynb")):
            if NOTEBOOK_RE.match(p.name) and p.stem not in have:
                problems.append(f"{p.stem}: notebook has no report")
    return problems


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def default_data_root(data_root: str | None, root: Path | None = None) -> str:
    """The data root handed to the notebooks: --data-root, else $DENSENET_DATA, else ./data (inside
    the repository, so that a download lands there), as a path relative to the repository root
    when it is given relative."""
    root = root or _root()
    if not data_root:
        data_root = os.environ.get("DENSENET_DATA") or str(root / "data")
    if os.path.isabs(data_root):
        p = Path(data_root)
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return p.as_posix()
    return Path(os.path.relpath(os.path.abspath(data_root), root)).as_posix()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m densenet_repro reports",
        description="Execute notebooks/NN_*.ipynb with papermill and render reports/NN_name.html + index.html.")
    ap.add_argument("--budget", default=DEFAULT_BUDGET, help=f"one of {', '.join(BUDGETS)} (default {DEFAULT_BUDGET})")
    ap.add_argument("--data-root", default=None,
                    help="folder holding the datasets (or an offline copy), relative to where you run the command "
                         "(default: $DENSENET_DATA, else ./data inside the repository)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", default=[], metavar="NN",
                    help="render only this notebook (number like 01 or name); repeatable")
    ap.add_argument("--out", default=None,
                    help="output folder (default: reports/ of the repo, which holds the committed "
                         f"{DEFAULT_BUDGET}-budget reports; other budgets must go elsewhere)")
    ap.add_argument("--notebooks", default=None, help="notebook folder (default: notebooks/ of the repo)")
    ap.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                    help="extra papermill parameter; must be declared in every selected notebook")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 when every report rendered ok, 1 when one failed, 2 on bad usage."""
    ap = build_parser()
    args = ap.parse_args(argv)
    root = _root()
    try:
        import nbconvert  # noqa: F401
        import papermill  # noqa: F401
    except ImportError as e:
        ap.exit(2, f"{ap.prog}: error: {e.name} is not installed here; rendering reports needs the full "
                   "environment (pip install -e . or conda env create -f environment.yml)\n")
    try:
        check_budget(args.budget)
        out_dir = Path(args.out).resolve() if args.out else root / "reports"
        committed = (root / "reports").resolve()
        if out_dir == committed and args.budget != DEFAULT_BUDGET:
            raise ReportError(f"{_rel(committed, root)}/ holds the committed {DEFAULT_BUDGET}-budget reports: "
                              f"write {args.budget}-budget reports elsewhere with --out DIR")
        notebooks_dir = Path(args.notebooks).resolve() if args.notebooks else root / "notebooks"
        notebooks = find_notebooks(notebooks_dir, args.only)
        # the kernel runs in the repo root: express data_root relative to it, as typed if possible
        data_root = default_data_root(args.data_root, root)
        parameters = {"budget": args.budget, "data_root": Path(data_root).as_posix(),
                      "device": args.device, "seed": args.seed}
        for text in args.parameter:
            name, value = parse_parameter(text)
            parameters[name] = value
        for nb in notebooks:  # fail loudly before running anything
            check_parameters(nb, parameters)
    except ValueError as e:  # ReportError and check_budget's ValueError
        ap.exit(2, f"{ap.prog}: error: {e}\n")

    rows = {r["name"]: r for r in read_index(out_dir)}
    failed = []
    for nb in notebooks:
        row = render_notebook(nb, out_dir, parameters)
        rows[row["name"]] = merge_row(rows.get(row["name"]), row, out_dir)
        write_index(out_dir, list(rows.values()))  # after each notebook: a crash loses nothing
        if row["status"] != "ok":
            failed.append(row["name"])
    print(f"[reports] wrote {_rel(out_dir / INDEX_HTML, root)}: "
          f"{len(notebooks) - len(failed)} ok, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
