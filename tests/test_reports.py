"""The report pipeline at the smoke budget, on tiny notebooks written into a tmp folder.

One module fixture renders two notebooks once (one that works, one that raises), so the whole
file costs two kernel start-ups; the usage errors fail before any kernel starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from densenet_repro import provenance, reports

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, body: list[str]) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell('budget = "cpu"\ndata_root = "../shared/data"\ndevice = "cpu"\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell("# Tiny test notebook\nclaim: none"), params,
                new_code_cell("from densenet_repro import provenance\n"
                              "provenance.start(budget=budget, data_root=data_root, device=device, seed=seed)")]
    nb.cells += [new_code_cell(src) for src in body]
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("reports")
    nbdir, out = base / "notebooks", base / "out"
    nbdir.mkdir()
    result_file = base / "result.csv"
    result_file.write_text("a,b\n1,2\n")
    _notebook(nbdir / "01_ok.ipynb", [
        "import sys, matplotlib.pyplot as plt\nfrom densenet_repro import plots\nplots.set_style()",
        "fig, ax = plots.figure()\nax.plot([0, 1, 2], [2, 0, 1])\nplt.show()",
        f"provenance.record(headlines={{'answer': 42.0, 'python': sys.executable}}, dataset='tiny', "
        f"files=[{str(result_file)!r}])",
    ])
    _notebook(nbdir / "02_fail.ipynb", ["raise RuntimeError('boom in the notebook')", "print('never reached')"])
    code = reports.main(["--budget", "smoke", "--notebooks", str(nbdir), "--out", str(out)])
    index = json.loads((out / "index.json").read_text())
    return {"code": code, "out": out, "nbdir": nbdir, "result_file": result_file,
            "rows": {r["name"]: r for r in index["reports"]}}


def test_exit_code_nonzero_when_a_notebook_fails(rendered):
    assert rendered["code"] == 1
    assert set(rendered["rows"]) == {"01_ok", "02_fail"}


def test_ok_report(rendered):
    row, out = rendered["rows"]["01_ok"], rendered["out"]
    assert row["status"] == "ok" and row["error"] is None
    assert row["budget"] == "smoke" and row["device"] == "cpu" and row["dataset"] == "tiny"
    assert row["headlines"]["answer"] == 42.0
    assert row["headlines"]["python"] == sys.executable  # the kernel is this very python
    assert row["notebook_sha256"] == provenance.sha256_file(rendered["nbdir"] / "01_ok.ipynb")
    (f, h), = row["files"].items()
    assert Path(f) == rendered["result_file"] and h == provenance.sha256_file(rendered["result_file"])
    assert row["wall_time_s"] > 0 and row["commit"]
    html = (out / "01_ok.html").read_text()
    assert (out / "01_ok.html").stat().st_size < reports.MAX_HTML_BYTES
    assert "Provenance" in html and "Wall time" in html and "Budget" in html
    assert "not known until" not in html  # the pipeline filled in the wall time
    assert "data:image/png;base64," in html  # the plot, embedded as PNG
    assert "provenance.start(" not in html and "ax.plot(" not in html  # code hidden
    # the executed notebook carries the completed provenance payload
    nb = nbformat.read(str(out / "01_ok.ipynb"), as_version=4)
    found = reports.extract(nb)
    assert found["provenance"]["status"] == "ok" and found["provenance"]["wall_time_s"] == row["wall_time_s"]


def test_failed_notebook_still_gets_a_report(rendered):
    row, out = rendered["rows"]["02_fail"], rendered["out"]
    assert row["status"] == "failed" and "boom in the notebook" in row["error"]
    html = (out / "02_fail.html").read_text()
    assert "boom in the notebook" in html and "RuntimeError" in html
    assert "Provenance" in html and "failed" in html
    assert "never reached" not in html


def test_index_html_lists_every_report(rendered):
    html = (rendered["out"] / "index.html").read_text()
    for name in ("01_ok", "02_fail"):
        assert f"href='{name}.html'" in html
    assert "answer" in html and "failed" in html


def test_staleness_detects_changes(rendered):
    out, nbdir, result = rendered["out"], rendered["nbdir"], rendered["result_file"]
    assert reports.stale_reports(out) == ["02_fail: status failed (" + rendered["rows"]["02_fail"]["error"] + ")"]
    nb_path = nbdir / "01_ok.ipynb"
    original_nb, original_result = nb_path.read_bytes(), result.read_bytes()
    try:
        nb = nbformat.read(str(nb_path), as_version=4)
        nb.cells.append(new_markdown_cell("an edit"))
        nbformat.write(nb, str(nb_path))
        assert any("01_ok: notebook" in s and "changed" in s for s in reports.stale_reports(out))
        nb_path.write_bytes(original_nb)
        result.write_text("a,b\n1,3\n")
        assert any("01_ok: result file" in s for s in reports.stale_reports(out))
    finally:
        nb_path.write_bytes(original_nb)
        result.write_bytes(original_result)
    assert not any(s.startswith("01_ok") for s in reports.stale_reports(out))
    _notebook(nbdir / "03_new.ipynb", [])
    try:
        assert "03_new: notebook has no report" in reports.stale_reports(out, nbdir)
    finally:
        (nbdir / "03_new.ipynb").unlink()


def test_unknown_parameter_fails_before_running(rendered, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reports.main(["--budget", "smoke", "--notebooks", str(rendered["nbdir"]), "--out", str(tmp_path / "o"),
                      "-p", "learning_rate=0.1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown parameter" in err and "learning_rate" in err and "budget" in err
    assert not (tmp_path / "o").exists()


def test_unknown_budget_fails(rendered, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reports.main(["--budget", "huge", "--notebooks", str(rendered["nbdir"]), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown budget 'huge'" in err and "smoke, cpu, paper" in err


def test_unknown_only_fails(rendered, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        reports.main(["--only", "99", "--notebooks", str(rendered["nbdir"]), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "01_ok" in capsys.readouterr().err


def test_other_budgets_never_overwrite_committed_reports(capsys):
    with pytest.raises(SystemExit) as e:
        reports.main(["--budget", "smoke"])  # default --out is the committed reports/
    assert e.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_start_validates_parameters():
    with pytest.raises(ValueError, match="unknown budget"):
        provenance.start(budget="fast", data_root="data", chdir=False)
    with pytest.raises(ValueError, match="device"):
        provenance.start(budget="smoke", data_root="data", device="tpu", chdir=False)
    with pytest.raises(ValueError, match="seed"):
        provenance.start(budget="smoke", data_root="data", seed="0", chdir=False)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            provenance.start(budget="smoke", data_root="data", device="cuda", chdir=False)


def test_record_validates(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        provenance.record(files=[tmp_path / "missing.csv"])
    with pytest.raises(ValueError, match="number or a string"):
        provenance.record(headlines={"x": [1, 2]})
    with pytest.raises(ValueError, match="finite"):
        provenance.record(headlines={"x": float("nan")})


def test_committed_reports_are_not_stale():
    reports_dir = ROOT / "reports"
    if not (reports_dir / "index.json").is_file():
        pytest.skip("no committed reports yet (reports/index.json does not exist)")
    assert reports.stale_reports(reports_dir, ROOT / "notebooks") == [], \
        "re-render: python -m densenet_repro reports --budget cpu"
    rows = reports.read_index(reports_dir)
    assert {r["budget"] for r in rows} == {"cpu"}, "the committed reports are the cpu-budget ones"
    assert all(r["html_bytes"] < reports.MAX_HTML_BYTES for r in rows)
