"""A MACE-style equivariant network on e3nn: tensor features, many-body products per layer.

After Batatia et al., "MACE: Higher order equivariant message passing neural networks for fast
and accurate force fields", NeurIPS 2022 (arXiv:2206.07697), eqs. (8)–(13), built from e3nn's
``o3`` operations (no hand-written Clebsch–Gordan code). It is mlpot's most accurate model
(config kind ``equivariant``). N atoms, E edges (i, j) of the neighbour list (both
directions), C = n_features channels, K = n_rbf, T = n_interactions, ν = correlation,
r_c = cutoff (Å), r̂_ij the unit vector from i to j, Y(r̂) the real spherical harmonics
l = 0 … l_max ("component" normalised), ⊗ e3nn tensor products (paths l1 ⊗ l2 → l3 with
Clebsch–Gordan coefficients, natural parity only: 0e, 1o, 2e, 3o …):

    h⁰_i = embedding[Z_i]                                        C × 0e
    R_t(r) = MLP_t(e(r)) · f_c(r),  e_k(r) = √(2/r_c) sin(kπr/r_c)/r   (E, paths × C)
    A_i = (1/n̄) Σ_j Linear(R_t(r_ij) ⊗_uvu [Linear(h^t_j) ⊗ Y(r̂_ij)])    C × (0e … l_max)
    B^1_i = A_i,  B^k_i = B^{k−1}_i ⊗_uuu^{Z_i} A_i   (k = 2 … ν)    C × (0e … l_max)
    h^{t+1}_i = Linear(Σ_k B^k_i) + Linear^{Z_i}(h^t_i)           C × (0e … hidden_l)
    E_i = b_{Z_i} n_i + s · Σ_t [R_t(h^t_i|0e) − R_t(h̄^t_{Z_i}|0e)]   eV

``⊗_uvu`` is the convolution: each channel of h_j is multiplied with Y by every allowed path,
with weights per edge, channel and path from the radial network. ``⊗_uuu^{Z}`` is the product
basis: channel by channel, every path of B^{k−1} ⊗ A allowed into the output irreps, weighted
per element Z_i, per channel and per path — so B^k carries (k + 1)-body correlations of the
neighbour density, and T layers of ν = 3 reach high body order with only two-body edges (as in
MACE; MACE's symmetric contraction spans the same products with fewer redundant weights).
n̄ is the mean number of neighbours in the training data (``mean_neighbours``, set with the
statistics), so sums stay of order one whatever the density. The last layer keeps only scalar
features (all the readout uses). The readout R_t is Linear C → 1 for t < T and
Linear–SiLU–Linear for the last layer; each layer's scalars contribute (as in MACE).

**Equivariance.** Every operation is an e3nn equivariant map (linear maps between equal
irreps, tensor products with Clebsch–Gordan coefficients, scalar radial weights), so under an
orthogonal map Q of the positions every feature of order l transforms with its Wigner matrix
D^l(Q) (parity included), scalars and E are invariant, forces rotate with Q (tested).

**Isolated atoms give exactly 0**, as for SchNet and PaiNN: one ghost atom per element without
edges goes through the same layers, its readout is subtracted; a free atom has A = 0, B = 0 and
the same skip path as its ghost. Every radial weight carries f_c, so energies are smooth as
neighbours cross r_c.

**Receptive field** T · r_c: one edge per interaction (the product basis is atom-wise).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from mlpot import keys
from mlpot.descriptors.cutoff import baseline_coordination
from mlpot.models.message_passing import MessagePassingModel
from mlpot.neighbors import edge_vectors


def natural_irreps(channels: int, l_max: int) -> o3.Irreps:
    """C × (0e + 1o + 2e + …) up to l_max: the irreps a polar-vector geometry produces."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


def convolution_paths(irreps_in: o3.Irreps, irreps_edge: o3.Irreps, allowed: o3.Irreps):
    """Output irreps and 'uvu' instructions of every path in1 ⊗ edge → an irrep in ``allowed``."""
    allowed_irs = {ir for _, ir in allowed}
    out, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_edge) in enumerate(irreps_edge):
            for ir_out in ir_in * ir_edge:
                if ir_out in allowed_irs:
                    instructions.append((i, j, len(out), "uvu", True))
                    out.append((mul, ir_out))
    return o3.Irreps(out), instructions


class ElementLinear(nn.Module):
    """An e3nn Linear whose weights depend on the atom's element, (N, in) → (N, out)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, n_elements: int):
        super().__init__()
        self.linear = o3.Linear(irreps_in, irreps_out, internal_weights=False,
                                shared_weights=False)
        self.weight = nn.Parameter(torch.randn(n_elements, self.linear.weight_numel))

    def forward(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.weight[species])


def to_channels(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """e3nn layout [C × 0e | C × 1o | …] (N, C·Σ(2l+1)) → channel layout (N, C, Σ(2l+1))."""
    blocks, start = [], 0
    for mul, ir in irreps:
        blocks.append(x[:, start:start + mul * ir.dim].reshape(x.shape[0], mul, ir.dim))
        start += mul * ir.dim
    return torch.cat(blocks, dim=2)


def from_channels(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """Inverse of :func:`to_channels`."""
    blocks, start = [], 0
    for _, ir in irreps:
        blocks.append(x[:, :, start:start + ir.dim].reshape(x.shape[0], -1))
        start += ir.dim
    return torch.cat(blocks, dim=1)


class ChannelwiseProduct(nn.Module):
    """z_c = Σ_paths w_{Z,c,p} · CG_p(x_c ⊗ y_c): a channel-wise ('uuu') tensor product of two
    features in channel layout (N, C, D) → (N, C, D_out), D = (l_max + 1)², D_out =
    (l_out + 1)², natural parity.

    Every path l1 ⊗ l2 → l3 allowed by e3nn's selection rules (parity included) uses e3nn's
    Wigner 3j symbols with "component" normalisation (× √(2 l3 + 1)), divided by √(paths into
    l3). All paths run as one dense contraction — a few large operations instead of one small
    one per path, which is what makes this faster than ``o3.TensorProduct`` on molecules
    (benchmarks/RESULTS.md). Weights are per element Z of the atom, channel and path.
    """

    def __init__(self, l_max: int, l_out: int, channels: int, n_elements: int):
        super().__init__()
        dims = [2 * l + 1 for l in range(l_max + 1)]
        offsets = [sum(dims[:l]) for l in range(l_max + 1)]
        dim = sum(dims)
        irreps = [o3.Irrep(l, (-1) ** l) for l in range(l_max + 1)]
        paths = [(l1, l2, l3) for l1 in range(l_max + 1) for l2 in range(l_max + 1)
                 for l3 in range(l_out + 1) if irreps[l3] in irreps[l1] * irreps[l2]]
        fan_in = {l3: sum(1 for p in paths if p[2] == l3) for l3 in range(l_out + 1)}
        columns = sum(dims[l3] for _, _, l3 in paths)
        coupling = torch.zeros(dim, dim, columns, dtype=torch.float64)  # (i, j, column)
        gather = torch.zeros(columns, offsets[l_out] + dims[l_out],
                             dtype=torch.float64)  # column → output component
        path_of_column = []
        column = 0
        for p, (l1, l2, l3) in enumerate(paths):
            with torch.device("cpu"):  # e3nn checks values: real numbers even when the
                #                        module is built on the meta device (size checks)
                cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
            cg = cg * math.sqrt(dims[l3] / fan_in[l3])
            coupling[offsets[l1]:offsets[l1] + dims[l1], offsets[l2]:offsets[l2] + dims[l2],
                     column:column + dims[l3]] = cg
            gather[column:column + dims[l3], offsets[l3]:offsets[l3] + dims[l3]] = torch.eye(
                dims[l3], dtype=torch.float64)
            path_of_column += [p] * dims[l3]
            column += dims[l3]
        self.register_buffer("coupling", coupling.reshape(dim * dim, columns), persistent=False)
        self.register_buffer("gather", gather, persistent=False)
        self.register_buffer("path_of_column", torch.tensor(path_of_column), persistent=False)
        self.weight = nn.Parameter(torch.randn(n_elements, channels, len(paths)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n, c, d = x.shape
        outer = (x[:, :, :, None] * y[:, :, None, :]).reshape(n, c, d * d)
        columns = outer @ self.coupling.to(x.dtype)  # (N, C, columns)
        weights = self.weight.to(x.dtype)[species][:, :, self.path_of_column]
        return (columns * weights) @ self.gather.to(x.dtype)  # (N, C, D_out)


class ProductBasis(nn.Module):
    """B = Σ_{k=1}^{ν} B^k with B^1 = A and B^k = B^{k−1} ⊗^{Z} A, then Linear → output.

    Only orders up to the output's l_out are kept in the sum (the Linear maps l to l), so the
    last product computes only those: B^ν's paths into l ≤ l_out.
    """

    def __init__(self, irreps_a: o3.Irreps, irreps_out: o3.Irreps, correlation: int,
                 n_elements: int):
        super().__init__()
        l_max, channels, l_out = irreps_a.lmax, irreps_a[0].mul, irreps_out.lmax
        self.irreps_a = irreps_a
        self.irreps_kept = natural_irreps(channels, l_out)
        self.products = nn.ModuleList(
            ChannelwiseProduct(l_max, l_out if k == correlation - 2 else l_max, channels,
                               n_elements) for k in range(correlation - 1))
        self.linear = o3.Linear(self.irreps_kept, irreps_out)

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        a = to_channels(a, self.irreps_a)
        kept = self.irreps_kept.dim // a.shape[1]  # components per channel, (l_out + 1)²
        term, total = a, a[:, :, :kept]
        for product in self.products:
            term = product(term, a, species)
            total = total + term[:, :, :kept]
        return self.linear(from_channels(total, self.irreps_kept))


class EquivariantInteraction(nn.Module):
    """One layer: convolution to A, product basis to B, element-wise skip. (N', in) → (N', out)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_a: o3.Irreps,
                 irreps_out: o3.Irreps, n_rbf: int, radial_hidden: int, correlation: int,
                 n_elements: int):
        super().__init__()
        self.linear_up = o3.Linear(irreps_in, irreps_in)
        irreps_mid, instructions = convolution_paths(irreps_in, irreps_sh, irreps_a)
        self.convolution = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions,
                                            internal_weights=False, shared_weights=False)
        self.radial = nn.Sequential(nn.Linear(n_rbf, radial_hidden), nn.SiLU(),
                                    nn.Linear(radial_hidden, radial_hidden), nn.SiLU(),
                                    nn.Linear(radial_hidden, self.convolution.weight_numel))
        self.linear_a = o3.Linear(irreps_mid, irreps_a)
        self.product = ProductBasis(irreps_a, irreps_out, correlation, n_elements)
        self.skip = ElementLinear(irreps_in, irreps_out, n_elements)

    def forward(self, h, sh, radial_basis, fc, centre, neighbour, species, mean_neighbours):
        weights = self.radial(radial_basis) * fc[:, None]  # (E, numel), 0 at r_c
        messages = self.convolution(self.linear_up(h).index_select(0, neighbour), sh,
                                    weights)  # (E, mid)
        summed = messages.new_zeros(h.shape[0], messages.shape[1]).index_add(0, centre, messages)
        a = self.linear_a(summed / mean_neighbours)
        return self.product(a, species) + self.skip(h, species)


class Equivariant(MessagePassingModel):
    """MACE-style equivariant message passing on e3nn; returns per-atom energies (eV).

    Args:
        elements: atomic numbers the model covers.
        cutoff: neighbour cutoff r_c, Å.
        n_features: channels C per irrep.
        n_interactions: layers T (receptive field T · r_c).
        n_rbf: Bessel functions K per distance.
        cutoff_function: "cosine" or "polynomial".
        l_max: highest order of the spherical harmonics and of the messages A.
        hidden_l: highest order kept in the features passed between layers (0: scalars only,
            as MACE with max_L = 0; 1: scalars and vectors).
        correlation: ν, the highest power of A in the product basis (body order ν + 1 per layer).
        radial_hidden: width of the radial networks.
    """

    kind = "equivariant"

    def __init__(self, elements, cutoff: float, n_features: int = 32, n_interactions: int = 2,
                 n_rbf: int = 8, cutoff_function: str = "polynomial", baseline: str = "linear",
                 l_max: int = 3, hidden_l: int = 1, correlation: int = 3,
                 radial_hidden: int = 64):
        super().__init__(elements, cutoff, n_features, n_interactions, n_rbf, cutoff_function,
                         baseline=baseline)
        if not (0 <= hidden_l <= l_max) or correlation < 1 or radial_hidden < 1:
            raise ValueError("need 0 <= hidden_l <= l_max, correlation >= 1, radial_hidden >= 1")
        self.l_max, self.hidden_l = int(l_max), int(hidden_l)
        self.correlation, self.radial_hidden = int(correlation), int(radial_hidden)
        n_el, channels = len(self._elements), self.n_features
        self.register_buffer("mean_neighbours", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("bessel_k", torch.arange(1, self.n_rbf + 1, dtype=torch.float64)
                             * math.pi / self._cutoff, persistent=False)
        self.spherical_harmonics = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(self.l_max), normalize=True, normalization="component")
        irreps_a = natural_irreps(channels, self.l_max)
        irreps = natural_irreps(channels, 0)
        self.interactions = nn.ModuleList()
        self.readouts = nn.ModuleList()
        self.feature_irreps = []
        for t in range(self.n_interactions):
            last = t == self.n_interactions - 1
            irreps_out = natural_irreps(channels, 0 if last else self.hidden_l)
            self.interactions.append(EquivariantInteraction(
                irreps, self.spherical_harmonics.irreps_out, irreps_a, irreps_out, self.n_rbf,
                self.radial_hidden, self.correlation, n_el))
            self.readouts.append(nn.Sequential(nn.Linear(channels, 16), nn.SiLU(),
                                               nn.Linear(16, 1)) if last
                                 else nn.Linear(channels, 1))
            self.feature_irreps.append(irreps_out)
            irreps = irreps_out

    def config(self) -> dict:
        return {**super().config(), "l_max": self.l_max, "hidden_l": self.hidden_l,
                "correlation": self.correlation, "radial_hidden": self.radial_hidden}

    def __deepcopy__(self, memo) -> "Equivariant":
        """A fresh model with this one's weights. copy.deepcopy of e3nn's compiled tensor
        products adds constant buffers the original lacks (e3nn 0.6), which breaks the
        training's weight average (AveragedModel copies the model) and the saved file's keys."""
        parameter = next(self.parameters())
        clone = type(self)(**self.config()).to(device=parameter.device, dtype=parameter.dtype)
        clone.load_state_dict(self.state_dict())
        clone.train(self.training)
        memo[id(self)] = clone
        return clone

    @torch.no_grad()
    def set_statistics(self, energy_scale: float, coordination_energy: torch.Tensor | None = None,
                       mean_neighbours: float | None = None) -> None:
        """As for every message-passing model, plus n̄, the mean neighbour count per atom."""
        super().set_statistics(energy_scale, coordination_energy)
        if mean_neighbours is not None:
            self.mean_neighbours.fill_(max(float(mean_neighbours), 1.0))

    def features(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features after each layer, [(N + n_el, irreps_t.dim)] in e3nn layout (atoms, then
        ghosts; irreps in ``self.feature_irreps``), and the edge cutoff values f_c (E,)."""
        species = self.species_index[batch[keys.NUMBERS]]  # (N,)
        centre, neighbour = batch[keys.EDGE_INDEX]
        vectors = edge_vectors(batch)  # (E, 3) Å, i → j
        r = vectors.norm(dim=-1)  # (E,)
        fc = self.cutoff_values(r)
        bessel = math.sqrt(2.0 / self._cutoff) * torch.sin(self.bessel_k.to(r.dtype) * r[:, None]) \
            / r[:, None]  # (E, K) 1/Å
        sh = self.spherical_harmonics(vectors)  # (E, (l_max + 1)²)
        all_species = torch.cat([species, torch.arange(len(self._elements),
                                                       device=species.device)])
        h = self.initial_features(species)  # (N + n_el, C): atoms, then ghosts without edges
        norm = self.mean_neighbours.to(r.dtype)
        layers = []
        for interaction in self.interactions:
            h = interaction(h, sh, bessel, fc, centre, neighbour, all_species, norm)
            layers.append(h)
        return layers, fc

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = self.species_index[batch[keys.NUMBERS]]  # (N,)
        layers, fc = self.features(batch)
        out = sum(readout(h[:, :self.n_features]).squeeze(1)  # scalars come first
                  for h, readout in zip(layers, self.readouts))
        coordination = baseline_coordination(
            fc.new_zeros(species.shape[0]).index_add(0, batch[keys.EDGE_INDEX][0], fc),
            self.baseline)
        return {keys.ATOMIC_ENERGY: self.energy_from_readout(out, species, coordination)}
