"""A run in progress behind a report: recorded with the epoch the report showed, shown the same way
everywhere in the index, and stale only once it finishes. No kernel: index rows are built by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densenet_repro import coverage, provenance, reports

METRICS_HEADER = "epoch,lr,train_loss,train_err_pct,test_loss,test_err_pct,epoch_time_s,eval_time_s\n"


def _run_folder(path: Path, epochs_done: int) -> Path:
    """An unfinished run as the engine leaves it: config.json and one metrics.csv row per epoch."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    rows = "".join(f"{e},0.1,1.0,30.0,1.0,{40 - e}.5,500.0,50.0\n" for e in range(1, epochs_done + 1))
    (path / "metrics.csv").write_text(METRICS_HEADER + rows)
    return path


def _row(tmp_path: Path, run: Path, shown: int, name: str = "02_x") -> dict:
    nb = tmp_path / f"{name}.ipynb"
    nb.write_text("{}")
    (tmp_path / f"{name}.html").write_text("<html></html>")
    entry = provenance.progress_entry(run, "DenseNet (k = 12), L = 40, C10+", shown, 30, paper_epochs=300,
                                      paper_error_pct=5.24)
    return {"name": name, "notebook": nb.as_posix(), "notebook_sha256": provenance.sha256_file(nb), "status": "ok",
            "error": None, "budget": "cpu", "dataset": "d", "device": "cpu", "wall_time_s": 12.0, "commit": "c",
            "html": f"{name}.html", "files": {}, "code": {}, "headlines": {}, "claims": [], "in_progress": [entry],
            "coverage": [coverage.entry("Table 2: DenseNet (k = 12), L = 40", "C10+", "in progress", "cpu budget run",
                                        run=entry["run"])]}


def _write(out: Path, rows: list[dict]) -> None:
    (out / "index.json").write_text(json.dumps({"reports": rows}))


def test_a_run_training_on_leaves_the_report_valid_until_it_finishes(tmp_path):
    run = _run_folder(tmp_path / "results" / "table2" / "densenet40_k12-c10+-abc", 7)
    _write(tmp_path, [_row(tmp_path, run, 7)])
    assert reports.stale_reports(tmp_path) == []
    _run_folder(run, 8)  # the next epoch: checkpoint and metrics move
    assert reports.stale_reports(tmp_path) == []
    (run / "summary.json").write_text("{}")  # finished: the report must show the final run
    assert reports.stale_reports(tmp_path) == [
        f"02_x: run {run.as_posix()} has finished since the report showed epoch 7 of 30: re-render"]


def test_a_run_that_went_back_or_vanished_makes_the_report_stale(tmp_path):
    run = _run_folder(tmp_path / "run", 5)
    _write(tmp_path, [_row(tmp_path, run, 7)])
    assert any("has 5 epochs, fewer than the report showed epoch 7" in p for p in reports.stale_reports(tmp_path))
    import shutil

    shutil.rmtree(run)
    assert any("no longer exists" in p for p in reports.stale_reports(tmp_path))


def test_a_run_shown_not_started_leaves_the_report_valid_until_it_finishes(tmp_path):
    """A longer schedule that has not started yet has no folder: the report showed epoch 0 of it."""
    run = tmp_path / "results" / "table2" / "densenet40_k12-c10+-def"
    rows = [_row(tmp_path, run, 0)]
    _write(tmp_path, rows)
    assert reports.stale_reports(tmp_path) == []
    assert "not started: 0 of 30 epochs (report shows epoch 0)" in reports.index_html(rows)
    _run_folder(run, 3)  # it starts and trains on
    assert reports.stale_reports(tmp_path) == []
    (run / "summary.json").write_text("{}")
    assert reports.stale_reports(tmp_path) == [
        f"02_x: run {run.as_posix()} has finished since the report showed epoch 0 of 30: re-render"]


def test_the_index_says_how_far_the_run_is_now_and_what_each_report_shows(tmp_path):
    run = _run_folder(tmp_path / "run", 8)
    rows = [_row(tmp_path, run, 7, "02_x"), _row(tmp_path, run, 8, "05_y")]
    html = reports.index_html(rows)
    both = "in progress: 8 of 30 epochs (02 shows epoch 7, 05 shows epoch 8)"
    assert html.count(both) == 2  # the summary and the coverage table say the same
    assert "in progress: 8 of 30 epochs (report shows epoch 7)" in html  # 02's row in the reports table
    assert "in progress: 8 of 30 epochs (report shows epoch 8)" in html
    assert provenance.progress_text(8, 30, {"02_x": 8, "05_y": 8}) == "in progress: 8 of 30 epochs (02 and 05 show epoch 8)"
    assert "test error after epoch 8: 32.50% (not a final error)" in html
    assert "1.2 h of training and evaluation so far, about 3.4 h to go" in html  # 8 x 550 s; 22 x 550 s
    assert "30 epochs scheduled, 10% of the paper's 300 (the paper: 5.24% after 300, quoted)" in html


def test_the_training_behind_a_report_is_told_apart_from_its_render_time(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"wall_time_s": 7200.0}))
    run = _run_folder(tmp_path / "run", 4)
    t = reports.training_behind([(done / "summary.json").as_posix()], [provenance.progress_entry(run, "r", 2, 30)])
    assert t == {"finished_s": 7200.0, "finished_runs": 1, "in_progress_s": 1100.0, "in_progress_runs": 1}
    assert reports.training_text(t) == ("2.0 h in 1 finished run (their summaries) + 18 min of 1 run in progress, "
                                        "up to the epoch shown")


def test_record_leaves_a_run_in_progress_out_of_the_hashed_files(tmp_path, capsys):
    run = _run_folder(tmp_path / "run", 3)
    with pytest.raises(ValueError, match="has not finished"):
        provenance.record(files=[run / "metrics.csv"])
    entry = provenance.progress_entry(run, "r", 3, 30)
    capsys.readouterr()
    provenance.record(files=[run / "metrics.csv"], in_progress=[entry])
    payload = json.loads(capsys.readouterr().out)  # outside IPython, record prints its payload
    assert payload["files"] == [] and payload["in_progress"] == [entry]
    with pytest.raises(ValueError, match="epoch must be an integer"):
        provenance.progress_entry(run, "r", 31, 30)


def test_an_in_progress_coverage_entry_names_its_run():
    with pytest.raises(ValueError, match="names its run folder"):
        coverage.entry("Figure 5", "weight heat maps", "in progress", "x")
    e = coverage.entry("Figure 5", "weight heat maps", "in progress", "x", run="results/table2/r")
    rows = coverage.coverage_rows([{"name": "05_y", "status": "ok", "files": {}, "coverage": [e]}])
    fig5 = next(r for r in rows if r["item"] == "Figure 5")["aspects"][0]
    assert fig5["status"] == "in progress" and fig5["runs"] == ["results/table2/r"]
