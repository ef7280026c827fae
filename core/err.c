/* core/err.c: the thread-local error slot and logging. Every failing function sets
 * a code and a message here; the edges (CLI, HTTP) read it. */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local int err_code;
static _Thread_local char err_msg[1024];

int core_err_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_code = code;
    return code;
}

int core_err_wrap(const char *fmt, ...)
{
    char prefix[512], old[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    size_t pl = strlen(prefix);
    memcpy(err_msg, prefix, pl);
    size_t room = sizeof err_msg - pl - 1;
    size_t ol = strnlen(old, room);
    memcpy(err_msg + pl, old, ol);
    err_msg[pl + ol] = 0;
    return err_code;
}

const char *core_err_last(void)
{
    return err_msg[0] ? err_msg : "unknown error";
}
int core_err_code(void)
{
    return err_code;
}
void core_err_clear(void)
{
    err_code = 0;
    err_msg[0] = 0;
}

const char *core_err_name(int code)
{
    switch (code) {
    case MLV_OK: return "OK";
    case MLV_EINVAL: return "EINVAL";
    case MLV_ENOTFOUND: return "ENOTFOUND";
    case MLV_EEXISTS: return "EEXISTS";
    case MLV_EAUTH: return "EAUTH";
    case MLV_EFORBIDDEN: return "EFORBIDDEN";
    case MLV_EINTEGRITY: return "EINTEGRITY";
    case MLV_EIO: return "EIO";
    case MLV_ENOMEM: return "ENOMEM";
    case MLV_EGATE: return "EGATE";
    case MLV_ECRYPTO: return "ECRYPTO";
    case MLV_EDB: return "EDB";
    case MLV_EBUSY: return "EBUSY";
    case MLV_EUNSUPPORTED: return "EUNSUPPORTED";
    case MLV_ELIMIT: return "ELIMIT";
    default: return "EUNKNOWN";
    }
}

int core_err_from_name(const char *name)
{
    for (int c = MLV_OK; c >= MLV_ELIMIT; c--)
        if (name && !strcmp(name, core_err_name(c))) return c;
    return MLV_EIO;
}

static int log_level(void)
{
    static _Thread_local int cached = -1;
    if (cached < 0) {
        const char *e = getenv("MLVAULT_LOG");
        cached = CORE_LOG_WARN;
        if (e) {
            if (!strcmp(e, "error"))
                cached = CORE_LOG_ERROR;
            else if (!strcmp(e, "info"))
                cached = CORE_LOG_INFO;
            else if (!strcmp(e, "debug"))
                cached = CORE_LOG_DEBUG;
        }
    }
    return cached;
}

void core_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level()) return;
    char t[21];
    core_time_iso(t);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s mlvault %s: ", t, names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
