"""densenet-repro: a reproduction of Densely Connected Convolutional Networks (Huang et al., 2017)."""

from densenet_repro.models import DenseNet, create_model, list_models, list_pretrained

__all__ = ["DenseNet", "create_model", "list_models", "list_pretrained"]
__version__ = "0.1.0"
