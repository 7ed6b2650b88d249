"""Runs nothing can corrupt, and errors that tell a user's mistake from a bug.

- The GPU path picks an indexed CUDA device (faked here: CI has no GPU).
- A bug keeps its traceback; bad input and a bad environment get one line that says what to do.
- Two processes never share a run folder; a damaged summary.json is reported, never used.
- Committed results are found again by their hash, and without the dataset.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from densenet_repro import cli
from densenet_repro import train as T
from densenet_repro.errors import ConfigError, OutputNotWritableError, ResultFileError, RunLockedError

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["--model", "densenet40_k12", "--dataset", "c10+", "--budget", "smoke", "--epochs", "1", "--progress", "none"]


def tiny(tmp_path: Path, **kw) -> T.RunConfig:
    base = dict(model="densenet40_k12", dataset="c10+", model_kwargs={"depth": 10}, epochs=1, data_source="synthetic",
                train_subset=128, test_subset=64, out=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                progress="none", num_threads=1, device="cpu")
    base.update(kw)
    return T.RunConfig(**base)


# ----------------------------------------------------------------------------------------------
# Devices (a fake GPU: the bug this catches crashed every real GPU run)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs; set_device accepts only an indexed device, as CUDA does."""
    made_current = []

    def set_device(dev):
        dev = torch.device(dev)
        if dev.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{dev}")
        made_current.append(dev)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return made_current


def test_cuda_without_an_index_gets_one(fake_gpus):
    assert T.pick_device("cuda") == torch.device("cuda", 0)
    assert T.pick_device("auto") == torch.device("cuda", 0)
    assert T.pick_device("cuda:1") == torch.device("cuda", 1)
    assert T.pick_device("cuda", local_rank=1, world=2) == torch.device("cuda", 1)  # torchrun: LOCAL_RANK's GPU
    assert fake_gpus == []  # choosing a device changes nothing: the run makes it current while it trains
    with pytest.raises(ConfigError, match="has 2 GPU"):
        T.pick_device("cuda:5")


def test_the_engine_trains_on_the_gpu_it_picked(fake_gpus, monkeypatch, tmp_path):
    """Through the CLI, as a user runs it: the device handed to the training loop is indexed."""
    seen = {}

    def fake_train(run, procs, on_epoch_end):
        seen["dev"] = run.device
        return {"run_dir": str(run.run_dir), "final_test_error_pct": 1.0, "best_test_error_pct": 1.0,
                "reported_test_error_pct": 1.0, "wall_time_s": 0.0}

    monkeypatch.setattr(T, "_train", fake_train)
    assert cli.train_main([*SMOKE, "--device", "cuda", "--out", str(tmp_path / "runs"), "--results", ""]) == 0
    assert seen["dev"] == torch.device("cuda", 0) and fake_gpus[0] == torch.device("cuda", 0)  # made current


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(T, "_train", broken)
    with pytest.raises(RuntimeError, match="an internal error"):  # not turned into a one-line "error:"
        cli.train_main([*SMOKE, "--device", "cpu", "--out", str(tmp_path / "runs"), "--results", ""])


# ----------------------------------------------------------------------------------------------
# Bad input and environment: one line, a fix, no traceback (as a user sees it: a subprocess)
# ----------------------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp / "corrupt" / "cifar10-jpeg.tar.gz"
    corrupt.parent.mkdir()
    with tarfile.open(tmp / "good.tar.gz", "w:gz") as tar:
        for i in range(50):
            payload = os.urandom(4000)
            info = tarfile.TarInfo(f"cifar10-jpeg/train/cat/{i}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    corrupt.write_bytes((tmp / "good.tar.gz").read_bytes()[:3000])  # truncated mid-stream
    (tmp / "afile.txt").write_text("not data")
    out = ["--out", str(tmp / "runs"), "--results", ""]
    real = ["--model", "densenet40_k12", "--dataset", "c10", "--no-download", *out]
    return {
        "unknown model argument": ([*SMOKE, "--model-kwargs", '{"foo": 1}', *out], "do not fit"),
        "depth of the wrong type": ([*SMOKE, "--model-kwargs", '{"depth": "x"}', *out], "do not fit"),
        "depth a ResNet cannot have": (["--model", "resnet110", "--dataset", "c10+", "--budget", "smoke",
                                        "--model-kwargs", '{"depth": 41}', *out], "do not fit"),
        "unknown device": ([*SMOKE, "--device", "nonsense", *out], "use auto, cpu, cuda or cuda:N"),
        "corrupt archive": ([*real, "--data-root", str(corrupt.parent)], "copy it again"),
        "data root is a file": ([*real, "--data-root", str(tmp / "afile.txt")], "pass the folder"),
        "output under a file": ([*SMOKE, "--out", str(tmp / "afile.txt" / "runs"), "--results", ""], "writable --out"),
        "data root with synthetic data": ([*SMOKE, "--data-root", str(tmp), *out], "drop --data-root"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown model argument", "depth of the wrong type", "depth a ResNet cannot have",
                                  "unknown device", "corrupt archive", "data root is a file", "output under a file",
                                  "data root with synthetic data"])
def test_bad_input_is_one_line_that_names_the_fix(case, tmp_path):
    argv, fix = _bad_inputs(tmp_path)[case]
    proc = subprocess.run([sys.executable, "-m", "densenet_repro", "train", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                       "DENSENET_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("python -m densenet_repro train: error:"), proc.stderr
    assert fix in proc.stderr


def test_read_only_output_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputNotWritableError, match="Read-only file system.*writable --out"):
        T.train(tiny(tmp_path))


def test_divergence_advice_fits_the_precision():
    assert "amp='none'" not in T.divergence_advice("none") and "amp='none'" in T.divergence_advice("bf16")


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    argv = [*SMOKE, "--model-kwargs", '{"depth": 10}', "--train-subset", "128", "--test-subset", "64", "--threads", "1",
            "--device", "cpu", "--out", str(tmp_path / "runs"), "--results", ""]
    assert cli.train_main([*argv, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert cli.train_main([*argv, "--resume"]) == 0  # finished now: nothing to say
    assert "nothing to resume" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------


_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from densenet_repro.train import RunConfig, train
    def hold(epoch, row):
        Path({ready!r}).write_text("ready")
        time.sleep(120)  # the test kills us long before
    train(RunConfig(**{cfg!r}), on_epoch_end=hold)
""")


@pytest.mark.slow
def test_a_second_run_on_the_same_folder_refuses_and_leaves_the_first_intact(tmp_path):
    cfg = tiny(tmp_path, epochs=2)
    ready = tmp_path / "ready"
    script = _HOLDER.format(repo=str(REPO), ready=str(ready), cfg=dataclasses.asdict(cfg))
    first = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.2)
        run = next((tmp_path / "runs" / "train").iterdir())
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
        for second in (cfg, dataclasses.replace(cfg, resume=True, fast_blocks=False)):  # same hash, other options
            with pytest.raises(RunLockedError, match=f"in use by process {first.pid}"):
                T.train(second)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    finally:
        first.kill()
        first.wait()
    # the lock died with its process: the run continues
    assert T.train(dataclasses.replace(cfg, resume=True))["epochs"] == 2


# ----------------------------------------------------------------------------------------------
# Damaged results are reported and never used
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[1, 2]", "null", "{}", '{"finished": tru', "DAMAGE-KEY"])
@pytest.mark.parametrize("where", ["out", "results"])
def test_a_damaged_summary_is_reported_and_never_used(tmp_path, capsys, content, where):
    cfg = tiny(tmp_path)
    good = T.train(cfg)
    run = Path(good["run_dir"])
    if where == "results":  # the committed copy is damaged; the local run is gone
        committed = Path(cfg.results) / cfg.experiment / run.name
        committed.parent.mkdir(parents=True)
        run.rename(committed)
        run = committed
    summary = json.loads((run / "summary.json").read_text())
    text = json.dumps({k: v for k, v in summary.items() if k != "final_test_error_pct"}) if content == "DAMAGE-KEY" \
        else content
    (run / "summary.json").write_text(text)
    with pytest.raises(ResultFileError, match=re.escape(f"{run / 'summary.json'} is damaged") + ".* not used as a result"):
        T.train(cfg)
    with pytest.raises(ResultFileError):
        T.train(dataclasses.replace(cfg, resume=True))
    assert (run / "summary.json").read_text() == text  # reported, left as it is
    if where == "out":  # and as a user sees it
        argv = [*SMOKE, "--model-kwargs", '{"depth": 10}', "--train-subset", "128", "--test-subset", "64",
                "--threads", "1", "--device", "cpu", "--out", cfg.out, "--results", cfg.results]
        assert cli.train_main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is damaged" in err


# ----------------------------------------------------------------------------------------------
# Hashes: every field declares whether it is hashed; committed results are found again
# ----------------------------------------------------------------------------------------------


def test_every_config_field_declares_whether_it_is_hashed():
    for f in dataclasses.fields(T.RunConfig):
        assert "hashed" in f.metadata, f"{f.name}: declare it with recipe(...) or option(...)"
    assert "amp" in T.HASHED_FIELDS and "device" not in T.HASHED_FIELDS


def test_committed_results_are_found_again_by_their_hash():
    configs = glob.glob(str(REPO / "results" / "**" / "config.json"), recursive=True)
    assert configs
    names = {f.name for f in dataclasses.fields(T.RunConfig)}
    for path in configs:
        saved = json.loads(Path(path).read_text())
        kwargs = {k: v for k, v in saved.items() if k in names}
        kwargs["lr_milestones"] = tuple(kwargs["lr_milestones"])
        kwargs["keep_weights_at"] = tuple(kwargs.get("keep_weights_at", ()))
        config = T.RunConfig(**kwargs).validate()  # the stored config is a valid config, as stored
        assert T.config_hash(config, saved["data_source_id"]) == saved["config_hash"], path
        assert Path(path).parent.name.endswith(saved["config_hash"])


def test_a_committed_run_is_found_without_its_dataset(tmp_path):
    """A fresh clone offline: the image-folder copy is absent, the committed finished run still answers."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _image_folder_tar(data_dir / "cifar10-jpeg.tar.gz")
    os.environ["DENSENET_CACHE"] = str(tmp_path / "cache")
    try:
        cfg = tiny(tmp_path, data_source="auto", data_root=str(data_dir), train_subset=None, test_subset=None,
                   download=False)
        made = T.train(cfg)
    finally:
        del os.environ["DENSENET_CACHE"]
    committed = Path(cfg.results) / cfg.experiment / Path(made["run_dir"]).name
    committed.parent.mkdir(parents=True)
    Path(made["run_dir"]).rename(committed)
    offline = dataclasses.replace(cfg, data_root=str(tmp_path / "empty"))
    found = T.train(offline)
    assert found["cached"] and found["run_dir"] == committed.as_posix()
    other_recipe = dataclasses.replace(offline, epochs=2)  # nothing committed: the data is needed
    with pytest.raises(FileNotFoundError, match="put the official files"):
        T.train(other_recipe)


def test_a_published_run_is_read_from_results_not_from_the_uncommitted_out(tmp_path):
    """Reports cite the files they read; runs/ is not committed, so the copy in results/ must win."""
    from densenet_repro.experiments import publish

    cfg = tiny(tmp_path)
    made = T.train(cfg)
    published = publish(made, cfg.results)
    assert Path(made["run_dir"]).is_dir()  # both copies exist, as on the machine that trained
    _, _, done = T.locate_run(cfg.validate().resolved())
    assert done == published


def _image_folder_tar(path: Path) -> None:
    """A tiny image-folder copy of CIFAR-10's layout: 2 training and 1 test image per class."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 2), ("test", 1)):
            for c in range(10):
                for i in range(n):
                    buf = io.BytesIO()
                    pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                    Image.fromarray(pixels).save(buf, format="JPEG", quality=75)
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/class{c}/{i}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)


def test_a_copy_without_git_records_the_commit_it_is_given(tmp_path, monkeypatch):
    """The GPU machine's copy has no .git: gpu-check passes the commit in $DENSENET_COMMIT."""
    from densenet_repro import provenance

    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)  # not a repository
    monkeypatch.delenv("DENSENET_COMMIT", raising=False)
    assert provenance.git_commit() == ("unknown", False)
    monkeypatch.setenv("DENSENET_COMMIT", "0123abc+changes")
    assert provenance.git_commit() == ("0123abc", True)
    assert provenance.code_commit() == "0123abc+changes"


def test_each_epoch_names_the_code_that_trained_it_not_the_checkpoint_commit(tmp_path, monkeypatch):
    """A run resumed from its own checkpoint commits: HEAD moves at every resume, the code does not."""
    from densenet_repro import provenance

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "train.py").write_text("v1\n")
    git("add", "-A"), git("commit", "-qm", "code")
    code = git("rev-parse", "HEAD")
    run = tmp_path / "results" / "table2" / "run"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_text("epoch 1\n")
    git("add", "-A"), git("commit", "-qm", "checkpoint")
    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)
    assert provenance.git_commit()[0] != code and provenance.code_commit() == code
    (run / "checkpoint.pt").write_text("epoch 2\n")  # the run writing its next checkpoint
    assert provenance.code_commit() == code
    (tmp_path / "train.py").write_text("v2\n")
    assert provenance.code_commit() == code + "+changes"

    monkeypatch.undo()
    s = T.train(tiny(tmp_path / "t"))
    m = pd.read_csv(Path(s["run_dir"]) / "metrics.csv")
    assert list(m.code_commit) == [provenance.code_commit()]
    assert json.loads((Path(s["run_dir"]) / "config.json").read_text())["code_commit"] == provenance.code_commit()


def test_deterministic_cuda_after_cuda_started_without_the_cublas_setting_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ConfigError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts"):
        T.plan(tiny(tmp_path, deterministic=True, device="cuda"))
