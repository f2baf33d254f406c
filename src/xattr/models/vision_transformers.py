"""Paper-style layer names of the torchvision vision transformers (``model=torchvision model.arch=vit_b_16``,
``swin_t``, ..., and the CIFAR-10 ViT): where each role's layer lies. The token-grid layouts of their outputs
are declared in :mod:`xattr.core.tokens` (one place for every method).

- ViT: ``patch_embed`` (the patch convolution, a ``(B, C, h, w)`` map), ``block<k>`` (encoder block k's token
  output, ``(B, 1 + h w, C)``), ``ln1_<k>`` (block k's first LayerNorm: Grad-CAM's layer, as
  pytorch-grad-cam's ``blocks[-1].norm1``; the last block's patch tokens only reach the class token through
  its attention, so the last block's *output* has no gradient on the patches), ``gelu<k>`` (block k's MLP
  activation), ``norm`` (the final LayerNorm), ``head``.
- Swin: ``patch_embed`` (``features.0``), ``stage<k>`` (``(B, h, w, C)`` channels-last), ``norm``, ``head``.
"""

from __future__ import annotations

from torch import nn


def vit_layers(num_layers: int) -> dict[str, str]:
    """Names of a torchvision ``VisionTransformer`` with ``num_layers`` encoder blocks."""
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(num_layers)]
    return {"patch_embed": "conv_proj",
            **{f"block{i + 1}": b for i, b in enumerate(blocks)},
            **{f"ln1_{i + 1}": f"{b}.ln_1" for i, b in enumerate(blocks)},
            **{f"gelu{i + 1}": f"{b}.mlp.1" for i, b in enumerate(blocks)},
            "norm": "encoder.ln", "head": "heads.head"}


def swin_layers(net: nn.Module) -> dict[str, str]:
    """Names of a torchvision ``SwinTransformer``: its stages are ``features.1, 3, 5, 7`` (patch merging
    between them)."""
    stages = [i for i in range(1, len(net.features), 2)]
    return {"patch_embed": "features.0", **{f"stage{k + 1}": f"features.{i}" for k, i in enumerate(stages)},
            "norm": "norm", "head": "head"}


def torchvision_transformer_layers(net: nn.Module) -> dict[str, str]:
    """The names above for a torchvision ViT or Swin; {} for any other network."""
    import torchvision

    if isinstance(net, torchvision.models.VisionTransformer):
        return vit_layers(len(net.encoder.layers))
    if isinstance(net, torchvision.models.SwinTransformer):
        return swin_layers(net)
    return {}
