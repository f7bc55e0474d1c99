"""What the message-passing models (SchNet, PaiNN) share: arguments, element embedding, the
readout with its "ghost" reference atoms, the coordination baseline and statistics.

Per-atom energy, with h^T the final invariant features (N + n_el, F), the last n_el rows
belonging to one ghost atom per element that has no edges (so h̄^T_Z is the state of an atom
of element Z that received no messages):

    E_i = b_{Z_i} n_i + s · [R(h^T_i) − R(h̄^T_{Z_i})]     (n_atoms,) eV

An isolated atom has h^T_i = h̄^T_{Z_i} (same layers, same matrix products) and c_i = 0, so
E_i = 0 exactly and the potential returns E0; a plain per-element shift would break this and
is replaced by the baseline b_Z n_i, n_i = c_i = Σ_j f_c(r_ij) by default or 1 − exp(−c_i)
(:func:`mlpot.descriptors.cutoff.baseline_coordination`).
"""

from __future__ import annotations

import torch
from torch import nn

from mlpot.descriptors.cutoff import (CUTOFF_FUNCTIONS, baseline_coordination,
                                      coordination_number)


class MessagePassingModel(nn.Module):
    """Base class; subclasses build ``self.readout`` (F → 1) and their interaction layers.

    Args:
        elements: atomic numbers the model covers.
        cutoff: neighbour cutoff r_c, Å.
        n_features: width F of the atom features.
        n_interactions: message-passing steps T (receptive field T · r_c).
        n_rbf: radial basis functions per distance.
        cutoff_function: "cosine" or "polynomial".
    """

    strictly_local = False  # an atom's energy sees n_interactions × cutoff (not one cutoff)

    def __init__(self, elements, cutoff: float, n_features: int = 64, n_interactions: int = 3,
                 n_rbf: int = 20, cutoff_function: str = "cosine", min_rbf: int = 1,
                 baseline: str = "linear"):
        super().__init__()
        baseline_coordination(torch.zeros(1), baseline)  # validates the name
        self.baseline = baseline
        if cutoff_function not in CUTOFF_FUNCTIONS:
            raise ValueError(f"cutoff_function must be one of {sorted(CUTOFF_FUNCTIONS)}, "
                             f"not {cutoff_function!r}")
        if n_rbf < min_rbf or n_features < 1 or n_interactions < 1 or cutoff <= 0:
            raise ValueError(f"need n_rbf >= {min_rbf}, n_features >= 1, n_interactions >= 1, "
                             "cutoff > 0")
        self._elements = sorted(int(z) for z in elements)
        self._cutoff = float(cutoff)
        self.n_features, self.n_interactions = int(n_features), int(n_interactions)
        self.n_rbf, self.cutoff_function = int(n_rbf), cutoff_function
        n_el = len(self._elements)
        species = torch.full((119,), -1, dtype=torch.long)
        species[self._elements] = torch.arange(n_el)
        self.register_buffer("species_index", species, persistent=False)
        self.embedding = nn.Embedding(n_el, self.n_features)
        self.register_buffer("energy_scale", torch.tensor(1.0, dtype=torch.float64))
        self.coordination_energy = nn.Parameter(torch.zeros(n_el, dtype=torch.float64))

    @property
    def elements(self) -> list[int]:
        return self._elements

    @property
    def cutoff(self) -> float:
        return self._cutoff

    @property
    def angular_cutoff(self) -> None:
        """No angular triplets: the neighbour graph is built without them."""
        return None

    @property
    def receptive_field(self) -> float:
        """Farthest distance (Å) at which an atom can influence another's energy: T · r_c."""
        return self.n_interactions * self._cutoff

    def config(self) -> dict:
        return dict(elements=self._elements, cutoff=self._cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf,
                    cutoff_function=self.cutoff_function, baseline=self.baseline)

    @torch.no_grad()
    def set_statistics(self, energy_scale: float,
                       coordination_energy: torch.Tensor | None = None) -> None:
        """The readout's output scale s (eV) and, if given, the per-element coordination
        energies b_Z (n_elements,) eV."""
        self.energy_scale.fill_(float(energy_scale))
        if coordination_energy is not None:
            self.coordination_energy.copy_(coordination_energy)

    def coordination(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Baseline input n_i of every atom (n_atoms,): c_i = Σ_j f_c(r_ij) or 1 − exp(−c_i)."""
        c = coordination_number(batch, self._cutoff, self.cutoff_function)
        return baseline_coordination(c, self.baseline)

    def cutoff_values(self, r: torch.Tensor) -> torch.Tensor:
        """f_c(r) for distances r (Å)."""
        return CUTOFF_FUNCTIONS[self.cutoff_function](r, self._cutoff)

    def initial_features(self, species: torch.Tensor) -> torch.Tensor:
        """Embeddings of the atoms followed by one ghost atom per element, (N + n_el, F)."""
        ghosts = torch.arange(len(self._elements), device=species.device)
        return self.embedding(torch.cat([species, ghosts]))

    def atomic_energy(self, h: torch.Tensor, species: torch.Tensor,
                      coordination: torch.Tensor) -> torch.Tensor:
        """E_i (n_atoms,) eV from final features h (N + n_el, F), see the module docstring."""
        return self.energy_from_readout(self.readout(h).squeeze(1), species, coordination)

    def energy_from_readout(self, out: torch.Tensor, species: torch.Tensor,
                            coordination: torch.Tensor) -> torch.Tensor:
        """E_i (n_atoms,) eV from readout values ``out`` (N + n_el,) of atoms and ghosts."""
        n_atoms = species.shape[0]
        learned = out[:n_atoms] - out[n_atoms:][species]
        dtype = out.dtype
        baseline = self.coordination_energy.to(dtype)[species] * coordination
        return baseline + learned * self.energy_scale.to(dtype)
