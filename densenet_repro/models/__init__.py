"""Model zoo: DenseNet (all variants of the paper) and the ResNet baselines, registered by name."""

from densenet_repro.models.densenet import DenseNet
from densenet_repro.models.registry import create_model, list_models, register_timm_models

__all__ = ["DenseNet", "create_model", "list_models", "register_timm_models"]

try:  # make `timm.create_model("densenet_bc100_k12")` work after `import densenet_repro`
    register_timm_models()
except ImportError:  # timm is optional at import time (the package works without it)
    pass
