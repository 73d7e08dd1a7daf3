"""TRADES-FAT (Zhang et al. 2020): TRADES whose KL attack stops early like FAT's (:class:`EarlyStop`)."""
from dataclasses import dataclass

from .base import EarlyStop
from .trades import TRADES


@dataclass
class TRADESFAT(EarlyStop, TRADES):
    name = "trades_fat"
