"""TRADES-FAT (Zhang et al. 2020): TRADES whose KL attack stops early like FAT's."""
from .trades import TRADES


class TRADESFAT(TRADES):
    name = "trades_fat"
    tau = 0
