"""DenseNet, exactly as in Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017).

One class builds every variant of the paper from its symbols:

    DenseNet     depth L, growth rate k                    (bottleneck=False, compression=1.0)
    DenseNet-B   + bottleneck 1x1 conv to 4k maps          (bottleneck=True)
    DenseNet-C   + transitions compress to floor(theta*m)  (compression=0.5)
    DenseNet-BC  both                                       (bottleneck=True, compression=0.5)

with the CIFAR/SVHN stem (one 3x3 conv, 3 blocks at 32, 16, 8 pixels) or the ImageNet stem
(7x7/2 conv + BN-ReLU + 3x3/2 max pool, 4 blocks at 56, 28, 14, 7 pixels).

Module and parameter names are torchvision's (`features.denseblock1.denselayer1.norm1.weight`,
...), so `load_state_dict(torchvision.models.densenet121().state_dict())` loads strictly.

Where the paper text, the official Lua code (liuzhuang13/DenseNet) and torchvision disagree, a
comment marked "DEPARTS" says which we follow and why.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor

from densenet_repro.models.head import ClassifierHead, GlobalPool, make_classifier

BOTTLENECK_WIDTH = 4  # the 1x1 bottleneck conv produces 4k maps (paper, section 3)


def official_init(model: nn.Module) -> None:
    """The official code's initialisation (fb.resnet.torch style), shared by our ResNet baselines."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # N(0, sqrt(2/n)), n = kW*kH*out_channels: He init with fan_out.
            # DEPARTS from torchvision (kaiming_normal_ with fan_in): we follow the official code.
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            # Weight: Torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's too; bias 0.
            nn.init.zeros_(m.bias)


class _DenseLayer(nn.Module):
    """H_l: BN-ReLU-Conv(3x3) or, with bottleneck, BN-ReLU-Conv(1x1, 4k)-BN-ReLU-Conv(3x3, k).

    Takes the list of all earlier feature maps [x_0, ..., x_{l-1}] of its block and returns x_l,
    k new maps. The concatenation happens here, so `memory_efficient` can recompute it.
    """

    def __init__(self, num_input_features: int, growth_rate: int, bottleneck: bool,
                 drop_rate: float, memory_efficient: bool) -> None:
        super().__init__()
        # Convs are numbered in order: with a bottleneck conv1 is the 1x1 and conv2 the 3x3
        # (torchvision's names, hence state_dict-compatible); without one, conv1 is the 3x3.
        first_out = BOTTLENECK_WIDTH * growth_rate if bottleneck else growth_rate
        first_kernel = 1 if bottleneck else 3
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, first_out, kernel_size=first_kernel,
                               padding=first_kernel // 2, bias=False)
        if bottleneck:
            self.norm2 = nn.BatchNorm2d(first_out)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(first_out, growth_rate, kernel_size=3, padding=1, bias=False)
        self.bottleneck = bottleneck
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _dropout(self, x: Tensor) -> Tensor:
        # DEPARTS from torchvision (dropout only after the 3x3 conv): the official code puts
        # dropout after every conv but the stem, the 1x1 bottleneck included; we follow it.
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x

    def _first_conv(self, update_stats: list[bool], *inputs: Tensor) -> Tensor:
        """cat -> BN -> ReLU -> conv1: the part memory_efficient mode recomputes in backward."""
        x = torch.cat(inputs, 1)  # (N, k_0 + k(l-1), H, W)
        if update_stats[0]:
            x = self.norm1(x)
            update_stats[0] = False
        else:
            # Recomputation in backward: same batch statistics, but the running statistics
            # must not be updated a second time, or memory_efficient would not be equivalent;
            # throwaway copies keep the saved-tensor count equal to the first pass.
            norm = self.norm1
            x = F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight,
                             norm.bias, True, 0.0, norm.eps)
        return self.conv1(self.relu1(x))

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if self.memory_efficient and self.training and any(t.requires_grad for t in inputs):
            out = cp.checkpoint(self._first_conv, [True], *inputs, use_reentrant=False)
        else:
            out = self._first_conv([True], *inputs)
        out = self._dropout(out)  # (N, 4k or k, H, W)
        if self.bottleneck:
            out = self._dropout(self.conv2(self.relu2(self.norm2(out))))  # (N, k, H, W)
        return out


class _DenseBlock(nn.ModuleDict):
    """num_layers dense layers; each sees the block input and every earlier layer's output.

    Returns the concatenation [x_0, x_1, ..., x_L]: k_0 + L*k maps.
    """

    def __init__(self, num_layers: int, num_input_features: int, growth_rate: int,
                 bottleneck: bool, drop_rate: float, memory_efficient: bool) -> None:
        super().__init__()
        for i in range(num_layers):
            # layer l (1-based) sees k_0 + k(l-1) input maps
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bottleneck,
                                drop_rate, memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]  # [(N, k_0, H, W), (N, k, H, W), ...]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (N, k_0 + L*k, H, W)


class _Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv to floor(theta*m) maps -> 2x2 average pool (halves H and W)."""

    def __init__(self, num_input_features: int, num_output_features: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        # DEPARTS from the paper's text (BN -> conv -> pool): the official code and torchvision
        # both have a ReLU here; we follow the code that produced the paper's numbers.
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        if drop_rate > 0:
            # Official code: dropout after the transition conv too (torchvision has none).
            self.dropout = nn.Dropout(drop_rate)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


def depth_to_block_config(depth: int, bottleneck: bool, num_blocks: int = 3) -> tuple[int, ...]:
    """Layers per block of a CIFAR/SVHN DenseNet of depth L (3 equal blocks).

    L counts the conv and FC layers: stem conv + 2 transition convs + classifier = 4, plus
    1 conv per dense layer, or 2 with bottleneck; hence L = 3n + 4, or 6n + 4 with bottleneck.
    """
    convs_per_layer = 2 if bottleneck else 1
    per_block, rest = divmod(depth - 4, num_blocks * convs_per_layer)
    if rest or per_block < 1:
        rule = "6n+4 with bottleneck" if bottleneck else "3n+4 without bottleneck"
        raise ValueError(f"depth {depth} is not {rule} (n >= 1 layers per block), "
                         f"e.g. {num_blocks * convs_per_layer * 12 + 4}")
    return (per_block,) * num_blocks


class DenseNet(ClassifierHead):
    """Densely connected convolutional network (all variants of the paper), with timm's model interface.

    Args:
        depth: L in the paper, for the CIFAR/SVHN nets (3 equal blocks). Give either `depth`
            or `block_config`.
        block_config: layers per dense block, e.g. (6, 12, 24, 16) for DenseNet-121.
        growth_rate: k in the paper, maps each dense layer adds.
        bottleneck: B in the paper, a 1x1 conv to 4k maps before each 3x3 conv.
        compression: theta in the paper (C when < 1): transitions output floor(theta*m) maps.
        drop_rate: dropout probability after every conv but the first (0.2 in the paper
            without data augmentation, else 0).
        num_classes: outputs of the classifier; 0: no classifier, the model returns the pooled features.
        global_pool: timm's pooling before the classifier: "avg" (the paper's), "max", "avgmax",
            "catavgmax", or "" (none: the feature map itself; needs num_classes=0).
        in_chans: input channels (3).
        stem: "cifar" (3x3 conv, 32x32 inputs) or "imagenet" (7x7/2 conv, BN-ReLU, 3x3/2 max pool).
        num_init_features: k_0 of the first block, the stem's output maps. Default: the paper's,
            16 for CIFAR nets without bottleneck and compression, else 2k.
        memory_efficient: recompute cat -> BN -> ReLU -> first conv of each dense layer in the
            backward pass instead of storing it (Pleiss et al. 2017): same outputs and gradients,
            feature memory linear instead of quadratic in depth, some extra compute.

    timm's interface (head.py): `forward_features` (the last map after norm5-ReLU), `forward_head`,
    `get_classifier`, `reset_classifier`, and `feature_info`: the stem, then every dense block and
    transition (features.conv0 or features.relu0, features.denseblock1, features.transition1, ...).
    """

    def __init__(self, depth: int | None = None, block_config: Sequence[int] | None = None,
                 growth_rate: int = 12, bottleneck: bool = False, compression: float = 1.0,
                 drop_rate: float = 0.0, num_classes: int = 10, stem: str = "cifar",
                 num_init_features: int | None = None, memory_efficient: bool = False,
                 global_pool: str = "avg", in_chans: int = 3) -> None:
        super().__init__()
        if (depth is None) == (block_config is None):
            raise ValueError("give exactly one of depth (L) or block_config")
        if not isinstance(growth_rate, int) or growth_rate < 1:
            raise ValueError(f"growth_rate k must be an integer >= 1, got {growth_rate!r}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression theta must be in (0, 1], got {compression!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if block_config is None:
            block_config = depth_to_block_config(depth, bottleneck)
        block_config = tuple(int(n) for n in block_config)
        if not block_config or min(block_config) < 1:
            raise ValueError(f"block_config needs >= 1 layer in every block, got {block_config}")
        if num_init_features is None:
            # Paper: 16 maps for the CIFAR nets, 2k for DenseNet-BC and the ImageNet nets.
            # DEPARTS from the official Lua code, which always uses 2k: the paper's (and our
            # Table 2) parameter counts are for the 16-map stem.
            bc = bottleneck and compression < 1
            num_init_features = 2 * growth_rate if (bc or stem == "imagenet") else 16
        self.block_config = block_config
        self.growth_rate = growth_rate

        if stem == "imagenet":
            stem_layers = [
                ("conv0", nn.Conv2d(in_chans, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        else:  # CIFAR/SVHN: one 3x3 conv; the first dense layer starts with its own BN-ReLU
            stem_layers = [("conv0", nn.Conv2d(in_chans, num_init_features, kernel_size=3, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stem_layers))
        # timm's feature maps (maps, reduction = input size / map size, module): the stem (the ImageNet
        # one after its ReLU, at 1/2), then the output of every dense block and transition, in order
        stem_module, stem_reduction = ("features.relu0", 2) if stem == "imagenet" else ("features.conv0", 1)
        self.feature_info = [dict(num_chs=num_init_features, reduction=stem_reduction, module=stem_module)]
        reduction = 4 if stem == "imagenet" else 1  # at the first block: after the ImageNet stem's max pool

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, growth_rate, bottleneck, drop_rate,
                                memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            self.feature_info.append(dict(num_chs=num_features, reduction=reduction, module=f"features.denseblock{i + 1}"))
            if i != len(block_config) - 1:
                out_features = int(math.floor(compression * num_features))
                self.features.add_module(f"transition{i + 1}",
                                         _Transition(num_features, out_features, drop_rate))
                num_features = out_features
                reduction *= 2
                self.feature_info.append(dict(num_chs=num_features, reduction=reduction,
                                              module=f"features.transition{i + 1}"))
        # Final BN (its ReLU is in forward_features): official code and torchvision, not in the paper text.
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.num_features = num_features
        self.num_classes = num_classes
        self.global_pool = GlobalPool(global_pool)  # no parameters: the state_dict is torchvision's
        self.classifier = make_classifier(num_features, num_classes, self.global_pool)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        official_init(self)

    def forward_features(self, x: Tensor) -> Tensor:  # x: (N, 3, H, W)
        # self.features is called as a whole, so the fast CPU blocks (fast_dense.convert switches the
        # blocks' class in place) and their statistics handed to the transitions work here too.
        return F.relu(self.features(x), inplace=True)  # (N, num_features, h, w)

    # forward(x) = forward_head(forward_features(x)): global average pool -> classifier (head.py)


# --- Factories ----------------------------------------------------------------------------------
# The four CIFAR/SVHN families by name, for any depth L and growth rate k (Figure 4 sweeps them),
# then the rows of Table 2: a family at the paper's (L, k). A Table 2 factory takes `depth` too, so
# a scaled-down run builds the same family at another depth.

VARIANTS = {  # family name -> (bottleneck, compression)
    "densenet": (False, 1.0),
    "densenet_b": (True, 1.0),
    "densenet_c": (False, 0.5),
    "densenet_bc": (True, 0.5),
}


def _family(variant: str, depth: int, growth_rate: int, num_classes: int, **kwargs) -> DenseNet:
    bottleneck, compression = VARIANTS[variant]
    return DenseNet(depth=depth, growth_rate=growth_rate, bottleneck=bottleneck, compression=compression,
                    num_classes=num_classes, **kwargs)


def densenet(depth: int = 40, growth_rate: int = 12, num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet: L = 3n + 4, every dense layer one 3x3 conv."""
    return _family("densenet", depth, growth_rate, num_classes, **kwargs)


def densenet_b(depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet-B: L = 6n + 4, a 1x1 bottleneck to 4k maps before each 3x3 conv."""
    return _family("densenet_b", depth, growth_rate, num_classes, **kwargs)


def densenet_c(depth: int = 40, growth_rate: int = 12, num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet-C: L = 3n + 4, transitions compress to floor(0.5 m) maps."""
    return _family("densenet_c", depth, growth_rate, num_classes, **kwargs)


def densenet_bc(depth: int = 100, growth_rate: int = 12, num_classes: int = 10, **kwargs) -> DenseNet:
    """DenseNet-BC: L = 6n + 4, bottleneck and compression 0.5."""
    return _family("densenet_bc", depth, growth_rate, num_classes, **kwargs)


def densenet40_k12(num_classes: int = 10, depth: int = 40, **kwargs) -> DenseNet:
    """DenseNet (L=40, k=12), Table 2: 1.0M parameters."""
    return densenet(depth, 12, num_classes, **kwargs)


def densenet100_k12(num_classes: int = 10, depth: int = 100, **kwargs) -> DenseNet:
    """DenseNet (L=100, k=12), Table 2: 7.0M parameters."""
    return densenet(depth, 12, num_classes, **kwargs)


def densenet100_k24(num_classes: int = 10, depth: int = 100, **kwargs) -> DenseNet:
    """DenseNet (L=100, k=24), Table 2: 27.2M parameters."""
    return densenet(depth, 24, num_classes, **kwargs)


def densenet_bc100_k12(num_classes: int = 10, depth: int = 100, **kwargs) -> DenseNet:
    """DenseNet-BC (L=100, k=12), Table 2: 0.8M parameters."""
    return densenet_bc(depth, 12, num_classes, **kwargs)


def densenet_bc250_k24(num_classes: int = 10, depth: int = 250, **kwargs) -> DenseNet:
    """DenseNet-BC (L=250, k=24), Table 2: 15.3M parameters."""
    return densenet_bc(depth, 24, num_classes, **kwargs)


def densenet_bc190_k40(num_classes: int = 10, depth: int = 190, **kwargs) -> DenseNet:
    """DenseNet-BC (L=190, k=40), Table 2: 25.6M parameters."""
    return densenet_bc(depth, 40, num_classes, **kwargs)


def _imagenet(block_config: tuple[int, ...], k: int, num_classes: int, **kwargs) -> DenseNet:
    return DenseNet(block_config=block_config, growth_rate=k, bottleneck=True, compression=0.5,
                    num_classes=num_classes, stem="imagenet", **kwargs)


def densenet121(num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-121 (k=32), Table 1; same parameters as torchvision's."""
    return _imagenet((6, 12, 24, 16), 32, num_classes, **kwargs)


def densenet169(num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-169 (k=32), Table 1."""
    return _imagenet((6, 12, 32, 32), 32, num_classes, **kwargs)


def densenet201(num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-201 (k=32), Table 1."""
    return _imagenet((6, 12, 48, 32), 32, num_classes, **kwargs)


def densenet264(num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-264 (k=32), Table 1 (torchvision has no 264)."""
    return _imagenet((6, 12, 64, 48), 32, num_classes, **kwargs)


def densenet161(num_classes: int = 1000, **kwargs) -> DenseNet:
    """DenseNet-161 (k=48, stem 96): torchvision's, not in the paper's Table 1."""
    return _imagenet((6, 12, 36, 24), 48, num_classes, **kwargs)
