"""Gradients and linear probes per layer (notebook 05), on small networks and known features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densenet_repro import create_model
from densenet_repro import deep_supervision as ds


@pytest.mark.parametrize("name,kw,n_layers", [("densenet", dict(depth=10, growth_rate=4), 2 * 3 + 2),
                                             ("preact_resnet", dict(depth=11, width=4), 3),
                                             ("plain_cnn", dict(depth=14, width=4), 6)])
def test_layers_are_the_repeated_units_in_order(name, kw, n_layers):
    model = create_model(name, **kw)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    grads = ds.gradient_rms(model, x, y)
    assert len(ds.layers(model)) == len(grads) == n_layers
    assert all(g > 0 and np.isfinite(g) for g in grads)
    feats = ds.pooled_features(model, x, batch_size=3)  # batches must not change the features
    assert len(feats) == n_layers and all(f.shape[0] == 8 for f in feats)


def test_densenet_features_are_the_running_concatenation():
    model = create_model("densenet", depth=10, growth_rate=4)  # 2 layers per block, k0 = 16
    feats = ds.pooled_features(model, torch.randn(4, 3, 16, 16))
    assert [f.shape[1] for f in feats[:3]] == [16 + 4, 16 + 8, (16 + 8)]  # layer 1, layer 2, transition 1


def test_gradient_rms_matches_autograd_on_the_last_layer():
    torch.manual_seed(0)
    model = create_model("plain_cnn", depth=8, width=4)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    grads = ds.gradient_rms(model, x, y)
    model.train()
    feats = {}
    model.layer3[-1].register_forward_hook(lambda m, i, o: feats.__setitem__("out", o) or o.retain_grad())
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert grads[-1] == pytest.approx(float(feats["out"].grad.pow(2).mean().sqrt()), rel=1e-5)


def test_ridge_probe_separates_separable_features_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    informative = np.eye(3)[y] * 3 + rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 3))
    assert ds.ridge_probe(informative[:200], y[:200], informative[200:], y[200:], 3) > 90
    assert ds.ridge_probe(noise[:200], y[:200], noise[200:], y[200:], 3) < 50


def test_gradient_claims_compare_log_ratios_with_intervals():
    ratios = {("D", "initialisation"): [1.0, 1.1, 0.9], ("D", "trained"): [10.0, 11.0, 9.0],
              ("R", "initialisation"): [1.0, 1.05, 0.95], ("R", "trained"): [0.1, 0.11, 0.09]}
    rows = ds.gradient_claims(ratios, "D", ["R"])
    verdicts = {r["state"]: r["verdict: the DenseNet's first layer gets relatively more"] for r in rows}
    assert verdicts == {"initialisation": "inconclusive at this budget", "trained": "holds"}


def test_measurement_images_mix_the_classes_even_when_the_dataset_is_sorted_by_class():
    from types import SimpleNamespace

    y = torch.arange(10).repeat_interleave(50)  # sorted by class, as the image-folder copy is
    data = SimpleNamespace(test_x=torch.zeros(500, 3, 4, 4, dtype=torch.uint8), test_y=y, mean=[0.5] * 3,
                           std=[0.25] * 3, num_classes=10)
    _, labels = ds.normalised_images(data, "test", 100)
    first, second = labels[:50], labels[50:]
    assert torch.bincount(labels, minlength=10).tolist() == [10] * 10
    assert len(set(first.tolist())) >= 8 and len(set(second.tolist())) >= 8  # both probe halves see most classes
