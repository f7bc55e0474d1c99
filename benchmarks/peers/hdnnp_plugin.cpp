/* Registers n2p2's `pair_style hdnnp` (PairHDNNP, compiled from LAMMPS' src/ML-HDNNP) with
   LAMMPS' `plugin load`, for LAMMPS builds without the ML-HDNNP package. Built by
   benchmarks/peers/setup_n2p2.sh. */

#include "pair_hdnnp.h"
#include "plugin_abi.h"    // lammps/

using namespace LAMMPS_NS;

static Pair *create_pair_hdnnp(LAMMPS *lmp)
{
  return new PairHDNNP(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  register_pair_style(lmp, handle, regfunc, "hdnnp",
                      "n2p2 high-dimensional neural network potential (ML-HDNNP) as a plugin",
                      "Andreas Singraber (n2p2, pair_hdnnp); plugin wrapper: mlpot",
                      &create_pair_hdnnp);
}
