"""Report 05 renders from results/ alone: the supervision measurement is made once on the images, kept
beside the runs, and read back without the dataset while it matches the runs and settings."""

from __future__ import annotations

import pytest

from densenet_repro import deep_supervision as ds


def _runs(tmp_path):
    return {("point", 0): {"run_dir": (tmp_path / "implicit_supervision" / "densenet-c10+-abc").as_posix()}}


def test_a_kept_measurement_is_read_without_the_dataset(tmp_path, monkeypatch):
    import pandas as pd

    runs = _runs(tmp_path)
    layers = pd.DataFrame([{"network": "D", "state": "trained", "layer": 1, "gradient RMS": 1e-5,
                            "probe accuracy (%)": 40.0}])
    measured = []

    def measure(networks, data, probe_images):
        measured.append(probe_images)
        return layers, {("D", "trained"): [2.0, 3.0]}

    monkeypatch.setattr(ds, "networks", lambda runs: {})
    monkeypatch.setattr(ds, "measure", measure)
    monkeypatch.setattr(ds, "load_probe_data", lambda budget, root: type("Data", (), {"source": type(
        "Source", (), {"description": "CIFAR-10, a copy"})()})())
    first = ds.measurements(runs, "cpu", "data", results=str(tmp_path))
    assert measured == [ds.PROBE_IMAGES["cpu"]] and first[2]["dataset"] == "CIFAR-10, a copy"
    kept = tmp_path / "implicit_supervision" / "measurements-cpu.json"
    assert first[2]["files"] == [kept.as_posix()]

    def no_data(budget, root):
        raise AssertionError("the dataset was read although the measurement is kept")

    monkeypatch.setattr(ds, "load_probe_data", no_data)
    again = ds.measurements(runs, "cpu", "/nowhere", results=str(tmp_path))
    assert again[0].to_dict(orient="records") == layers.to_dict(orient="records")
    assert again[1] == {("D", "trained"): [2.0, 3.0]} and measured == [ds.PROBE_IMAGES["cpu"]]
    other = {("point", 0): {"run_dir": "results/implicit_supervision/densenet-c10+-other"}}
    with pytest.raises(AssertionError, match="the dataset was read"):  # other runs: measured again
        ds.measurements(other, "cpu", "/nowhere", results=str(tmp_path))


def test_section_4_says_what_its_budget_scales():
    from densenet_repro import sweeps

    text = ds.scaling_text(sweeps.SUPERVISION["cpu"], "cpu")
    assert "1 epoch each" in text and "LR 0.1 in epoch 1" in text and "Figure 4" not in text
