"""A run is never returned for other data, and what a user can fix gets one line.

Data identity: a finished run is reused only on the data it was made on (its content fingerprint);
the same pixels as a directory and as a .tar.gz are one source. Run folders: temporary files left
by a killed writer go, a checkpoint that disagrees with itself is refused, a summary with NaN errors
is not a result. Committed results are found from any working directory.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from densenet_repro import data
from densenet_repro import train as T
from densenet_repro.errors import (CheckpointError, DataMismatchError, DataReadError, OutputNotWritableError,
                                   ResultFileError)

from test_run_integrity import tiny as synthetic  # a tiny DenseNet on synthetic data
from test_train import interrupted_after_one_epoch as interrupted

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DENSENET_DATA", raising=False)


def image_folder(path: Path, per_class: dict[str, int], *, archive: bool = True, empty: tuple[str, str] = ()) -> Path:
    """An image-folder copy of CIFAR-10's layout with per_class[split] images a class (tar.gz or directory);
    `empty` = (split, class) makes that class folder exist without images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    files = {}
    for split, n in per_class.items():
        for c in range(10):
            for i in range(0 if (split, f"class{c}") == tuple(empty) else n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                files[f"cifar10-jpeg/{split}/class{c}/{i}.png"] = buf.getvalue()
    dirs = {f"cifar10-jpeg/{s}/class{c}" for s in per_class for c in range(10)}
    if archive:
        with tarfile.open(path, "w:gz") as tar:
            for d in sorted(dirs):
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        for d in dirs:
            (path / d).mkdir(parents=True, exist_ok=True)
        for name, payload in files.items():
            (path / name).write_bytes(payload)
    return path


def tiny(tmp_path: Path, data_root: Path, **kw) -> T.RunConfig:
    base = dict(model="densenet40_k12", dataset="c10", model_kwargs={"depth": 10}, epochs=1, data_root=str(data_root),
                out=str(tmp_path / "runs"), results=str(tmp_path / "results"), progress="none", num_threads=1,
                device="cpu", download=False, batch_size=16, eval_batch_size=50)
    base.update(kw)
    return T.RunConfig(**base)


# ----------------------------------------------------------------------------------------------
# Data identity
# ----------------------------------------------------------------------------------------------


def test_a_run_is_not_returned_for_a_partial_copy_of_the_same_name(tmp_path):
    full = image_folder((tmp_path / "full").mkdir() or tmp_path / "full" / "cifar10-jpeg.tar.gz", {"train": 4, "test": 2})
    made = T.train(tiny(tmp_path, full.parent))
    partial = image_folder((tmp_path / "partial").mkdir() or tmp_path / "partial" / "cifar10-jpeg.tar.gz",
                           {"train": 2, "test": 1})
    with pytest.raises(DataMismatchError, match="made on other data.*a copy is known by its name"):
        T.train(tiny(tmp_path, partial.parent))
    assert T.train(tiny(tmp_path, full.parent))["run_dir"] == made["run_dir"]  # the right data: found again


def test_the_same_pixels_as_a_directory_and_as_an_archive_are_one_source(tmp_path):
    archive = image_folder((tmp_path / "a").mkdir() or tmp_path / "a" / "cifar10-jpeg.tar.gz", {"train": 3, "test": 1})
    folder = image_folder((tmp_path / "b").mkdir() or tmp_path / "b", {"train": 3, "test": 1}, archive=False)
    from_archive = data.resolve_source("c10", archive.parent, download=False)
    from_folder = data.resolve_source("c10", folder / "cifar10-jpeg", download=False)
    assert from_archive.id == from_folder.id == "folder:cifar10-jpeg.tar.gz"
    assert data.fingerprint("c10", from_archive) == data.fingerprint("c10", from_folder)
    made = T.train(tiny(tmp_path, archive.parent))
    found = T.train(tiny(tmp_path, folder / "cifar10-jpeg"))
    assert found["cached"] and found["run_dir"] == made["run_dir"]  # not retrained


def test_a_resumed_run_on_other_data_is_refused_before_anything_is_overwritten(tmp_path):
    full = image_folder((tmp_path / "full").mkdir() or tmp_path / "full" / "cifar10-jpeg.tar.gz", {"train": 4, "test": 2})
    cfg = tiny(tmp_path, full.parent, epochs=2)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, on_epoch_end=stop)
    run = next((tmp_path / "runs" / "train").iterdir())
    before = (run / "config.json").read_text()
    other = image_folder((tmp_path / "other").mkdir() or tmp_path / "other" / "cifar10-jpeg.tar.gz", {"train": 3, "test": 2})
    with pytest.raises(DataMismatchError, match="was started on other data"):
        T.train(dataclasses.replace(cfg, data_root=str(other.parent), resume=True))
    assert (run / "config.json").read_text() == before and (run / T.CHECKPOINT).exists()


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_class_folder_is_an_error_that_names_it(tmp_path, split):
    root = image_folder(tmp_path / "cifar10-jpeg.tar.gz", {"train": 2, "test": 1}, empty=(split, "class3"))
    with pytest.raises(DataReadError, match=f"the {split} class folder.*class3.*hold no images"):
        data.load("c10", root, download=False)


def test_a_damaged_dataset_cache_names_the_folder_to_delete(tmp_path):
    root = image_folder(tmp_path / "cifar10-jpeg.tar.gz", {"train": 2, "test": 1})
    data.load("c10", root, download=False)
    cache = next((tmp_path / "cache").iterdir())
    npy = cache / "train_x.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    data.sources._FINGERPRINTS.clear()
    with pytest.raises(DataReadError, match=f"delete {cache}"):
        data.load("c10", root, download=False)
    stats = cache / "stats-holdout0.json"
    (cache / "train_x.npy").unlink()
    import shutil

    shutil.rmtree(cache)
    data.load("c10", root, download=False)  # rebuilt
    stats.write_text('{"n": 2')  # truncated statistics: only a speed-up, computed again
    assert data.load("c10", root, download=False).mean


# ----------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------


def test_temporary_files_of_a_killed_writer_are_removed_when_the_folder_is_next_opened(tmp_path):
    cfg = synthetic(tmp_path, epochs=2)
    run = interrupted(cfg)
    left = [run / ".checkpoint.pt.tmp12345", run / ".weights.pt.tmp999"]
    for p in left:
        p.write_bytes(b"half")
    T.train(dataclasses.replace(cfg, resume=True))
    assert not any(p.exists() for p in left)


def test_a_checkpoint_whose_rows_disagree_with_its_epoch_is_refused(tmp_path):
    cfg = synthetic(tmp_path, epochs=3)
    run = interrupted(cfg)
    state = torch.load(run / T.CHECKPOINT, weights_only=False)
    state["epoch"] = 2  # one row, two epochs claimed
    torch.save(state, run / T.CHECKPOINT)
    with pytest.raises(CheckpointError, match="says epoch 2 but holds the metrics of epochs \\[1\\]"):
        T.train(dataclasses.replace(cfg, resume=True))


@pytest.mark.parametrize("damage", ["no model", "another architecture"])
def test_a_checkpoint_without_its_parts_or_of_another_network_is_one_line(tmp_path, damage):
    cfg = synthetic(tmp_path, epochs=2)
    run = interrupted(cfg)
    state = torch.load(run / T.CHECKPOINT, weights_only=False)
    if damage == "no model":
        del state["model"]
    else:
        state["model"] = T.build_model(dataclasses.replace(cfg, model_kwargs={"depth": 16}), 10).state_dict()
    torch.save(state, run / T.CHECKPOINT)
    with pytest.raises(CheckpointError, match="lacks model" if damage == "no model" else "does not fit"):
        T.train(dataclasses.replace(cfg, resume=True))


def test_a_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from densenet_repro import atomic

    cfg = synthetic(tmp_path, epochs=3)
    run = interrupted(cfg)
    kept = (run / T.CHECKPOINT).read_bytes()
    real = atomic.save_torch

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "save_torch", full)
    with pytest.raises(OutputNotWritableError, match="No space left on device.*epoch 1 is kept"):
        T.train(dataclasses.replace(cfg, resume=True))
    monkeypatch.setattr(atomic, "save_torch", real)
    assert (run / T.CHECKPOINT).read_bytes() == kept


@pytest.mark.parametrize("value", ["NaN", "-1.0", "101"])
def test_a_summary_with_an_impossible_error_is_not_a_result(tmp_path, value):
    cfg = synthetic(tmp_path, epochs=1)
    run = Path(T.train(cfg)["run_dir"])
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text.replace('"final_test_error_pct": ', f'"final_test_error_pct": {value}, "x": ', 1))
    with pytest.raises(ResultFileError, match="final_test_error_pct is not a finite error"):
        T.train(cfg)


def test_a_bad_learning_rate_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        T.train(synthetic(tmp_path, lr=-1.0))


@pytest.mark.slow
def test_committed_results_are_found_from_another_working_directory(tmp_path):
    """The default results/ is the repository's: a committed run answers wherever the command runs."""
    script = ("from densenet_repro.plan import plan\n"
              "from densenet_repro.experiments import arm_config\n"
              "from densenet_repro.paper import COMPARISONS\n"
              "import dataclasses\n"
              "cfg = arm_config(COMPARISONS[0].a, 'cpu', 0)\n"
              "for amp in ('none', 'bf16'):\n"
              "    run = plan(dataclasses.replace(cfg, amp=amp, data_root='/nonexistent'))\n"
              "    if run.finished: print(run.finished); break\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(REPO / "results")), proc.stdout


def test_upgrade_runs_records_a_fingerprint_only_where_the_data_is_the_runs(tmp_path):
    import json

    from densenet_repro.records import upgrade_runs

    full = image_folder((tmp_path / "full").mkdir() or tmp_path / "full" / "cifar10-jpeg.tar.gz", {"train": 4, "test": 2})
    partial = image_folder((tmp_path / "partial").mkdir() or tmp_path / "partial" / "cifar10-jpeg.tar.gz",
                           {"train": 3, "test": 2})
    run = Path(T.train(tiny(tmp_path, full.parent))["run_dir"])
    stored = json.loads((run / "config.json").read_text())
    fingerprint = stored.pop("data_fingerprint")
    stored["data_source"] = stored.pop("data_description")  # as versions before the fix wrote it
    (run / "config.json").write_text(json.dumps(stored))
    [line] = upgrade_runs(tmp_path / "runs", str(partial.parent))
    assert "data_source option restored" in line and "differs in train_full" in line
    after = json.loads((run / "config.json").read_text())
    assert after["data_source"] == "auto" and "data_fingerprint" not in after
    [line] = upgrade_runs(tmp_path / "runs", str(full.parent))
    assert "fingerprint recorded" in line
    assert json.loads((run / "config.json").read_text())["data_fingerprint"] == fingerprint
    assert upgrade_runs(tmp_path / "runs", str(full.parent)) == [f"{run}: up to date"]
