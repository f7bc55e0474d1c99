"""What every descriptor-based model shares: its descriptor and the cutoffs it implies."""

from __future__ import annotations

from torch import nn

from mlpot.descriptors.symmetry import SymmetryFunctions


class DescriptorModel(nn.Module):
    """Base of models built on :class:`SymmetryFunctions`; exposes elements and cutoffs (Å).

    Strictly local: atom i's energy depends only on the edges centred on i (and the triplets
    they form), which is what LAMMPS' domain decomposition needs (``pair_style mlpot``)."""

    strictly_local = True

    def __init__(self, descriptor: dict | SymmetryFunctions):
        super().__init__()
        if isinstance(descriptor, dict):
            descriptor = SymmetryFunctions(**descriptor)
        self.descriptor = descriptor

    @property
    def elements(self) -> list[int]:
        return self.descriptor.elements

    @property
    def cutoff(self) -> float:
        return self.descriptor.cutoff

    @property
    def angular_cutoff(self) -> float | None:
        """Cutoff of the triplets the descriptor needs, Å; None if it needs none (no angular
        terms, or G5 from moments): neighbour lists then build no triplets."""
        return self.descriptor.angular_cutoff if self.descriptor.needs_triplets else None
