"""Per-element feature statistics accumulated chunk by chunk (data larger than memory).

:func:`mlpot.models.standardize.element_feature_stats` needs every atom's features at once;
:class:`ElementMoments` keeps only each element's count, mean and sum of squared deviations,
merged chunk by chunk with the pairwise update of Chan, Golub & LeVeque (1979), so the
statistics of a data set on disk need one batch in memory at a time. The result equals
``element_feature_stats`` on the concatenated features to rounding (float64; tests check it).
"""

from __future__ import annotations

import torch

from mlpot.models.standardize import floored_std


class ElementMoments:
    """Running count, mean and M2 = Σ (x − mean)² of features per element, float64."""

    def __init__(self, n_elements: int):
        self.n_elements = n_elements
        self.count = [0] * n_elements
        self.mean: list[torch.Tensor | None] = [None] * n_elements
        self.m2: list[torch.Tensor | None] = [None] * n_elements

    @torch.no_grad()
    def add(self, features: torch.Tensor, species: torch.Tensor) -> None:
        """Merge a chunk: ``features`` (n_atoms, n_features), ``species`` (n_atoms,) element
        index of each atom."""
        for e in range(self.n_elements):
            rows = features[species == e].double()
            n_b = len(rows)
            if n_b == 0:
                continue
            mean_b = rows.mean(0)
            m2_b = ((rows - mean_b) ** 2).sum(0)
            n_a = self.count[e]
            if n_a == 0:
                self.count[e], self.mean[e], self.m2[e] = n_b, mean_b, m2_b
                continue
            n = n_a + n_b
            delta = mean_b - self.mean[e]
            self.mean[e] = self.mean[e] + delta * (n_b / n)
            self.m2[e] = self.m2[e] + m2_b + delta**2 * (n_a * n_b / n)
            self.count[e] = n

    def stats(self, n_features: int, min_std: float = 1e-6,
              relative_floor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (n_elements, n_features), float64, with the rules of
        ``element_feature_stats``: an element never seen gets mean 0 and std 1, a constant
        feature std 1, every other std at least ``relative_floor`` × the element's median std."""
        mean = torch.zeros(self.n_elements, n_features, dtype=torch.float64)
        std = torch.ones(self.n_elements, n_features, dtype=torch.float64)
        for e in range(self.n_elements):
            if self.count[e] == 0:
                continue
            mean[e] = self.mean[e]
            if self.count[e] > 1:
                s = (self.m2[e] / (self.count[e] - 1)).sqrt()  # unbiased, as torch.std
                std[e] = floored_std(s, min_std, relative_floor)
        return mean, std
