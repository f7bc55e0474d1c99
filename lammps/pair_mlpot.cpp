/* pair_style mlpot: see pair_mlpot.h. */

#include "pair_mlpot.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>

using namespace LAMMPS_NS;

namespace {

const char *const SYMBOLS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
const int N_SYMBOLS = sizeof(SYMBOLS) / sizeof(SYMBOLS[0]);

int atomic_number(const std::string &symbol)
{
  for (int z = 1; z < N_SYMBOLS; ++z)
    if (symbol == SYMBOLS[z]) return z;
  return -1;
}

}    // namespace

PairMlpot::PairMlpot(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the edges (compute())
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairMlpot::~PairMlpot()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
  memory->destroy(member_forces);
  memory->destroy(forces_std);
  delete[] pvector;
}

void PairMlpot::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

void PairMlpot::settings(int narg, char **arg)
{
  if (narg != 1) error->all(FLERR, "Illegal pair_style mlpot command: pair_style mlpot MODEL.pt2");
  load_model(arg[0]);
}

void PairMlpot::load_model(const std::string &path)
{
  model_path = path;
  if (!std::ifstream(path).good()) error->all(FLERR, "pair_style mlpot: cannot read {}", path);
  // one thread per MPI rank unless the user says otherwise (the MPI convention; the compiled
  // program's OpenMP reads this when it is loaded)
  if (!std::getenv("OMP_NUM_THREADS")) {
    setenv("OMP_NUM_THREADS", "1", 0);
    at::set_num_threads(1);
  }
  std::unordered_map<std::string, std::string> metadata;
  try {
    metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlpot: {} is not an AOTInductor package ({})", path,
               utils::split_lines(e.what())[0]);
  }
  if (metadata.find("mlpot.json") == metadata.end())
    error->all(FLERR, "pair_style mlpot: {} holds no mlpot.json (not an mlpot export)", path);
  json info;
  try {
    info = json::parse(metadata["mlpot.json"]);
    if (info.value("program", "") != "lammps")
      error->all(FLERR,
                 "pair_style mlpot: {} is not a LAMMPS program; export it with "
                 "'mlpot export MODEL OUT.pt2 --lammps'",
                 path);
    cutoff = info.at("cutoff").get<double>();
    angular_cutoff = info.at("angular_cutoff").is_null()
        ? -1.0 : info.at("angular_cutoff").get<double>();
    float64 = info.at("dtype").get<std::string>() == "float64";
    model_elements = info.at("elements").get<std::vector<int>>();
    n_members = info.value("members", 1);
    for (auto &[name, target] : {std::pair<std::string, Calibration *>{"energy", &energy_calibration},
                                 {"forces", &forces_calibration}}) {
      if (!info.contains("sigma_calibration") || !info["sigma_calibration"].contains(name))
        continue;
      const json &c = info["sigma_calibration"][name];
      target->scale = c.value("scale", 1.0);
      target->exponent = c.value("exponent", 1.0);
      target->reference = c.value("reference", 1.0);
      target->floor = c.value("floor", 0.0);
      target->per_atom = c.value("per_atom", false);
      target->atom_weight = c.value("atom_weight", 1.0);
    }
  } catch (json::exception &e) {
    error->all(FLERR, "pair_style mlpot: {}: mlpot.json: {}", path, e.what());
  }
  if (n_members < 1) error->all(FLERR, "pair_style mlpot: {}: mlpot.json: members < 1", path);
  comm_reverse = 3 * n_members;
  if (n_members > 1) {
    nextra = 2;
    delete[] pvector;
    pvector = new double[nextra]{0.0, 0.0};
  }
  if (!(cutoff > 0.0) || model_elements.empty())
    error->all(FLERR, "pair_style mlpot: {}: mlpot.json needs a cutoff > 0 and elements", path);
  for (int z : model_elements)
    if (z < 1 || z >= N_SYMBOLS)
      error->all(FLERR, "pair_style mlpot: {}: mlpot.json: element {} is no atomic number", path, z);
  try {
    program = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", true);
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlpot: cannot load {} ({})", path,
               utils::split_lines(e.what())[0]);
  }
  if (comm->me == 0) {
    if (n_members > 1)
      utils::logmesg(lmp, "pair_style mlpot: an ensemble of {} members (their mean drives the "
                     "dynamics; per-atom forces_std via fix pair, [max σ_F, σ_E] via compute "
                     "pair)\n", n_members);
    std::string elements;
    for (int z : model_elements) elements += std::string(" ") + SYMBOLS[z];
    utils::logmesg(lmp, "pair_style mlpot: {} (elements{}; cutoff {} Å{}; {})\n", path,
                   elements, cutoff,
                   angular_cutoff > 0 ? fmt::format(", triplets within {} Å", angular_cutoff)
                                      : std::string(),
                   float64 ? "float64" : "float32");
  }
}

void PairMlpot::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR, "pair_coeff * * needs one element per atom type ({} types)", ntypes);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_style mlpot takes pair_coeff * * ELEMENT...");
  type_number.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    int z = atomic_number(arg[1 + t]);
    if (z < 0) error->all(FLERR, "pair_coeff: {} is not a chemical symbol", arg[1 + t]);
    if (std::find(model_elements.begin(), model_elements.end(), z) == model_elements.end())
      error->all(FLERR, "pair_coeff: the model {} has no element {} (type {})", model_path,
                 arg[1 + t], t);
    type_number[t] = z;
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairMlpot::init_style()
{
  if (!program) error->all(FLERR, "pair_style mlpot: no model loaded");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style mlpot requires newton pair on");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairMlpot::init_one(int, int)
{
  return cutoff;
}

void PairMlpot::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double cutoff_sq = cutoff * cutoff;
  const double angular_sq = angular_cutoff * angular_cutoff;

  // atoms the program sees: the local ones (same index), then the ghosts that are neighbours
  std::vector<int> index(nall, -1), owner;
  std::vector<int64_t> numbers;
  owner.reserve(nall);
  numbers.reserve(nall);
  for (int i = 0; i < nlocal; ++i) {
    index[i] = i;
    owner.push_back(i);
    numbers.push_back(type_number[type[i]]);
  }
  std::vector<double> vectors;
  std::vector<int64_t> centers, neighbors, triplet_a, triplet_b;
  std::vector<int64_t> short_edges;
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    short_edges.clear();
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutoff_sq) continue;
      if (index[j] < 0) {
        index[j] = owner.size();
        owner.push_back(j);
        numbers.push_back(type_number[type[j]]);
      }
      if (angular_cutoff > 0 && rsq < angular_sq) short_edges.push_back(centers.size());
      centers.push_back(i);
      neighbors.push_back(index[j]);
      vectors.insert(vectors.end(), {dx, dy, dz});
    }
    for (size_t a = 0; a < short_edges.size(); ++a)
      for (size_t b = a + 1; b < short_edges.size(); ++b) {
        triplet_a.push_back(short_edges[a]);
        triplet_b.push_back(short_edges[b]);
      }
  }
  const int64_t n_edges = centers.size();

  // two dummy atoms with two edges beyond the cutoffs and two triplets of them: every size the
  // program sees is then >= 2 (it was traced with sizes >= 2); they add exactly nothing
  const int64_t dummy = numbers.size();
  numbers.insert(numbers.end(), 2, model_elements[0]);
  const double far = 2.0 * cutoff + 1.0;
  vectors.insert(vectors.end(), {far, 0.0, 0.0, 0.0, far, 0.0});
  centers.insert(centers.end(), 2, dummy);
  neighbors.insert(neighbors.end(), 2, dummy + 1);
  triplet_a.insert(triplet_a.end(), 2, n_edges);
  triplet_b.insert(triplet_b.end(), 2, n_edges + 1);
  // the program's edge_index in its own atom indices: centres are local atoms, whose indices
  // are LAMMPS' (index[i] = i), and the dummy; neighbours were mapped as they came
  std::vector<int64_t> edge_index(centers);
  edge_index.insert(edge_index.end(), neighbors.begin(), neighbors.end());

  const auto dtype = float64 ? at::kDouble : at::kFloat;
  const auto int64 = at::TensorOptions().dtype(at::kLong);
  const int64_t n_all_edges = centers.size();
  std::vector<at::Tensor> inputs = {
      at::from_blob(vectors.data(), {n_all_edges, 3}, at::kDouble).to(dtype),
      at::from_blob(numbers.data(), {(int64_t) numbers.size()}, int64),
      at::from_blob(edge_index.data(), {2, n_all_edges}, int64)};
  std::vector<int64_t> triplets;
  if (angular_cutoff > 0) {
    triplets = triplet_a;
    triplets.insert(triplets.end(), triplet_b.begin(), triplet_b.end());
    inputs.push_back(at::from_blob(triplets.data(), {2, (int64_t) triplet_a.size()}, int64));
  }
  std::vector<at::Tensor> outputs;
  try {
    outputs = program->run(inputs);
  } catch (std::exception &e) {
    error->one(FLERR, "pair_style mlpot: the program failed: {}", utils::split_lines(e.what())[0]);
  }
  // (M, N) energies and (M, E, 3) gradients; the dynamics follow the members' mean
  const at::Tensor energies = outputs[0].to(at::kDouble).contiguous();
  const at::Tensor gradients = outputs[1].to(at::kDouble).contiguous();
  const at::Tensor mean_energy = energies.mean(0);
  const at::Tensor mean_gradient = gradients.mean(0).contiguous();
  const double *energy = mean_energy.data_ptr<double>();
  const double *gradient = mean_gradient.data_ptr<double>();

  for (int i = 0; i < nlocal; ++i) {
    if (eflag_global) eng_vdwl += energy[i];
    if (eflag_atom) eatom[i] += energy[i];
  }
  for (int64_t e = 0; e < n_edges; ++e) {
    const int i = centers[e], j = owner[neighbors[e]];
    const double *g = gradient + 3 * e, *r = vectors.data() + 3 * e;
    for (int k = 0; k < 3; ++k) {
      f[i][k] += g[k];    // r_e = x_j - x_i: F_i = +dE/dr_e, F_j = -dE/dr_e
      f[j][k] -= g[k];
    }
    if (vflag_either) {
      // W = Σ_atoms x ⊗ F = -Σ_e r_e ⊗ dE/dr_e (symmetrised per edge; the sum is symmetric)
      const double v[6] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2],
                           -0.5 * (r[0] * g[1] + r[1] * g[0]),
                           -0.5 * (r[0] * g[2] + r[2] * g[0]),
                           -0.5 * (r[1] * g[2] + r[2] * g[1])};
      if (vflag_global)
        for (int k = 0; k < 6; ++k) virial[k] += v[k];
      if (vflag_atom)
        for (int k = 0; k < 6; ++k) {
          vatom[i][k] += 0.5 * v[k];
          vatom[j][k] += 0.5 * v[k];
        }
    }
  }
  if (n_members > 1) {
    std::vector<int> neighbor_atoms(n_edges);
    for (int64_t e = 0; e < n_edges; ++e) neighbor_atoms[e] = owner[neighbors[e]];
    gradient_stride = gradients.size(1);
    member_spread(n_edges, centers, neighbor_atoms, gradients.data_ptr<double>(),
                  energies.data_ptr<double>(), numbers.size());
  }
}

double PairMlpot::Calibration::apply(double sigma) const
{
  sigma = std::max(sigma, floor);
  if (exponent != 1.0) sigma = reference * std::pow(sigma / reference, exponent);
  return scale * sigma;
}

/* The members' spread: each member's forces on local and ghost atoms, the ghosts' summed onto
   their owners (reverse communication), then each local atom's calibrated |σ_F| and the
   energy σ over all ranks, as Ensemble does in Python (population σ over members). */
void PairMlpot::member_spread(int n_edges, const std::vector<int64_t> &centers,
                             const std::vector<int> &neighbor_atoms, const double *gradient,
                             const double *energy, int n_atoms)
{
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost, M = n_members;
  if (atom->nmax > nmax) {
    nmax = atom->nmax;
    memory->destroy(member_forces);
    memory->destroy(forces_std);
    memory->create(member_forces, nmax, 3 * M, "pair:member_forces");
    memory->create(forces_std, nmax, "pair:forces_std");
  }
  for (int i = 0; i < nall; ++i)
    for (int k = 0; k < 3 * M; ++k) member_forces[i][k] = 0.0;
  for (int m = 0; m < M; ++m)
    for (int e = 0; e < n_edges; ++e) {
      const double *g = gradient + 3 * ((int64_t) m * gradient_stride + e);
      for (int k = 0; k < 3; ++k) {
        member_forces[centers[e]][3 * m + k] += g[k];
        member_forces[neighbor_atoms[e]][3 * m + k] -= g[k];
      }
    }
  comm->reverse_comm(this);

  // raw σ per component, then per atom (RMS over x, y, z) where the calibration says so
  double sum_sq = 0.0;
  std::vector<double> sigma(3 * nlocal);
  for (int i = 0; i < nlocal; ++i) {
    double atom_sq = 0.0;
    for (int k = 0; k < 3; ++k) {
      double mean = 0.0, var = 0.0;
      for (int m = 0; m < M; ++m) mean += member_forces[i][3 * m + k] / M;
      for (int m = 0; m < M; ++m) var += std::pow(member_forces[i][3 * m + k] - mean, 2) / M;
      sigma[3 * i + k] = std::sqrt(var);
      atom_sq += var / 3.0;
    }
    sum_sq += atom_sq;
  }
  const Calibration &cf = forces_calibration;
  double pooled_mean = 0.0;
  if (cf.per_atom && cf.atom_weight < 1.0) {
    double local[2] = {sum_sq, (double) nlocal}, total[2];
    MPI_Allreduce(local, total, 2, MPI_DOUBLE, MPI_SUM, world);
    pooled_mean = total[1] > 0 ? total[0] / total[1] : 0.0;
  }
  double largest = 0.0;
  for (int i = 0; i < nlocal; ++i) {
    double norm_sq = 0.0;
    if (cf.per_atom) {
      double var = 0.0;
      for (int k = 0; k < 3; ++k) var += sigma[3 * i + k] * sigma[3 * i + k] / 3.0;
      if (cf.atom_weight < 1.0) var = cf.atom_weight * var + (1.0 - cf.atom_weight) * pooled_mean;
      norm_sq = 3.0 * std::pow(cf.apply(std::sqrt(var)), 2);
    } else {
      for (int k = 0; k < 3; ++k) norm_sq += std::pow(cf.apply(sigma[3 * i + k]), 2);
    }
    forces_std[i] = std::sqrt(norm_sq);
    largest = std::max(largest, forces_std[i]);
  }

  // energy σ: each member's total over all ranks
  std::vector<double> local_energy(M, 0.0), total_energy(M);
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < nlocal; ++i) local_energy[m] += energy[(int64_t) m * n_atoms + i];
  MPI_Allreduce(local_energy.data(), total_energy.data(), M, MPI_DOUBLE, MPI_SUM, world);
  double mean = 0.0, var = 0.0;
  for (int m = 0; m < M; ++m) mean += total_energy[m] / M;
  for (int m = 0; m < M; ++m) var += std::pow(total_energy[m] - mean, 2) / M;
  double global_largest;
  MPI_Allreduce(&largest, &global_largest, 1, MPI_DOUBLE, MPI_MAX, world);
  // compute pair sums pvector over ranks: rank 0 holds the global values, the others zeros
  pvector[0] = comm->me == 0 ? global_largest : 0.0;
  pvector[1] = comm->me == 0 ? energy_calibration.apply(std::sqrt(var)) : 0.0;
}

int PairMlpot::pack_reverse_comm(int n, int first, double *buf)
{
  int p = 0;
  for (int i = first; i < first + n; ++i)
    for (int k = 0; k < 3 * n_members; ++k) buf[p++] = member_forces[i][k];
  return p;
}

void PairMlpot::unpack_reverse_comm(int n, int *list, double *buf)
{
  int p = 0;
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < 3 * n_members; ++k) member_forces[list[i]][k] += buf[p++];
}

void *PairMlpot::extract_peratom(const char *name, int &ncol)
{
  ncol = 0;
  if (strcmp(name, "forces_std") == 0) {
    if (n_members < 2) error->all(FLERR, "pair_style mlpot: forces_std needs an exported ensemble");
    return (void *) forces_std;
  }
  return nullptr;
}
