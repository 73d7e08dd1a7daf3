"""Drop-in layers built on the fused ops."""
from .convert import convert_timm
from .drop_path import DropPath
from .dual_bn import BN_MODES, DualBatchNorm2d, set_bn_mode
from .frozen import fill_cache, frozen_weights, is_frozen
from .grouped import WeightGroup, group_weights, ungroup_weights, weight_group
from .std_conv import ScaledStdConv2d, StdConv2d, set_ws_backend

__all__ = ["ScaledStdConv2d", "StdConv2d", "frozen_weights", "fill_cache", "is_frozen", "DropPath", "DualBatchNorm2d",
           "set_bn_mode", "BN_MODES", "convert_timm", "WeightGroup", "group_weights", "ungroup_weights",
           "weight_group", "set_ws_backend"]
