"""`python -m densenet_repro gpu-check`, as far as a machine without a GPU can check it."""

from __future__ import annotations

import pytest

from densenet_repro import cli, gpu_check, train


def test_without_a_gpu_it_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err


def test_unknown_phase_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--phases", "env,bogus"])
    assert e.value.code == 2 and "bogus" in capsys.readouterr().err


def test_targets_are_computed_and_can_fail():
    fast = {"eager_bf16_cl": {"train_loss": 1.50},
            "default_bf16_cl_compiled": {"epoch_s": 5.0, "compile_s": 80.0, "train_loss": 1.51}}
    v = gpu_check._verdicts(fast)
    assert v["epoch_s"]["met"] and v["warmup_s"]["met"] and v["compiled_vs_eager_loss"]["met"]
    slow = {"eager_bf16_cl": {"train_loss": 1.50},
            "default_bf16_cl_compiled": {"epoch_s": 10.6, "compile_s": 211.0, "train_loss": 1.80}}
    v = gpu_check._verdicts(slow)
    assert not (v["epoch_s"]["met"] or v["warmup_s"]["met"] or v["compiled_vs_eager_loss"]["met"])
    assert gpu_check._verdicts({}) == {}  # nothing measured: no target reported as met or missed


def test_the_headline_phase_continues_the_committed_run():
    """The train arguments gpu-check passes give the same config hash as the committed run."""
    args = cli.build_train_parser().parse_args(gpu_check.headline_args("data"))
    cfg = cli.config_from_args(args).validate()
    assert train.config_hash(cfg, "folder:cifar10-jpeg.tar.gz") == "4bd6f77af9"
