"""Model merging: Fisher-weighted averaging, plain averaging and task arithmetic."""
from trainlab.techniques.merging.fisher_merging import FisherMerge, diagonal_fisher, merge

__all__ = ["FisherMerge", "diagonal_fisher", "merge"]
