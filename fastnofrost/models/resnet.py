"""Baseline bottleneck ResNets (the seed's comparison rows): BatchNorm, InstanceNorm, dual-BN.

``resnet26`` / ``resnet50`` are the BN ResNets the official NoFrost code trains with timm
(``norm_layer=BatchNorm2d``, last BN of each block zero-initialized): same architecture,
initialization and state_dict keys as timm's models of the same name. ``*_in`` puts
InstanceNorm (affine, per-sample statistics at train and test time) in every norm slot;
``*_dualbn`` puts :class:`fastnofrost.nn.DualBatchNorm2d` there for MBNAT (route batches with
:func:`fastnofrost.nn.set_bn_mode`). ``*_small`` variants use a 3x3 stride-1 stem without
max-pool for 32x32 / 28x28 data.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import DropPath, DualBatchNorm2d
from .builder import check_model_args, drop_path_rates, round_channels
from .normalize import InputNormalize
from .registry import register_model

NORM_LAYERS = {
    "bn": nn.BatchNorm2d,
    "in": partial(nn.InstanceNorm2d, affine=True),
    "dualbn": DualBatchNorm2d,
}


@dataclass(frozen=True)
class ResNetCfg:
    depths: Tuple[int, ...]
    norm: str = "bn"  # one of NORM_LAYERS
    channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    small_input: bool = False  # 3x3 stride-1 stem, no max-pool (32x32 / 28x28 images)
    bottle_ratio: float = 0.25


def _conv(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


class Bottleneck(nn.Module):
    """conv1x1-norm-relu, conv3x3(stride)-norm-relu, conv1x1-norm, + shortcut, relu."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, bottle_ratio: float, norm, drop_path_rate: float):
        super().__init__()
        mid_chs = round_channels(out_chs * bottle_ratio)
        # built before conv1 (timm's order, so a seeded build draws the same weights), registered last
        downsample = None
        if in_chs != out_chs or stride != 1:
            downsample = nn.Sequential(_conv(in_chs, out_chs, 1, stride), norm(out_chs))
        self.conv1 = _conv(in_chs, mid_chs, 1)
        self.bn1 = norm(mid_chs)
        self.conv2 = _conv(mid_chs, mid_chs, 3, stride)
        self.bn2 = norm(mid_chs)
        self.conv3 = _conv(mid_chs, out_chs, 1)
        self.bn3 = norm(out_chs)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.drop_path(self.bn3(self.conv3(out)))
        return F.relu(out + shortcut, inplace=True)


class ResNet(nn.Module):
    """Bottleneck ResNet classifier taking pixels in [0, 1] (input normalization is its first layer)."""

    def __init__(self, cfg: ResNetCfg, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        check_model_args(type(self).__name__, num_classes, in_chans, width, drop_rate, drop_path_rate)
        if cfg.norm not in NORM_LAYERS:
            raise ValueError(f"ResNet: norm must be one of {tuple(NORM_LAYERS)}, got {cfg.norm!r}")
        self.cfg = cfg
        self.num_classes = num_classes
        norm = NORM_LAYERS[cfg.norm]

        self.normalize = InputNormalize(in_chans, mean, std)
        stem_chs = round_channels(cfg.stem_chs * width)
        if cfg.small_input:
            self.conv1 = _conv(in_chans, stem_chs, 3)
            self.bn1 = norm(stem_chs)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = _conv(in_chans, stem_chs, 7, stride=2)
            self.bn1 = norm(stem_chs)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        rates = iter(drop_path_rates(drop_path_rate, sum(cfg.depths)))
        prev_chs = stem_chs
        for stage_idx, depth in enumerate(cfg.depths):
            out_chs = round_channels(cfg.channels[stage_idx] * width)
            blocks = []
            for block_idx in range(depth):
                stride = 2 if stage_idx > 0 and block_idx == 0 else 1
                blocks.append(Bottleneck(prev_chs, out_chs, stride, cfg.bottle_ratio, norm, next(rates)))
                prev_chs = out_chs
            self.add_module(f"layer{stage_idx + 1}", nn.Sequential(*blocks))
        self.num_features = prev_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(prev_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for block in self.modules():
            if isinstance(block, Bottleneck):  # zero-init the last norm: each block starts as identity
                for m in block.bn3.modules():
                    if isinstance(m, nn.modules.batchnorm._NormBase):
                        nn.init.zeros_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> final feature map."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(self.normalize(x))), inplace=True))
        for stage_idx in range(len(self.cfg.depths)):
            x = getattr(self, f"layer{stage_idx + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(x).mean((2, 3))))


for _depth, _depths in ((26, (2, 2, 2, 2)), (50, (3, 4, 6, 3))):
    for _norm, _suffix in (("bn", ""), ("in", "_in"), ("dualbn", "_dualbn")):
        register_model(f"resnet{_depth}{_suffix}", partial(ResNet, ResNetCfg(_depths, norm=_norm)))
        register_model(f"resnet{_depth}{_suffix}_small",
                       partial(ResNet, ResNetCfg(_depths, norm=_norm, small_input=True)))
