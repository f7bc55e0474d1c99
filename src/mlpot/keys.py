"""The batch contract: names of the fields a batch (a dict of tensors) may hold.

Many structures form one disjoint graph; per-atom fields are concatenated and
``BATCH`` says which structure each atom belongs to. Units are ASE's (eV, Å, e).
"""

POSITIONS = "positions"  # (n_atoms, 3) float | Cartesian positions, Å
NUMBERS = "numbers"  # (n_atoms,) int64 | atomic numbers
BATCH = "batch"  # (n_atoms,) int64 | index of the structure each atom belongs to
CELL = "cell"  # (n_structures, 3, 3) float | lattice vectors as rows, Å (zeros if none)
PBC = "pbc"  # (n_structures, 3) bool | periodic directions
CHARGE = "charge"  # (n_structures,) float | total charge, e
N_ATOMS = "n_atoms"  # (n_structures,) int64 | atoms per structure

EDGE_INDEX = "edge_index"  # (2, n_edges) int64 | (centre i, neighbour j), both directions present
EDGE_SHIFT = "edge_shift"  # (n_edges, 3) float | integer cell shifts S: r_ij = r_j - r_i + S @ cell
EDGE_VECTORS = "edge_vectors"  # (n_edges, 3) float | r_ij given directly (LAMMPS' ghost atoms), Å
TRIPLETS = "triplets"  # (2, n_triplets) int64 | pairs of edges (ij, ik) with j < k sharing centre i

ENERGY = "energy"  # (n_structures,) float64 | total energy, eV (float64 whatever the model's dtype)
FORCES = "forces"  # (n_atoms, 3) float | forces, eV/Å
STRESS = "stress"  # (n_structures, 3, 3) float | stress, eV/Å³ (ASE sign convention)
HAS_FORCES = "has_forces"  # (n_structures,) bool | whether reference forces exist for the structure
ATOMIC_ENERGY = "atomic_energy"  # (n_atoms,) float | per-atom energies, eV (float64 from Potential)

# uncertainty (mlpot.uncertainty, models/variance.py): epistemic = spread of an ensemble's
# members, aleatoric = predicted label noise; total variance = epistemic² + aleatoric
ENERGY_VAR_ALEATORIC = "energy_var_aleatoric"  # (n_structures,) float64 | label-noise variance, eV²
FORCES_VAR_ALEATORIC = "forces_var_aleatoric"  # (n_atoms,) float | per force component, eV²/Å²
ENERGY_STD = "energy_std"  # (n_structures,) float64 | total σ of the total energy, eV
FORCES_STD = "forces_std"  # (n_atoms, 3) float | total σ of each force component, eV/Å
ENERGY_STD_EPISTEMIC = "energy_std_epistemic"  # (n_structures,) float64 | eV
FORCES_STD_EPISTEMIC = "forces_std_epistemic"  # (n_atoms, 3) float | eV/Å
ENERGY_STD_ALEATORIC = "energy_std_aleatoric"  # (n_structures,) float64 | eV
FORCES_STD_ALEATORIC = "forces_std_aleatoric"  # (n_atoms, 3) float | eV/Å
ENERGY_MEMBERS = "energy_members"  # (n_members, n_structures) float64 | each member's energy, eV
FORCES_MEMBERS = "forces_members"  # (n_members, n_atoms, 3) float | each member's forces, eV/Å

# long range (mlpot.physics): learned charges and their Coulomb energy
CHARGES = "charges"  # (n_atoms,) float | atomic partial charges, e (sum = CHARGE per structure)
DIPOLE = "dipole"  # (n_structures, 3) float | Σ q_i r_i, e·Å (molecules; zeros for periodic cells)
HAS_DIPOLE = "has_dipole"  # (n_structures,) bool | whether a reference dipole exists (molecules)
PARTIAL_CHARGES = "partial_charges"  # (n_atoms,) float | reference atomic charges, e
HAS_PARTIAL_CHARGES = "has_partial_charges"  # (n_structures,) bool | reference charges exist
CHARGE_EXCESS = "charge_excess"  # (n_groups,) float | charge the neutralisation supplied to each group, e (mlpot.physics.charges)
CHARGE_EEQ_DEVIATION = "charge_eeq_deviation"  # (n,) float | q − q_EEQ(D4), e, training only (mlpot.physics.electrostatics)
ENERGY_COULOMB = "energy_coulomb"  # (n_structures,) float64 | the Coulomb part of ENERGY, eV
ENERGY_DISPERSION = "energy_dispersion"  # (n_structures,) float64 | dispersion part of ENERGY, eV
VOLUME_RATIOS = "volume_ratios"  # (n_atoms,) float | learned V_eff/V_free (dispersion C6 scaling)
VOLUME_DEVIATION = "volume_deviation"  # (n_atoms,) float | log v − log v_D4 in training (mlpot.physics.dispersion)
