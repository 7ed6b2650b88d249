"""Models by name: `create_model("densenet_bc100_k12", num_classes=10)`, and the same names in timm."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from densenet_repro import paper
from densenet_repro.models import densenet, resnet

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    # Table 2, DenseNet rows (CIFAR/SVHN)
    "densenet40_k12": densenet.densenet40_k12,
    "densenet100_k12": densenet.densenet100_k12,
    "densenet100_k24": densenet.densenet100_k24,
    "densenet_bc100_k12": densenet.densenet_bc100_k12,
    "densenet_bc250_k24": densenet.densenet_bc250_k24,
    "densenet_bc190_k40": densenet.densenet_bc190_k40,
    # Table 1 / Table 3 (ImageNet), and torchvision's DenseNet-161
    "densenet121": densenet.densenet121,
    "densenet161": densenet.densenet161,
    "densenet169": densenet.densenet169,
    "densenet201": densenet.densenet201,
    "densenet264": densenet.densenet264,
    # ResNet baselines of Table 2 (CIFAR/SVHN)
    "resnet110": resnet.resnet110,
    "preact_resnet164": resnet.preact_resnet164,
    "preact_resnet1001": resnet.preact_resnet1001,
    # Families at any depth (and growth rate): Figure 4's sweeps and the baselines of section 4
    "densenet": densenet.densenet,
    "densenet_b": densenet.densenet_b,
    "densenet_c": densenet.densenet_c,
    "densenet_bc": densenet.densenet_bc,
    "resnet": resnet.resnet,
    "preact_resnet": resnet.preact_resnet,
    "plain_cnn": resnet.plain_cnn,
}

# Parameter counts as printed in the paper's Table 2 (quoted in densenet_repro.paper), DenseNets first,
# for comparison with the exact counts of our models (notebook 01, tests/test_models.py).
PAPER_PARAMS: dict[str, str] = {r.model: r.params for r in sorted(paper.TABLE2, key=lambda r: not r.is_densenet)
                                if r.model}
CIFAR_MODELS = tuple(PAPER_PARAMS)
FAMILY_MODELS = ("densenet", "densenet_b", "densenet_c", "densenet_bc", "resnet", "preact_resnet", "plain_cnn")
IMAGENET_MODELS = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264")


def list_models() -> list[str]:
    """All registered model names, in registration order."""
    return list(_FACTORIES)


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model. `num_classes` defaults to 10 (CIFAR nets) or 1000 (ImageNet)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(_FACTORIES)}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _FACTORIES[name](**kwargs)


def _timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name}: no pretrained weights in densenet-repro; use pretrained=False")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)  # timm passes these to every entrypoint
        return create_model(name, **kwargs)

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = _FACTORIES[name].__doc__
    return entrypoint


def register_timm_models() -> list[str]:
    """Register our models with timm, so `timm.create_model("densenet_bc100_k12")` works.

    Names timm already has (densenet121/161/169/201) are left to timm: overwriting them would
    change what `timm.create_model("densenet121")` means, and the benchmark compares against it.
    Returns the names registered.
    """
    from timm.models import is_model, register_model

    registered = []
    for name in _FACTORIES:
        if is_model(name) and not _is_ours(name):
            continue  # timm's own model of that name
        if not is_model(name):
            register_model(_timm_entrypoint(name))
        registered.append(name)
    return registered


def _is_ours(name: str) -> bool:
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__ == __name__
