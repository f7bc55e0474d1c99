"""Export a trained potential as a self-contained program (torch.export's ``.pt2`` archive).

The program maps one structure and its neighbour list to energy, forces (and stress):

    positions (N, 3) Å, numbers (N,), cell (3, 3) Å (zeros for a molecule),
    edge_index (2, E), edge_shift (E, 3) [, triplets (2, T)]
        → energy (1,) eV, forces (N, 3) eV/Å [, stress (3, 3) eV/Å³]

The neighbour list stays outside: the caller (ASE here; an MD code) supplies every ordered
pair within ``cutoff`` with its integer cell shift (r_ij = r_j − r_i + S·cell), and for
Behler–Parrinello and linear models the triplets of edges shorter than ``angular_cutoff``
(:func:`mlpot.neighbors.graph_arrays` builds both). Those settings and the input names are
stored beside the program in the archive (``mlpot.json``).

Forces are −∂E/∂r inside the program. torch.export cannot trace ``torch.autograd.grad`` itself
(torch 2.13: saved tensors of the backward become fake constants, pytorch issue 146719), so
the energy-and-gradient function is first traced into one graph of aten operations by
``make_fx`` with symbolic shapes, and that graph is exported (the route NequIP takes). N, E
and T stay dynamic. Loading an mlpot export reads JSON and raw tensor bytes (no mlpot model
code); see below for what is checked first.

``aoti=True`` compiles the program ahead of time with AOTInductor into a package holding a
C++ shared library for this kind of CPU (or GPU), loadable from Python or C++ (an MD code's
pair style): many times faster per call than the interpreted program (benchmarks/RESULTS.md),
but it is native code — load only packages you built.

:func:`export_for_lammps` writes a second kind of program, the one LAMMPS' ``pair_style
mlpot`` runs on each MPI rank: edge vectors in (ghost atoms need no cell shifts), each
member's per-atom energies and their derivatives by edge vector out (see there).

``torch.export.load`` itself can execute code: it unpickles some archive members without
torch's weights-only restriction (see :func:`check_no_pickle`); mlpot checks every such
member before handing a file to torch and refuses archives that would need it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from torch import nn

from mlpot import keys
from mlpot.data.records import Frame
from mlpot.errors import ModelFileError
from mlpot.files import atomic_path, write_bytes_atomic
from mlpot.neighbors import SkinNeighborList, graph_arrays
from mlpot.potential import Potential
from mlpot.serialize import DTYPES, finite_number

FORMAT = "mlpot-exported"
METADATA_FILE = "mlpot.json"


class _StructureProgram(nn.Module):
    """The function that is exported: plain tensors of one structure in, energy, forces
    (and stress) out."""

    def __init__(self, potential: Potential, stress: bool, triplets: bool):
        super().__init__()
        self.potential, self.stress, self.triplets = potential, stress, triplets

    def forward(self, positions, numbers, cell, edge_index, edge_shift, *triplets):
        n_atoms = positions.shape[0]
        batch = {keys.POSITIONS: positions, keys.NUMBERS: numbers, keys.CELL: cell[None],
                 keys.PBC: torch.ones(1, 3, dtype=torch.bool),
                 keys.BATCH: torch.zeros(n_atoms, dtype=torch.long),
                 keys.N_ATOMS: torch.ones(1, dtype=torch.long) * n_atoms,
                 keys.CHARGE: torch.zeros(1, dtype=positions.dtype),
                 keys.EDGE_INDEX: edge_index, keys.EDGE_SHIFT: edge_shift}
        if self.triplets:
            batch[keys.TRIPLETS] = triplets[0]
        out = self.potential(batch, forces=True, stress=self.stress, create_graph=False)
        if self.stress:
            return out[keys.ENERGY], out[keys.FORCES], out[keys.STRESS][0]
        return out[keys.ENERGY], out[keys.FORCES]


class _LocalEnergyProgram(nn.Module):
    """What ``pair_style mlpot`` runs on one MPI rank (see :func:`export_for_lammps`): the
    members' per-atom energies and their derivatives by edge vector, members on a leading
    axis (one for a single potential)."""

    def __init__(self, members: list[Potential], triplets: bool):
        super().__init__()
        self.members, self.triplets = nn.ModuleList(members), triplets

    def forward(self, edge_vectors, numbers, edge_index, *triplets):
        n_atoms = numbers.shape[0]
        vectors = edge_vectors.detach()[None].repeat(len(self.members), 1, 1).requires_grad_()
        batch = {keys.POSITIONS: edge_vectors.new_zeros(n_atoms, 3), keys.NUMBERS: numbers,
                 keys.CELL: edge_vectors.new_zeros(1, 3, 3),
                 keys.BATCH: torch.zeros(n_atoms, dtype=torch.long),
                 keys.N_ATOMS: torch.ones(1, dtype=torch.long) * n_atoms,
                 keys.EDGE_INDEX: edge_index}
        if self.triplets:
            batch[keys.TRIPLETS] = triplets[0]
        energies = []
        for member, member_vectors in zip(self.members, vectors):
            atomic = member.model({**batch, keys.EDGE_VECTORS: member_vectors})[
                keys.ATOMIC_ENERGY]
            energies.append(atomic.double() + member.e0[numbers])
        energies = torch.stack(energies)
        (gradients,) = torch.autograd.grad(energies.sum(), [vectors])
        return energies, gradients


def uses_triplets(potential: Potential) -> bool:
    """Whether the potential's program takes triplets (models with angular functions)."""
    return getattr(potential.model, "angular_cutoff", None) is not None


def _example_frame(elements: list[int], periodic: bool) -> Frame:
    """A 16-atom jittered grid (1.4 Å spacing) of the model's elements, only for tracing:
    every dimension of the inputs larger than 1 and different from the others."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (4, 2, 2)], indexing="ij"), -1)
    positions = grid.reshape(-1, 3) * 1.4 + rng.normal(0, 0.1, (16, 3))
    numbers = np.array([elements[k % len(elements)] for k in range(16)])
    cell = np.diag([5.6, 2.8, 2.8]) if periodic else np.zeros((3, 3))
    return Frame(numbers=numbers, positions=positions, cell=cell, pbc=np.array([periodic] * 3))


def _inputs(frame: Frame, graph: dict, dtype: torch.dtype, triplets: bool) -> tuple:
    values = (torch.as_tensor(frame.positions, dtype=dtype),
              torch.as_tensor(frame.numbers, dtype=torch.long),
              torch.as_tensor(frame.cell, dtype=dtype),
              torch.as_tensor(graph[keys.EDGE_INDEX], dtype=torch.long),
              torch.as_tensor(graph[keys.EDGE_SHIFT], dtype=dtype))
    if triplets:
        values += (torch.as_tensor(graph[keys.TRIPLETS], dtype=torch.long),)
    return values


def _check_exportable(potential) -> None:
    if not isinstance(potential, Potential):
        raise ValueError("only a single potential can be exported (not an ensemble or a "
                         "last-layer uncertainty model)")
    if potential.physics_terms:
        raise ValueError("potentials with long-range terms (Coulomb, dispersion) cannot be "
                         "exported yet")


def _write_program(program: nn.Module, example: tuple, dynamic: list, metadata: dict,
                   path: str | Path, aoti: bool) -> Path:
    """Trace ``program`` (energy and its gradient in one graph of aten operations), export
    it with ``dynamic`` shapes and write it with ``metadata``, compiled if ``aoti``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(program, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    exported = torch.export.export(graph, example, dynamic_shapes=tuple(dynamic), strict=False)
    path = Path(path)
    if aoti:
        metadata["aoti"] = True
        with atomic_path(path, suffix=".pt2") as tmp:  # torch wants the .pt2 suffix
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(tmp),
                inductor_configs={"aot_inductor.metadata": {METADATA_FILE: json.dumps(metadata)}})
    else:  # in memory first: torch's writer reports a full disk as a RuntimeError
        buffer = io.BytesIO()
        torch.export.save(exported, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
        write_bytes_atomic(path, buffer.getvalue())
    return path


def _metadata(potential: Potential, triplets: bool, inputs: list[str], outputs: list[str],
              **extra) -> dict:
    return {"format": FORMAT, "version": 1, "elements": potential.elements,
            "cutoff": potential.cutoff,
            "angular_cutoff": potential.model.angular_cutoff if triplets else None,
            "dtype": str(potential.dtype).removeprefix("torch."), **extra,
            "inputs": inputs + ["triplets"] * triplets, "outputs": outputs,
            "units": {"length": "Å", "energy": "eV"}}


def export_potential(potential: Potential, path: str | Path, stress: bool = False,
                     aoti: bool = False) -> Path:
    """Write ``potential`` as a ``.pt2`` program (see the module docstring), compiled by
    AOTInductor if ``aoti``; returns the path.

    Models with long-range terms (Coulomb, dispersion) or several members are refused: their
    exported form is not built."""
    _check_exportable(potential)
    potential = potential.eval()
    triplets = uses_triplets(potential)
    program = _StructureProgram(potential, stress, triplets)
    frame = _example_frame(potential.elements, periodic=stress)
    example = _inputs(frame, potential.graph(frame), potential.dtype, triplets)
    atoms, edges = torch.export.Dim("atoms", min=2), torch.export.Dim("edges", min=2)
    dynamic = [{0: atoms}, {0: atoms}, None, {1: edges}, {0: edges}]
    if triplets:
        dynamic.append({1: torch.export.Dim("triplets", min=2)})
    metadata = _metadata(potential, triplets,
                         ["positions", "numbers", "cell", "edge_index", "edge_shift"],
                         ["energy", "forces"] + ["stress"] * stress, stress=stress)
    return _write_program(program, example, dynamic, metadata, path, aoti)


LAMMPS_PROGRAM = "lammps"


def export_for_lammps(potential, path: str | Path) -> Path:
    """Compile ``potential`` (a :class:`Potential` or an ensemble of them) with AOTInductor
    into the program that ``pair_style mlpot`` runs (``lammps/``, built by
    ``scripts/lammps.sh``); returns the path.

    Each MPI rank hands it the edges of its own atoms, ghost neighbours included, as
    vectors, and gets each member's per-atom energies and their derivatives by edge vector:

        edge_vectors (E, 3) Å, numbers (N,), edge_index (2, E) [, triplets (2, T)]
            → atomic_energies (M, N) eV (E0 included; the rank keeps its own atoms'),
              edge_gradients (M, E, 3) eV/Å = ∂(Σ_i E_m,i)/∂r_e

    with M = 1 for a single potential. From these the pair style forms the members' mean
    forces on local and ghost atoms (LAMMPS sums the ghosts' onto their owners), the virial
    −Σ_e r_e ⊗ ∂E/∂r_e, per-atom virials (half of each edge's to either end) and, for an
    ensemble, the members' spread: each atom's force σ and the energy σ, calibrated as the
    ensemble's (metadata ``sigma_calibration``; members' variance heads are not exported).
    Only strictly local models qualify (bpnn, linear): a message-passing model's atoms see
    n_interactions × cutoff, beyond one cutoff's ghost atoms."""
    members = list(getattr(potential, "members", [potential]))
    for member in members:
        _check_exportable(member)
        if not getattr(member.model, "strictly_local", False):
            reach = getattr(member.model, "n_interactions", 1) * member.cutoff
            raise ValueError(f"pair_style mlpot runs strictly local models (bpnn, linear); a "
                             f"{member.model.kind} model's atoms see {reach:g} Å "
                             "(n_interactions × cutoff), beyond LAMMPS' ghost atoms of one "
                             "cutoff")
    potential = potential.eval()
    triplets = uses_triplets(potential)
    frame = _example_frame(potential.elements, periodic=False)
    graph = graph_arrays(frame.positions, frame.cell, frame.pbc, potential.cutoff,
                         potential.model.angular_cutoff)
    i, j = graph[keys.EDGE_INDEX]
    example = (torch.as_tensor(frame.positions[j] - frame.positions[i], dtype=potential.dtype),
               torch.as_tensor(frame.numbers, dtype=torch.long),
               torch.as_tensor(graph[keys.EDGE_INDEX], dtype=torch.long))
    if triplets:
        example += (torch.as_tensor(graph[keys.TRIPLETS], dtype=torch.long),)
    atoms, edges = torch.export.Dim("atoms", min=2), torch.export.Dim("edges", min=2)
    dynamic = [{0: edges}, {0: atoms}, {1: edges}]
    if triplets:
        dynamic.append({1: torch.export.Dim("triplets", min=2)})
    calibration = {name: getattr(potential, f"calibration_{name}").to_json()
                   for name in ("energy", "forces") if hasattr(potential, f"calibration_{name}")}
    metadata = _metadata(potential, triplets, ["edge_vectors", "numbers", "edge_index"],
                         ["atomic_energies", "edge_gradients"], program=LAMMPS_PROGRAM,
                         stress=False, members=len(members), sigma_calibration=calibration)
    return _write_program(_LocalEnergyProgram(members, triplets), example, dynamic, metadata,
                          path, aoti=True)


def _is_aoti_package(names: list[str]) -> bool:
    return any("/data/aotinductor/" in name for name in names)


def check_no_pickle(path: str | Path) -> list[str]:
    """Raise ModelFileError if loading the ``.pt2`` archive ``path`` could unpickle anything
    beyond tensors; returns the archive's member names.

    ``torch.export.load`` (torch 2.13) unpickles with ``weights_only=False`` — which runs
    code named in the file — for weights and constants marked ``use_pickle``, legacy
    ``.pt`` weight files, custom and opaque objects, and sample inputs that the restricted
    unpickler refuses. mlpot's exports hold none of these, so an archive that does is refused
    before torch sees it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()  # every member's CRC-32
            if damaged is not None:
                raise ModelFileError(f"{path}: archive member {damaged} is damaged (CRC "
                                     "mismatch)")
            inner = {name.split("/", 1)[1]: name for name in names if "/" in name}
            for name, full in inner.items():
                if name.startswith(("data/weights/", "data/constants/")) and name.endswith(".pt"):
                    raise ModelFileError(f"{path}: archive member {full} is a pickled "
                                         "(legacy) payload; refused")
                if name.endswith(("_weights_config.json", "_constants_config.json")):
                    _check_payload_config(path, full, json.loads(archive.read(full)))
                if name.startswith("data/sample_inputs/"):
                    sample = archive.read(full)
                    if sample:
                        torch.load(io.BytesIO(sample), weights_only=True)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise ModelFileError(f"{path}: not a .pt2 archive ({error})") from error
    except pickle_errors() as error:
        raise ModelFileError(f"{path}: an archive member holds more than tensors, or is "
                             f"damaged ({type(error).__name__}); refused") from error
    return names


def pickle_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged or hostile archive member raises."""
    import pickle

    return (pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError, RuntimeError,
            ValueError, KeyError, TypeError, AttributeError, EOFError, OSError,
            zipfile.BadZipFile, NotImplementedError, IndexError)


def _check_payload_config(path, member: str, config) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelFileError(f"{path}: archive member {member} is not a payload config")
    for name, entry in entries.items():
        file_name = str(entry.get("path_name", "")) if isinstance(entry, dict) else ""
        if (not isinstance(entry, dict) or entry.get("use_pickle") is not False
                or file_name.startswith(("custom_obj_", "opaque_obj_"))):
            raise ModelFileError(f"{path}: {member}: '{name}' is a pickled payload; refused")


def _checked_metadata(path, metadata) -> dict:
    """The archive's mlpot.json, every field the loader uses checked."""
    file = f"{path} ({METADATA_FILE})"
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlpot exported program (no {METADATA_FILE} with "
                             f"format {FORMAT!r})")
    if metadata.get("program") == LAMMPS_PROGRAM:
        raise ModelFileError(f"{path}: a program for LAMMPS' pair_style mlpot (exported with "
                             "--lammps); run it there, or export again without --lammps")
    if metadata.get("dtype") not in DTYPES:
        raise ModelFileError(f"{file}: field 'dtype' must be one of {DTYPES}")
    finite_number(file, "cutoff", metadata.get("cutoff"), minimum=0.0)
    if metadata.get("angular_cutoff") is not None:
        finite_number(file, "angular_cutoff", metadata["angular_cutoff"], minimum=0.0)
    outputs = metadata.get("outputs")
    if not isinstance(outputs, list) or not set(outputs) <= {"energy", "forces", "stress"} \
            or outputs[:2] != ["energy", "forces"]:
        raise ModelFileError(f"{file}: field 'outputs' must list energy, forces (and stress)")
    if metadata.get("stress") is not ("stress" in outputs):
        raise ModelFileError(f"{file}: field 'stress' must be {'stress' in outputs}")
    return metadata


class ExportedPotential:
    """An exported program with its neighbour-list settings: call it on a structure.

    Loading a plain ``.pt2`` program reads JSON and raw tensors only: archives that would make
    torch unpickle anything else are refused (:func:`check_no_pickle`). An AOTInductor
    package (``--aoti``) holds a compiled shared library that is loaded and run as native
    code: load only packages you built yourself. Damaged files raise ModelFileError."""

    def __init__(self, path: str | Path):
        names = check_no_pickle(path)
        try:
            if _is_aoti_package(names):
                self.program = torch._inductor.aoti_load_package(str(path))
                self.metadata = json.loads(self.program.get_metadata().get(METADATA_FILE, "{}"))
            else:
                extra = {METADATA_FILE: ""}
                self.program = torch.export.load(path, extra_files=extra).module()
                self.metadata = json.loads(extra[METADATA_FILE] or "{}")
        except pickle_errors() + (AssertionError,) as error:
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise ModelFileError(f"{path}: not a loadable exported program "
                                 f"({type(error).__name__}: {message})") from error
        self.metadata = _checked_metadata(path, self.metadata)
        self.dtype = getattr(torch, self.metadata["dtype"])
        self.triplets = self.metadata["angular_cutoff"] is not None

    def inputs(self, frame: Frame, graph: dict | None = None) -> tuple[torch.Tensor, ...]:
        """The program's input tensors for ``frame``; ``graph``: its neighbour graph at the
        program's cutoffs if already known (else searched here)."""
        if graph is None:
            graph = graph_arrays(frame.positions, frame.cell, frame.pbc,
                                 self.metadata["cutoff"], self.metadata["angular_cutoff"])
        sizes = {"atoms": len(frame), "edges": graph[keys.EDGE_INDEX].shape[1]}
        if self.triplets:
            sizes["triplets"] = graph[keys.TRIPLETS].shape[1]
        small = {name: n for name, n in sizes.items() if n < 2}
        if small:  # traced with symbolic sizes, which assume ≥ 2 (torch's 0/1 specialisation)
            raise ValueError(f"{frame.source} frame {frame.index}: an exported program needs at "
                             f"least 2 atoms, edges and triplets; this structure has {small}")
        return _inputs(frame, graph, self.dtype, self.triplets)

    def __call__(self, frame: Frame, graph: dict | None = None) -> dict[str, np.ndarray]:
        """energy (eV), forces (N, 3) eV/Å and, if exported with it, stress (3, 3) eV/Å³."""
        with torch.no_grad():
            outputs = self.program(*self.inputs(frame, graph))
        result = {name: value.detach().numpy().astype(np.float64)
                  for name, value in zip(self.metadata["outputs"], outputs)}
        result["energy"] = float(result["energy"][0])
        return result


class ExportedCalculator(Calculator):
    """ASE calculator on an exported program (energy, forces; stress if exported with it).
    ``skin`` (Å): as :class:`~mlpot.dynamics.calculator.MlpotCalculator`'s — the neighbour
    list is searched again only when an atom has moved more than skin/2 (0: every call)."""

    def __init__(self, path: str | Path, skin: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.exported = ExportedPotential(path)
        metadata = self.exported.metadata
        self.neighbors = (SkinNeighborList(metadata["cutoff"], metadata["angular_cutoff"], skin)
                          if skin > 0 else None)
        self.implemented_properties = ["energy", "free_energy", "forces"] + (
            ["stress"] * self.exported.metadata["stress"])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        frame = Frame(numbers=self.atoms.numbers, positions=self.atoms.positions,
                      cell=np.asarray(self.atoms.cell), pbc=np.asarray(self.atoms.pbc))
        graph = None
        if self.neighbors is not None:
            graph = self.neighbors(frame.positions, frame.cell, frame.pbc, frame.numbers)
        result = self.exported(frame, graph)
        self.results = {"energy": result["energy"], "free_energy": result["energy"],
                        "forces": result["forces"]}
        if "stress" in result:
            from ase.stress import full_3x3_to_voigt_6_stress

            self.results["stress"] = full_3x3_to_voigt_6_stress(result["stress"])
