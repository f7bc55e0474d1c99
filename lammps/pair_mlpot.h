/* pair_style mlpot: an mlpot potential (strictly local: bpnn, linear) in LAMMPS.

   The model is a program that `mlpot export MODEL OUT.pt2 --lammps` compiled with
   AOTInductor. Each MPI rank hands it the edges of its own atoms within the cutoff, ghost
   neighbours included, as vectors r_ij = x_j - x_i (Å), and gets every atom's energy (eV)
   and the derivative of their sum by each edge vector (eV/Å). Forces go to local and ghost
   atoms (newton_pair on: LAMMPS sums the ghosts' onto their owners); the virial is
   -Σ_e r_e ⊗ ∂E/∂r_e, and each edge's share goes half to either end for per-atom virials.

   Units metal (eV, Å). Usage:
       plugin load /path/to/mlpotplugin.so
       pair_style mlpot model.pt2
       pair_coeff * * H O          # element of each LAMMPS atom type
*/

#ifndef LMP_PAIR_MLPOT_H
#define LMP_PAIR_MLPOT_H

#include "pair.h"

#include <memory>
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

 protected:
  void allocate();
  void load_model(const std::string &path);

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> program;
  std::string model_path;
  double cutoff = 0.0;            // neighbour cutoff, Å
  double angular_cutoff = -1.0;   // triplets of edges shorter than this, Å (< 0: none)
  bool float64 = true;            // the program's dtype
  std::vector<int> model_elements;   // atomic numbers the model covers
  std::vector<long> type_number;     // atomic number of each LAMMPS type (index 1..ntypes)
};

}    // namespace LAMMPS_NS

#endif
