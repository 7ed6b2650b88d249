"""Figure 5's heat maps on hand-built DenseNets whose maps are known, and the observations' verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densenet_repro import feature_reuse as fr
from densenet_repro import stats
from densenet_repro.models.densenet import DenseNet

K0, K, LAYERS = 3, 2, 6  # block input maps, growth rate, layers per block


def tiny(source_weight) -> DenseNet:
    """A 3-block DenseNet whose weight from source s to target t is source_weight(block, s, t) everywhere.

    Targets 1..LAYERS are the dense layers, LAYERS + 1 the transition (or the classifier in block 3).
    """
    model = DenseNet(block_config=(LAYERS,) * 3, growth_rate=K, num_init_features=K0)
    k0s = [K0]
    for b in (1, 2):
        k0s.append(getattr(model.features, f"transition{b}").conv.out_channels)
    with torch.no_grad():
        for b in (1, 2, 3):
            block = getattr(model.features, f"denseblock{b}")
            readers = [layer.conv1.weight for layer in block.values()]
            readers.append(getattr(model.features, f"transition{b}").conv.weight if b < 3 else model.classifier.weight)
            for t, w in enumerate(readers, start=1):
                sizes = [k0s[b - 1]] + [K] * (t - 1)
                start = 0
                for s, n in enumerate(sizes):
                    sign = torch.where(torch.rand_like(w[:, start:start + n]) < 0.5, -1.0, 1.0)  # |w| is what counts
                    w[:, start:start + n] = sign * source_weight(b, s, t)
                    start += n
    return model


def test_raw_map_is_the_l1_norm_per_input_map_and_columns_are_normalised_by_their_max():
    model = tiny(lambda b, s, t: float(s + 1))
    maps = fr.heat_maps(model)
    assert [m.extra for m in maps] == ["transition 1", "transition 2", "classifier"]
    m = maps[0]
    assert m.raw.shape == (LAYERS + 1, LAYERS + 1)
    # layer 2 (column 1) reads x_0 and x_1: per input map, |w| summed over out maps and the 3x3 kernel
    per_map = model.features.denseblock1.denselayer2.conv1.out_channels * 9
    np.testing.assert_allclose(m.raw[:2, 1], [1 * per_map, 2 * per_map])
    assert np.isnan(m.raw[2:, 1]).all()  # layer 2 cannot read x_2, x_3
    np.testing.assert_allclose(m.normalised[:, LAYERS], np.arange(1, LAYERS + 2) / (LAYERS + 1))  # the transition
    classifier = maps[2].raw[:, LAYERS]
    np.testing.assert_allclose(classifier, 10 * np.arange(1, LAYERS + 2))  # 10 classes, a 1x1 "kernel"


def test_observations_hold_on_a_network_built_to_show_them():
    def weight(b, s, t):
        w = 1.0 + 0.05 * ((s * 7 + t * 3) % 5)  # every source used, with some variation between layers
        if b > 1 and s == 0 and t <= LAYERS:
            w = 0.5  # blocks 2 and 3 read the transition's output least
        if b == 3 and t == LAYERS + 1 and s == LAYERS:
            w = 3.0  # the classifier concentrates on the last layer
        return w

    obs = {o.name: o for o in fr.observations(fr.heat_maps(tiny(weight)))}
    assert obs["1"].verdict == stats.HOLDS and obs["1"].value > 0.8
    assert obs["2"].verdict == stats.HOLDS
    assert obs["3"].verdict == stats.HOLDS and obs["3"].value < 0
    assert obs["4"].value > 0


def test_observations_fail_on_a_network_built_against_them():
    def weight(b, s, t):
        return 1.0 if s == 0 else 0.01 + 0.001 * s  # every layer, transition and the classifier read only x_0

    obs = {o.name: o for o in fr.observations(fr.heat_maps(tiny(weight)))}
    assert obs["1"].verdict == stats.FAILS
    assert obs["2"].verdict == stats.FAILS
    assert obs["3"].verdict == stats.FAILS  # x_0 is read most in blocks 2 and 3
    assert obs["4"].value < 0


def test_spread_runs_from_one_over_n_to_one():
    assert fr.spread(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert fr.spread(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert fr.spread(np.array([1.0, 1.0, np.nan])) == pytest.approx(1.0)  # sources a target cannot read are skipped


def test_figure5_is_drawn_beside_the_snapshots_the_run_kept(tmp_path):
    """The headline run in progress (a checkpoint after epoch 16, no dataset here): its maps, those of the
    weights it kept after epochs 3 and 15, and the untrained network's; the weight files are recorded."""
    import json

    from densenet_repro import create_model, experiments
    from densenet_repro.config import config_hash, run_name

    cfg = experiments.headline_config(results=str(tmp_path)).resolved()
    h = config_hash(cfg, "folder:cifar10-jpeg.tar.gz")
    run = tmp_path / "table2" / run_name(cfg, h)
    (run / "snapshots").mkdir(parents=True)
    for e in (3, 15):
        torch.manual_seed(e)
        torch.save(create_model("densenet40_k12").state_dict(), run / "snapshots" / f"epoch_{e:03d}.pt")
    torch.save({"epoch": 16, "model": create_model("densenet40_k12").state_dict()}, run / "checkpoint.pt")
    (run / "metrics.csv").write_text("epoch,test_err_pct\n16,13.0\n")
    (run / "config.json").write_text(json.dumps({"data_source_id": "folder:cifar10-jpeg.tar.gz"}))
    named, info = fr.figure5_maps("cpu", data_root=str(tmp_path / "no-data"), results=str(tmp_path))
    assert list(named) == ["trained 16 of 30 epochs (so far)",
                           "trained 15 of 30 epochs (snapshot, the last epoch at LR 0.1)",
                           "trained 3 of 30 epochs (snapshot, LR 0.1)", fr.UNTRAINED]
    assert info["snapshots"] == [15, 3] and all(p.endswith(".pt") for p in info["files"])
    assert info["in_progress"][0]["epoch"] == 16


def test_figure5_reads_the_longest_headline_schedule_that_has_finished(tmp_path):
    """30 epochs finished and 100 in progress: Figure 5 shows the finished 30-epoch network (final weights
    beat a checkpoint on the way). Once the 100-epoch run finishes, its weights and its snapshots after
    epochs 10, 50 and 75, without a code change."""
    import json
    from pathlib import Path

    from densenet_repro import create_model, experiments
    from densenet_repro.config import config_hash, run_name

    source = "folder:cifar10-jpeg.tar.gz"

    def headline_run(epochs: int) -> Path:
        cfg = experiments.headline_config(epochs=epochs, results=str(tmp_path)).resolved()
        h = config_hash(cfg, source)
        run = tmp_path / "table2" / run_name(cfg, h)
        (run / "snapshots").mkdir(parents=True)
        for e in cfg.keep_weights_at:
            torch.save(create_model("densenet40_k12").state_dict(), run / "snapshots" / f"epoch_{e:03d}.pt")
        (run / "config.json").write_text(json.dumps({"data_source_id": source}))
        (run / "metrics.csv").write_text(f"epoch,test_err_pct\n{epochs // 2},13.0\n")
        torch.save({"epoch": epochs // 2, "model": create_model("densenet40_k12").state_dict()}, run / "checkpoint.pt")
        return run

    def finish(run: Path, epochs: int) -> None:
        (run / "checkpoint.pt").unlink()
        torch.save(create_model("densenet40_k12").state_dict(), run / "weights.pt")
        (run / "summary.json").write_text(json.dumps({
            "finished": True, "config_hash": run.name.rsplit("-", 1)[1], "model": "densenet40_k12",
            "dataset": "c10+", "epochs": epochs, "final_test_error_pct": 9.0, "best_test_error_pct": 8.9,
            "reported_test_error_pct": 9.0, "wall_time_s": 1.0}))

    short, long = headline_run(30), headline_run(100)
    finish(short, 30)
    maps = lambda: fr.figure5_maps("cpu", data_root=str(tmp_path / "no-data"), results=str(tmp_path))  # noqa: E731
    named, info = maps()
    assert (list(named)[0], info["run_dir"], info["snapshots"]) == ("trained 30 of 30 epochs", short.as_posix(),
                                                                    [22, 15, 3])
    finish(long, 100)
    named, info = maps()
    assert list(named) == ["trained 100 of 100 epochs",
                           "trained 75 of 100 epochs (snapshot, the last epoch at LR 0.01)",
                           "trained 50 of 100 epochs (snapshot, the last epoch at LR 0.1)",
                           "trained 10 of 100 epochs (snapshot, LR 0.1)", fr.UNTRAINED]
    assert info["run_dir"] == long.as_posix() and info["finished"] and not info["in_progress"]
    assert (long / "weights.pt").as_posix() in info["files"]


def test_heat_maps_refuse_a_network_without_dense_blocks():
    from densenet_repro import create_model

    with pytest.raises(TypeError, match="defined for a DenseNet"):
        fr.heat_maps(create_model("resnet", depth=8))


def test_figure5_without_the_headline_run_says_how_to_train_it(tmp_path):
    from densenet_repro.errors import CheckpointError

    for split in ("train", "test"):  # an (empty) image-folder copy, so the data is found and the run is not
        (tmp_path / "cifar10-jpeg" / split / "airplane").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"train it first \(python -m densenet_repro table2 --headline\)"):
        fr.figure5_maps("cpu", data_root=str(tmp_path), results=str(tmp_path / "results"), out=str(tmp_path / "runs"))


def test_observations_the_untrained_network_shares_are_named():
    uniform = fr.heat_maps(tiny(lambda b, s, t: 1.0 + 0.01 * ((s + t) % 3)))
    table = fr.observations_table({"trained": uniform, "untrained (initialisation)": uniform})
    assert fr.untrained_caveat(table).startswith("Observation(s) 1, 2 hold for the untrained network as well")
    assert fr.untrained_caveat(fr.observations_table({"trained": uniform})) == ""


def test_the_source_is_named_by_its_path_in_the_repository():
    """A report names the run folder as a reader's clone has it, not as this machine does."""
    from densenet_repro.provenance import repo_root

    folder = repo_root() / "results" / "table2" / "densenet40_k12-c10+-4bd6f77af9"
    text = fr.source_text({"model": "densenet40_k12", "run_dir": str(folder), "finished": True})
    assert "`results/table2/densenet40_k12-c10+-4bd6f77af9`" in text and str(repo_root()) not in text
