"""timm's classifier interface, shared by the DenseNets and the CIFAR ResNets (and the plain CNN).

A model built on `ClassifierHead` has the attributes and methods timm users rely on:

    num_classes, global_pool, num_features   attributes (num_classes=0: no classifier, pooled features)
    forward_features(x)                      the last feature map, (N, num_features, h, w)
    forward_head(x, pre_logits=False)        pool (+ classifier unless pre_logits)
    get_classifier(), reset_classifier(num_classes, global_pool=None)
    feature_info                             one dict per feature map (num_chs, reduction, module), for
                                             timm's feature wrappers (features_only=True)

It adds no parameters and no buffers (the pool is parameter-free), so state_dicts, parameter counts and
the random initialisation of a seeded model are what they were before the interface existed. It needs
no timm: `densenet_repro.create_model` works without it; timm's registration is in densenet_repro_timm.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")  # timm's names; "" = no pooling (needs num_classes=0)


class GlobalPool(nn.Module):
    """(N, C, H, W) -> (N, C) by timm's `global_pool` types ("catavgmax": (N, 2C)); "" passes the map through."""

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, POOL_TYPES))}, got {pool_type!r}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def is_identity(self) -> bool:
        return self.pool_type == ""

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, (1, 1)).flatten(1)
        avg, mx = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1), F.adaptive_max_pool2d(x, (1, 1)).flatten(1)
        return 0.5 * (avg + mx) if self.pool_type == "avgmax" else torch.cat((avg, mx), 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


def make_classifier(num_features: int, num_classes: int, pool: GlobalPool) -> nn.Module:
    """The linear classifier on the pooled features (the models' `official_init` zeroes its bias), or
    nn.Identity for num_classes=0."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: no classifier, the pooled features), got {num_classes!r}")
    if pool.is_identity() and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0: a linear classifier needs pooled features")
    if num_classes == 0:
        return nn.Identity()
    return nn.Linear(num_features * pool.feat_mult(), num_classes)


class ClassifierHead(nn.Module):
    """Base of the project's models: the timm head interface over `forward_features`.

    Subclasses set `num_features`, `num_classes`, `global_pool` (a GlobalPool), the classifier under
    the name in `classifier_name` ("classifier" for DenseNets, as torchvision; "fc" for ResNets) and
    `feature_info`, and define `forward_features`.
    """

    classifier_name = "classifier"
    num_features: int
    num_classes: int
    global_pool: GlobalPool
    feature_info: list[dict]

    @property
    def head_hidden_size(self) -> int:  # timm's name for the width of the pooled features
        return self.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)  # (N, num_features) or, with global_pool="", the map itself
        return x if pre_logits else getattr(self, self.classifier_name)(x)

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, num_classes), or the pooled features
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for `num_classes` (0: none), initialised as at construction (bias 0);
        `global_pool` changes the pooling too. On the device and dtype of the old classifier."""
        pool = GlobalPool(self.global_pool.pool_type if global_pool is None else global_pool)
        classifier = make_classifier(self.num_features, num_classes, pool)
        if isinstance(classifier, nn.Linear):
            nn.init.zeros_(classifier.bias)
            old = next(self.get_classifier().parameters(), None)
            old = next(self.parameters(), None) if old is None else old
            if old is not None:
                classifier.to(device=old.device, dtype=old.dtype)
        self.global_pool = pool
        setattr(self, self.classifier_name, classifier)
        self.num_classes = num_classes
