/* Registers n2p2's `pair_style hdnnp` (PairHDNNP, compiled from LAMMPS' src/ML-HDNNP) with
   LAMMPS' `plugin load`, for LAMMPS builds without the ML-HDNNP package. Built by
   benchmarks/peers/setup_n2p2.sh. */

#include "lammps.h"
#include "pair_hdnnp.h"

using namespace LAMMPS_NS;

// LAMMPS' plugin interface (src/PLUGIN/lammpsplugin.h, a C ABI; not among the installed headers)
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

static Pair *create_pair_hdnnp(LAMMPS *lmp)
{
  return new PairHDNNP(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;    // built against this LAMMPS
  plugin.style = "pair";
  plugin.name = "hdnnp";
  plugin.info = "n2p2 high-dimensional neural network potential (ML-HDNNP) as a plugin";
  plugin.author = "Andreas Singraber (n2p2, pair_hdnnp); plugin wrapper: mlpot";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair_hdnnp;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
