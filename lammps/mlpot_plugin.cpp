/* Registers pair_style mlpot with LAMMPS' `plugin load`. */

#include "lammps.h"
#include "pair_mlpot.h"

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

static Pair *create_pair_mlpot(LAMMPS *lmp)
{
  return new PairMlpot(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;    // built against this LAMMPS
  plugin.style = "pair";
  plugin.name = "mlpot";
  plugin.info = "mlpot machine-learned potential (AOTInductor program)";
  plugin.author = "mlpot";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair_mlpot;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
