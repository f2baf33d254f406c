"""InputIBA (Khakzar et al., NeurIPS 2021; ch. 6): feature IBA -> WGAN input bottleneck -> input IBA."""

from xattr.methods.input_iba.input_bottleneck import InputBottleneck, input_kl
from xattr.methods.input_iba.input_iba import InputIBA
from xattr.methods.input_iba.text import InputIBAText
from xattr.methods.input_iba.wgan import (
    ConvDiscriminators,
    MaskGenerator,
    RNNDiscriminators,
    WGANConfig,
    WGANFit,
    fit_wgan,
)

__all__ = ["ConvDiscriminators", "InputBottleneck", "InputIBA", "InputIBAText", "MaskGenerator",
           "RNNDiscriminators", "WGANConfig", "WGANFit", "fit_wgan", "input_kl"]
