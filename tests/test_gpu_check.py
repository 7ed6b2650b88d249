"""`python -m densenet_repro gpu-check`, as far as a machine without a GPU can check it: its pieces,
then the rehearsal (every phase on the CPU at toy sizes, under the GPU machine's constraints) and
the return trip (`--adopt`) of what the rehearsal returned, into temporary folders only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from densenet_repro import gpu_check
from densenet_repro.gpu_check import child, guard, phases, rehearsal, runner
from densenet_repro.runstore import CHECKPOINT, RunLock, load_checkpoint, save_checkpoint, snapshot_path

REPO = Path(__file__).resolve().parent.parent
HEADLINE_RUN = "table2/densenet40_k12-c10+-01b99540a5"  # the headline schedule still to finish (300 epochs)


def test_without_a_gpu_it_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err and "--rehearse" in err


def test_unknown_phase_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--phases", "env,bogus"])
    assert e.value.code == 2 and "bogus" in capsys.readouterr().err


def measured(epoch_s=5.0, warmup_s=80.0, loss=1.51, estimated=False):
    return {"compiled": {"steady": True, "full_epoch_s": epoch_s, "full_epoch_estimated": estimated,
                         "warmup_s": warmup_s, "first_epoch_train_loss": loss, "status": "ok"},
            "eager_bf16": {"first_epoch_train_loss": 1.50, "status": "ok"}}


def test_targets_are_met_missed_estimated_rehearsed_or_not_measured():
    statuses = lambda t: {k: v["status"] for k, v in t.items()}  # noqa: E731
    assert set(statuses(phases.targets(measured(), "gpu")).values()) == {"met"}
    assert set(statuses(phases.targets(measured(10.6, 211.0, 1.80), "gpu")).values()) == {"missed"}
    synthetic = statuses(phases.targets(measured(estimated=True), "gpu"))
    assert synthetic["compiled_epoch_s"].startswith("estimated") and synthetic["warmup_s"] == "met"
    assert set(statuses(phases.targets(measured(), "rehearsal")).values()) == {phases.REHEARSED}
    killed = {"compiled": {"status": "killed by its timeout"}}
    assert all(s.startswith("not measured (compiled: killed") for s in statuses(phases.targets(killed, "gpu")).values())


def test_epoch_numbers_keep_the_steady_epoch_apart_from_the_first():
    def row(epoch, seconds, images, **kw):
        return {"epoch": epoch, "lr": 0.1, "train_loss": 2.0, "test_err_pct": 50.0, "epoch_time_s": seconds,
                "train_images_per_s": round(images / seconds, 1), "eval_time_s": 1.0, **kw}

    batch = {"batch_size": 64}
    full = phases.epoch_numbers([row(1, 7.0, 50_000, compile_time_s=80.0), row(2, 5.2, 50_000)], batch, {})
    assert full["warmup_s"] == 80.0 and full["full_epoch_s"] == 5.2 and not full["full_epoch_estimated"]
    assert full["first_epoch_extra_s"] == pytest.approx(1.8)
    assert full["steady_step_s"] == pytest.approx(5.2 / 782, rel=1e-3)
    small = phases.epoch_numbers([row(1, 0.2, 640), row(2, 0.1, 640)], batch, {})
    assert small["full_epoch_estimated"] and small["full_epoch_s"] == pytest.approx(0.1 / 10 * 782, rel=1e-3)


def test_the_headline_phase_continues_the_committed_run():
    """gpu-check plans the headline run exactly as the committed run (same config hash, same folder),
    on the CPU, so its own process never starts CUDA: the first schedule not finished, 300 epochs once
    the 30- and 100-epoch runs have finished."""
    config, run = phases.plan_headline(phases.GPU, "data", "results")
    assert run.run_dir == REPO / "results" / HEADLINE_RUN and run.device.type == "cpu" and run.finished is None
    assert config.keep_weights_at == (30, 150, 225) and config.epochs == 300 and run.hash == "01b99540a5"


def test_the_epoch_phases_train_the_paper_recipe_in_their_mode(tmp_path):
    """Each epoch phase's command line, as the train command parses it: DenseNet-BC-100, C10+, batch
    64, on the dataset in data/, same seed, in the phase's precision and compilation."""
    from densenet_repro import cli

    check = gpu_check.make_check(phases.GPU, tmp_path / "out", tmp_path, "data", True, "results", {}, 450)
    for phase, (epochs, _) in phases.EPOCH_MODES.items():
        cmd = phases.epoch_command(check, phase)
        config = cli.config_from_args(cli.build_train_parser().parse_args(cmd[cmd.index("train") + 1:]))
        assert (config.model, config.dataset, config.batch_size, config.seed, config.epochs) == (
            "densenet_bc100_k12", "c10+", 64, 0, epochs)
        assert (config.device, config.data_root, config.data_source, config.tf32) == ("cuda", "data", "auto", False)
        assert (config.amp, config.compile) == {"compiled": ("bf16", True), "eager_bf16": ("bf16", False),
                                                "eager_fp32": ("none", False)}[phase]


def test_the_headline_config_survives_its_trip_to_the_child():
    from densenet_repro.config import config_hash

    config, _ = phases.plan_headline(phases.GPU, "data", "results")
    back = child.config_from_json(json.loads(json.dumps(config.to_dict())))
    assert back == config and config_hash(back, "x") == config_hash(config, "x")


def test_the_first_line_says_when_the_dataset_is_absent(tmp_path):
    present, line = gpu_check.data_status(str(tmp_path), phases.GPU)
    assert not present and "no dataset" in line and "synthetic" in line and "headline phase is skipped" in line
    (tmp_path / gpu_check.DATA_ARCHIVE).symlink_to(tmp_path / "elsewhere" / gpu_check.DATA_ARCHIVE)
    present, line = gpu_check.data_status(str(tmp_path), phases.GPU)
    assert not present and "link whose target did not travel" in line and "copy the archive itself" in line


def test_layout_problems_are_what_would_not_come_back(tmp_path):
    assert runner.layout_problems(tmp_path) == []
    for i in range(8):
        (tmp_path / f"f{i}.log").write_text("x")
    assert runner.layout_problems(tmp_path) == []  # 8 flat files: all of them come back
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    with open(tmp_path / "big.pt", "wb") as f:
        f.truncate(17 * runner.MIB)  # sparse: no disk used
    (tmp_path / "bad name.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f0.log")
    problems = "\n".join(runner.layout_problems(tmp_path))
    for expected in ("more than 2 folders down", "over 16 MiB", "bad name.txt: the name", "link: a link",
                     "files, over 8"):
        assert expected in problems


def test_a_phase_killed_by_its_timeout_keeps_its_log_and_its_children_die(tmp_path):
    log = tmp_path / "phase.log"
    cmd = ["sh", "-c", "sleep 60 & echo child $!; echo started; wait"]
    outcome = runner.run_logged(cmd, log, 2, dict(os.environ), tmp_path)
    assert outcome.timed_out and outcome.returncode is None and outcome.wall_s < 15
    runner.end_log(log, {"status": "killed by its timeout"})
    text = log.read_text()
    assert "started" in text and runner.read_log_result(log) == {"status": "killed by its timeout"}
    child = int(text.split("\nchild ")[1].split()[0])
    time.sleep(0.2)
    assert not alive(child)  # the whole process group went


def alive(pid: int) -> bool:
    """Running (a killed process whose parent died may linger as a zombie until PID 1 reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_the_guard_blocks_the_notebook_packages_and_the_forbidden_folder(tmp_path):
    forbidden, site = tmp_path / "shared", tmp_path / "site"
    forbidden.mkdir()
    (forbidden / "data.txt").write_text("x")
    site.mkdir()
    shutil.copyfile(guard.__file__, site / "sitecustomize.py")
    settings = {"blocked": list(guard.BLOCKED_PACKAGES), "forbidden": [str(forbidden)],
                "violations": str(tmp_path / "violations.txt")}
    probe = "\n".join([
        "try:", "    import nbformat", "    print('imported')",
        "except ModuleNotFoundError as e:", "    print('blocked', e.name)",
        "try:", f"    open({str(forbidden / 'data.txt')!r})", "    print('read')",
        "except PermissionError:", "    print('refused')",
        "import json; print('json still imports')"])
    env = os.environ | {guard.GUARD_ENV: json.dumps(settings), "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:3] == ["blocked nbformat", "refused", "json still imports"], out.stderr
    assert str(forbidden / "data.txt") in (tmp_path / "violations.txt").read_text()


def a_check(tmp_path: Path, **kw) -> gpu_check.Check:
    check = gpu_check.make_check(rehearsal.REHEARSAL, tmp_path / "out", tmp_path / "scratch", str(tmp_path / "data"),
                                 False, str(tmp_path / "committed"), dict(os.environ), 60)
    check.summary = gpu_check.new_summary(check, "abc123", "gpu-check: (test)", ["tests"], [])
    return check


def test_without_pytest_the_tests_phase_says_so_in_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(phases, "pytest_available", lambda: False)
    check = a_check(tmp_path)
    gpu_check.run_check(check, ["tests"])
    result = runner.read_log_result(check.out / "tests.log")
    assert result["status"] == "skipped" and "pytest is not installed" in result["note"]
    assert json.loads((check.out / "gpu_check.json").read_text())["phases"]["tests"]["status"] == "skipped"
    assert gpu_check.finish(check) == 1  # no phase succeeded: exit code 1


# ----------------------------------------------------------------------------------------------
# The rehearsal, and the return trip of what it returned
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """One rehearsal for the tests below: (its OUT, its stdout, its wall time, its exit code)."""
    out = tmp_path_factory.mktemp("rehearsal") / "out"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "densenet_repro", "gpu-check", "--rehearse", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    return out, proc.stdout + proc.stderr, time.monotonic() - t0, proc.returncode


@pytest.mark.slow
def test_the_rehearsal_runs_every_phase_under_the_gpu_machines_constraints(rehearsed):
    out, output, wall_s, rc = rehearsed
    assert rc == 0, output[-4000:]
    assert wall_s < rehearsal.WALL_LIMIT_S
    assert output.startswith("gpu-check: no dataset in ") and "synthetic" in output.splitlines()[0]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["check"] == "rehearsal" and summary["status"] == phases.REHEARSED
    assert {name: c["ok"] for name, c in summary["rehearsal"].items() if c["ok"] is not None} == {
        name: True for name, c in summary["rehearsal"].items() if c["ok"] is not None}
    # the constraints, seen here again from the files themselves
    assert runner.layout_problems(out) == [] and len(list(out.iterdir())) <= runner.LIMITS["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [phases.SUMMARY_FILE, "headline_checkpoint.pt", *(phases.log_name(p) for p in phases.PHASES)])
    ran = summary["phases"]
    assert all(ran[p]["ok"] for p in phases.PHASES)
    assert not any(ran["env"]["packages"][name] for name in ("papermill", "nbformat", "nbconvert", "jupyter"))
    assert ran["env"]["git_commit"] == "unknown" and ran["env"]["commit"] == summary["commit"] != "unknown"
    assert ran["compiled"]["lr"] == pytest.approx([0.1, 0.001]) and ran["compiled"]["warmup_s"] > 0
    assert "warmup_seen_at" in ran["compiled"] and "steady_step_s" in ran["compiled"]
    assert ran["eager_fp32"]["tf32"] is False and ran["eager_fp32"]["amp"] == "none"
    assert ran["tests"]["counts"]["skipped"] >= 1 and ran["tests"]["counts"]["deselected"] >= 1  # only the cuda ones
    head = ran["headline"]
    assert head["timed_out"] and head["to_epoch"] > head["from_epoch"] == 1
    assert runner.read_log_result(out / "headline.log")["timed_out"]  # the killed phase left its file
    assert head["run"] != HEADLINE_RUN  # a toy run, never the committed headline


def adoptable(rehearsed, tmp_path):
    """A copy of the rehearsal's OUT and a results folder holding the run its checkpoint continues
    (the rehearsal's own went with its scratch folder), at epoch 0."""
    returned = tmp_path / "returned"
    shutil.copytree(rehearsed[0], returned)
    head = json.loads((returned / "gpu_check.json").read_text())["phases"]["headline"]
    root = tmp_path / "results"
    (root / head["run"]).mkdir(parents=True)
    (root / head["run"] / "config.json").write_text(head["run_files"]["config.json"])
    (root / "gpu").mkdir()
    (root / "gpu" / "README.md").write_text("kept")
    return returned, root, head


@pytest.mark.slow
def test_adopt_puts_the_check_in_gpu_and_the_checkpoint_at_its_one_path(rehearsed, tmp_path):
    returned, root, head = adoptable(rehearsed, tmp_path)
    assert gpu_check.main(["--adopt", str(returned), "--results", str(root)]) == 0
    run_dir = root / head["run"]
    state = load_checkpoint(run_dir / CHECKPOINT, head["config_hash"])
    assert state["epoch"] == head["to_epoch"]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == head["to_epoch"] + 1
    gpu = sorted(p.name for p in (root / "gpu").iterdir())
    assert "gpu_check.json" in gpu and "headline.log" in gpu and "README.md" in gpu
    assert "headline_checkpoint.pt" not in gpu


@pytest.mark.slow
def test_adopt_writes_the_snapshot_of_a_kept_epoch(rehearsed, tmp_path):
    returned, root, head = adoptable(rehearsed, tmp_path)
    summary = json.loads((returned / "gpu_check.json").read_text())
    config = json.loads(head["run_files"]["config.json"]) | {"keep_weights_at": [head["to_epoch"]]}
    summary["phases"]["headline"]["run_files"]["config.json"] = json.dumps(config)
    (returned / "gpu_check.json").write_text(json.dumps(summary))
    assert gpu_check.main(["--adopt", str(returned), "--results", str(root)]) == 0
    snapshot = torch.load(snapshot_path(root / head["run"], head["to_epoch"]), weights_only=True)
    state = load_checkpoint(returned / "headline_checkpoint.pt", head["config_hash"])
    assert all(torch.equal(snapshot[k], state["model"][k]) for k in state["model"])


@pytest.mark.slow
def test_adopt_refuses_what_is_not_a_continuation(rehearsed, tmp_path, capsys):
    returned, root, head = adoptable(rehearsed, tmp_path)
    run_dir = root / head["run"]

    def refused(results=str(root)) -> str:
        assert gpu_check.main(["--adopt", str(returned), "--results", results]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    assert "rehearsal" in refused("results")  # never into the repository's results/
    state = load_checkpoint(returned / "headline_checkpoint.pt", head["config_hash"])
    save_checkpoint(run_dir / CHECKPOINT, state)
    assert "not ahead" in refused()
    first = dict(state["rows"][0], train_loss=state["rows"][0]["train_loss"] + 1)
    save_checkpoint(run_dir / CHECKPOINT, state | {"epoch": 1, "rows": [first]})
    assert "another history" in refused()
    (run_dir / CHECKPOINT).unlink()
    with RunLock(run_dir):
        assert "in use" in refused()  # a training holds the folder
    shutil.rmtree(run_dir)
    assert "not in" in refused()
    assert not (root / "gpu" / "gpu_check.json").exists()  # refused before anything was written
