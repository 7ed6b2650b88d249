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

All three have timm's model interface (head.py), as the DenseNets: `forward_features`, `forward_head`,
`reset_classifier`, num_classes=0 for pooled features, and `feature_info` (the stem and the three stages).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from densenet_repro.models.densenet import official_init
from densenet_repro.models.head import ClassifierHead, GlobalPool, make_classifier

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


class CifarResNet(ClassifierHead):
    """ResNet for 32x32 inputs: 3x3 conv (16 maps), 3 stages at 32, 16, 8 pixels, pool, FC.

    Args:
        depth: conv + FC layers; 6n+2 (basic, post-activation) or 9n+2 (pre-activation bottleneck).
        preact_bottleneck: False for ResNet-110 style, True for pre-activation ResNet-164/1001.
        num_classes: outputs of the classifier; 0: no classifier, the model returns the pooled features.
        residual: False drops the shortcuts of the basic blocks (the plain CNN).
        width: maps of the stem and first stage (the papers' 16); reduced budgets narrow the nets.
        global_pool: timm's pooling before the classifier ("avg", the papers'; see head.py).
        in_chans: input channels (3).

    `feature_info`: the stem (after its BN-ReLU, `act1`; the pre-activation nets' stem is the bare
    `conv1`), then the outputs of `layer1`, `layer2`, `layer3`.
    """

    classifier_name = "fc"

    def __init__(self, depth: int, preact_bottleneck: bool, num_classes: int = 10, residual: bool = True,
                 width: int = WIDTH, global_pool: str = "avg", in_chans: int = 3) -> None:
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
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        if not preact_bottleneck:
            self.bn1 = nn.BatchNorm2d(width)
            self.act1 = nn.ReLU(inplace=True)  # a module, so timm's feature wrapper replays the stem exactly
        self.feature_info = [dict(num_chs=width, reduction=1, module="conv1" if preact_bottleneck else "act1")]
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
            self.feature_info.append(dict(num_chs=in_planes, reduction=2 ** i, module=f"layer{i + 1}"))
        self.layer1, self.layer2, self.layer3 = stages
        if preact_bottleneck:
            self.bn_final = nn.BatchNorm2d(in_planes)  # pre-activation nets end with BN-ReLU
        self.num_features = in_planes
        self.num_classes = num_classes
        self.global_pool = GlobalPool(global_pool)  # no parameters
        self.fc = make_classifier(in_planes, num_classes, self.global_pool)
        official_init(self)  # as fb.resnet.torch, where the DenseNet code took it from

    def forward_features(self, x: Tensor) -> Tensor:  # (N, 3, 32, 32) -> (N, C, 8, 8)
        out = self.conv1(x)
        if not self.preact:
            out = self.act1(self.bn1(out))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.preact:
            out = F.relu(self.bn_final(out), inplace=True)
        return out

    # forward(x) = forward_head(forward_features(x)): global average pool -> fc (head.py)


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
