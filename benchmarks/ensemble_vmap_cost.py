"""Cost of a message-passing ensemble's energy + forces call: vmapped vs members in turn.

4-member ensembles (SchNet and equivariant, config size "medium", cutoff 5 Å, untrained
weights: cost does not depend on them) on one acac molecule (examples/acac/test_MD_300K.xyz
frame 0, 15 atoms) and on a periodic water box (4³ molecules, 192 atoms, 1 g/cm³). Per call:

    vmapped      mlpot.uncertainty.vmapped.vmapped_forward (vmap forward, one backward),
                 the members' weights stacked at every call
    vmapped, stacked once   the same with the stacked weights reused (what Ensemble does
                 while no weight changes)
    grad-in-vmap vmap(torch.func.grad_and_value(E)) over the members (the alternative design)
    in turn      Ensemble._members_in_turn: M forward + backward passes
    single       one member alone (Potential.forward)

Calls are interleaved for a few seconds per case and the median and minimum are reported
(the minimum is the steadier figure on a shared machine). One thread by default.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_vmap_cost.py [--seconds 8] [--dtype float32]
        [--kinds schnet equivariant] [--members 4] [--device cuda]

On a GPU (``--device cuda``) every call ends with ``torch.cuda.synchronize()``, so a time
is the GPU's work done, not only launched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.func import functional_call, grad_and_value, vmap

from common import ACAC
from long_range_cost import water_box
from mlpot import keys
from mlpot.config import config_from_dict
from mlpot.data.records import frame_from_atoms, read_frames
from mlpot.train.run import build_potential
from mlpot.uncertainty.ensemble import Ensemble
from mlpot.uncertainty.vmapped import stacked_state, vmapped_forward

E0 = {"H": -13.568422178253735, "C": -1026.8538996116154, "O": -2037.796869412825}


def grad_in_vmap(members, batch):
    """Energies (M, B) and forces (M, N, 3) by vmap(grad_and_value) over stacked weights, the
    positions shared (unbatched): the torch.func alternative to vmapped_forward."""
    base = members[0].model
    params, buffers, shared = stacked_state([member.model for member in members])
    e0 = members[0].e0[batch[keys.NUMBERS]]
    n_structures = batch[keys.CELL].shape[0]

    def energy(params, buffers, positions):
        atomic = functional_call(base, (params, buffers, shared),
                                 ({**batch, keys.POSITIONS: positions},))[keys.ATOMIC_ENERGY]
        atomic = atomic.double() + e0
        total = atomic.new_zeros(n_structures).index_add(0, batch[keys.BATCH], atomic)
        return total.sum(), total

    with torch.no_grad():
        gradient, (_, total) = vmap(grad_and_value(energy, argnums=2, has_aux=True),
                                    in_dims=(0, 0, None))(params, buffers,
                                                           batch[keys.POSITIONS])
    return total, -gradient


def time_interleaved(calls: dict, seconds: float, min_rounds: int = 5,
                     sync=lambda: None) -> dict:
    """Median and minimum ms per call of each function, calls interleaved round by round;
    ``sync`` waits for the device's queued work (after each call)."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up
    sync()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times[next(iter(calls))]) < min_rounds:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
                   "rounds": len(t)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per case")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kinds", nargs="+", default=["schnet", "equivariant"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    systems = {"acac molecule": [read_frames(ACAC / "test_MD_300K.xyz")[0]],
               "water box": [frame_from_atoms(water_box(4), source="water box", index=0)]}
    results = []
    for kind in args.kinds:
        config = config_from_dict({"data": {"train": "unused.xyz"},
                                   "model": {"kind": kind, "size": "medium", "cutoff": 5.0}})
        members = []
        for seed in range(args.members):
            torch.manual_seed(seed)
            members.append(build_potential(config, [1, 6, 8], E0).to(args.device, dtype).eval())
        ensemble = Ensemble(members).eval()
        for system, frames in systems.items():
            batch = {name: value.to(args.device)
                     for name, value in ensemble.batch(frames).items()}
            # the two vmapped designs give the members' numbers
            reference = ensemble._members_in_turn(batch, True, False, False)
            ours = vmapped_forward(members, batch)
            for energy, forces in ((ours[keys.ENERGY], ours[keys.FORCES]),
                                   grad_in_vmap(members, batch)):
                torch.testing.assert_close(energy, reference[keys.ENERGY].detach())
                torch.testing.assert_close(forces, reference[keys.FORCES].detach(),
                                           rtol=1e-4, atol=1e-4)
            state = stacked_state([member.model for member in members])
            timing = time_interleaved({
                "vmapped": lambda: vmapped_forward(members, batch),
                "vmapped, stacked once": lambda: vmapped_forward(members, batch, state=state),
                "grad-in-vmap": lambda: grad_in_vmap(members, batch),
                "in turn": lambda: ensemble._members_in_turn(batch, True, False, False),
                "single": lambda: members[0](batch)}, args.seconds, sync=sync)
            row = {"kind": kind, "system": system, "n_atoms": len(batch[keys.NUMBERS]),
                   "n_edges": batch[keys.EDGE_INDEX].shape[1], "ms": timing}
            results.append(row)
            ratio = timing["vmapped"]["min_ms"] / timing["in turn"]["min_ms"]
            print(f"{kind:>11} {system:>13} ({row['n_atoms']} atoms, {row['n_edges']} edges): "
                  + ", ".join(f"{name} {t['median_ms']:.1f} (min {t['min_ms']:.1f})"
                              for name, t in timing.items())
                  + f" ms; vmapped/in turn (min) {ratio:.2f}", flush=True)
    print(json.dumps({"dtype": args.dtype, "threads": args.threads, "members": args.members,
                      "device": args.device,
                      "results": results}))


if __name__ == "__main__":
    main()
