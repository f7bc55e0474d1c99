"""Per-element descriptor statistics, used to standardise inputs of per-element models."""

from __future__ import annotations

import torch


@torch.no_grad()
def element_feature_stats(features: torch.Tensor, species: torch.Tensor, n_elements: int,
                          min_std: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each feature over the atoms of each element, (n_elements, n_features).

    Features an element never sees (constant) get std 1, so they stay zero after centring.
    """
    n_features = features.shape[1]
    mean = features.new_zeros(n_elements, n_features)
    std = features.new_ones(n_elements, n_features)
    for e in range(n_elements):
        rows = features[species == e]
        if len(rows) == 0:
            continue
        mean[e] = rows.mean(0)
        if len(rows) > 1:
            s = rows.std(0)
            std[e] = torch.where(s > min_std, s, torch.ones_like(s))
    return mean, std
