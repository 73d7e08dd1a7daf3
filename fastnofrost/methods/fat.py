"""FAT: friendly adversarial training (Zhang et al. 2020): SAT on early-stopped PGD, each sample
stopping ``tau`` steps after it is first misclassified (tau 0 in the paper's code)."""
from .sat import SAT


class FAT(SAT):
    name = "fat"
    tau = 0
