/* registry/config.c: HOME/config.ini (inih), the home's settings — the server's listen
 * address, TLS files and limits, the number of job workers, the gate's default threshold.
 * Command-line options override them. Unknown sections or keys and bad values are
 * errors that name the line, so a typo never silently falls back to a default. */
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

typedef struct parse_state {
    reg_config *c;
    char why[300]; /* the first bad entry (inih returns its line) */
} parse_state;

static bool num(const char *v, double lo, double hi, bool integer, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= lo && d <= hi) || (integer && d != floor(d)))
        return false;
    *out = d;
    return true;
}

static int on_entry(void *user, const char *section, const char *key, const char *value)
{
    parse_state *ps = user;
    reg_config *c = ps->c;
    double d;
    bool ok = true;
    if (!strcmp(section, "server") && !strcmp(key, "listen"))
        ok = snprintf(c->listen, sizeof c->listen, "%s", value) < (int)sizeof c->listen;
    else if (!strcmp(section, "server") && !strcmp(key, "tls_cert"))
        ok = snprintf(c->tls_cert, sizeof c->tls_cert, "%s", value) < (int)sizeof c->tls_cert;
    else if (!strcmp(section, "server") && !strcmp(key, "tls_key"))
        ok = snprintf(c->tls_key, sizeof c->tls_key, "%s", value) < (int)sizeof c->tls_key;
    else if (!strcmp(section, "server") && !strcmp(key, "max_uploads"))
        ok = num(value, 1, 1024, true, &d) && (c->max_uploads = (int)d, true);
    else if (!strcmp(section, "jobs") && !strcmp(key, "workers"))
        ok = num(value, 1, 256, true, &d) && (c->job_workers = (int)d, true);
    else if (!strcmp(section, "gate") && !strcmp(key, "threshold"))
        ok = num(value, 0, 100, false, &c->gate_threshold);
    else {
        if (!ps->why[0]) snprintf(ps->why, sizeof ps->why, "unknown setting [%s] %s", section, key);
        return 0;
    }
    if (!ok && !ps->why[0])
        snprintf(ps->why, sizeof ps->why, "[%s] %s = %s: not a valid value", section, key, value);
    return ok;
}

int reg_config_read(const char *home, reg_config *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->listen, sizeof out->listen, "127.0.0.1:8080");
    out->job_workers = 1;
    out->max_uploads = 8;
    out->gate_threshold = 2.0;
    char *path = core_path_join(home, "config.ini");
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        free(path);
        return e == ENOENT ? 0 : core_err_set(MLV_EIO, "%s/config.ini: %s", home, strerror(e));
    }
    parse_state ps = {.c = out};
    int line = ini_parse_file(f, on_entry, &ps);
    fclose(f);
    free(path);
    if (line != 0)
        return core_err_set(MLV_EINVAL, "%s/config.ini line %d: %s", home, line,
                            ps.why[0] ? ps.why : "not a setting (key = value) or a [section]");
    return 0;
}
