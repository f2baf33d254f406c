"""Model zoo, layer addressing and small test models."""

from xattr.models.zoo import ZOO, ZooModel, load_model

__all__ = ["ZOO", "Preprocess", "ZooModel", "load_model", "layer_path", "paper_name", "resolve_layer"]
