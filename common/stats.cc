// stats.cc — storage for the counters listed in stats.h.
#include "common/stats.h"

namespace ferry {

constinit Counters g_counters;

}  // namespace ferry
