"""Rendering one notebook: papermill -> the provenance block completed -> nbconvert HTML -> <out>/.

For a notebook NN_name.ipynb:
  1. check the parameters we inject against the notebook's `parameters` cell
     (papermill.inspect_notebook); an unknown one fails before anything runs;
  2. execute it with papermill on a kernel that is *this* python (sys.executable), so "kernel not
     found" cannot happen, with the repository root as working directory;
  3. complete the provenance block that `provenance.start` displayed with what only the pipeline
     knows (render time, status, the training behind the report);
  4. convert it to HTML: code hidden, a <title> from the notebook's heading, a link back to the
     index, plots as embedded PNG with alt text, at most MAX_HTML_BYTES;
  5. write <out>/NN_name.ipynb and NN_name.html together (atomic.write_texts: a full disk or a
     Ctrl-C leaves the last good pair as it was), and return the index row (`index.py`).

A notebook that raises gets a failure page, NN_name.failed.html (papermill keeps the partly
executed notebook and marks the failing cell), written *beside* the last good NN_name.html.

papermill and nbconvert are imported lazily: the rest of the package must import without them.
"""

from __future__ import annotations

import ast
import datetime as _dt
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from densenet_repro import atomic, devices, provenance
from densenet_repro.errors import UserError
from densenet_repro.reports.index import (INDEX_HTML, NOTEBOOK_PATTERN, absolute, rel, repo_root,
                                          training_behind, training_text)

MAX_HTML_BYTES = 5 * 1024 * 1024
NOTEBOOK_RE = re.compile(NOTEBOOK_PATTERN)
REQUIRED_PARAMETERS = ("budget", "data_root", "device", "seed")
PROVENANCE_CELL_TAG = "provenance-injected"
BACK_LINK_CLASS = "densenet-repro-back"


class ReportError(ValueError):
    """A usage error: reported as one line, exit code 2."""


class ReportWriteError(UserError, OSError):
    """A report could not be written (a full disk, no permission); the last good one is kept."""


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

    root = str(repo_root())
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
    rec: dict[str, Any] = {"headlines": {}, "dataset": None, "files": [], "coverage": [], "claims": [],
                           "in_progress": [], "code": None}
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
            for key in ("coverage", "claims", "in_progress", "files"):
                rec[key] += [e for e in r.get(key) or [] if e not in rec[key]]
            if r.get("code") is not None:
                rec["code"] = dict(rec["code"] or {}, **r["code"])
            if r.get("dataset"):
                rec["dataset"] = r["dataset"]
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


def report_title(nb, fallback: str) -> str:
    """The first markdown heading of the notebook ('01 · Architecture: ...'), else `fallback`."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return re.sub(r"[*`]", "", line.lstrip("#").strip())
    return fallback


def to_html(nb, title: str = "") -> str:
    """nbconvert HTML with code hidden (inputs and prompts excluded), the <title> `title` (default: the
    notebook's first heading), a link back to the index at the top and the bottom, and every embedded
    PNG with an alt text (image_descriptions)."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    title = title or report_title(nb, "densenet-repro report")
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    soup = BeautifulSoup(body, features="html.parser")
    if soup.title is not None:
        soup.title.string = title
    alts = image_descriptions(nb)
    images = [img for img in soup.select("img") if str(img.get("src", "")).startswith("data:image/png")]
    if len(images) == len(alts):  # else they cannot be paired up: leave nbconvert's alt texts
        for img, alt in zip(images, alts):
            if img.get("alt") in (None, "", _NBCONVERT_DEFAULT_ALT):
                img["alt"] = alt
    if soup.body is not None:
        for where in ("top", "bottom"):
            nav = BeautifulSoup(f"<p class='{BACK_LINK_CLASS}' style='margin:1em 2em;font-family:sans-serif'>"
                                f"<a href='{INDEX_HTML}'>"
                                "&larr; all reports: what is reproduced (index)</a></p>", features="html.parser")
            if where == "top":
                soup.body.insert(0, nav)
            else:
                soup.body.append(nav)
    return str(soup)


# --------------------------------------------------------------------------------------------
# Rendering one notebook
# --------------------------------------------------------------------------------------------


def failed_name(stem: str, suffix: str) -> str:
    """File name of a failure page: NN_name.failed.html (beside the last good NN_name.html)."""
    return f"{stem}.failed{suffix}"


def write_report(files: Mapping[Path, str]) -> None:
    """The report's files, all replaced together or none (a ReportWriteError names what failed)."""
    try:
        atomic.write_texts(dict(files))
    except OSError as e:
        names = ", ".join(rel(p) for p in files)
        raise ReportWriteError(f"could not write {names}: {e.strerror or e}; the last good report and the index "
                               "are unchanged: free some space (or fix the permissions) and render again") from None


def render_notebook(path: Path, out_dir: Path, parameters: Mapping[str, Any], *,
                    log=print) -> dict[str, Any]:
    """Execute one notebook, write its report and return its index row.

    Success: writes <out>/NAME.ipynb and NAME.html (replacing the previous ones) and removes an old
    failure page. Failure: writes <out>/NAME.failed.ipynb and NAME.failed.html and leaves the last
    good NAME.html untouched (`index.merge_row` then keeps the good report in the index and notes
    the failed attempt beside it). Interrupted (Ctrl-C): writes nothing.
    """
    import nbformat
    import papermill

    root = repo_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_nb = out_dir / f"{path.stem}.rendering.ipynb"
    notebook_sha = provenance.sha256_file(path)
    work_nb.unlink(missing_ok=True)  # never report a previous run's output as this one's
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log(f"[reports] {path.name}: running (budget={parameters['budget']})")
    t0 = time.perf_counter()
    status, exec_error = "ok", None
    try:
        try:
            papermill.execute_notebook(
                str(path), str(work_nb), parameters=dict(parameters), kernel_name="python3", language="python",
                cwd=str(root), progress_bar=False, log_output=False, request_save_on_cell_execute=False,
                kernel_manager_class=_kernel_manager_class(),
            )
        except papermill.PapermillExecutionError as e:
            if e.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel too: an interruption, not a failure
                raise KeyboardInterrupt from None
            status, exec_error = "failed", f"{e.ename}: {e.evalue}"
        except Exception as e:  # noqa: BLE001 - kernel died, timeout...: still write what we have
            status, exec_error = "failed", f"{type(e).__name__}: {e}"
        wall = time.perf_counter() - t0
        source = work_nb if work_nb.is_file() else path  # papermill wrote nothing: report the unexecuted notebook
        nb = nbformat.read(str(source), as_version=4)
    finally:
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
        "hardware": devices.machine("cpu"), "versions": provenance.versions(),
        "commit": commit, "dirty": dirty, "started": started,
    }
    if rec["dataset"]:
        info["dataset"] = rec["dataset"]
    info.update(status=status, wall_time_s=round(wall, 1),
                training=training_text(training_behind(rec["files"], rec["in_progress"], root)))
    if exec_error:
        info["error"] = exec_error
    _patch_provenance(nb, info)
    title = report_title(nb, path.stem) + ("" if status == "ok" else " (failed render)")
    body = to_html(nb, title)
    size = len(body.encode("utf-8"))
    if size > MAX_HTML_BYTES:
        status = "failed"
        exec_error = (f"{path.stem}.html would be {size / 2**20:.1f} MB, over the {MAX_HTML_BYTES / 2**20:.0f} MB "
                      "limit: make the figures smaller (fewer points, lower dpi)")
    if status == "ok":
        out_nb, out_html = out_dir / path.name, out_dir / (path.stem + ".html")
    else:
        out_nb = out_dir / failed_name(path.stem, ".ipynb")
        out_html = out_dir / failed_name(path.stem, ".html")
    write_report({out_nb: nbformat.writes(nb), out_html: body})
    if status == "ok":
        for old in (failed_name(path.stem, ".ipynb"), failed_name(path.stem, ".html")):
            (out_dir / old).unlink(missing_ok=True)

    files = {}
    for f in rec["files"]:
        p = absolute(f, root)
        files[f] = provenance.sha256_file(p) if p.is_file() else None
    row = {
        "name": path.stem,
        "notebook": rel(path, root),
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
        "claims": rec["claims"],
        "coverage": rec["coverage"],
        "in_progress": rec["in_progress"],
        "files": files,
        "code": rec["code"],
        "html": out_html.name,
        "html_bytes": size,
        "ipynb": out_nb.name,
    }
    log(f"[reports] {path.name}: {status} in {wall:.1f} s -> {rel(out_html, root)}"
        + (f" ({exec_error})" if exec_error else ""))
    return row
