/* core/json.c: JSON helpers over jansson shared by every module. */
#include "core/core_json.h"

/* jansson (2.14) ignores the result of writing an object key, so under memory pressure
 * json_dumps can return a document with a key missing. Here the text goes to our own
 * buffer, whose failure is sticky. */
static int dump_to_buf(const char *text, size_t n, void *data)
{
    core_buf *b = data;
    core_buf_append(b, text, n);
    return b->failed ? -1 : 0;
}

char *core_json_dumps(const json_t *j, size_t flags)
{
    core_buf b = {0};
    if (json_dump_callback(j, dump_to_buf, &b, flags) != 0 || b.failed) {
        core_buf_free(&b);
        return NULL;
    }
    return core_buf_take(&b);
}
