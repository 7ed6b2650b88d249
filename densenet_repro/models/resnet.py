"""The ResNet baselines of Table 2 and Figure 4, for CIFAR/SVHN (32x32 inputs).

- ResNet-110 (He et al., 2016a): post-activation basic blocks (3x3, 3x3), 3 stages of 18 blocks at
  16, 32, 64 maps; parameter-free shortcuts (option A: stride-2 subsampling + zero-padded
  channels), as in that paper's CIFAR experiments. Table 2: 1.7M parameters.
- Pre-activation ResNet-164 and -1001 (He et al., 2016b): bottleneck blocks
  BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1 with 4x expansion, 3 stages of 18 / 111 blocks at
  64, 128, 256 output maps; 1x1 projection shortcuts where the shape changes, applied to the
  pre-activated input as in the authors' code (fb.resnet.torch). Table 2: 1.7M and 10.2M.
  Our -1001 has 10.3M: the standard architecture, not bent to the rounded count.

- Plain CNN: ResNet-110's layers without the shortcuts (He et al., 2016a, call it "plain"), the
  baseline with neither short nor dense paths for the implicit-deep-supervision measurements.

Depth counts conv and FC layers: 6n+2 for basic blocks, 9n+2 for bottleneck blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from densenet_repro.models.densenet import official_init

WIDTH = 16  # maps of the stem and of the first stage's 3x3 convs (x2, x4 in stages 2, 3), as in both ResNet papers


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut, then ReLU (post-activation)."""

    def __init__(self, in_planes: int, planes: int, stride: int, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes
        self.residual = residual

    def shortcut(self, x: Tensor) -> Tensor:
        # Option A: identity, subsampled and zero-padded when the shape changes (no parameters).
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x) if self.residual else out, inplace=True)


class _PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (4x expansion), + shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        # Projection shortcuts take the pre-activated input, identity ones the raw input.
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        out = self.conv3(F.relu(self.bn3(out), inplace=True))
        return out + shortcut


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 conv (16 maps), 3 stages at 32, 16, 8 pixels, pool, FC.

    Args:
        depth: conv + FC layers; 6n+2 (basic, post-activation) or 9n+2 (pre-activation bottleneck).
        preact_bottleneck: False for ResNet-110 style, True for pre-activation ResNet-164/1001.
        num_classes: outputs of the classifier.
        residual: False drops the shortcuts of the basic blocks (the plain CNN).
        width: maps of the stem and first stage (the papers' 16); reduced budgets narrow the nets.
    """

    def __init__(self, depth: int, preact_bottleneck: bool, num_classes: int = 10, residual: bool = True,
                 width: int = WIDTH) -> None:
        super().__init__()
        per_layer = 9 if preact_bottleneck else 6
        n, rest = divmod(depth - 2, per_layer)
        if rest or n < 1:
            kind = "9n+2 for pre-activation bottleneck" if preact_bottleneck else "6n+2 for basic"
            raise ValueError(f"ResNet depth {depth} is not {kind} blocks")
        if not residual and preact_bottleneck:
            raise ValueError("the plain CNN (residual=False) is built from basic blocks: use preact_bottleneck=False")
        block = _PreActBottleneck if preact_bottleneck else _BasicBlock
        expansion = getattr(block, "expansion", 1)
        self.preact = preact_bottleneck
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        if not preact_bottleneck:
            self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        stages = []
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, planes, stride, residual) if not preact_bottleneck
                              else block(in_planes, planes, stride))
                in_planes = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        if preact_bottleneck:
            self.bn_final = nn.BatchNorm2d(in_planes)  # pre-activation nets end with BN-ReLU
        self.fc = nn.Linear(in_planes, num_classes)
        official_init(self)  # as fb.resnet.torch, where the DenseNet code took it from

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, 32, 32)
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, C, 8, 8)
        if self.preact:
            out = F.relu(self.bn_final(out), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (N, C)
        return self.fc(out)


def resnet(depth: int = 110, num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet with basic blocks, L = 6n + 2 (He et al. 2016a)."""
    return CifarResNet(depth, preact_bottleneck=False, num_classes=num_classes, **kwargs)


def preact_resnet(depth: int = 164, num_classes: int = 10, **kwargs) -> CifarResNet:
    """Pre-activation ResNet with bottleneck blocks, L = 9n + 2 (He et al. 2016b)."""
    return CifarResNet(depth, preact_bottleneck=True, num_classes=num_classes, **kwargs)


def plain_cnn(depth: int = 20, num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet's basic-block layers without shortcuts, L = 6n + 2."""
    return CifarResNet(depth, preact_bottleneck=False, num_classes=num_classes, residual=False, **kwargs)


def resnet110(num_classes: int = 10, depth: int = 110, **kwargs) -> CifarResNet:
    """ResNet-110 (He et al. 2016a), Table 2: 1.7M parameters."""
    return resnet(depth, num_classes, **kwargs)


def preact_resnet164(num_classes: int = 10, depth: int = 164, **kwargs) -> CifarResNet:
    """Pre-activation ResNet-164 (He et al. 2016b), Table 2: 1.7M parameters."""
    return preact_resnet(depth, num_classes, **kwargs)


def preact_resnet1001(num_classes: int = 10, depth: int = 1001, **kwargs) -> CifarResNet:
    """Pre-activation ResNet-1001 (He et al. 2016b), Table 2: 10.2M (ours: 10.3M, see module doc)."""
    return preact_resnet(depth, num_classes, **kwargs)
