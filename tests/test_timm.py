"""timm's model contract, in the style of timm's own tests/test_models.py, for every name densenet-repro
registers with timm; the registry's hygiene; the state_dicts that committed runs depend on; the trained
weights loadable by name (on a fake run folder); and the README's "Using the models" examples, executed.

Fast: each family is built at its smallest depth (SMALL); the full-size nets are checked on the meta
device (shapes, cfgs, feature maps: no arithmetic). DenseNet-264 has no smaller member: its tests run it at
its 224x224 input, batch 2 (2 to 5 s each with a training run beside them on 2 cores; under the slow mark's 10 s).
"""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

import densenet_repro  # noqa: E402  (registers the models with timm)
from densenet_repro import errors, runstore  # noqa: E402
from densenet_repro.models import densenet_repro_timm, fast_dense, registry  # noqa: E402
from densenet_repro.models.registry import MODELS, WEIGHTS  # noqa: E402

OURS = {m.timm_name: name for name, m in MODELS.items() if m.timm_name}  # timm name -> registry name
TIMM_NAMES = sorted(OURS)

# The smallest member of each name's family (depth 3n+4, 6n+4 with bottleneck, 6n+2, 9n+2); {} = full size.
SMALL = {"densenet40_k12": dict(depth=7), "densenet100_k12": dict(depth=7), "densenet100_k24": dict(depth=7),
         "densenet_bc100_k12": dict(depth=10), "densenet_bc250_k24": dict(depth=10),
         "densenet_bc190_k40": dict(depth=10), "densenet264": {}, "resnet110": dict(depth=8),
         "preact_resnet164": dict(depth=11), "preact_resnet1001": dict(depth=11), "densenet": dict(depth=7),
         "densenet_b": dict(depth=10), "densenet_c": dict(depth=7), "densenet_bc": dict(depth=10),
         "resnet": dict(depth=8), "preact_resnet": dict(depth=11), "plain_cnn": dict(depth=8)}


def create(timm_name, **kwargs):
    return timm.create_model(timm_name, **SMALL[OURS[timm_name]], **kwargs)


def config_input(model, batch=2):
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def feature_modules(model):
    """The modules feature_info names, by name."""
    return {i["module"]: model.get_submodule(i["module"]) for i in model.feature_info}


def captured(model, x):
    """The outputs of the modules feature_info names, in a plain forward of the whole model."""
    out, hooks = {}, []
    for name, mod in feature_modules(model).items():
        hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.clone())))
    model(x)
    for h in hooks:
        h.remove()
    return [out[i["module"]] for i in model.feature_info]


# ---------------------------------------------------------------------------------------------------
# Registry hygiene
# ---------------------------------------------------------------------------------------------------

# Every name densenet_repro.create_model has always accepted (tests and committed runs use them).
PROJECT_NAMES = ["densenet40_k12", "densenet100_k12", "densenet100_k24", "densenet_bc100_k12", "densenet_bc250_k24",
                 "densenet_bc190_k40", "densenet121", "densenet161", "densenet169", "densenet201", "densenet264",
                 "resnet110", "preact_resnet164", "preact_resnet1001", "densenet", "densenet_b", "densenet_c",
                 "densenet_bc", "resnet", "preact_resnet", "plain_cnn"]


def test_timm_gets_the_papers_names_and_the_prefixed_families_and_nothing_else():
    assert densenet_repro.list_models() == PROJECT_NAMES
    assert set(SMALL) == set(OURS.values())
    assert sorted(timm.list_models(module="densenet_repro_timm")) == TIMM_NAMES
    assert sorted(densenet_repro_timm.register()) == TIMM_NAMES  # registering again changes nothing
    for name in registry.FAMILY_MODELS:  # the generic names are not added to timm's namespace
        assert f"densenet_repro_{name}" in TIMM_NAMES and name not in TIMM_NAMES
        assert not timm.is_model(name) or not timm.models.model_entrypoint(name).__module__.startswith("densenet_repro")
    assert set(TIMM_NAMES) - {f"densenet_repro_{n}" for n in registry.FAMILY_MODELS} == {
        "densenet40_k12", "densenet100_k12", "densenet100_k24", "densenet_bc100_k12", "densenet_bc250_k24",
        "densenet_bc190_k40", "densenet264", "resnet110", "preact_resnet164", "preact_resnet1001"}
    for name in ("densenet121", "densenet161", "densenet169", "densenet201"):  # timm's own, left alone
        assert timm.models.model_entrypoint(name).__module__ == "timm.models.densenet"
        with torch.device("meta"):
            assert not isinstance(timm.create_model(name), densenet_repro.DenseNet)
            assert isinstance(densenet_repro.create_model(name), densenet_repro.DenseNet)


# Parameter count and a hash of (state_dict key, shape, dtype) of every model at its defaults, as they were
# before the timm interface existed: committed runs, checkpoints and torchvision's weights depend on them.
STATE_DICTS = {
    "densenet40_k12": (1_019_722, "0dc443db0727ea29"), "densenet100_k12": (6_979_642, "273c40689e7ed6bc"),
    "densenet100_k24": (27_249_082, "cc74199cf27d66d6"), "densenet_bc100_k12": (769_162, "91db8d833149c7b7"),
    "densenet_bc250_k24": (15_324_406, "3c561c5b50bf3629"), "densenet_bc190_k40": (25_624_430, "a607ea06afac8b77"),
    "densenet121": (7_978_856, "abc32d7d5bcf901b"), "densenet161": (28_681_000, "0b03eead075abef0"),
    "densenet169": (14_149_480, "04c5f01c7a8b8e6f"), "densenet201": (20_013_928, "e878482c71769460"),
    "densenet264": (33_337_704, "d5e6341fe2531b2e"), "resnet110": (1_727_962, "c043ab93f6058c1b"),
    "preact_resnet164": (1_703_258, "50a5fb6db9498b06"), "preact_resnet1001": (10_327_706, "a65c84977485dd7a"),
    "densenet": (1_019_722, "0dc443db0727ea29"), "densenet_b": (1_180_666, "63f61862cc13866c"),
    "densenet_c": (578_090, "5cd0d19997971be6"), "densenet_bc": (769_162, "91db8d833149c7b7"),
    "resnet": (1_727_962, "c043ab93f6058c1b"), "preact_resnet": (1_703_258, "50a5fb6db9498b06"),
    "plain_cnn": (269_722, "6bfc696b4f19dc39"),
}


@pytest.mark.parametrize("name", PROJECT_NAMES)
def test_state_dicts_and_parameter_counts_are_unchanged(name):
    with torch.device("meta"):
        ours = densenet_repro.create_model(name)
        theirs = timm.create_model(registry.MODELS[name].timm_name) if registry.MODELS[name].timm_name else ours
    for model in (ours, theirs):
        sig = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items())
        assert (sum(p.numel() for p in model.parameters()), hashlib.sha1(sig.encode()).hexdigest()[:16]) == \
            STATE_DICTS[name]


# ---------------------------------------------------------------------------------------------------
# The contract, for every registered name
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_forward_and_backward_at_the_configs_input_size(timm_name):
    torch.manual_seed(0)
    model = create(timm_name).train()
    x = config_input(model)
    out = model(x)
    assert out.shape == (2, model.num_classes) == (2, model.pretrained_cfg["num_classes"])
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    small = densenet_repro.create_model(OURS[timm_name], **SMALL[OURS[timm_name]])
    assert type(model) is type(small)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in small.state_dict().items()]


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_cfg_is_complete_and_consistent_with_the_full_size_model(timm_name):
    """As timm's test_model_default_cfgs, on the meta device (shapes only), at the model's real size."""
    with torch.device("meta"):
        model = timm.create_model(timm_name)
        cfg = model.pretrained_cfg
        for key in ("input_size", "num_classes", "mean", "std", "first_conv", "classifier", "pool_size",
                    "paper_name", "paper_ids", "architecture"):
            assert cfg.get(key) is not None, key
        assert cfg["architecture"] == timm_name
        assert registry.DENSENET_PAPER.id in cfg["paper_ids"] and "Huang" in " ".join(cfg["notes"])
        assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3
        if "densenet264" not in timm_name:
            assert cfg["input_size"] == (3, 32, 32)
            assert "file" in cfg or cfg["mean"] == registry.CIFAR10_MEAN  # trained weights: their run's
        state = model.state_dict()
        assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
        assert model.get_submodule(cfg["first_conv"]).in_channels == cfg["input_size"][0]
        assert model.get_classifier() is model.get_submodule(cfg["classifier"])
        assert model.get_classifier().out_features == cfg["num_classes"] == model.num_classes
        assert model.get_classifier().in_features == model.num_features == model.head_hidden_size
        assert model.global_pool.pool_type == "avg"
        # the same table behind densenet_repro.create_model (a cfg does not depend on the depth)
        assert densenet_repro.create_model(OURS[timm_name], **SMALL[OURS[timm_name]]).pretrained_cfg == cfg
        assert len(model.feature_info) == registry.MODELS[OURS[timm_name]].arch.feature_maps

        x = config_input(model)
        feats = model.forward_features(x)  # unpooled, as the cfg's pool_size says
        assert feats.shape == (2, model.num_features, *cfg["pool_size"])
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(0)  # pooled features
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")  # no pooling either: the feature map
        assert model(x).shape == (2, model.num_features, *cfg["pool_size"])
        bare = create(timm_name, num_classes=0, global_pool="")
        assert bare(x).shape == (2, bare.num_features, *cfg["pool_size"])


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_num_classes_0_gives_pooled_features_and_reset_classifier_replaces_the_head(timm_name):
    torch.manual_seed(0)
    model = create(timm_name).eval()
    state = model.state_dict()
    keys = list(state)
    x = config_input(model)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), model.get_classifier()(pooled))
        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(5)  # fine-tuning: a fresh classifier, initialised as the model's (bias 0)
        assert model(x).shape == (2, 5) and model.num_classes == 5 and list(model.state_dict()) == keys
        assert model.get_classifier().in_features == model.num_features and not model.get_classifier().bias.any()
        model.reset_classifier(7, global_pool="catavgmax")
        assert model(x).shape == (2, 7) and model.get_classifier().in_features == 2 * model.num_features
        embedder = create(timm_name, num_classes=0).eval()
        assert embedder.num_classes == 0 and embedder.num_features == model.num_features
        head = model.pretrained_cfg["classifier"] + "."
        embedder.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)})  # strict
        torch.testing.assert_close(embedder(x), pooled)
    with pytest.raises(ValueError, match="global_pool=''"):
        create(timm_name, global_pool="")  # a classifier needs pooled features
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(10, global_pool="median")


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_features_only_returns_the_maps_feature_info_names(timm_name):
    torch.manual_seed(0)
    full = create(timm_name).eval()
    torch.manual_seed(0)
    backbone = create(timm_name, features_only=True).eval()  # same seed: the same weights
    assert isinstance(backbone, timm.models.FeatureListNet)
    info = full.feature_info
    assert backbone.feature_info.channels() == [i["num_chs"] for i in info]
    assert backbone.feature_info.reduction() == [i["reduction"] for i in info]
    assert backbone.feature_info.module_name() == [i["module"] for i in info]
    x = config_input(full)
    with torch.no_grad():
        maps = backbone(x)
        expected = captured(full, x)
    assert len(maps) == len(info) >= 4
    for m, e, i in zip(maps, expected, info, strict=True):
        assert m.shape == (2, i["num_chs"], math.ceil(x.shape[2] / i["reduction"]), math.ceil(x.shape[3] / i["reduction"]))
        torch.testing.assert_close(m, e)  # the wrapper replays the model's own forward
    picked = create(timm_name, features_only=True, out_indices=(1, -1)).eval()
    assert [o.shape for o in picked(x)] == [maps[1].shape, maps[-1].shape]


def test_feature_info_names_every_dense_block_and_transition():
    model = densenet_repro.create_model("densenet40_k12")
    assert [(i["module"], i["num_chs"], i["reduction"]) for i in model.feature_info] == [
        ("features.conv0", 16, 1), ("features.denseblock1", 160, 1), ("features.transition1", 160, 2),
        ("features.denseblock2", 304, 2), ("features.transition2", 304, 4), ("features.denseblock3", 448, 4)]
    bc = densenet_repro.create_model("densenet_bc100_k12")
    assert [i["num_chs"] for i in bc.feature_info] == [24, 216, 108, 300, 150, 342]  # compression 0.5
    with torch.device("meta"):
        imagenet = densenet_repro.create_model("densenet121")
    assert [(i["module"], i["reduction"]) for i in imagenet.feature_info] == [
        ("features.relu0", 2), ("features.denseblock1", 4), ("features.transition1", 8), ("features.denseblock2", 8),
        ("features.transition2", 16), ("features.denseblock3", 16), ("features.transition3", 32),
        ("features.denseblock4", 32)]
    assert [i["module"] for i in densenet_repro.create_model("resnet", depth=8).feature_info] == \
        ["act1", "layer1", "layer2", "layer3"]
    assert [i["module"] for i in densenet_repro.create_model("preact_resnet", depth=11).feature_info] == \
        ["conv1", "layer1", "layer2", "layer3"]


@pytest.mark.parametrize("name", ["densenet_bc100_k12", "densenet_repro_preact_resnet", "densenet40_k12"])
def test_features_only_of_the_full_size_models_on_meta(name):
    with torch.device("meta"):
        backbone = timm.create_model(name, features_only=True)
        x = torch.empty(2, *backbone.pretrained_cfg["input_size"])
        for o, c, r in zip(backbone(x), backbone.feature_info.channels(), backbone.feature_info.reduction(),
                           strict=True):
            assert o.shape == (2, c, 32 // r, 32 // r)


@pytest.mark.parametrize("timm_name", TIMM_NAMES)
def test_torch_fx_traces_forward_and_backward(timm_name):
    """As timm's test_model_forward_fx / test_model_backward_fx, through timm's fx helpers."""
    from timm.models import create_feature_extractor, get_graph_node_names

    torch.manual_seed(0)
    model = create(timm_name).eval()
    x = config_input(model)
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, [eval_nodes[-1]]).eval()
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x))
    traced.train()
    next(iter(traced(x).values())).sum().backward()
    assert all(p.grad is not None for p in traced.parameters())
    graph_backbone = create(timm_name, features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        shapes = [o.shape[1] for o in graph_backbone(x)]
    assert shapes == [i["num_chs"] for i in model.feature_info]


@pytest.mark.parametrize("variant", ["densenet", "densenet_bc"])
def test_forward_features_and_feature_maps_with_the_fast_cpu_blocks(variant):
    """fast_dense.convert switches the dense blocks' class in place: forward_features, forward and the
    feature wrapper run the fast blocks and compute what the plain ones do."""
    depth = 10 if variant.endswith("bc") else 7
    torch.manual_seed(0)
    plain = densenet_repro.create_model(variant, depth=depth)
    fast = fast_dense.convert(densenet_repro.create_model(variant, depth=depth), kernels="torch")
    fast.load_state_dict(plain.state_dict())
    assert fast_dense.is_fast(fast)
    x = torch.randn(4, 3, 32, 32)
    for train in (True, False):
        plain.train(train), fast.train(train)
        with torch.no_grad():
            torch.testing.assert_close(fast.forward_features(x), plain.forward_features(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
    timm_name = registry.MODELS[variant].timm_name
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, depth=depth).eval()
    torch.manual_seed(0)  # the same weights
    backbone = fast_dense.convert(timm.create_model(timm_name, depth=depth, features_only=True), kernels="torch")
    assert fast_dense.is_fast(backbone)
    with torch.no_grad():
        for m, e in zip(backbone.eval()(x), captured(reference, x), strict=True):
            torch.testing.assert_close(m, e, rtol=1e-4, atol=1e-4)


def test_imagenet_densenets_keep_torchvisions_names_and_logits_with_the_new_head():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.densenet121(weights=None).eval()
    ours = densenet_repro.create_model("densenet121").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), torch.relu(reference.features(x)), rtol=1e-5, atol=1e-5)


def test_cifar_normalisation_is_what_the_committed_runs_recorded():
    """The untrained cfgs' CIFAR-10 statistics against those the data pipeline computed for committed runs
    (the JPEG copy's: within 2e-3 of the official set's)."""
    recorded = []
    for path in sorted(runstore.REPO.glob("results/*/*/summary.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        if s.get("dataset", "").startswith("c10") and s.get("data", {}).get("mean"):
            recorded.append((s["data"]["mean"], s["data"]["std"]))
    if not recorded:
        pytest.skip("no committed CIFAR-10 run records statistics")
    for mean, std in recorded:
        assert max(abs(a - b) for a, b in zip(mean + std, registry.CIFAR10_MEAN + registry.CIFAR10_STD, strict=True)) < 2e-3


# ---------------------------------------------------------------------------------------------------
# Trained weights by name, on a fake run folder
# ---------------------------------------------------------------------------------------------------

HEADLINE = registry.find_weights("densenet40_k12", "repro_c10plus")  # 30 epochs
HEADLINE_E100 = registry.find_weights("densenet40_k12", "repro_c10plus_e100")
RUN_MEAN, RUN_STD = [0.49125, 0.48209, 0.44652], [0.24523, 0.24278, 0.26063]


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RESULTS", tmp_path)
    return tmp_path


def finish_fake_run(results, w=HEADLINE, final=6.5, best=6.25, seed=1):
    """What the engine leaves in a finished run folder: weights.pt (a trained-looking state_dict),
    summary.json and config.json."""
    folder = results / w.run
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = densenet_repro.create_model(w.model).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # running statistics that are not the defaults
    torch.save(model.state_dict(), folder / runstore.WEIGHTS)
    summary = dict(finished=True, config_hash=folder.name.rsplit("-", 1)[1], model=w.model, dataset="c10+",
                   epochs=30, model_kwargs={}, final_test_error_pct=final, best_test_error_pct=best,
                   reported_test_error_pct=final, wall_time_s=36000.0,
                   data=dict(source="CIFAR-10, a copy", source_id="folder:cifar10-jpeg.tar.gz", mean=RUN_MEAN,
                             std=RUN_STD))
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    config = dict(model=w.model, data_description="CIFAR-10, image-folder copy (JPEG)",
                  data_source_id="folder:cifar10-jpeg.tar.gz", commit="0123456789abcdef+changes",
                  versions={"torch": torch.__version__})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def reference(folder, num_classes=10):
    model = densenet_repro.create_model(HEADLINE.model)
    model.load_state_dict(torch.load(folder / runstore.WEIGHTS, weights_only=True))
    return model.eval()


def test_the_weights_table_points_at_the_headline_run_in_this_checkout():
    assert HEADLINE.name == "densenet40_k12.repro_c10plus"
    assert HEADLINE.file == runstore.REPO / "results" / HEADLINE.run / "weights.pt" and HEADLINE.file.is_absolute()
    assert runstore.REPO == Path(densenet_repro.__file__).resolve().parent.parent
    assert (runstore.REPO / "results" / HEADLINE.run / "config.json").is_file()  # the run exists (training or done)
    # timm lists the weights only once they are there
    assert ("densenet40_k12.repro_c10plus" in timm.list_pretrained()) == HEADLINE.available


def test_missing_weights_give_one_line_saying_the_run_is_training_and_how_to_train_it(results):
    assert densenet_repro.list_pretrained() == []
    assert densenet_repro.list_pretrained(include_unavailable=True) == [dict(
        name=w.name, model="densenet40_k12", tag=w.tag, available=False,
        file=str(results / w.run / "weights.pt"), run=w.run, train=w.train) for w in WEIGHTS]
    assert [w.tag for w in WEIGHTS] == ["repro_c10plus_e300", "repro_c10plus_e100", "repro_c10plus"]  # most trained first
    for create_fn in (densenet_repro.create_model, timm.create_model):
        with pytest.raises(errors.ConfigError, match="not been trained here.*table2 --headline") as e:
            create_fn("densenet40_k12", pretrained=True)
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    (results / HEADLINE.run).mkdir(parents=True)
    (results / HEADLINE.run / runstore.CHECKPOINT).write_bytes(b"")
    with pytest.raises(errors.ConfigError, match=r"still training; train or resume it with `python -m densenet_repro "
                                                 r"table2 --headline`"):
        timm.create_model("densenet40_k12.repro_c10plus", pretrained=True)
    with pytest.raises(errors.ConfigError, match="no trained weights for it"):
        timm.create_model("densenet_bc100_k12", pretrained=True)
    with pytest.raises(errors.ConfigError, match="no trained weights tagged 'nope'"):
        timm.create_model("densenet40_k12.nope", pretrained=True)


def test_published_weights_load_by_name_in_densenet_repro_and_in_timm(results):
    folder = finish_fake_run(results)
    [listed] = densenet_repro.list_pretrained()
    assert listed == dict(name="densenet40_k12.repro_c10plus", model="densenet40_k12", tag="repro_c10plus",
                          available=True, file=str(folder / "weights.pt"), dataset="c10+", final_test_error_pct=6.5,
                          best_test_error_pct=6.25, epochs=30, data_source="CIFAR-10, image-folder copy (JPEG)",
                          data_source_id="folder:cifar10-jpeg.tar.gz", commit="0123456789abcdef+changes",
                          versions={"torch": torch.__version__}, run=HEADLINE.run)
    ref = reference(folder)
    x = torch.randn(2, 3, 32, 32)
    loaded = [densenet_repro.create_model("densenet40_k12", pretrained=True),
              timm.create_model("densenet40_k12", pretrained=True),
              timm.create_model("densenet40_k12.repro_c10plus", pretrained=True)]
    with torch.no_grad():
        for model in loaded:
            assert model.pretrained_cfg["file"] == str(folder / "weights.pt")
            assert model.pretrained_cfg["mean"] == tuple(RUN_MEAN) and model.pretrained_cfg["std"] == tuple(RUN_STD)
            assert "final test error 6.5 %" in " ".join(model.pretrained_cfg["notes"])
            assert torch.equal(model.eval()(x), ref(x))
        data_cfg = timm.data.resolve_data_config(model=loaded[1])
        assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["mean"] == tuple(RUN_MEAN)
        # fine-tuning on another dataset: the trained classifier is left out, the rest loads
        for model in (densenet_repro.create_model("densenet40_k12", pretrained=True, num_classes=100),
                      timm.create_model("densenet40_k12", pretrained=True, num_classes=100)):
            assert model.eval()(x).shape == (2, 100)
            torch.testing.assert_close(model.forward_features(x), ref.forward_features(x), rtol=0, atol=0)
        backbone = timm.create_model("densenet40_k12", pretrained=True, features_only=True).eval()
        for m, e in zip(backbone(x), captured(ref, x), strict=True):
            assert torch.equal(m, e)
    assert densenet_repro.create_model("densenet40_k12").pretrained_cfg["file"] == str(folder / "weights.pt")


def test_the_default_weights_are_the_most_trained_that_have_finished_and_each_tag_loads_its_own(results):
    x = torch.randn(2, 3, 32, 32)
    short = reference(finish_fake_run(results, HEADLINE))
    with torch.no_grad():  # while the 100-epoch run trains, its name says so and the default is the 30-epoch run
        assert torch.equal(densenet_repro.create_model("densenet40_k12", pretrained=True).eval()(x), short(x))
        with pytest.raises(errors.ConfigError, match="repro_c10plus_e100: no trained weights yet"):
            densenet_repro.create_model("densenet40_k12.repro_c10plus_e100", pretrained=True)
        long = reference(finish_fake_run(results, HEADLINE_E100, final=5.5, best=5.5, seed=2))
        assert not torch.equal(long(x), short(x))
        assert [w["name"] for w in densenet_repro.list_pretrained()] == [HEADLINE_E100.name, HEADLINE.name]
        for name, ref in (("densenet40_k12", long), (HEADLINE_E100.name, long), (HEADLINE.name, short)):
            for create_fn in (densenet_repro.create_model, timm.create_model):
                model = create_fn(name, pretrained=True).eval()
                assert torch.equal(model(x), ref(x)), (create_fn, name)
    cfg = densenet_repro.create_model("densenet40_k12").pretrained_cfg
    assert cfg["tag"] == "repro_c10plus_e100" and "final test error 5.5 %" in " ".join(cfg["notes"])
    # timm fixes a name's default tag when the models register (on import): the first tag with a file
    assert timm.models.generate_default_cfgs(densenet_repro_timm._cfgs())["densenet40_k12"].tags[0] == "repro_c10plus_e100"


def test_weights_of_a_damaged_run_record_are_never_used(results):
    folder = finish_fake_run(results)
    (folder / "summary.json").write_text('{"finished": tru', encoding="utf-8")
    for call in (lambda: densenet_repro.create_model("densenet40_k12", pretrained=True),
                 lambda: timm.create_model("densenet40_k12", pretrained=True), densenet_repro.list_pretrained):
        with pytest.raises(errors.ResultFileError, match="damaged"):
            call()


def test_weights_that_do_not_fit_the_arguments_say_so(results):
    finish_fake_run(results)
    with pytest.raises(errors.ConfigError, match="does not fit this model"):
        densenet_repro.create_model("densenet40_k12", pretrained=True, depth=10)


# ---------------------------------------------------------------------------------------------------
# The README's examples, as written
# ---------------------------------------------------------------------------------------------------

def readme_examples() -> list[str]:
    text = (runstore.REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Using the models\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_readme_examples():
    blocks = readme_examples()
    code = "\n".join(blocks)
    assert len(blocks) >= 3 and all(s in code for s in ("reset_classifier", "num_classes=0", "features_only",
                                                         "list_pretrained", "pretrained=True"))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # the README's own code
    return namespace


def test_readme_examples_run_as_written():
    torch.manual_seed(0)
    run_readme_examples()


def test_readme_examples_load_published_weights(results, capsys):
    finish_fake_run(results)
    torch.manual_seed(0)
    run_readme_examples()
    assert "densenet40_k12.repro_c10plus" in capsys.readouterr().out
