"""Attribution methods, one class each, with a common batched ``attribute(x, target)``."""

from xattr.methods.base import Attribution, reduce_channels

__all__ = ["Attribution", "reduce_channels"]
