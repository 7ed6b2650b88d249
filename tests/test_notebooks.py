"""Every notebook in notebooks/ follows the conventions the report pipeline relies on."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from densenet_repro.budgets import DEFAULT_BUDGET
from densenet_repro.reports import NOTEBOOK_RE, REQUIRED_PARAMETERS

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_architecture_notebook_exists():
    assert (NOTEBOOK_DIR / "01_architecture.ipynb").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_name(path):
    assert NOTEBOOK_RE.match(path.name), f"{path.name}: notebooks are named NN_name.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs(path):
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_a_unique_id(path):
    """nbformat 4.5 requires cell ids (a missing one is a warning now, an error in later nbformat)."""
    ids = [cell.get("id") for cell in _load(path)["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: give every cell an id (nbformat.validator.normalize)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_and_first_cells(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).lstrip().startswith("#"), \
        "first cell: markdown title and the claims tested"
    assert "parameters" in cells[1].get("metadata", {}).get("tags", []), "second cell: the parameters cell"
    assert cells[2]["cell_type"] == "code" and "provenance.start(" in _source(cells[2]), \
        "third cell: provenance.start(...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_plain_literals(path):
    cells = _parameters_cells(_load(path))
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters', found {len(cells)}"
    tree = ast.parse(_source(cells[0]))
    params = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{path.name}: parameters cell holds only plain `name = literal` lines, got {ast.unparse(node)!r}"
        params[node.targets[0].id] = ast.literal_eval(node.value)  # raises if not a literal
    assert set(REQUIRED_PARAMETERS) <= set(params), f"{path.name}: parameters cell needs {REQUIRED_PARAMETERS}"
    assert params["budget"] == DEFAULT_BUDGET
    assert isinstance(params["data_root"], str) and isinstance(params["device"], str)
    assert isinstance(params["seed"], int)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_definitions_in_notebooks(path):
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "\n".join(l for l in _source(cell).splitlines() if not re.match(r"\s*[%!]", l))  # magics
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"{path.name} cell {i}: define functions in the package, not in notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tables_are_shown_through_the_one_helper(path):
    """No pandas styling or display options, and no cell that ends by showing a bare variable (a DataFrame
    shown so would bring its index column, NaN and unrounded floats): tables go through tables.show."""
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = _source(cell)
        assert ".style" not in src and "set_option" not in src, f"{path.name} cell {i}: use densenet_repro.tables.show"
        body = ast.parse(src).body
        if body and isinstance(body[-1], ast.Expr):
            assert not isinstance(body[-1].value, (ast.Name, ast.Subscript, ast.Attribute)), \
                f"{path.name} cell {i} ends by showing {ast.unparse(body[-1])!r}: show it with tables.show(...)"


# --------------------------------------------------------------------------------------------
# JupyterLab: the kernel it picks for the notebooks, and the notebooks run on it
# --------------------------------------------------------------------------------------------

ROOT = NOTEBOOK_DIR.parent


def test_jupyterlab_is_installed_and_make_lab_is_documented():
    import jupyterlab  # noqa: F401 - a dependency (pyproject.toml, environment.yml)

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab:", makefile, re.M) and "jupyter lab --notebook-dir=notebooks" in makefile
    assert "make lab" in (ROOT / "README.md").read_text()


def _lab_kernel_env(tmp_path) -> dict:
    """What `make lab` does: install the project's kernelspec under a prefix and put that first on
    JUPYTER_PATH (here a tmp prefix instead of .venv, so the test writes nothing into the repo)."""
    import os
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path), "--name", "python3",
                    "--display-name", "Python 3 (densenet-repro)"], check=True, capture_output=True)
    return {"JUPYTER_PATH": str(tmp_path / "share" / "jupyter"), "JUPYTER_DATA_DIR": str(tmp_path / "user"),
            "PATH": os.environ.get("PATH", "")}


def _execute_as_jupyterlab(nb, kernel_env: dict, monkeypatch, timeout: int):
    """Execute `nb` as JupyterLab would: its own kernelspec name, resolved by jupyter_client's
    KernelSpecManager (no kernel override), in notebooks/ as working directory."""
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    for k, v in kernel_env.items():
        monkeypatch.setenv(k, v)
    name = nb.metadata["kernelspec"]["name"]
    spec = KernelSpecManager().get_kernel_spec(name)
    client = NotebookClient(nb, kernel_name=name, timeout=timeout,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return spec


@pytest.mark.slow
def test_a_notebook_runs_on_the_kernel_jupyterlab_picks(tmp_path, monkeypatch):
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    env = _lab_kernel_env(tmp_path)
    nb = new_notebook(metadata={"kernelspec": _load(NOTEBOOKS[0])["metadata"]["kernelspec"]})
    nb.cells = [new_code_cell("import sys, densenet_repro\nprint(sys.executable)")]
    spec = _execute_as_jupyterlab(nb, env, monkeypatch, timeout=120)
    assert spec.argv[0] == sys.executable  # this environment's python, not another "python3"
    stdout = "".join(o["text"] for o in nb.cells[0].outputs if o.get("name") == "stdout")
    assert stdout.strip() == sys.executable
    nbformat.validate(nb)


# Notebooks executed here as JupyterLab would, at their defaults: the two that train nothing and read
# only committed benchmark results (02-05 read committed runs too, and render through the report
# pipeline in tests/test_reports.py's way; executing them here would add minutes).
DEFAULTS_NOTEBOOKS = [p for p in NOTEBOOKS if p.name in ("01_architecture.ipynb", "06_performance.ipynb")]


@pytest.mark.slow
@pytest.mark.parametrize("path", DEFAULTS_NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_jupyterlab_with_its_defaults(path, tmp_path, monkeypatch):
    import nbformat

    env = _lab_kernel_env(tmp_path)
    nb = nbformat.read(str(path), as_version=4)
    _execute_as_jupyterlab(nb, env, monkeypatch, timeout=900)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
