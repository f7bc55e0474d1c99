/* pair_style mlpot: an mlpot potential (strictly local: bpnn, linear) in LAMMPS.

   The model is a program that `mlpot export MODEL OUT.pt2 --lammps` compiled with
   AOTInductor. Each MPI rank hands it the edges of its own atoms within the cutoff, ghost
   neighbours included, as vectors r_ij = x_j - x_i (Å), and gets every atom's energy (eV)
   and the derivative of their sum by each edge vector (eV/Å). Forces go to local and ghost
   atoms (newton_pair on: LAMMPS sums the ghosts' onto their owners); the virial is
   -Σ_e r_e ⊗ ∂E/∂r_e, and each edge's share goes half to either end for per-atom virials.

   An exported ensemble runs its members together: the dynamics follow their mean, and their
   spread gives each atom's force σ (eV/Å, |σ_F,i| over x, y, z, calibrated as the ensemble's)
   as the per-atom quantity "forces_std" (`fix ID all pair N mlpot forces_std 0`) and the
   global vector of `compute ID all pair mlpot`: [max_i |σ_F,i| (eV/Å), σ_E (eV)].

   Units metal (eV, Å). Usage:
       plugin load /path/to/mlpotplugin.so
       pair_style mlpot model.pt2
       pair_coeff * * H O          # element of each LAMMPS atom type
*/

#ifndef LMP_PAIR_MLPOT_H
#define LMP_PAIR_MLPOT_H

#include "pair.h"

#include <memory>
#include <cstdint>
#include <string>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace LAMMPS_NS {

class PairMlpot : public Pair {
 public:
  PairMlpot(class LAMMPS *);
  ~PairMlpot() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  void *extract_peratom(const char *, int &) override;

  // σ' = scale · reference · (max(σ, floor) / reference)^exponent; per_atom (forces): one σ
  // per atom, the RMS over x, y, z, pooled with the system's mean σ² by atom_weight first
  // (mlpot.uncertainty.calibration.SigmaCalibration)
  struct Calibration {
    double scale = 1.0, exponent = 1.0, reference = 1.0, floor = 0.0, atom_weight = 1.0;
    bool per_atom = false;
    double apply(double sigma) const;
  };

 protected:
  void allocate();
  void load_model(const std::string &path);
  void member_spread(int n_edges, const std::vector<int64_t> &centers,
                     const std::vector<int> &neighbor_atoms, const double *gradient,
                     const double *energy, int n_atoms);

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> program;
  std::string model_path;
  double cutoff = 0.0;            // neighbour cutoff, Å
  double angular_cutoff = -1.0;   // triplets of edges shorter than this, Å (< 0: none)
  bool float64 = true;            // the program's dtype
  std::vector<int> model_elements;   // atomic numbers the model covers
  std::vector<long> type_number;     // atomic number of each LAMMPS type (index 1..ntypes)
  int n_members = 1;                 // ensemble members in the program
  Calibration energy_calibration, forces_calibration;
  int nmax = 0;                      // allocated rows of the per-atom arrays
  double **member_forces = nullptr;  // (nmax, 3 M) each member's forces, eV/Å
  double *forces_std = nullptr;      // (nmax) |σ_F| of each local atom, eV/Å
  int64_t gradient_stride = 0;       // edges per member in the program's gradients
};

}    // namespace LAMMPS_NS

#endif
