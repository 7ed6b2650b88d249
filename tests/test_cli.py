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


# --- the table2 command's plan and analysis ------------------------------------------------------

def test_budgets_cover_the_promised_cells():
    paper = experiments.table2_cells("paper")
    assert len(paper) == 30 and sum(c.config is not None for c in paper) == 27  # BC-190: C10+/C100+ only
    for c in paper:
        if c.config is not None:
            r = c.config.resolved()
            assert r.model_kwargs == {} and r.train_subset is None and r.amp == "none"
            assert r.epochs == (40 if c.dataset == "svhn" else 300)
    cpu = [c for c in experiments.table2_cells("cpu") if c.config is not None]
    assert {(c.model, c.dataset) for c in cpu} == {(m, d) for m in ("densenet40_k12", "densenet_bc100_k12")
                                                   for d in ("c10", "c10+")}
    assert all(c.config.data_source == "synthetic" for c in experiments.table2_cells("smoke") if c.config)


def _cell(model, dataset, final, best=None, depth=None):
    from densenet_repro.table2 import PAPER_ERRORS  # noqa: F401 (the cells are Table 2's)

    label, paper_depth = {"densenet40_k12": ("DenseNet (k = 12)", 40),
                          "densenet_bc100_k12": ("DenseNet-BC (k = 12)", 100)}[model]
    summary = {"reported_test_error_pct": final, "best_test_error_pct": best if best is not None else final,
               "best_epoch": 3, "epochs": 8, "params": 250_000, "model_kwargs": {"depth": depth} if depth else {},
               "data": {"train": 5000, "test": 2000, "source": "CIFAR-10 test copy"}}
    return {"model": model, "label": label, "depth": paper_depth, "k": 12, "dataset": dataset, "summary": summary}


def test_verdict_is_computed_from_the_numbers():
    from densenet_repro import table2

    cells = [_cell("densenet40_k12", "c10", 40.0, 39.0, 22), _cell("densenet40_k12", "c10+", 35.0, 35.0, 22),
             _cell("densenet_bc100_k12", "c10", 45.0, 44.5, 40), _cell("densenet_bc100_k12", "c10+", 38.0, 37.0, 40)]
    text = table2.verdict(cells, "cpu")
    assert "4 of the 4" in text and "+29.76 to +39.08 points" in text  # 35.00-5.24 ... 45.00-5.92
    assert "it does for 2 of 2 models" in text                          # C10+ < C10 for both
    assert "the opposite ordering" in text                              # BC worse than plain here
    assert "by 0.00 to 1.00 points" in text                             # final - best
    matrix = table2.table2_matrix(cells)
    assert matrix.loc[0, "C10"] == "7.00 / 40.00" and matrix.loc[1, "C10+"] == "4.51 / 38.00"
    h = table2.headlines(cells, "cpu")
    assert h["DenseNet (k = 12) L=22 C10 error % (cpu; paper, quoted: 7.00 at L=40)"] == 40.0


def test_paper_budget_verdict_uses_the_tolerance():
    from densenet_repro import table2

    cells = [_cell("densenet40_k12", "c10+", 5.50), _cell("densenet_bc100_k12", "c10+", 5.51)]
    text = table2.verdict(cells, "paper")
    assert "1 of 2 cells are within the tolerance" in text          # 5.50-5.24=0.26 ok, 5.51-4.51=1.00 not
    assert "DenseNet-BC (k = 12) L=100 on C10+ is +1.00 points" in text
