"""`python -m densenet_repro train|table2`: bad arguments get one line and exit code 2; runs work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from densenet_repro import experiments, train

REPO = Path(__file__).resolve().parent.parent


def _error_line(capsys, argv, main=train.main) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--model", "densenet999", "--dataset", "c10"], "densenet40_k12"),      # lists the valid models
    (["--model", "densenet40_k12", "--dataset", "c11"], "c10+"),             # lists the valid datasets
    (["--model", "densenet40_k12", "--dataset", "c10", "--epochs", "0"], "must be an integer >= 1, got 0"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--batch-size", "-3"], "must be an integer >= 1"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--budget", "huge"], "smoke"),
    (["--model", "densenet40_k12", "--dataset", "c10", "--amp", "fp8"], "bf16"),
    (["--dataset", "c10"], "--model"),
])
def test_train_bad_arguments(capsys, argv, expected):
    assert expected in _error_line(capsys, argv)


def test_table2_bad_budget(capsys):
    assert "smoke" in _error_line(capsys, ["--budget", "gpu"], main=experiments.table2_main)


def test_entry_point_exit_code_and_one_line():
    proc = subprocess.run([sys.executable, "-m", "densenet_repro", "train", "--model", "nope", "--dataset", "c10"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'nope'" in proc.stderr and "densenet_bc100_k12" in proc.stderr


def test_train_smoke_end_to_end_then_cached(tmp_path, capsys):
    argv = ["--model", "densenet_bc100_k12", "--dataset", "c10+", "--budget", "smoke", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--progress", "line", "--device", "cpu", "--epochs", "1"]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "final test error" in out
    summary = json.loads(out[out.index("{"):])
    assert Path(summary["run_dir"], "summary.json").is_file()
    assert train.main(argv) == 0
    assert "finished run found" in capsys.readouterr().out


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    argv = ["--model", "densenet40_k12", "--dataset", "c100", "--data-root", str(tmp_path), "--no-download",
            "--out", str(tmp_path / "runs")]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "put the official files" in err


def test_table2_list_shows_every_cell(capsys):
    assert experiments.table2_main(["--budget", "cpu", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.count("not run") == 30 - 4  # cpu budget: 2 rows x C10, C10+
    assert "5,000 of 50,000" in out
