"""Helpers shared by the model builders: channel rounding, drop-path schedule, argument checks."""
from numbers import Integral, Real
from typing import List


def round_channels(value: float, divisor: int = 8) -> int:
    """Round a (width-scaled) channel count to a multiple of ``divisor``, never below it and
    never more than 10% down (timm's ``make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> List[float]:
    """Stochastic depth rising linearly from 0 (first block) to ``drop_path_rate`` (last block)."""
    if num_blocks == 1:
        return [0.0]
    return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


def check_model_args(name: str, num_classes: int, in_chans: int, width: float, drop_rate: float,
                     drop_path_rate: float) -> None:
    """One clear sentence for the first bad constructor argument."""
    def is_number(v):
        return isinstance(v, Real) and not isinstance(v, bool)

    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {arg} must be an integer >= 1, got {value!r}")
    if not is_number(width) or not width > 0:
        raise ValueError(f"{name}: width must be a number > 0, got {width!r}")
    for arg, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not is_number(value) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: {arg} must be a number in [0, 1), got {value!r}")
