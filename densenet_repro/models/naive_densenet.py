"""The naive DenseNet-BC baseline of the benchmark (densenet_repro.bench): torchvision's own dense
blocks with a CIFAR stem.

A reference implementation, not one of ours: it is built from torchvision.models.densenet's
`_DenseBlock` (a list of feature maps, `torch.cat` in every layer) and `_Transition`, so the
benchmark's "naive" speed and memory are those of that style of code, and tests/test_bench.py checks
that it computes what `densenet_repro.DenseNet` computes from the same weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class NaiveDenseNet(nn.Module):
    """A DenseNet-BC in torchvision's style for CIFAR: torchvision.models.densenet's `_DenseBlock`
    (a list of feature maps, `torch.cat` in every layer) and `_Transition`, a 3x3 stem conv.

    Same module names as ours, so our state_dict loads strictly (the same weights).
    """

    def __init__(self, depth: int, growth_rate: int, num_classes: int = 10, bottleneck: bool = True,
                 compression: float = 0.5, **_: Any) -> None:
        super().__init__()
        from torchvision.models.densenet import _DenseBlock, _Transition

        if not bottleneck or compression != 0.5:
            raise ValueError("the naive baseline is a DenseNet-BC (torchvision's blocks always have a bottleneck)")
        n = (depth - 4) // 6
        num_features = 2 * growth_rate
        self.features = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, num_features, 3, padding=1, bias=False)))
        for i in range(3):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, num_features, 4, growth_rate, 0.0))
            num_features += n * growth_rate
            if i != 2:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))
