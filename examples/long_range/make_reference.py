"""Reference data for long-range tests: ion–water and methane-dimer curves and training sets.

    python examples/long_range/make_reference.py [--only na|cl|methane] [--force]

Writes, next to this script (ASE extxyz, eV, eV/Å, Å):

    na_water_train.xyz   na_water_curve.xyz        Na+ ... H2O, B3LYP/def2-SVP, charge +1
    cl_water_train.xyz   cl_water_curve.xyz        Cl- ... H2O, B3LYP/def2-SVP, charge -1
    na_water_orientations.xyz  cl_water_orientations.xyz   the same, random orientations
    water_dimer_train.xyz  water_dimer_orientations.xyz   (H2O)2, B3LYP/def2-SVP, charge 0
    methane_dimer_train.xyz  methane_dimer_curve.xyz   (CH4)2, MP2/cc-pVDZ, charge 0

An output file that already exists is skipped (so an interrupted run can be resumed) unless
``--force``; each file is written to a temporary name and then moved into place.
OMP_NUM_THREADS defaults to 1 (one core); timings on this machine: TIMINGS below.

Levels of theory (PySCF 2.14)
-----------------------------
* Ions + water: restricted Kohn–Sham (``dft.RKS``, closed shell), xc="b3lyp" (PySCF/libxc
  HYB_GGA_XC_B3LYP, i.e. the VWN-RPA flavour used by Gaussian), basis def2-SVP (all-electron
  for Na and Cl), DFT grids level 4, conv_tol 1e-11 Ha; analytic RKS gradients.
  level = "B3LYP/def2-SVP".
* Methane dimer: RHF (conv_tol 1e-11) + conventional all-electron MP2 (``mp.MP2``, no frozen
  core), analytic MP2 gradients (``MP2.nuc_grad_method()``). Basis cc-pVDZ: aug-cc-pVDZ was
  timed at 31 s per dimer energy+gradient on one core (SCF 3 s, MP2 1 s, gradient 26 s), over
  the 20 s limit; cc-pVDZ takes about 5 s. level = "MP2/cc-pVDZ".
* No counterpoise correction anywhere. The basis-set superposition error vanishes with
  distance, so the long-range tails are unaffected, but it is large near contact in these small
  basis sets. Counterpoise BSSE measured once (not part of the script) on the rigid curves:
  (CH4)2 31 meV at 3.3 Å, 13 meV at 3.9 Å, 1.9 meV at 5.0 Å, 0.000 at 10 Å (so the
  uncorrected MP2/cc-pVDZ well, -12.9 meV at 4.2 Å, is mostly BSSE); Na+...H2O 219 meV at
  2.2 Å, 143 meV at 3.0 Å, 0.0 at 10 Å; Cl-...H2O 419 meV at 3.0 Å, 0.0 at 10 Å (def2-SVP
  has no diffuse functions for the anion). Read the short-range energies as a consistent
  model surface at this level, not as accurate binding energies.

Labels per frame
----------------
info["energy"] total energy (eV); arrays["forces"] = -gradient * Hartree/Bohr (eV/Å);
info["charge"] total charge (int); info["dipole"] dipole moment (e·Å, 3 floats) =
PySCF ``dip_moment(unit="AU")`` * Bohr, taken about the coordinate origin (0, 0, 0) (for the
ions this is origin-dependent, q·R included; positions are written in exactly the frame of the
calculation, never recentred); info["distance"] (Å): Na–O, Cl–O or C–C distance, -1.0 for
"fragment" frames (no partner); info["config_type"] "dimer" (training), "curve" (rigid scan)
or "fragment" (isolated monomer/ion); info["level"]. pbc False, no cell.
For MP2 the dipole is that of the *relaxed* MP2 density; PySCF's conventional MP2 has no
relaxed-density API, so it is taken from DF-MP2 (``mp.dfmp2_native``, cc-pVDZ-RI, same RHF)
``make_rdm1(relaxed=True)``. It agrees with a finite-field derivative of the conventional MP2
energy to ~1e-5 e·Å; the script checks this on the first curve dimer and prints the difference.
The isolated ions are single closed-shell atoms: their analytic gradient is zero by symmetry
(checked < 1e-6 Ha/Bohr) and the forces are stored as exact zeros.

Geometries
----------
* Water: optimised at B3LYP/def2-SVP by this script (no geomeTRIC/pyberny in the environment):
  C2v-constrained BFGS (scipy) on (r_OH, angle HOH) with the analytic RKS gradient, from the
  experimental r = 0.9572 Å, 104.52°, to |gradient| < 1e-6 Ha/Å (Ha/rad). The result is
  printed. O at the origin, H atoms in the xz plane at negative z, so the C2 axis +z points
  from O away from the H atoms; the water dipole then points along -z (towards the H atoms).
* Na+ approaches O on the +z side (O side), Cl- on the -z side (between and beyond the H
  atoms). Training: distance uniform in [2.0, 6.0] Å (Na) / [2.8, 6.0] Å (Cl), direction
  uniform in solid angle within a cone of half-angle 60° (Na) / 40° (Cl) about that axis,
  measured from the rattled O (so ``distance`` is the exact ion–O distance); the water rattled
  per frame with independent Gaussian displacements sigma = 0.04 Å on every atom.
  Fragments: 1 isolated ion at the origin, 20 isolated rattled waters.
  Curves: rigid optimised water, ion on the axis at the listed distances; first two frames
  are the isolated rigid water and the isolated ion at its 30 Å position, so that
  E_int(r) = E(curve, r) - E(frame 0) - E(frame 1).
* Methane: ideal tetrahedron, C–H 1.087 Å (not optimised). Curve: monomer A (C at origin)
  with one C–H along +z, monomer B (C at (0, 0, d)) in the same orientation, so A points a
  vertex (H) at the face of three H atoms of B ("face-to-vertex"); both monomers are the same
  rigid geometry up to a translation, so E_int = E(dimer) - 2 E(monomer) and the curve file
  starts with one fragment frame (monomer A). Training: C–C along z, d uniform in [3.3, 6.0]
  Å, each monomer rotated by an independent uniformly random rotation (random unit
  quaternion) and rattled with sigma = 0.02 Å, then B translated so that its C sits at
  C_A + (0, 0, d); 10 isolated randomly rotated, rattled methanes as fragments.

* Random orientations (``*_orientations.xyz``, test curves): the rigid optimised water(s), each
  rotated by an independent uniformly random rotation about its O, the partner (ion, or the
  second water's O) at the listed distance along a uniformly random direction; a draw with
  any intermolecular atom pair closer than 1.6 Å is drawn again. Four orientations per
  distance; the first frames are the fragments (rigid water, and the ion at 30 Å).
* Water dimer (neutral polar dimer) training: O–O distance uniform in [2.6, 6.0] Å, both
  waters randomly rotated and rattled (sigma = 0.04 Å), the same 1.6 Å rejection; 20 isolated
  rattled waters as fragments.

Seeds: every data set draws from its own ``numpy.random.default_rng(0)``, so each file is
reproducible on its own (``--only``) and independent of the order of generation.

TIMINGS (this machine: 2 cores, this script on 1 of them while another job used the other):
  water optimisation 11 s (7 gradient evaluations; result r_OH = 0.96670 Å, HOH = 103.091°,
  |mu| = 0.4173 e·Å = 2.005 D along -z); B3LYP Na+/Cl- + water energy+gradient 3.1-3.2 s
  per frame, water 1.2 s; MP2/cc-pVDZ dimer energy+gradient+dipole 4.7 s, monomer 0.7 s.
  na_water_train 561 s, na_water_curve 49 s, cl_water_train 536 s, cl_water_curve 54 s,
  methane_dimer_train 390 s, methane_dimer_curve 77 s: whole generation 1667 s (28 min).

Checks printed by the run: E_int at 30 Å / (k q mu·r/r^3, dipole at O) = 0.997 (Na+) and 1.004
(Cl-). For Cl- the HOMO (Cl- 3p, positive orbital energy in B3LYP/def2-SVP) lies below the
water LUMO only because the Cl- field raises the water levels: the gap shrinks with distance to
0.07 eV at 30 Å (Mulliken charge on Cl still -1.000), so do not extend the Cl- curve much
beyond 30 Å at this level (the SCF would move charge onto the water).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/pyscf start their thread pools

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.io import write  # noqa: E402
from ase.units import Bohr, Hartree  # noqa: E402

HERE = Path(__file__).resolve().parent
K_COULOMB = 14.3996  # eV·Å/e²
DFT_LEVEL = "B3LYP/def2-SVP"
MP2_BASIS = "cc-pVDZ"
MP2_LEVEL = f"MP2/{MP2_BASIS}"
CONV_TOL = 1e-11
NO_PARTNER = -1.0  # info["distance"] of fragment frames

ION_CURVE_TAIL = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0,
                  18.0, 20.0, 25.0, 30.0]
ION = {
    "na": dict(symbol="Na", charge=+1, side=+1.0, train_range=(2.0, 6.0), cone_deg=60.0,
               curve=[2.0, 2.2, 2.4, 2.6, 2.8] + ION_CURVE_TAIL, stem="na_water"),
    "cl": dict(symbol="Cl", charge=-1, side=-1.0, train_range=(2.8, 6.0), cone_deg=40.0,
               curve=[2.8] + ION_CURVE_TAIL, stem="cl_water"),
}
N_ION_DIMERS, N_WATER_FRAGMENTS, SIGMA_WATER = 160, 20, 0.04
METHANE_CURVE = [3.3, 3.5, 3.7, 3.9, 4.2, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0,
                 16.0, 20.0]
N_METHANE_DIMERS, N_METHANE_FRAGMENTS, SIGMA_METHANE = 80, 10, 0.02
R_CH = 1.087

TIMES: dict[str, list[float]] = {}


def log(*args) -> None:
    print(*args, flush=True)


def _pyscf():
    from pyscf import lib

    lib.num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return lib


def _mol(symbols, positions, charge, basis):
    from pyscf import gto

    return gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, positions)], unit="Angstrom",
                 basis=basis, charge=int(charge), spin=0, verbose=0)


def _converge(mf, dm0=None):
    mf.kernel(dm0=dm0)
    if not mf.converged:  # fall back on the second-order solver from where DIIS stopped
        log("    SCF not converged with DIIS; retrying with the Newton solver")
        mf = mf.newton()
        mf.kernel(dm0=mf.make_rdm1())
        if not mf.converged:
            raise RuntimeError("SCF did not converge")
    return mf


def dft_point(symbols, positions, charge, dm0=None):
    """B3LYP/def2-SVP energy (eV), forces (eV/Å), dipole (e·Å) and extras."""
    from pyscf import dft

    _pyscf()
    t0 = time.perf_counter()
    mol = _mol(symbols, positions, charge, "def2-svp")
    mf = dft.RKS(mol)
    mf.xc = "b3lyp"
    mf.grids.level = 4
    mf.conv_tol = CONV_TOL
    mf = _converge(mf, dm0)
    grad = mf.nuc_grad_method().kernel()
    dip = mf.dip_moment(unit="AU", verbose=0) * Bohr
    occ = mf.mo_energy[mf.mo_occ > 0]
    vir = mf.mo_energy[mf.mo_occ == 0]
    gap = (vir.min() - occ.max()) * Hartree if len(vir) else np.inf
    mulliken = mf.mulliken_pop(verbose=0)[1]
    return dict(energy=mf.e_tot * Hartree, forces=-grad * Hartree / Bohr, grad_au=grad,
                dipole=np.asarray(dip, float), dm=mf.make_rdm1(), gap=gap, mulliken=mulliken,
                seconds=time.perf_counter() - t0)


def mp2_point(symbols, positions, check_finite_field=False):
    """MP2 energy (eV), analytic forces (eV/Å), relaxed-density dipole (e·Å)."""
    from pyscf import mp, scf
    from pyscf.mp import dfmp2_native

    _pyscf()
    t0 = time.perf_counter()
    mol = _mol(symbols, positions, 0, MP2_BASIS)
    mf = _converge(scf.RHF(mol).set(conv_tol=CONV_TOL))
    pt = mp.MP2(mf)
    pt.kernel()
    grad = pt.nuc_grad_method().kernel()
    df = dfmp2_native.DFMP2(mf)
    df.kernel()
    dm_relaxed = df.make_rdm1(relaxed=True, ao_repr=True)
    dip_au = mf.dip_moment(mol, dm_relaxed, unit="AU", verbose=0)
    if check_finite_field:
        ff = _mp2_finite_field_dipole(mol, mf)
        log(f"    relaxed DF-MP2 dipole {np.round(dip_au, 6)} au vs finite-field conventional "
            f"MP2 {np.round(ff, 6)} au: max diff {np.abs(dip_au - ff).max() * Bohr:.1e} e·Å")
    return dict(energy=pt.e_tot * Hartree, forces=-grad * Hartree / Bohr, grad_au=grad,
                dipole=np.asarray(dip_au * Bohr, float), seconds=time.perf_counter() - t0)


def _mp2_finite_field_dipole(mol, mf, field=2e-4):
    """Dipole (au, about the origin) = -dE_MP2/dF by central differences, SCF relaxed."""
    from pyscf import mp, scf

    hcore = mf.get_hcore()
    with mol.with_common_orig((0, 0, 0)):
        r = mol.intor("int1e_r")
    mu = np.zeros(3)
    for k in range(3):
        energies = []
        for sign in (1, -1):
            mff = scf.RHF(mol).set(conv_tol=1e-12)
            mff.get_hcore = lambda *a, s=sign, k=k: hcore + s * field * r[k]
            mff.kernel(dm0=mf.make_rdm1())
            energies.append(mp.MP2(mff).run().e_tot)
        mu[k] = -(energies[0] - energies[1]) / (2 * field)
    return mu + mol.atom_charges() @ mol.atom_coords()


def make_atoms(symbols, positions, result, charge, distance, config_type, level,
               forces=None) -> Atoms:
    atoms = Atoms(symbols=list(symbols), positions=np.asarray(positions, float), pbc=False)
    atoms.info["energy"] = float(result["energy"])
    atoms.info["charge"] = int(charge)
    atoms.info["dipole"] = np.asarray(result["dipole"], float)
    atoms.info["distance"] = float(distance)
    atoms.info["config_type"] = config_type
    atoms.info["level"] = level
    atoms.arrays["forces"] = np.asarray(result["forces"] if forces is None else forces, float)
    return atoms


def write_atomic(path: Path, frames: list[Atoms]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp), frames, format="extxyz")
    os.replace(tmp, path)
    log(f"wrote {path} ({len(frames)} frames)")


def timed(kind: str, result: dict) -> dict:
    TIMES.setdefault(kind, []).append(result["seconds"])
    return result


# ---------------------------------------------------------------------------------------
# water and ions
# ---------------------------------------------------------------------------------------

WATER_SYMBOLS = ["O", "H", "H"]


def water_positions(r: float, theta: float) -> np.ndarray:
    """O at the origin, H atoms in the xz plane at negative z (C2 axis +z points away from H)."""
    s, c = np.sin(theta / 2), np.cos(theta / 2)
    return np.array([[0.0, 0.0, 0.0], [r * s, 0.0, -r * c], [-r * s, 0.0, -r * c]])


_WATER_CACHE: dict = {}


def optimised_water() -> tuple[np.ndarray, float, float]:
    """C2v-constrained BFGS of water at B3LYP/def2-SVP; returns positions, r (Å), angle (deg)."""
    if "pos" in _WATER_CACHE:
        return _WATER_CACHE["pos"], _WATER_CACHE["r"], _WATER_CACHE["angle"]
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    state = {"dm": None, "n": 0}

    def energy_and_gradient(x):
        r, theta = x
        res = dft_point(WATER_SYMBOLS, water_positions(r, theta), 0, state["dm"])
        state["dm"], state["n"] = res["dm"], state["n"] + 1
        g = res["grad_au"] / Bohr  # Ha/Å
        s, c = np.sin(theta / 2), np.cos(theta / 2)
        dr = g[1] @ [s, 0, -c] + g[2] @ [-s, 0, -c]
        dth = g[1] @ [r * c / 2, 0, r * s / 2] + g[2] @ [-r * c / 2, 0, r * s / 2]
        log(f"    water opt step {state['n']:2d}: r={r:.6f} Å angle={np.degrees(theta):.4f}° "
            f"E={res['energy'] / Hartree:.10f} Ha |g|={max(abs(dr), abs(dth)):.1e}")
        return res["energy"] / Hartree, np.array([dr, dth])

    opt = minimize(energy_and_gradient, x0=[0.9572, np.radians(104.52)], jac=True,
                   method="BFGS", options={"gtol": 1e-6, "maxiter": 100})
    r, theta = opt.x
    pos = water_positions(r, theta)
    check = dft_point(WATER_SYMBOLS, pos, 0)
    fmax = np.abs(check["forces"]).max()
    log(f"  water optimised ({opt.message.strip()}; {state['n']} gradient evaluations, "
        f"{time.perf_counter() - t0:.0f} s): r_OH = {r:.5f} Å, angle = {np.degrees(theta):.3f}°, "
        f"max |F| = {fmax:.1e} eV/Å")
    _WATER_CACHE.update(pos=pos, r=r, angle=np.degrees(theta), result=check)
    TIMES.setdefault("water optimisation", []).append(time.perf_counter() - t0)
    return pos, r, np.degrees(theta)


def rattle(positions, sigma, rng):
    return positions + rng.normal(0.0, sigma, positions.shape)


def cone_direction(axis_sign: float, cone_deg: float, rng) -> np.ndarray:
    """Unit vector uniform in solid angle within cone_deg of axis_sign * z."""
    cos_t = rng.uniform(np.cos(np.radians(cone_deg)), 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = np.sqrt(1.0 - cos_t**2)
    return np.array([sin_t * np.cos(phi), sin_t * np.sin(phi), axis_sign * cos_t])


def ion_train(name: str, path: Path) -> None:
    spec = ION[name]
    ion, q = spec["symbol"], spec["charge"]
    water, _, _ = optimised_water()
    rng = np.random.default_rng(0)
    symbols = WATER_SYMBOLS + [ion]
    frames = []
    t0 = time.perf_counter()
    lo, hi = spec["train_range"]
    for i in range(N_ION_DIMERS):
        d = rng.uniform(lo, hi)
        u = cone_direction(spec["side"], spec["cone_deg"], rng)
        w = rattle(water, SIGMA_WATER, rng)
        pos = np.vstack([w, w[0] + d * u])
        res = timed(f"{ion}-water dimer (B3LYP)", dft_point(symbols, pos, q))
        frames.append(make_atoms(symbols, pos, res, q, d, "dimer", DFT_LEVEL))
        angle = np.degrees(np.arccos(spec["side"] * u[2]))
        log(f"  [{name} train {i + 1:3d}/{N_ION_DIMERS}] d={d:.3f} Å cone angle={angle:5.1f}° "
            f"E={res['energy']:.6f} eV  {res['seconds']:.1f} s "
            f"(elapsed {time.perf_counter() - t0:.0f} s)")
    res = dft_point([ion], np.zeros((1, 3)), q)
    _check_atom_gradient(ion, res)
    frames.append(make_atoms([ion], np.zeros((1, 3)), res, q, NO_PARTNER, "fragment", DFT_LEVEL,
                             forces=np.zeros((1, 3))))
    for i in range(N_WATER_FRAGMENTS):
        w = rattle(water, SIGMA_WATER, rng)
        res = timed("water (B3LYP)", dft_point(WATER_SYMBOLS, w, 0))
        frames.append(make_atoms(WATER_SYMBOLS, w, res, 0, NO_PARTNER, "fragment", DFT_LEVEL))
        log(f"  [{name} train water fragment {i + 1:2d}/{N_WATER_FRAGMENTS}] "
            f"E={res['energy']:.6f} eV  {res['seconds']:.1f} s")
    write_atomic(path, frames)


def _check_atom_gradient(symbol, res):
    g = np.abs(res["grad_au"]).max()
    log(f"  isolated {symbol}: E={res['energy']:.6f} eV, |analytic gradient| = {g:.1e} Ha/Bohr "
        f"(stored forces exactly 0)")
    if g > 1e-6:
        raise RuntimeError(f"isolated {symbol} has gradient {g} Ha/Bohr")


def ion_curve(name: str, path: Path) -> None:
    spec = ION[name]
    ion, q, side = spec["symbol"], spec["charge"], spec["side"]
    water, _, _ = optimised_water()
    frames = []
    w_res = _WATER_CACHE["result"]
    frames.append(make_atoms(WATER_SYMBOLS, water, w_res, 0, NO_PARTNER, "fragment", DFT_LEVEL))
    mu = w_res["dipole"]
    log(f"  rigid water: E={w_res['energy']:.6f} eV, dipole = {np.round(mu, 5)} e·Å, "
        f"|mu| = {np.linalg.norm(mu):.4f} e·Å = {np.linalg.norm(mu) / 0.2081943:.3f} D "
        f"(points along {'-' if mu[2] < 0 else '+'}z)")
    far = np.array([[0.0, 0.0, side * spec["curve"][-1]]])
    i_res = dft_point([ion], far, q)
    _check_atom_gradient(ion, i_res)
    frames.append(make_atoms([ion], far, i_res, q, NO_PARTNER, "fragment", DFT_LEVEL,
                             forces=np.zeros((1, 3))))
    symbols = WATER_SYMBOLS + [ion]
    rows, dm = [], None
    for d in spec["curve"]:
        pos = np.vstack([water, [0.0, 0.0, side * d]])
        res = timed(f"{ion}-water dimer (B3LYP)", dft_point(symbols, pos, q, dm))
        dm = res["dm"]
        frames.append(make_atoms(symbols, pos, res, q, d, "curve", DFT_LEVEL))
        e_int = res["energy"] - w_res["energy"] - i_res["energy"]
        e_id = K_COULOMB * q * (mu @ pos[3]) / d**3  # charge–point-dipole, dipole at O
        rows.append((d, e_int, e_id, res["mulliken"][3], res["gap"]))
        log(f"  [{name} curve] d={d:5.1f} Å E_int={1000 * e_int:10.3f} meV "
            f"ion-dipole={1000 * e_id:10.3f} meV  ion Mulliken charge={res['mulliken'][3]:+.3f} "
            f"gap={res['gap']:.2f} eV  {res['seconds']:.1f} s")
    write_atomic(path, frames)
    log(f"\n  {ion}{'+' if q > 0 else '-'}–water interaction, {DFT_LEVEL} (rigid water, ion on "
        f"the C2 axis, {'O' if side > 0 else 'H'} side)")
    log(f"  {'r/Å':>6} {'E_int/meV':>12} {'kqμ·r̂/r²/meV':>14} {'ratio':>7} {'q_ion':>7} {'gap/eV':>7}")
    for d, e, e_id, qm, gap in rows:
        log(f"  {d:6.1f} {1000 * e:12.3f} {1000 * e_id:14.3f} {e / e_id:7.3f} {qm:+7.3f} {gap:7.2f}")
    d, e, e_id = rows[-1][:3]
    if abs(e / e_id - 1) > 0.05:
        log(f"  WARNING: at {d} Å E_int/ion-dipole = {e / e_id:.3f}, more than 5% off")
    log("")


ORIENTATION_DISTANCES = [4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0]
N_ORIENTATIONS, CLOSEST = 4, 1.6


def placed(partner: np.ndarray, distance: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(rigid water randomly rotated about its O at the origin, ``partner`` (positions
    relative to its anchor atom) randomly rotated with its anchor at ``distance`` along a
    random direction), drawn again while two atoms of different molecules are < CLOSEST Å."""
    water, _, _ = optimised_water()
    while True:
        first = water @ random_rotation(rng).T
        direction = cone_direction(1.0, 180.0, rng)
        second = partner @ random_rotation(rng).T + distance * direction
        gaps = np.linalg.norm(first[:, None] - second[None], axis=2)
        if gaps.min() >= CLOSEST:
            return first, second


def ion_orientations(name: str, path: Path) -> None:
    spec = ION[name]
    ion, q = spec["symbol"], spec["charge"]
    water, _, _ = optimised_water()
    rng = np.random.default_rng(0)
    w_res = _WATER_CACHE["result"]
    far = np.array([[0.0, 0.0, 30.0]])
    i_res = dft_point([ion], far, q)
    _check_atom_gradient(ion, i_res)
    frames = [make_atoms(WATER_SYMBOLS, water, w_res, 0, NO_PARTNER, "fragment", DFT_LEVEL),
              make_atoms([ion], far, i_res, q, NO_PARTNER, "fragment", DFT_LEVEL,
                         forces=np.zeros((1, 3)))]
    symbols = WATER_SYMBOLS + [ion]
    for d in ORIENTATION_DISTANCES:
        for k in range(N_ORIENTATIONS):
            first, second = placed(np.zeros((1, 3)), d, rng)
            pos = np.vstack([first, second])
            res = timed(f"{ion}-water dimer (B3LYP)", dft_point(symbols, pos, q))
            frames.append(make_atoms(symbols, pos, res, q, d, "curve", DFT_LEVEL))
            log(f"  [{name} orientations] d={d:5.1f} Å #{k} E_int="
                f"{1000 * (res['energy'] - w_res['energy'] - i_res['energy']):10.3f} meV "
                f"{res['seconds']:.1f} s")
    write_atomic(path, frames)


def water_dimer_train(path: Path) -> None:
    water, _, _ = optimised_water()
    rng = np.random.default_rng(0)
    symbols = WATER_SYMBOLS * 2
    frames = []
    for i in range(N_ION_DIMERS):
        d = rng.uniform(2.6, 6.0)
        first, second = placed(water, d, rng)
        pos = rattle(np.vstack([first, second]), SIGMA_WATER, rng)
        res = timed("water dimer (B3LYP)", dft_point(symbols, pos, 0))
        frames.append(make_atoms(symbols, pos, res, 0, d, "dimer", DFT_LEVEL))
        log(f"  [water dimer train {i + 1:3d}/{N_ION_DIMERS}] d={d:.3f} Å "
            f"E={res['energy']:.6f} eV  {res['seconds']:.1f} s")
    for i in range(N_WATER_FRAGMENTS):
        w = rattle(water, SIGMA_WATER, rng)
        res = timed("water (B3LYP)", dft_point(WATER_SYMBOLS, w, 0))
        frames.append(make_atoms(WATER_SYMBOLS, w, res, 0, NO_PARTNER, "fragment", DFT_LEVEL))
    write_atomic(path, frames)


def water_dimer_orientations(path: Path) -> None:
    water, _, _ = optimised_water()
    rng = np.random.default_rng(1)
    w_res = _WATER_CACHE["result"]
    frames = [make_atoms(WATER_SYMBOLS, water, w_res, 0, NO_PARTNER, "fragment", DFT_LEVEL)]
    for d in [3.0] + ORIENTATION_DISTANCES:
        for k in range(N_ORIENTATIONS):
            first, second = placed(water, d, rng)
            pos = np.vstack([first, second])
            res = timed("water dimer (B3LYP)", dft_point(WATER_SYMBOLS * 2, pos, 0))
            frames.append(make_atoms(WATER_SYMBOLS * 2, pos, res, 0, d, "curve", DFT_LEVEL))
            log(f"  [water dimer orientations] d={d:5.1f} Å #{k} E_int="
                f"{1000 * (res['energy'] - 2 * w_res['energy']):10.3f} meV "
                f"{res['seconds']:.1f} s")
    write_atomic(path, frames)


# ---------------------------------------------------------------------------------------
# methane dimer
# ---------------------------------------------------------------------------------------

METHANE_SYMBOLS = ["C", "H", "H", "H", "H"]


def methane_vertex_up() -> np.ndarray:
    """Ideal CH4, C at the origin, one C–H along +z, the other three below (z = -R/3)."""
    rho, z = R_CH * np.sqrt(8.0) / 3.0, -R_CH / 3.0
    pos = [[0, 0, 0], [0, 0, R_CH]]
    for phi in np.radians([0.0, 120.0, 240.0]):
        pos.append([rho * np.cos(phi), rho * np.sin(phi), z])
    return np.array(pos, float)


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def methane_train(path: Path) -> None:
    rng = np.random.default_rng(0)
    mono = methane_vertex_up()
    symbols = METHANE_SYMBOLS * 2
    frames, t0, min_hh = [], time.perf_counter(), []
    for i in range(N_METHANE_DIMERS):
        d = rng.uniform(3.3, 6.0)
        a = rattle(mono @ random_rotation(rng).T, SIGMA_METHANE, rng)
        b = rattle(mono @ random_rotation(rng).T, SIGMA_METHANE, rng)
        b = b - b[0] + a[0] + [0.0, 0.0, d]
        pos = np.vstack([a, b])
        hh = np.linalg.norm(a[1:, None] - b[None, 1:], axis=-1).min()
        min_hh.append(hh)
        res = timed("methane dimer (MP2)", mp2_point(symbols, pos))
        frames.append(make_atoms(symbols, pos, res, 0, d, "dimer", MP2_LEVEL))
        log(f"  [methane train {i + 1:2d}/{N_METHANE_DIMERS}] d={d:.3f} Å min H···H={hh:.2f} Å "
            f"E={res['energy']:.6f} eV  {res['seconds']:.1f} s "
            f"(elapsed {time.perf_counter() - t0:.0f} s)")
    for i in range(N_METHANE_FRAGMENTS):
        m = rattle(mono @ random_rotation(rng).T, SIGMA_METHANE, rng)
        res = timed("methane (MP2)", mp2_point(METHANE_SYMBOLS, m))
        frames.append(make_atoms(METHANE_SYMBOLS, m, res, 0, NO_PARTNER, "fragment", MP2_LEVEL))
        log(f"  [methane train fragment {i + 1:2d}/{N_METHANE_FRAGMENTS}] "
            f"E={res['energy']:.6f} eV  {res['seconds']:.1f} s")
    log(f"  intermolecular min H···H over training dimers: {min(min_hh):.2f} Å "
        f"(median {np.median(min_hh):.2f} Å)")
    write_atomic(path, frames)


def methane_curve(path: Path) -> None:
    mono = methane_vertex_up()
    m_res = timed("methane (MP2)", mp2_point(METHANE_SYMBOLS, mono))
    frames = [make_atoms(METHANE_SYMBOLS, mono, m_res, 0, NO_PARTNER, "fragment", MP2_LEVEL)]
    log(f"  rigid methane: E={m_res['energy']:.6f} eV, dipole {np.round(m_res['dipole'], 6)} e·Å")
    symbols = METHANE_SYMBOLS * 2
    rows = []
    for k, d in enumerate(METHANE_CURVE):
        pos = np.vstack([mono, mono + [0.0, 0.0, d]])
        res = timed("methane dimer (MP2)", mp2_point(symbols, pos, check_finite_field=(k == 0)))
        frames.append(make_atoms(symbols, pos, res, 0, d, "curve", MP2_LEVEL))
        e_int = res["energy"] - 2 * m_res["energy"]
        rows.append((d, e_int, np.linalg.norm(res["dipole"])))
        log(f"  [methane curve] d={d:5.1f} Å E_int={1000 * e_int:10.4f} meV  {res['seconds']:.1f} s")
    write_atomic(path, frames)
    log(f"\n  (CH4)2 face-to-vertex interaction, {MP2_LEVEL}, no counterpoise")
    log(f"  {'r/Å':>6} {'E_int/meV':>12} {'|dipole|/e·Å':>13}")
    for d, e, mu in rows:
        log(f"  {d:6.1f} {1000 * e:12.4f} {mu:13.2e}")
    log("")


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["na", "cl", "water", "methane"],
                        help="one data set only")
    parser.add_argument("--force", action="store_true", help="recompute existing files")
    parser.add_argument("--outdir", type=Path, default=HERE, help="default: next to this script")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    lib = _pyscf()
    log(f"threads: {lib.num_threads()}  output: {args.outdir}")

    jobs = []
    for name in ("na", "cl"):
        stem = ION[name]["stem"]
        jobs += [(name, f"{stem}_train.xyz", lambda p, n=name: ion_train(n, p)),
                 (name, f"{stem}_curve.xyz", lambda p, n=name: ion_curve(n, p)),
                 (name, f"{stem}_orientations.xyz", lambda p, n=name: ion_orientations(n, p))]
    jobs += [("water", "water_dimer_train.xyz", water_dimer_train),
             ("water", "water_dimer_orientations.xyz", water_dimer_orientations)]
    jobs += [("methane", "methane_dimer_train.xyz", methane_train),
             ("methane", "methane_dimer_curve.xyz", methane_curve)]

    t_all = time.perf_counter()
    for name, filename, job in jobs:
        if args.only and name != args.only:
            continue
        path = args.outdir / filename
        if path.exists() and not args.force:
            log(f"skip {path} (exists; --force to recompute)")
            continue
        log(f"== {filename}")
        t0 = time.perf_counter()
        job(path)
        log(f"== {filename} done in {time.perf_counter() - t0:.0f} s")

    log("\ntimings (s): kind: n, mean, total")
    for kind, ts in TIMES.items():
        log(f"  {kind}: {len(ts)}, {np.mean(ts):.1f}, {np.sum(ts):.0f}")
    log(f"total wall time {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
