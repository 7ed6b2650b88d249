"""The numbers notebook 01 shows are computed correctly (models on the meta device: fast)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from densenet_repro import architecture as arch
from densenet_repro import imagenet
from densenet_repro.models.registry import PAPER_PARAMS


def test_macs_count_one_per_multiply_add():
    # one 3x3 conv, 3 -> 4 maps, 8x8 output: 8*8 positions * 4 outputs * 3*3*3 weights
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    assert arch.macs(conv, image_size=8) == 8 * 8 * 4 * 3 * 9


def test_densenet121_macs_match_torchvision():
    gmacs = arch.macs("densenet121", 224) / 1e9
    assert round(gmacs, 2) == 2.83
    assert gmacs == pytest.approx(imagenet.torchvision_published("densenet121")["gmacs"], abs=1e-3)


def test_table1_shape_and_content():
    t = arch.table1()
    assert list(t.columns) == ["Layers", "Output Size", "DenseNet-121 (k = 32)", "DenseNet-169 (k = 32)",
                               "DenseNet-201 (k = 32)", "DenseNet-264 (k = 32)"]
    assert len(t) == 14  # conv, pool, 4 blocks, 3 transitions of 2 rows, 2 classification rows
    # output sizes of the paper's Table 1
    assert list(t["Output Size"]) == ["112 × 112", "56 × 56", "56 × 56", "56 × 56", "28 × 28", "28 × 28",
                                      "28 × 28", "14 × 14", "14 × 14", "14 × 14", "7 × 7", "7 × 7",
                                      "1 × 1", "1 × 1"]
    blocks = t[t["Layers"].str.startswith("Dense Block")]
    for col, cfg in (("DenseNet-121 (k = 32)", (6, 12, 24, 16)), ("DenseNet-169 (k = 32)", (6, 12, 32, 32)),
                     ("DenseNet-201 (k = 32)", (6, 12, 48, 32)), ("DenseNet-264 (k = 32)", (6, 12, 64, 48))):
        assert list(blocks[col]) == [f"[1 × 1 conv, 3 × 3 conv] × {n}" for n in cfg]
    assert t.iloc[0, 2] == "7 × 7 conv, stride 2"
    assert t.iloc[12, 2] == "7 × 7 global average pool"


@pytest.fixture(scope="module")
def params():
    return arch.param_table()


@pytest.fixture(scope="module")
def fig3():
    return imagenet.figure3_table()


def test_param_table_covers_table2(params):
    p = params
    assert set(p["model"]) == set(PAPER_PARAMS)
    dense = p[p["model"].str.startswith("densenet")]
    assert dense["rounds to paper"].all()
    assert (p["deviation (%)"].abs() < 5).all()


def test_growth_matches_formula():
    g = arch.growth_table("densenet40_k12")
    assert len(g) == 36 and g["matches"].all()
    assert list(g[g["block"] == 1]["input maps (model)"])[:3] == [16, 28, 40]  # k_0 = 16, k = 12


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_connections_are_all_pairs(n):
    c = arch.connections(num_layers=n, growth_rate=3)
    L = n + 1
    assert sorted(c["edges"]) == sorted((s, t) for t in range(1, L + 1) for s in range(t))
    assert len(c["edges"]) == L * (L + 1) // 2


def test_figure3_table_sources(fig3):
    f = fig3.set_index("model")
    assert f.loc["DenseNet-121", "top-1 error (%)"] == imagenet.PAPER_TABLE3_TOP1_SINGLE_CROP["densenet121"]
    import torchvision

    acc = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert f.loc["ResNet-50", "top-1 error (%)"] == pytest.approx(100 - acc)
    assert f.loc["ResNet-50", "params (M)"] == pytest.approx(25.557, abs=0.01)
    assert f.loc["ResNet-50", "GMACs (ours)"] == pytest.approx(f.loc["ResNet-50", "GMACs (torchvision, quoted)"],
                                                              abs=1e-3)


@pytest.fixture(scope="module")
def equiv():
    return imagenet.torchvision_equivalence(["densenet121"], image_size=32)


def test_equivalence_and_verdicts(equiv, params, fig3):
    assert equiv["strict load"].all() and equiv["same logits (atol 1e-5)"].all()
    v = arch.verdicts(arch.growth_table(), arch.connections(), params, arch.model_summary(["densenet121"]),
                      equiv, fig3)
    assert v["holds"].all(), v


def test_verdicts_can_fail(equiv, params, fig3):
    # a wrong growth table must be reported as not holding
    g = arch.growth_table()
    g.loc[0, "matches"] = False
    v = arch.verdicts(g, arch.connections(), params, arch.model_summary(["densenet121"]), equiv, fig3)
    assert not v.loc[0, "holds"] and v["holds"].sum() == len(v) - 1


def test_meta_build_is_free():
    m = arch.build("densenet264")
    assert next(m.parameters()).device == torch.device("meta")
