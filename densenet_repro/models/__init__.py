"""Model zoo: DenseNet (all variants of the paper) and the ResNet baselines, registered by name, with
timm's model interface; the same names in timm (densenet_repro_timm.py), and the trained weights."""

from densenet_repro.models.densenet import DenseNet
from densenet_repro.models.registry import create_model, list_models, list_pretrained, pretrained_cfg

__all__ = ["DenseNet", "create_model", "list_models", "list_pretrained", "pretrained_cfg", "register_timm_models"]


def register_timm_models() -> list[str]:
    """Register our models with timm (done on import when timm is installed); returns the names added."""
    from densenet_repro.models import densenet_repro_timm

    return densenet_repro_timm.register()


try:  # make `timm.create_model("densenet_bc100_k12")` work after `import densenet_repro`
    register_timm_models()
except ModuleNotFoundError as e:  # timm is optional at import time (the package works without it)
    if e.name is None or e.name.partition(".")[0] != "timm":
        raise
