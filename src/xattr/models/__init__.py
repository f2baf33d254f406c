"""Model zoo, layer addressing and small test models."""

from xattr.models.layers import layer_path, paper_name, resolve_layer
from xattr.models.zoo import ZOO, Preprocess, ZooModel, load_model

__all__ = ["ZOO", "Preprocess", "ZooModel", "load_model", "layer_path", "paper_name", "resolve_layer"]
