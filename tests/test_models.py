"""The model zoo: every registered model runs, parameter counts match the paper, torchvision
equivalence, invalid configurations, and memory-efficient equivalence."""

import copy

import pytest
import torch
import torchvision

import densenet_repro
from densenet_repro import DenseNet, create_model, list_models
from densenet_repro.models.registry import FAMILY_MODELS, CIFAR_MODELS, IMAGENET_MODELS, PAPER_PARAMS

# Exact parameter counts of torchvision's ImageNet DenseNets (torchvision.models.densenet121() etc.).
TORCHVISION_PARAMS = {"densenet121": 7_978_856, "densenet161": 28_681_000,
                      "densenet169": 14_149_480, "densenet201": 20_013_928}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_input(name: str) -> torch.Tensor:
    # The smallest inputs that keep every stage non-empty: CIFAR nets pool 4x (8 -> 2x2 at the
    # last block), ImageNet nets 32x (32 -> 1x1). A batch of 2, as BN needs >1 value per channel.
    size = 32 if name in IMAGENET_MODELS else 8
    return torch.randn(2, 3, size, size)


def test_registry_covers_every_table2_and_imagenet_name():
    assert set(list_models()) == set(CIFAR_MODELS) | set(IMAGENET_MODELS) | set(FAMILY_MODELS)


def test_families_build_table2_rows_at_the_papers_depth_and_scale_by_depth():
    same = [("densenet40_k12", "densenet", dict(depth=40, growth_rate=12)),
            ("densenet_bc100_k12", "densenet_bc", dict(depth=100, growth_rate=12)),
            ("preact_resnet164", "preact_resnet", dict(depth=164)),
            ("resnet110", "resnet", dict(depth=110))]
    for name, family, kw in same:
        assert n_params(create_model(name)) == n_params(create_model(family, **kw)), name
    assert n_params(create_model("densenet40_k12", depth=10)) == n_params(create_model("densenet", depth=10)) == 37_762
    # B adds the 1x1 bottleneck, C halves the transitions: at equal (L, k) the counts order as the paper's
    counts = {v: n_params(create_model(v, depth=16, growth_rate=12)) for v in ("densenet", "densenet_c")}
    assert counts["densenet_c"] < counts["densenet"]
    with pytest.raises(ValueError, match="6n\\+4"):
        create_model("densenet_b", depth=13)


def test_the_plain_cnn_is_resnet_without_its_shortcuts():
    torch.manual_seed(0)
    plain, res = create_model("plain_cnn", depth=8), create_model("resnet", depth=8)
    assert n_params(plain) == n_params(res)  # option-A shortcuts have no parameters
    res.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(plain.eval()(x), res.eval()(x))
    from densenet_repro.models.resnet import CifarResNet

    with pytest.raises(ValueError, match="basic blocks"):
        CifarResNet(11, preact_bottleneck=True, residual=False)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_forwards_and_backwards(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_parameter_counts_round_to_table2(name):
    count = n_params(create_model(name, num_classes=10))
    rounded = f"{count / 1e6:.1f}M"
    if name == "preact_resnet1001":
        # The standard pre-activation ResNet-1001 has 10.33M; Table 2 prints 10.2M (within 2%).
        assert abs(count / 10.2e6 - 1) < 0.02, count
    elif name.startswith(("resnet", "preact")):
        assert abs(count / float(PAPER_PARAMS[name][:-1]) / 1e6 - 1) < 0.02, count
    else:
        assert rounded == PAPER_PARAMS[name], (name, count)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_models_are_torchvision_compatible(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    ours = create_model(name).eval()
    assert n_params(ours) == n_params(reference) == TORCHVISION_PARAMS[name]
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_timm_can_create_our_models():
    timm = pytest.importorskip("timm")
    model = timm.create_model("densenet_bc100_k12", pretrained=False, num_classes=10)
    assert isinstance(model, DenseNet) and n_params(model) == 769_162
    # timm's own densenet121 is left alone (the benchmark compares against it)
    assert not isinstance(timm.create_model("densenet121", pretrained=False), DenseNet)
    with pytest.raises(ValueError, match="pretrained=False"):  # no trained weights for this one (tests/test_timm.py)
        timm.create_model("densenet_bc100_k12", pretrained=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=41), r"3n\+4"),
    (dict(depth=43, bottleneck=True), r"6n\+4"),
    (dict(depth=4), r"n >= 1"),
    (dict(depth=40, growth_rate=0), r"growth_rate k must be an integer >= 1"),
    (dict(depth=40, compression=0.0), r"compression theta must be in \(0, 1\]"),
    (dict(depth=40, compression=1.5), r"compression theta must be in \(0, 1\]"),
    (dict(depth=40, drop_rate=1.0), r"drop_rate"),
    (dict(depth=40, block_config=(6, 12)), r"exactly one of depth"),
    (dict(), r"exactly one of depth"),
    (dict(depth=40, stem="mnist"), r"stem must be"),
])
def test_invalid_configurations_raise_naming_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseNet(**kwargs)


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'densenet99'.*densenet_bc100_k12"):
        create_model("densenet99")


def test_stem_widths_and_compression_follow_the_paper():
    assert create_model("densenet40_k12").features.conv0.out_channels == 16
    bc = create_model("densenet_bc100_k12")
    assert bc.features.conv0.out_channels == 24  # 2k
    # 16 layers of k=12 on 24 maps -> 216, compressed to floor(0.5 * 216) = 108
    assert bc.features.transition1.conv.out_channels == 108
    plain = create_model("densenet40_k12")
    assert plain.features.transition1.conv.out_channels == 16 + 12 * 12  # no compression
    layer = plain.features.denseblock2.denselayer5
    assert layer.conv1.in_channels == 160 + 12 * 4  # k_0 + k(l-1)


def test_dropout_follows_every_conv_but_the_first():
    model = DenseNet(depth=40, growth_rate=12, drop_rate=0.2)
    assert isinstance(model.features.transition1.dropout, torch.nn.Dropout)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # stochastic in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("bottleneck, drop_rate", [(True, 0.0), (False, 0.2), (True, 0.2)])
def test_memory_efficient_is_exactly_equivalent(bottleneck, drop_rate):
    torch.manual_seed(0)
    depth = 16 if bottleneck else 13
    plain = DenseNet(depth=depth, growth_rate=6, bottleneck=bottleneck, compression=0.5,
                     drop_rate=drop_rate).train()
    efficient = copy.deepcopy(plain)
    for m in efficient.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = True
    x = torch.randn(8, 3, 32, 32)
    outs = []
    for model in (plain, efficient):
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        (out * torch.arange(10.0)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    # running statistics updated exactly once, as without recomputation
    for (name, b), c in zip(plain.named_buffers(), efficient.buffers()):
        torch.testing.assert_close(b, c, msg=name)


def test_memory_efficient_flag_reaches_every_layer():
    model = create_model("densenet_bc100_k12", memory_efficient=True)
    layers = [m for m in model.modules() if hasattr(m, "memory_efficient")]
    assert layers and all(m.memory_efficient for m in layers)


def test_package_exports():
    assert densenet_repro.DenseNet is DenseNet
    assert "densenet_bc190_k40" in densenet_repro.list_models()
