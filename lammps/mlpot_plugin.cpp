/* Registers pair_style mlpot with LAMMPS' `plugin load`. */

#include "pair_mlpot.h"
#include "plugin_abi.h"

using namespace LAMMPS_NS;

static Pair *create_pair_mlpot(LAMMPS *lmp)
{
  return new PairMlpot(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  register_pair_style(lmp, handle, regfunc, "mlpot",
                      "mlpot machine-learned potential (AOTInductor program)", "mlpot",
                      &create_pair_mlpot);
}
