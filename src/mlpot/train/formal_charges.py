"""Start the formal charges where the data puts each structure's charge, before training.

With the default fragment neutralisation (:mod:`mlpot.physics.charges`) the integer charge of
each fragment of a structure follows the rounding of its formal charges' sum. Formal networks
that start with sums far from the data's charges can settle with an ion's charge on its
neutral partner: nothing in the gradient can move a rounding, and once the local energies
have adapted to an assignment they defend it (two of three Cl⁻–water seeds did so,
benchmarks/RESULTS.md). So before the first epoch the formal networks are fitted to what the
data says unambiguously: every structure that is one fragment at the cutoff carries its total
charge (a lone Cl⁻ −1, a lone water 0, an ion with its water −1), the loss's charge-excess
term (T − Σ f)² and nothing else. The rounding then starts right, and the same term in the
loss (σ ``training.sigma_charge_excess``, 0.02 e) keeps it so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mlpot.data.records import Frame

MAX_ATOMS = 4000  # atoms in the fitted sample (plus every lone ion), so big cells stay cheap


def fit_formal_charges(potential, train: Sequence[Frame], seed: int = 0, steps: int = 1000,
                       tolerance: float = 0.02) -> dict | None:
    """Fit the formal charges' sums of single-fragment structures to their total charges (e)
    with Adam on the charge head (the excess reaches its formal networks only; with
    neutrality "structure" or "none", which have none, the raw charges); stops when the
    RMS excess is below ``tolerance`` (e). Uses every lone ion and a random sample of the other
    structures up to ``MAX_ATOMS`` atoms. Returns {"steps", "rms_excess_before",
    "rms_excess_after"}, or None without a charge network."""
    head = getattr(potential.long_range, "charge_head", None)
    if head is None or not len(train):
        return None
    rng = np.random.default_rng(seed)
    chosen, atoms = [], 0
    for k in rng.permutation(len(train)):
        frame = train[int(k)]
        if len(frame) == 1 and frame.charge:
            chosen.append(frame)  # lone ions: the only statement of what an ion carries
        elif atoms + len(frame) <= MAX_ATOMS:
            chosen.append(frame)
            atoms += len(frame)
    dtype = next(head.parameters()).dtype
    batches = [potential.batch(chosen[start:start + 64], dtype=dtype)
               for start in range(0, len(chosen), 64)]
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)

    def rms_excess(step: bool) -> float:
        squares, count = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            excess = head(batch)[1]
            loss = (excess**2).sum()
            if step:
                loss.backward()
            squares, count = squares + float(loss.detach()), count + len(excess)
        if step:
            optimizer.step()
        return (squares / max(count, 1)) ** 0.5

    before = rms_excess(step=False)
    done = 0
    with torch.enable_grad():
        while done < steps:
            done += 1
            if rms_excess(step=True) < tolerance and rms_excess(step=False) < tolerance:
                break  # (the second look: Adam's last step can overshoot)
    return {"steps": done, "rms_excess_before": before,
            "rms_excess_after": rms_excess(step=False)}
