"""Models: NF-ResNets (timm-exact), BN / IN / dual-BN ResNet baselines, registry, checkpoints.

Every model takes pixels in [0, 1]; input normalization is its first layer (``normalize``).
"""
from .checkpoint import LoadResult, load_checkpoint
from .normalize import IMAGENET_MEAN, IMAGENET_STD, InputNormalize
from .registry import create_model, list_models, register_model
from .nf_resnet import NfResNetCfg, NormFreeResNet  # registers the nf_resnet* names
from .resnet import ResNet, ResNetCfg  # registers the resnet* names

__all__ = [
    "create_model", "list_models", "register_model", "load_checkpoint", "LoadResult",
    "InputNormalize", "IMAGENET_MEAN", "IMAGENET_STD",
    "NormFreeResNet", "NfResNetCfg", "ResNet", "ResNetCfg",
]
