"""TRADES-FAT (Zhang et al. 2020): TRADES whose KL attack stops early like FAT's."""
from dataclasses import dataclass

from .trades import TRADES


@dataclass
class TRADESFAT(TRADES):
    name = "trades_fat"
    tau: int = 0

    def early_stop(self) -> int:
        return self.tau
