"""FAT: friendly adversarial training (Zhang et al. 2020): SAT on early-stopped PGD (:class:`EarlyStop`)."""
from dataclasses import dataclass

from .base import EarlyStop
from .sat import SAT


@dataclass
class FAT(EarlyStop, SAT):
    name = "fat"
