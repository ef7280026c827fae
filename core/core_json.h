/* core JSON helpers (jansson). Kept apart from core.h so that modules that do not
 * speak JSON need not see jansson. */
#ifndef MLV_CORE_JSON_H
#define MLV_CORE_JSON_H

#include <jansson.h>

#include "core/core.h"

/* json_dumps that never silently drops a key when an allocation fails: returns the
 * whole document (caller frees) or NULL. */
char *core_json_dumps(const json_t *j, size_t flags);

#endif
