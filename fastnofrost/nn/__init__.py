"""Drop-in layers built on the fused ops."""
from .frozen import frozen_weights, is_frozen
from .std_conv import ScaledStdConv2d, StdConv2d

__all__ = ["ScaledStdConv2d", "StdConv2d", "frozen_weights", "is_frozen"]
