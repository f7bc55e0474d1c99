"""Coulomb energy of atomic charges, without the part inside an exclusion radius.

    E = k_e Σ_{i<j} q_i q_j erf(r_ij / √2σ) [1 − f_ex(r_ij)] / r_ij,   k_e = 14.3996 eV·Å/e²,

the interaction of Gaussian charges of width σ (default r_ex/4: beyond r_ex it is 1/r to
1e-4), switched off inside r_ex by f_ex(r) = 1 − ((1 − cos πr/r_ex)/2)^n (r < r_ex, else 0):
there the local model already describes the interaction, so the Coulomb term does not count
it twice. This is torch-pme's convention for a long-range term beside a local model (its
``exclusion_radius``). Molecules: a direct sum over all pairs of a structure. Periodic cells:
torch-pme sums the same pair term over every image: Ewald summation for cells of fewer than
``pme_from`` atoms, particle-mesh Ewald (PMECalculator, O(N log N); mesh spacing σ/2, 5
interpolation nodes: relative error ~1e-5 against Ewald) for larger ones. Without an exclusion
radius the charges are points (full 1/r; Madelung checks). Energies are differentiable in
positions and cell (forces and stress by autograd through the Potential).
"""

from __future__ import annotations

import torch
from ase import units

from mlpot import keys
from mlpot.neighbors import half_neighbor_pairs

COULOMB_CONSTANT = units.Hartree * units.Bohr  # e²/(4πε₀) in eV·Å (14.3996…)


class Coulomb(torch.nn.Module):
    """Per-atom Coulomb energies from charges.

    Args:
        exclusion_radius: r_ex, Å (None: the full 1/r between point charges).
        exclusion_degree: n of the switching function.
        smearing: σ, Å (default r_ex / 4; point charges: the Ewald splitting, real_cutoff/5).
        real_cutoff: Ewald real-space cutoff for point charges, Å. The reciprocal-space
            wavelength is σ/2 (relative error ~1e-6 in the Madelung checks).
        pme_from: cells with at least this many atoms use PME instead of Ewald.
    """

    def __init__(self, exclusion_radius: float | None = 4.0, exclusion_degree: int = 1,
                 smearing: float | None = None, real_cutoff: float = 10.0,
                 pme_from: int = 400):
        super().__init__()
        self.pme_from = int(pme_from)
        self.exclusion_radius = None if exclusion_radius is None else float(exclusion_radius)
        self.exclusion_degree = int(exclusion_degree)
        self.real_cutoff = float(real_cutoff)
        if smearing is None:
            smearing = (self.real_cutoff / 5 if exclusion_radius is None
                        else self.exclusion_radius / 4)
        self.smearing = float(smearing)

    def config(self) -> dict:
        return dict(exclusion_radius=self.exclusion_radius,
                    exclusion_degree=self.exclusion_degree, smearing=self.smearing,
                    real_cutoff=self.real_cutoff, pme_from=self.pme_from)

    def _potential(self, smearing: float | None):
        import torchpme

        return torchpme.CoulombPotential(smearing=smearing,
                                         exclusion_radius=self.exclusion_radius,
                                         exclusion_degree=self.exclusion_degree,
                                         prefactor=COULOMB_CONSTANT)

    def forward(self, charges: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-atom energies q_i V_i (n_atoms,), eV, summing to each structure's E."""
        positions, cell = batch[keys.POSITIONS], batch[keys.CELL]
        pbc = batch[keys.PBC]
        offsets = torch.cumsum(batch[keys.N_ATOMS], 0) - batch[keys.N_ATOMS]
        energy = charges.new_zeros(len(charges))
        for b in range(len(batch[keys.N_ATOMS])):
            atoms = slice(int(offsets[b]), int(offsets[b] + batch[keys.N_ATOMS][b]))
            q, r = charges[atoms], positions[atoms]
            if bool(pbc[b].any()):
                if not bool(pbc[b].all()):
                    raise ValueError("Coulomb: cells must be periodic in all directions or none")
                per_atom = self._periodic(q, r, cell[b])
            else:
                per_atom = self._direct(q, r)
            energy = energy.index_put((torch.arange(atoms.start, atoms.stop,
                                                    device=energy.device),), per_atom)
        return energy

    def _direct(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """q_i V_i with V_i = ½ Σ_j q_j v(r_ij), all pairs of a molecule."""
        n = len(q)
        if n < 2:
            return q.new_zeros(n)
        i, j = torch.triu_indices(n, n, 1, device=q.device)
        distance = (r[i] - r[j]).norm(dim=1)
        if self.exclusion_radius is None:
            pair = self._potential(None).from_dist(distance)
        else:  # Gaussian charges, switched off inside r_ex (what torch-pme sums periodically)
            potential = self._potential(self.smearing)
            pair = potential.lr_from_dist(distance) * (1 - potential.f_cutoff(distance))
        potential = q.new_zeros(n).index_add(0, i, 0.5 * q[j] * pair).index_add(
            0, j, 0.5 * q[i] * pair)
        return q * potential

    def _periodic(self, q: torch.Tensor, r: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """q_i V_i in a cell: Ewald below ``pme_from`` atoms, PME from there on."""
        import torchpme

        # real space: point charges need pairs up to real_cutoff, the smeared ones only the
        # exclusion correction inside r_ex
        reach = self.real_cutoff if self.exclusion_radius is None else self.exclusion_radius
        i, j, shifts = half_neighbor_pairs(r.detach().cpu().numpy(),
                                           cell.detach().cpu().numpy(), reach)
        i, j = torch.as_tensor(i, device=r.device), torch.as_tensor(j, device=r.device)
        shifts = torch.as_tensor(shifts, dtype=r.dtype, device=r.device)
        distance = (r[j] + shifts @ cell - r[i]).norm(dim=1)
        if len(q) >= self.pme_from:
            calculator = torchpme.PMECalculator(self._potential(self.smearing),
                                                mesh_spacing=self.smearing / 2,
                                                interpolation_nodes=5)
        else:
            calculator = torchpme.EwaldCalculator(self._potential(self.smearing),
                                                  lr_wavelength=self.smearing / 2)
        potential = calculator(q[:, None], cell, r, torch.stack([i, j], 1), distance)
        return q * potential[:, 0]


def madelung_energy(charges, positions, cell, **kwargs) -> float:
    """Total Coulomb energy (eV) of one periodic cell of point charges (a helper for checks)."""
    module = Coulomb(exclusion_radius=None, **kwargs).double()
    q = torch.as_tensor(charges, dtype=torch.float64)
    batch = {keys.POSITIONS: torch.as_tensor(positions, dtype=torch.float64),
             keys.CELL: torch.as_tensor(cell, dtype=torch.float64)[None],
             keys.PBC: torch.ones(1, 3, dtype=torch.bool),
             keys.N_ATOMS: torch.tensor([len(q)])}
    return float(module(q, batch).sum())

