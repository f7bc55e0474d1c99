/* LAMMPS' plugin interface (its src/PLUGIN/lammpsplugin.h, a C ABI that the installed headers
   lack) and one helper that registers a pair style with it. */

#ifndef MLPOT_PLUGIN_ABI_H
#define MLPOT_PLUGIN_ABI_H

#include "lammps.h"

namespace LAMMPS_NS {
class Pair;
}

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

// register pair style `name`, made by `create`, with the LAMMPS that loads the plugin
inline void register_pair_style(void *lmp, void *handle, void *regfunc, const char *name,
                                const char *info, const char *author,
                                LAMMPS_NS::Pair *(*create)(LAMMPS_NS::LAMMPS *))
{
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;    // built against it
  plugin.style = "pair";
  plugin.name = name;
  plugin.info = info;
  plugin.author = author;
  plugin.creator.v1 = (lammpsplugin_factory1 *) create;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}

#endif
