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
