"""NF-ResNet: normalizer-free pre-activation ResNet on scaled weight standardization.

``nf_resnet26`` / ``nf_resnet50`` match timm's models of the same name exactly: architecture,
initialization (a build seeded like timm's draws the same numbers) and state_dict keys, so
timm and official NoFrost weights load as they are. The only extra keys are the input
normalization buffers ``normalize.mean`` / ``normalize.std``.

Block (pre-activation, Brock et al. 2021)::

    h = relu(x) * beta                      beta = 1 / sqrt(expected variance of x)
    out = conv3(relu(conv2(relu(conv1(h)))))  ReLU gamma folded into each conv's scale
    return alpha * drop_path(out) + (downsample(h) if shape changes else x)

The expected variance starts at 1, grows by alpha^2 per block and resets to 1 after the
first block of each stage (whose shortcut is a fresh avg-pool + 1x1 conv). The last conv of
each block starts with gain 0, so every residual branch starts as the identity.
``*_small`` variants use a 3x3 stride-1 stem without max-pool for 32x32 / 28x28 data.
"""
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import DropPath, ScaledStdConv2d
from .builder import check_model_args, drop_path_rates, round_channels
from .normalize import InputNormalize
from .registry import register_model

RELU_GAMMA = 1.7139588594436646  # 1 / std(relu(z)), z ~ N(0, 1): keeps activations at unit variance


@dataclass(frozen=True)
class NfResNetCfg:
    depths: Tuple[int, ...]
    channels: Tuple[int, ...] = (256, 512, 1024, 2048)
    stem_chs: int = 64
    small_input: bool = False  # 3x3 stride-1 stem, no max-pool (32x32 / 28x28 images)
    alpha: float = 0.2
    bottle_ratio: float = 0.25
    std_conv_eps: float = 1e-5


class NfBlock(nn.Module):
    """Normalizer-free pre-activation bottleneck block (see module doc)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, alpha: float, beta: float, bottle_ratio: float,
                 conv, drop_path_rate: float):
        super().__init__()
        mid_chs = round_channels(out_chs * bottle_ratio)
        self.alpha = alpha
        self.beta = beta
        self.downsample = None
        if in_chs != out_chs or stride != 1:
            layers = OrderedDict()
            if stride != 1:
                layers["pool"] = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            layers["conv"] = conv(in_chs, out_chs, 1)
            self.downsample = nn.Sequential(layers)
        self.conv1 = conv(in_chs, mid_chs, 1)
        self.conv2 = conv(mid_chs, mid_chs, 3, stride=stride)
        self.conv3 = conv(mid_chs, out_chs, 1, gain_init=0.0)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) * self.beta
        shortcut = x if self.downsample is None else self.downsample(h)
        out = self.conv1(h)
        out = self.conv2(F.relu(out, inplace=True))
        out = self.conv3(F.relu(out, inplace=True))
        return self.drop_path(out) * self.alpha + shortcut


class NormFreeResNet(nn.Module):
    """NF-ResNet classifier taking pixels in [0, 1] (input normalization is its first layer)."""

    def __init__(self, cfg: NfResNetCfg, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        check_model_args(type(self).__name__, num_classes, in_chans, width, drop_rate, drop_path_rate)
        self.cfg = cfg
        self.num_classes = num_classes
        conv = partial(ScaledStdConv2d, gamma=RELU_GAMMA, eps=cfg.std_conv_eps)

        self.normalize = InputNormalize(in_chans, mean, std)
        stem_chs = round_channels(cfg.stem_chs * width)
        if cfg.small_input:
            self.stem = nn.Sequential(OrderedDict(conv=conv(in_chans, stem_chs, 3, stride=1)))
        else:
            self.stem = nn.Sequential(OrderedDict(conv=conv(in_chans, stem_chs, 7, stride=2),
                                                  pool=nn.MaxPool2d(3, stride=2, padding=1)))

        rates = iter(drop_path_rates(drop_path_rate, sum(cfg.depths)))
        prev_chs, expected_var, stages = stem_chs, 1.0, []
        for stage_idx, depth in enumerate(cfg.depths):
            out_chs = round_channels(cfg.channels[stage_idx] * width)
            blocks = []
            for block_idx in range(depth):
                blocks.append(NfBlock(prev_chs, out_chs, stride=2 if stage_idx > 0 and block_idx == 0 else 1,
                                      alpha=cfg.alpha, beta=expected_var ** -0.5, bottle_ratio=cfg.bottle_ratio,
                                      conv=conv, drop_path_rate=next(rates)))
                if block_idx == 0:
                    expected_var = 1.0
                expected_var += cfg.alpha ** 2
                prev_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = prev_chs
        self.head = nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
                                              drop=nn.Dropout(drop_rate), fc=nn.Linear(prev_chs, num_classes)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> final feature map (after the last activation)."""
        return F.relu(self.stages(self.stem(self.normalize(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


for _depth, _depths in ((26, (2, 2, 2, 2)), (50, (3, 4, 6, 3))):
    register_model(f"nf_resnet{_depth}", partial(NormFreeResNet, NfResNetCfg(_depths)))
    register_model(f"nf_resnet{_depth}_small", partial(NormFreeResNet, NfResNetCfg(_depths, small_input=True)))
