"""Per-element standardisation: means and stds per element, constant features left alone,
and near-constant features not blown up (their std is floored relative to the others)."""

import torch

from mlpot.models.standardize import element_feature_stats


def test_stats_per_element_with_floor():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 5, generator=generator, dtype=torch.float64)
    features[:, 1] *= 3.0
    features[:, 2] = 0.7  # constant
    features[:, 3] = 1e-4 * features[:, 3]  # barely varies
    species = torch.tensor([0, 1] * 100)
    mean, std = element_feature_stats(features, species, 3)
    for e in (0, 1):
        rows = features[species == e]
        torch.testing.assert_close(mean[e], rows.mean(0))
        plain = rows.std(0)
        for k in (0, 1, 4):
            assert float(std[e, k]) == float(plain[k])  # ordinary features untouched
        assert float(std[e, 2]) == 1.0  # constant: stays zero after centring
        varying = plain[[0, 1, 3, 4]]
        assert float(std[e, 3]) == float(0.1 * varying.median())  # floored, not 1e-4
    assert torch.equal(std[2], torch.ones(5, dtype=torch.float64))  # an absent element
    unfloored = element_feature_stats(features, species, 3, relative_floor=0.0)[1]
    assert float(unfloored[0, 3]) < 1e-3
