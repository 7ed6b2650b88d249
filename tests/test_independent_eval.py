"""The published weights give the error the run reported, computed by code that is not the engine's."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_repro import train as T
from densenet_repro.independent_eval import evaluate_run, read_result, write_result
from test_data_identity import image_folder, tiny


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSENET_CACHE", str(tmp_path / "cache"))


def test_the_weights_reproduce_the_reported_test_error_outside_the_engine(tmp_path):
    archive = image_folder((tmp_path / "d").mkdir() or tmp_path / "d" / "cifar10-jpeg.tar.gz", {"train": 6, "test": 5})
    summary = T.train(tiny(tmp_path, archive.parent, epochs=2, fast_blocks=True, channels_last=True))
    result = evaluate_run(summary["run_dir"], archive)
    assert result["test_images"] == 50 and result["images_that_differ_in_count"] == 0
    assert result["test_error_pct"] == pytest.approx(summary["final_test_error_pct"])
    assert result["mean"] == [round(m, 5) for m in summary["data"]["mean"]]  # computed here, agreeing
    write_result(summary["run_dir"], result)
    assert read_result(Path(summary["run_dir"]))["wrong"] == result["wrong"]
