"""FAT: friendly adversarial training (Zhang et al. 2020): SAT on early-stopped PGD, each sample
stopping ``tau`` steps after it is first misclassified (tau 0 in the paper's code)."""
from dataclasses import dataclass

from .sat import SAT


@dataclass
class FAT(SAT):
    name = "fat"
    tau: int = 0

    def early_stop(self) -> int:
        return self.tau
