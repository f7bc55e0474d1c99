"""Atom-centred descriptors: smooth cutoffs and Behler–Parrinello symmetry functions."""

from mlpot.descriptors.cutoff import cosine_cutoff, polynomial_cutoff
from mlpot.descriptors.symmetry import SymmetryFunctions

__all__ = ["SymmetryFunctions", "cosine_cutoff", "polynomial_cutoff"]
