"""densenet-repro's models in timm's registry, built by timm's own builder (`build_model_with_cfg`).

`register()` runs on `import densenet_repro`. It adds to timm the names of registry.MODELS that have a
`timm_name`: the paper's own names (the six DenseNet rows of Table 2, densenet264, resnet110,
preact_resnet164, preact_resnet1001) and the families at any size under the prefix `densenet_repro_`
(densenet_repro_densenet, _densenet_b, _densenet_c, _densenet_bc, _resnet, _preact_resnet, _plain_cnn).
A name timm already has is left to timm. timm lists them as the module "densenet_repro_timm":

    timm.list_models(module="densenet_repro_timm")
    timm.create_model("densenet_bc100_k12", num_classes=100)
    timm.create_model("densenet_repro_densenet_bc", depth=190, growth_rate=40)
    timm.create_model("densenet40_k12", pretrained=True)        # this repository's trained weights (file=)
    timm.create_model("densenet40_k12", features_only=True)     # timm's FeatureListNet over feature_info

Each name's pretrained_cfg is registry.default_cfg; trained weights add the tag of registry.WEIGHTS
("densenet40_k12.repro_c10plus"), whose cfg has `file=` the run's weights.pt once the run has finished
(so timm.list_pretrained() lists only weights that load). pretrained=True looks the weights up when it is
called, not at import: a run that finishes while a process runs loads, and a run still training gets one
ConfigError saying so.
"""

from __future__ import annotations

import sys
from typing import Any

import torch.nn as nn
from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, is_model, model_entrypoint, \
    register_model

from densenet_repro.errors import UserError
from densenet_repro.models import registry
from densenet_repro.runstore import bare_state_dict

__all__ = ["register"]  # register_model appends each entrypoint's name (each is an attribute of this module)

SOURCE_KEYS = ("file", "url", "state_dict", "hf_hub_id")  # a pretrained_cfg(_overlay) naming its own weights
default_cfgs: dict[str, Any] = {}  # {timm name: DefaultCfg}, read by timm's register_model


def _cfgs() -> dict[str, dict[str, Any]]:
    """{"name" or "name.tag": cfg}: each model's default cfg, then one per set of trained weights, with file=
    only where the weights are there and their run's record can be read."""
    out = {}
    for name, m in registry.MODELS.items():
        if m.timm_name is None:
            continue
        out[m.timm_name] = registry.default_cfg(name)
        for w in registry.WEIGHTS:
            if w.model == name:
                try:
                    out[f"{m.timm_name}.{w.tag}"] = registry.weights_cfg(w)
                except UserError:  # still training, or a damaged summary.json: pretrained=True says which
                    out[f"{m.timm_name}.{w.tag}"] = dict(registry.default_cfg(name), tag=w.tag)
    return out


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    m = registry.MODELS[name]
    cfg = kwargs.pop("pretrained_cfg", None)  # None, a tag (from "name.tag"), or a cfg of the caller's
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not isinstance(cfg, (dict, PretrainedCfg)) and not any(overlay.get(k) for k in SOURCE_KEYS):
        w = registry.find_weights(name, cfg or None)
        cfg = registry.weights_cfg(w)  # read now; ConfigError while the run trains
        for k, v in registry.run_model_kwargs(w).items():
            kwargs.setdefault(k, v)
    return build_model_with_cfg(
        m.factory, m.timm_name, pretrained, pretrained_cfg=cfg,
        # features_only: timm's FeatureListNet replays the model's children in order (a DenseNet's: those of
        # model.features, flattened), up to the last map of feature_info asked for
        feature_cfg=dict(flatten_sequential=m.arch.in_features, out_indices=tuple(range(m.arch.feature_maps))),
        pretrained_filter_fn=lambda state, model: bare_state_dict(state), **kwargs)


def _entrypoint(name: str):
    m = registry.MODELS[name]

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = m.timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{m.description} (densenet-repro's {name!r}; see densenet_repro.models.registry)"
    return entrypoint


def _is_ours(timm_name: str) -> bool:
    return model_entrypoint(timm_name).__module__ == __name__


def register() -> list[str]:
    """Register our models with timm (again: a no-op). Returns the timm names that are ours."""
    if not default_cfgs:
        default_cfgs.update(generate_default_cfgs(_cfgs()))
    names = []
    for name, m in registry.MODELS.items():
        if m.timm_name is None:
            continue
        if is_model(m.timm_name):
            if _is_ours(m.timm_name):
                names.append(m.timm_name)
            continue  # timm's own model of that name: never overwritten
        fn = _entrypoint(name)
        setattr(sys.modules[__name__], m.timm_name, fn)
        register_model(fn)
        names.append(m.timm_name)
    return names
