"""The report pipeline at the smoke budget, on tiny notebooks written into a tmp folder.

One module fixture renders two notebooks once (one that works, one that raises), so the whole
file costs two kernel start-ups; the usage errors, the guards and the failed writes fail before
any kernel starts (or stand papermill in for one).
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
        "import sys, matplotlib.pyplot as plt, pandas as pd\n"
        "from densenet_repro import plots, coverage, stats, tables, verdicts\nplots.set_style()",
        "fig, ax = plots.figure()\nax.plot([0, 1, 2], [2, 0, 1])\nplt.show()",
        "scope = verdicts.Scope('smoke', 'two toy numbers')\n"
        "tables.show(pd.DataFrame({'claim': ['a < b', 'c < d'], 'error': [float('nan'), 2.5], "
        "'verdict': [stats.HOLDS, stats.FAILS]}), "
        "scope=scope, missing={'error': 'not measured'})",
        f"provenance.record(headlines={{'zeta first': 1.0, 'answer': 42.0, 'python': sys.executable}}, "
        f"dataset='tiny', files=[{str(result_file)!r}], "
        f"claims=[verdicts.claim('a < b', stats.HOLDS, scope, '1 < 2')], "
        f"coverage=[coverage.entry('Table 1', 'layer configuration', 'exact', 'tiny')])",
    ])
    # a markdown heading before the plot: the image's alt text comes from it
    nb = nbformat.read(str(nbdir / "01_ok.ipynb"), as_version=4)
    nb.cells.insert(4, new_markdown_cell("## A zigzag line\n\nThree points joined. More text."))
    nbformat.write(nb, str(nbdir / "01_ok.ipynb"))
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
    assert "Provenance" in html and "Render time" in html and "Budget" in html
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
    assert row["html"] == "02_fail.failed.html" and not (out / "02_fail.html").exists()
    html = (out / "02_fail.failed.html").read_text()
    assert "boom in the notebook" in html and "RuntimeError" in html
    assert "Provenance" in html and "failed" in html
    assert "never reached" not in html


def test_index_html_lists_every_report(rendered):
    html = (rendered["out"] / "index.html").read_text()
    assert "href='01_ok.html'" in html and "href='02_fail.failed.html'" in html
    assert "answer" in html and "failed" in html
    assert "no good report yet" in html


def test_the_index_answers_what_is_reproduced_first(rendered):
    """Summary, then the claims (verdict at its budget, numbers), then coverage, then the reports, whose
    inputs are collapsed; render time and training time are two columns."""
    html = (rendered["out"] / "index.html").read_text()
    order = [html.index(s) for s in ("<b>The paper</b>", "<b>Claims judged</b>", "<h2>Claims</h2>",
                                     "<h2>Coverage of the paper</h2>", "<h2>Reports</h2>")]
    assert order == sorted(order)
    assert "a &lt; b" in html and "at the smoke budget (two toy numbers)" in html and "1 &lt; 2" in html
    assert "<details><summary>2 input files (sha256)</summary>" in html
    assert "<th>Render time</th><th>Training behind it</th>" in html
    assert "none: this report trains nothing" in html


def test_headlines_keep_their_order_and_code_is_hashed(rendered):
    row = rendered["rows"]["01_ok"]
    assert list(row["headlines"]) == ["zeta first", "answer", "python"]
    assert "densenet_repro/provenance.py" in row["code"]
    assert row["code"]["densenet_repro/plots.py"] == provenance.sha256_file(ROOT / "densenet_repro" / "plots.py")


def test_a_rendered_report_and_its_index_read_well(rendered):
    """The reader's checks (tests/test_report_reader.py) on pages rendered through a real kernel."""
    from densenet_repro.reports import reader

    out = rendered["out"]
    html = (out / "01_ok.html").read_text()
    assert reader.problems(html) == [] and reader.problems((out / "index.html").read_text(), report=False) == []
    assert "<title>Tiny test notebook</title>" in html
    assert "holds at the smoke budget" in html and "Verdicts reached at the smoke budget (two toy numbers)." in html
    assert "— not measured" in html
    assert "<title>Tiny test notebook (failed render)</title>" in (out / "02_fail.failed.html").read_text()


def test_images_have_alt_text(rendered):
    html = (rendered["out"] / "01_ok.html").read_text()
    assert "No description has been provided" not in html
    assert "alt=\"Figure in section 'A zigzag line'. Three points joined.\"" in html


@pytest.mark.slow
def test_failed_render_keeps_the_last_good_report(rendered, tmp_path):
    import shutil

    nbdir, out = tmp_path / "notebooks", tmp_path / "out"
    shutil.copytree(rendered["nbdir"], nbdir)
    shutil.copytree(rendered["out"], out)
    good = (out / "01_ok.html").read_bytes()
    nb = nbformat.read(str(nbdir / "01_ok.ipynb"), as_version=4)
    nb.cells.insert(3, new_code_cell("raise OSError('no dataset here')"))
    nbformat.write(nb, str(nbdir / "01_ok.ipynb"))
    assert reports.main(["--budget", "smoke", "--notebooks", str(nbdir), "--out", str(out), "--only", "01"]) == 1
    assert (out / "01_ok.html").read_bytes() == good  # the good report is untouched
    assert "no dataset here" in (out / "01_ok.failed.html").read_text()
    row = {r["name"]: r for r in reports.read_index(out)}["01_ok"]
    assert row["status"] == "ok" and row["html"] == "01_ok.html"
    assert row["failed_attempt"]["html"] == "01_ok.failed.html" and "no dataset here" in row["failed_attempt"]["error"]
    index = (out / "index.html").read_text()
    assert "last good report" in index and "href='01_ok.failed.html'" in index
    assert any(s.startswith("01_ok: latest render failed") for s in reports.stale_reports(out))
    # a later good render removes the failure page and the note
    nbformat.write(nbformat.read(str(rendered["nbdir"] / "01_ok.ipynb"), as_version=4), str(nbdir / "01_ok.ipynb"))
    row = reports.merge_row(row, dict(row, failed_attempt=None, status="ok"), out)
    assert not row.get("failed_attempt")


def test_merge_row_without_a_good_report_keeps_the_failure(tmp_path):
    new = {"name": "x", "status": "failed", "html": "x.failed.html"}
    assert reports.merge_row(None, new, tmp_path) is new
    assert reports.merge_row({"name": "x", "status": "ok", "html": "x.html"}, new, tmp_path) is new  # no x.html



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


def test_staleness_covers_the_package_code(rendered, tmp_path):
    """A report goes stale when a package source file it imported changes, or when it has no code hashes."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(rendered["out"], out)
    index = json.loads((out / "index.json").read_text())
    row = next(r for r in index["reports"] if r["name"] == "01_ok")
    assert reports.stale_reports(out) == reports.stale_reports(rendered["out"])
    row["code"]["densenet_repro/plots.py"] = "0" * 64  # as if plots.py had changed since the render
    (out / "index.json").write_text(json.dumps(index))
    assert "01_ok: package file densenet_repro/plots.py changed since the report was rendered" in \
        reports.stale_reports(out)
    row["code"] = None
    (out / "index.json").write_text(json.dumps(index))
    assert any(s.startswith("01_ok: no package code hashes") for s in reports.stale_reports(out))


def test_default_data_root_is_inside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("DENSENET_DATA", raising=False)
    assert reports.default_data_root(None, ROOT) == "data"
    assert reports.build_parser().parse_args([]).data_root is None
    monkeypatch.setenv("DENSENET_DATA", str(tmp_path))
    assert reports.default_data_root(None, ROOT) == tmp_path.as_posix()
    assert reports.default_data_root(str(tmp_path / "x"), ROOT) == (tmp_path / "x").as_posix()


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


# --------------------------------------------------------------------------------------------
# Writes that fail, interruptions and guards: the last good report and the index stay as they were
# --------------------------------------------------------------------------------------------


def _copy(rendered, tmp_path):
    import shutil

    nbdir, out = tmp_path / "notebooks", tmp_path / "out"
    shutil.copytree(rendered["nbdir"], nbdir)
    shutil.copytree(rendered["out"], out)
    return nbdir, out, {p.name: p.read_bytes() for p in out.iterdir()}


def _fake_papermill(monkeypatch, behaviour):
    """papermill.execute_notebook stood in for: `behaviour(input, output)` instead of a kernel."""
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, **kw: behaviour(src, dst))


def _copy_input(src, dst):
    import shutil

    shutil.copy(src, dst)


def test_a_write_that_fails_midway_keeps_the_last_good_report_and_the_index(rendered, tmp_path, monkeypatch, capsys):
    """A full disk while the report is written: one line, and every file of the folder as it was."""
    import errno
    import os

    from densenet_repro import atomic

    nbdir, out, before = _copy(rendered, tmp_path)
    _fake_papermill(monkeypatch, _copy_input)
    real_fsync = os.fsync

    def fsync_then_fail(fd):  # the .ipynb is written and synced; the .html, written next, fails midway
        if ".html.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync_then_fail)
    code = reports.main(["--budget", "smoke", "--notebooks", str(nbdir), "--out", str(out), "--only", "01"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert "last good report and the index are unchanged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary left, nothing replaced


def test_ctrl_c_during_a_render_is_one_line_and_loses_nothing(rendered, tmp_path, monkeypatch, capsys):
    nbdir, out, before = _copy(rendered, tmp_path)

    def interrupted(src, dst):
        _copy_input(src, dst)  # papermill had started writing its output
        raise KeyboardInterrupt

    _fake_papermill(monkeypatch, interrupted)
    code = reports.main(["--budget", "smoke", "--notebooks", str(nbdir), "--out", str(out), "--only", "01"])
    err = capsys.readouterr().err.strip()
    assert code == 130 and len(err.splitlines()) == 1 and "nothing is lost" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("content", ['{"reports": [{"name": "01_ok", "sta', "[1, 2]", '{"reports": {}}'],
                         ids=["truncated", "not an object", "no list of rows"])
def test_a_damaged_index_is_one_line_naming_the_file_and_the_fix(rendered, tmp_path, capsys, content):
    nbdir, out, _ = _copy(rendered, tmp_path)
    (out / "index.json").write_text(content)
    code = reports.main(["--budget", "smoke", "--notebooks", str(nbdir), "--out", str(out), "--only", "01"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "index.json" in err and "git checkout" in err and "delete it" in err
    with pytest.raises(reports.IndexDamagedError):
        reports.stale_reports(out)


def _committed_reports_at(tmp_path, monkeypatch, rendered):
    """A repository root of our own, so that its reports/ folder is the committed one."""
    import shutil

    from densenet_repro.reports import cli

    shutil.copytree(rendered["out"], tmp_path / "reports")
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    return tmp_path / "reports", {p.name: p.read_bytes() for p in (tmp_path / "reports").iterdir()}


def test_a_parameter_cannot_bring_another_budget_into_the_committed_reports(rendered, tmp_path, monkeypatch, capsys):
    committed, before = _committed_reports_at(tmp_path, monkeypatch, rendered)
    with pytest.raises(SystemExit) as e:
        reports.main(["--only", "01", "-p", "budget=smoke", "--notebooks", str(rendered["nbdir"])])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in committed.iterdir()} == before


def test_the_paper_budget_on_a_cpu_states_its_cost_and_needs_device_cpu(rendered, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        reports.main(["--budget", "paper", "--notebooks", str(rendered["nbdir"]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--device cpu" in err and "300 epochs" in err
    assert not (tmp_path / "o").exists()
    said = []
    assert reports.resolve_device("cpu", "paper", log=said.append) == "cpu"  # asked for: runs, and says the cost
    assert said and "300 epochs" in said[0]
    assert reports.resolve_device(None, "cpu") == "cpu"


def test_an_unwritable_output_folder_fails_before_any_notebook_runs(rendered, tmp_path, monkeypatch, capsys):
    _fake_papermill(monkeypatch, lambda src, dst: pytest.fail("a notebook ran"))
    (tmp_path / "a_file").write_text("")
    code = reports.main(["--budget", "smoke", "--notebooks", str(rendered["nbdir"]),
                         "--out", str(tmp_path / "a_file" / "reports")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "cannot write to" in err and "--out" in err


def test_index_only_rewrites_the_index_from_its_rows(rendered, tmp_path):
    _, out, before = _copy(rendered, tmp_path)
    (out / "index.html").unlink()
    assert reports.main(["--out", str(out), "--index-only"]) == 0
    assert (out / "index.html").read_bytes() == before["index.html"]


# --------------------------------------------------------------------------------------------
# Coverage of the paper (densenet_repro.coverage), as the index computes it
# --------------------------------------------------------------------------------------------


def _run_summary(folder: Path, model: str, dataset: str, budget: str, experiment: str = "table2") -> str:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "finished": True, "model": model, "dataset": dataset, "budget": budget, "experiment": experiment,
        "epochs": 8, "model_kwargs": {"depth": 22}, "final_test_error_pct": 49.0}))
    return (folder / "summary.json").as_posix()


def test_coverage_is_computed_from_what_reports_record(tmp_path):
    from densenet_repro import coverage

    run = _run_summary(tmp_path / "densenet40_k12-c10-x", "densenet40_k12", "c10", "cpu")
    bench_run = _run_summary(tmp_path / "densenet_bc100_k12-c10+-y", "densenet_bc100_k12", "c10+", "cpu",
                             experiment="bench/accuracy-fast")
    rows = [
        {"name": "01_a", "status": "ok", "files": {}, "coverage": [
            coverage.entry("Table 1", "layer configuration", "exact"),
            coverage.entry("Table 2: DenseNet (k = 12), L = 40", "params", "exact")]},
        {"name": "02_b", "status": "ok", "files": {run: "h", bench_run: "h"}, "coverage": []},
        {"name": "03_c", "status": "failed", "files": {}, "coverage": [coverage.entry("Table 3", "top-1 and top-5 error",
                                                                                      "computed")]},
    ]
    cov = {c["item"]: c for c in coverage.coverage_rows(rows)}
    assert [c["item"] for c in coverage.coverage_rows(rows)] == [it.name for it in coverage.PAPER_ITEMS]
    assert cov["Table 1"]["status"] == "exact"
    d40 = {a["aspect"]: a for a in cov["Table 2: DenseNet (k = 12), L = 40"]["aspects"]}
    assert d40["params"]["text"] == "exact" and d40["params"]["where"] == ["01_a"]
    assert d40["C10"]["text"] == "scaled (cpu budget)" and d40["C10"]["where"] == ["02_b"]
    assert d40["C100"]["status"] == "planned" and d40["SVHN"]["status"] == "planned"
    # a run of another experiment is not a Table 2 cell; a failed report covers nothing
    bc = {a["aspect"]: a for a in cov["Table 2: DenseNet-BC (k = 12), L = 100"]["aspects"]}
    assert bc["C10+"]["status"] == "planned"
    assert cov["Table 3"]["status"] == "planned"
    for item in ("Figure 4 (left)", "Figure 4 (middle)", "Figure 4 (right)", "Figure 5", "Table 2: Wide ResNet, L = 28"):
        assert cov[item]["status"] == "planned"
    html = reports.index_html([dict(r, headlines={}, notebook="n", notebook_sha256="0" * 64, budget="cpu",
                                    dataset="d", device="cpu", wall_time_s=1.0, commit="c", html=r["name"] + ".html",
                                    error=None) for r in rows])
    assert html.index("Coverage of the paper") < html.index("<h2>Reports")
    assert "Figure 5" in html and "planned" in html


def test_coverage_entries_are_validated():
    from densenet_repro import coverage

    with pytest.raises(ValueError, match="unknown paper item"):
        coverage.entry("Table 9", "x", "exact")
    with pytest.raises(ValueError, match="no aspect"):
        coverage.entry("Table 1", "errors", "exact")
    with pytest.raises(ValueError, match="unknown coverage status"):
        coverage.entry("Table 1", "layer configuration", "done")
    with pytest.raises(ValueError, match="names its budget"):
        coverage.entry("Table 1", "layer configuration", "scaled")
    with pytest.raises(ValueError, match="unknown paper item"):
        provenance.record(coverage=[{"item": "Figure 9", "aspect": "x", "status": "exact"}])


def test_committed_index_coverage_is_recomputable():
    from densenet_repro import coverage

    p = ROOT / "reports" / "index.json"
    if not p.is_file():
        pytest.skip("no committed reports yet")
    index = json.loads(p.read_text())
    assert index.get("coverage") == coverage.coverage_rows(index["reports"], ROOT), \
        "re-render the index: its coverage table is not what the reports record"
    planned = {c["item"] for c in index["coverage"] if c["status"] == "planned"}
    assert "Table 3" in planned  # no ImageNet training here
    assert not {"Figure 4 (left)", "Figure 4 (middle)", "Figure 5"} & planned  # notebooks 03-05 record them


def test_the_code_hashes_include_the_cpp_source_a_module_builds():
    import densenet_repro.models.fast_dense_cpu  # noqa: F401 - imported by notebook 06 through the engine

    code = provenance.loaded_code()
    assert "densenet_repro/models/fast_dense_cpu.cpp" in code and "densenet_repro/models/fast_dense_cpu.py" in code
