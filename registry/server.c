/* registry/server.c: `mlvault serve` — the CivetWeb server of the registry API
 * (docs/api.md): start and stop, one catalog connection per worker thread, the route
 * table and its dispatch, authentication and the role check of each route, the one
 * mapping from MLV_E* codes to HTTP statuses, request limits (body size, JSON depth,
 * path parameters), JSON replies, the access log and the audit of refused mutations.
 * The routes themselves live in api_artifacts.c, api_flow.c, api_nodes.c, uploads.c and
 * metrics.c; the web UI's files (/ and /ui/...) in web.c; with --serve-model, /v1/... and
 * /health go to the engine's OpenAI server (serve_model.c, engine/openai.c) once the token
 * is checked. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/serve_model.h"
#include "registry/server_internal.h"

#define ROUTE_PUBLIC (-1) /* no token */
#define ROUTE_ANY (-2)    /* any authenticated user, node included */
#define MAX_JSON_DEPTH 32

typedef struct route {
    const char *method;
    const char *pattern;
    srv_handler fn;
    int action; /* reg_action, ROUTE_PUBLIC or ROUTE_ANY */
} route;

#define V "/api/v1/models/{name}/versions/{v}"
static const route ROUTES[] = {
    {"GET", "/healthz", api_healthz, ROUTE_PUBLIC},
    {"GET", "/metrics", api_metrics, ROUTE_PUBLIC},
    {"GET", "/", api_web_index, ROUTE_PUBLIC},
    {"GET", "/ui/{asset}", api_web_file, ROUTE_PUBLIC}, /* web.c checks the path: 404 */
    {"GET", "/api/v1/whoami", api_whoami, ROUTE_ANY},
    {"GET", "/api/v1/users", api_users_list, REG_ACT_ADMIN},
    {"POST", "/api/v1/users", api_users_add, REG_ACT_ADMIN},
    {"POST", "/api/v1/users/{name}/disable", api_user_disable, REG_ACT_ADMIN},
    {"POST", "/api/v1/users/{name}/token", api_user_token, REG_ACT_ADMIN},
    {"GET", "/api/v1/registry/key", api_registry_key, REG_ACT_READ},
    {"GET", "/api/v1/models", api_models, REG_ACT_READ},
    {"GET", "/api/v1/models/{name}", api_model, REG_ACT_READ},
    {"GET", V, api_version, REG_ACT_PULL},
    {"GET", V "/lineage", api_lineage, REG_ACT_READ},
    {"GET", V "/manifest", api_manifest, REG_ACT_PULL},
    {"GET", V "/signature", api_signature, REG_ACT_PULL},
    {"GET", V "/evaluations", api_evaluations, REG_ACT_READ},
    {"POST", V "/verify", api_verify, REG_ACT_READ},
    {"GET", V "/files/{path}", api_download, REG_ACT_DOWNLOAD},
    {"GET", V "/keys", api_node_keys, REG_ACT_NODE},
    {"GET", V "/blobs/{path}", api_node_blob, REG_ACT_NODE},
    {"POST", "/api/v1/uploads", api_upload_open, REG_ACT_PUSH},
    {"GET", "/api/v1/uploads", api_upload_list, REG_ACT_PUSH},
    {"GET", "/api/v1/uploads/{upload}", api_upload_get, REG_ACT_PUSH},
    {"DELETE", "/api/v1/uploads/{upload}", api_upload_delete, REG_ACT_PUSH},
    {"PUT", "/api/v1/uploads/{upload}/files/{path}", api_upload_put, REG_ACT_PUSH},
    {"POST", "/api/v1/uploads/{upload}/commit", api_upload_commit, REG_ACT_PUSH},
    {"POST", "/api/v1/bundles", api_bundle_create, REG_ACT_PUSH},
    {"GET", "/api/v1/bundles/{bundle}", api_bundle_get, REG_ACT_PUSH},
    {"DELETE", "/api/v1/bundles/{bundle}", api_bundle_delete, REG_ACT_PUSH},
    {"POST", "/api/v1/jobs", api_jobs_submit, REG_ACT_JOB},
    {"GET", "/api/v1/jobs", api_jobs_list, REG_ACT_READ},
    {"GET", "/api/v1/jobs/{id}", api_job_get, REG_ACT_READ},
    {"GET", "/api/v1/jobs/{id}/log", api_job_log, REG_ACT_READ},
    {"POST", "/api/v1/jobs/{id}/cancel", api_job_cancel, REG_ACT_JOB},
    {"GET", "/api/v1/models/{name}/channels", api_channels, REG_ACT_READ},
    {"PUT", "/api/v1/models/{name}/channels/{channel}", api_channel_set, REG_ACT_CHANNEL},
    {"GET", "/api/v1/models/{name}/channels/{channel}", api_channel_release, REG_ACT_PULL},
    {"POST", "/api/v1/models/{name}/channels/{channel}/renew", api_channel_renew, REG_ACT_CHANNEL},
    {"POST", "/api/v1/promotions", api_promote, REG_ACT_PROMOTE},
    {"GET", "/api/v1/promotions", api_promotions, REG_ACT_READ},
    {"GET", "/api/v1/promotions/{id}", api_promotion, REG_ACT_READ},
    {"POST", "/api/v1/promotions/{id}/approve", api_approve, REG_ACT_APPROVE},
    {"POST", "/api/v1/promotions/{id}/reject", api_reject, REG_ACT_APPROVE},
    {"GET", "/api/v1/audit", api_audit, REG_ACT_AUDIT},
    {"GET", "/api/v1/audit/verify", api_audit_verify, REG_ACT_AUDIT},
    {"POST", "/api/v1/admin/fsck", api_fsck, REG_ACT_ADMIN},
    {"GET", "/api/v1/keys", api_keys_list, REG_ACT_READ},
    {"POST", "/api/v1/keys", api_key_trust, REG_ACT_ADMIN},
    {"GET", "/api/v1/keys/import", api_import_key, REG_ACT_READ},
    {"POST", "/api/v1/nodes", api_nodes_enroll, REG_ACT_ADMIN},
    {"GET", "/api/v1/nodes", api_nodes_list, REG_ACT_READ},
    {"PUT", "/api/v1/nodes/{node}/state", api_node_state, REG_ACT_NODE},
};
#undef V
#define N_ROUTES ((int)(sizeof ROUTES / sizeof ROUTES[0]))
_Static_assert(sizeof ROUTES / sizeof ROUTES[0] < SRV_MAX_ROUTES, "route table too large");

const char *srv_route_pattern(int route)
{
    return route >= 0 && route < N_ROUTES ? ROUTES[route].pattern : "unmatched";
}

int srv_route_count(void)
{
    return N_ROUTES;
}

/* ================================================================ statuses ==== */

int srv_status(const srv_req *q, int code)
{
    switch (code) {
    case MLV_OK: return 200;
    case MLV_EINVAL: return 400;
    case MLV_EAUTH: return 401;
    case MLV_EFORBIDDEN: return 403;
    case MLV_ENOTFOUND: return 404;
    case MLV_EEXISTS: return 409;
    case MLV_ELIMIT: return q && q->too_many ? 429 : 413;
    case MLV_EGATE:
    case MLV_EINTEGRITY: return 422;
    case MLV_EUNSUPPORTED: return 501;
    case MLV_EBUSY: return 503;
    default: return 500; /* EIO, EDB, ENOMEM, ECRYPTO */
    }
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 206: return "Partial Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 416: return "Range Not Satisfiable";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return status < 500 ? "Error" : "Internal Server Error";
    }
}

/* ================================================================= replies ==== */

int srv_reply_start(srv_req *q, int status, const char *ctype, uint64_t length,
                    const char *extra_headers)
{
    if (q->replied) return 0;
    q->replied = true;
    q->status = status;
    char len[24];
    snprintf(len, sizeof len, "%llu", (unsigned long long)length);
    mg_response_header_start(q->c, status);
    mg_response_header_add(q->c, "Content-Type", ctype, -1);
    mg_response_header_add(q->c, "Content-Length", len, -1);
    mg_response_header_add(q->c, "Cache-Control", "no-store", -1);
    mg_response_header_add(q->c, "X-Content-Type-Options", "nosniff", -1);
    if (extra_headers && *extra_headers) mg_response_header_add_lines(q->c, extra_headers);
    mg_response_header_send(q->c);
    return 0;
}

int srv_write(srv_req *q, const void *data, size_t n)
{
    if (q->head || n == 0) return 0;
    int w = mg_write(q->c, data, n);
    if (w <= 0 || (size_t)w != n) return core_err_set(MLV_EIO, "the client went away");
    q->sent += n;
    return 0;
}

int srv_reply_bytes(srv_req *q, int status, const char *ctype, const void *data, size_t n,
                    const char *extra_headers)
{
    srv_reply_start(q, status, ctype, n, extra_headers);
    srv_write(q, data, n);
    return 0;
}

int srv_reply_json(srv_req *q, int status, json_t *j)
{
    if (!j) return core_err_set(MLV_ENOMEM, "out of memory");
    char *text = core_json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");
    srv_reply_bytes(q, status, "application/json", text, strlen(text), NULL);
    free(text);
    return 0;
}

static void reply_error(srv_req *q, int status, int code, const char *message)
{
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", core_err_name(code), "message",
                          message && *message ? message : reason(status));
    if (e && q->err_extra) json_object_update(e, q->err_extra);
    char *text = e ? core_json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    const char *body =
        text ? text : "{\"error\":{\"code\":\"ENOMEM\",\"message\":\"out of memory\"}}";
    char extra[96] = "";
    if (status == 401)
        snprintf(extra, sizeof extra, "WWW-Authenticate: Bearer realm=\"mlvault\"\r\n");
    srv_reply_bytes(q, status, "application/json", body, strlen(body), extra);
    free(text);
}

/* ================================================================= parsing ==== */

static int json_depth(const json_t *j)
{
    int d = 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            int x = json_depth(v);
            if (x > d) d = x;
        }
        return d + 1;
    }
    if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v)
        {
            int x = json_depth(v);
            if (x > d) d = x;
        }
        return d + 1;
    }
    return 0;
}

int srv_read_json(srv_req *q, json_t **out)
{
    *out = NULL;
    long long len = q->ri->content_length;
    if (len > 0 && (uint64_t)len > q->s->max_body)
        return core_err_set(MLV_ELIMIT, "request body of %lld bytes is over the %llu-byte limit",
                            len, (unsigned long long)q->s->max_body);
    size_t cap = len >= 0 ? (size_t)len : (size_t)q->s->max_body + 1, got = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return core_err_set(MLV_ENOMEM, "out of memory");
    int n;
    while (got < cap && (n = mg_read(q->c, buf + got, cap - got)) > 0)
        got += (size_t)n;
    int rc = 0;
    json_error_t e;
    json_t *j = NULL;
    if (got > q->s->max_body) {
        rc = core_err_set(MLV_ELIMIT, "request body is over the %llu-byte limit",
                          (unsigned long long)q->s->max_body);
    } else if (len > 0 && got != (size_t)len) {
        rc = core_err_set(MLV_EINVAL, "request body ended after %zu of %lld bytes", got, len);
    } else if (got == 0) {
        j = json_object();
    } else if (!(j = json_loadb(buf, got, JSON_REJECT_DUPLICATES, &e))) {
        rc = core_err_set(MLV_EINVAL, "body is not valid JSON: %s (line %d)", e.text, e.line);
    } else if (json_depth(j) > MAX_JSON_DEPTH) {
        rc = core_err_set(MLV_ELIMIT, "JSON nested deeper than %d levels", MAX_JSON_DEPTH);
    } else if (!json_is_object(j)) {
        rc = core_err_set(MLV_EINVAL, "body must be a JSON object");
    }
    free(buf);
    if (rc) {
        json_decref(j);
        return rc;
    }
    *out = j;
    return 0;
}

int srv_query(const srv_req *q, const char *name, char *out, size_t n)
{
    const char *qs = q->ri->query_string;
    if (n) out[0] = '\0';
    if (!qs) return 0;
    int got = mg_get_var(qs, strlen(qs), name, out, n);
    if (got == -2) /* a value that does not fit is refused, never ignored or cut */
        return core_err_set(MLV_EINVAL, "%s: longer than %zu bytes", name, n ? n - 1 : 0);
    return got >= 0 ? 1 : 0;
}

int srv_str_field(const json_t *o, const char *key, bool required, size_t max, const char **out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return core_err_set(MLV_EINVAL, "'%s' is required", key);
        return 0;
    }
    if (!json_is_string(v)) return core_err_set(MLV_EINVAL, "'%s' must be a string", key);
    if (json_string_length(v) > max)
        return core_err_set(MLV_EINVAL, "'%s' is longer than %zu bytes", key, max);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return core_err_set(MLV_EINVAL, "'%s' contains a NUL character", key);
    *out = json_string_value(v);
    return 0;
}

int srv_int_field(const json_t *o, const char *key, bool required, int64_t lo, int64_t hi,
                  int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return core_err_set(MLV_EINVAL, "'%s' is required", key);
        return 0;
    }
    if (!json_is_integer(v)) return core_err_set(MLV_EINVAL, "'%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return core_err_set(MLV_EINVAL, "'%s' must be in [%lld, %lld]", key, (long long)lo,
                            (long long)hi);
    *out = x;
    return 0;
}

int srv_num_field(const json_t *o, const char *key, bool required, double lo, double hi,
                  double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return core_err_set(MLV_EINVAL, "'%s' is required", key);
        return 0;
    }
    if (!json_is_number(v)) return core_err_set(MLV_EINVAL, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return core_err_set(MLV_EINVAL, "'%s' must be in [%g, %g]", key, lo, hi);
    *out = x;
    return 0;
}

void srv_ref(const srv_req *q, char *out, size_t n)
{
    if (!strcmp(q->params[1], "latest"))
        snprintf(out, n, "%s", q->params[0]);
    else
        snprintf(out, n, "%s:%s", q->params[0], q->params[1]);
}

/* ================================================================= routing ==== */

static bool is_id(const char *s, size_t maxlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > maxlen || s[0] == '0') return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

/* Checks one path parameter by its kind; MLV_EINVAL (or ENOTFOUND) with a message. */
static int check_param(const char *kind, const char *v)
{
    if (!strcmp(kind, "name") || !strcmp(kind, "channel") || !strcmp(kind, "node")) {
        if (!core_name_valid(v))
            return core_err_set(MLV_EINVAL, "invalid %s '%.80s': use [a-z0-9][a-z0-9._-]{0,63}",
                                kind, v);
    } else if (!strcmp(kind, "v")) {
        if (strcmp(v, "latest") != 0 && !is_id(v, 9))
            return core_err_set(MLV_EINVAL, "invalid version '%.80s': a number or 'latest'", v);
    } else if (!strcmp(kind, "id")) {
        if (!is_id(v, 18)) return core_err_set(MLV_EINVAL, "invalid id '%.80s'", v);
    } else if (!strcmp(kind, "upload")) {
        if (!core_is_hex(v, 32)) return core_err_set(MLV_ENOTFOUND, "no upload '%.80s'", v);
    } else if (!strcmp(kind, "bundle")) {
        if (!core_is_hex(v, 32)) return core_err_set(MLV_ENOTFOUND, "no bundle '%.80s'", v);
    } else if (!strcmp(kind, "path")) {
        if (!core_relpath_safe(v)) return core_err_set(MLV_EINVAL, "invalid file path '%.80s'", v);
    }
    return 0;
}

/* Matches `path` against a pattern; 1 on a match (params filled), 0 on none, or a
 * negative code when the shape matches but a parameter is invalid. {path} and {asset}
 * take the rest of the path. */
static int match(const char *pattern, const char *path, srv_req *q)
{
    const char *p = pattern, *s = path;
    size_t used = 0;
    int np = 0, bad = 0;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            char kind[16];
            snprintf(kind, sizeof kind, "%.*s", (int)(close - p - 1), p + 1);
            bool rest = !strcmp(kind, "path") || !strcmp(kind, "asset");
            const char *end = rest ? s + strlen(s) : strchrnul(s, '/');
            size_t n = (size_t)(end - s);
            if (n == 0 || used + n + 1 > sizeof q->pbuf || np >= SRV_MAX_PARAMS) return 0;
            char *dst = q->pbuf + used;
            memcpy(dst, s, n);
            dst[n] = 0;
            used += n + 1;
            q->params[np++] = dst;
            if (!bad && check_param(kind, dst) != 0) bad = core_err_code();
            s = end;
            p = close + 1;
        } else {
            if (*p != *s) return 0;
            p++, s++;
        }
    }
    if (*s) return 0;
    return bad ? bad : 1;
}

/* ================================================================ dispatch ==== */

static int authenticate(srv_req *q)
{
    const char *h = mg_get_header(q->c, "Authorization");
    if (!h || !*h) return core_err_set(MLV_EAUTH, "no token: send Authorization: Bearer TOKEN");
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return core_err_set(MLV_EAUTH, "the Authorization header must be 'Bearer TOKEN'");
    const char *t = h + 7;
    while (*t == ' ')
        t++;
    int rc = reg_authenticate(q->r, t, &q->user);
    if (rc == 0) q->authed = true;
    return rc;
}

#define ANON_AUDIT_INTERVAL 10.0 /* seconds */

/* A refused mutation leaves a trace in the audit chain: every one by a known user; those
 * without a valid token at most one row per ANON_AUDIT_INTERVAL, counting the others. */
static void audit_refused(srv_req *q, const char *method, const char *path, int status, int code)
{
    if (strcmp(method, "POST") && strcmp(method, "PUT") && strcmp(method, "DELETE")) return;
    uint64_t folded = 0;
    if (!q->authed) {
        struct reg_server *s = q->s;
        double now = core_now_s();
        bool skip;
        pthread_mutex_lock(&s->anon_mu);
        skip = s->anon_last > 0 && now - s->anon_last < ANON_AUDIT_INTERVAL;
        if (skip) {
            s->anon_folded++;
        } else {
            s->anon_last = now;
            folded = s->anon_folded;
            s->anon_folded = 0;
        }
        pthread_mutex_unlock(&s->anon_mu);
        if (skip) return;
    }
    reg_user anon = {.role = REG_ROLE_VIEWER};
    snprintf(anon.name, sizeof anon.name, "anonymous");
    const reg_user *who = q->authed ? &q->user : &anon;
    char target[200], detail[300];
    snprintf(target, sizeof target, "%.190s", path);
    for (char *c = target; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    int n = snprintf(detail, sizeof detail, "%s %s -> %d %s", method, target, status,
                     core_err_name(code));
    if (folded && n > 0 && (size_t)n < sizeof detail)
        snprintf(detail + n, sizeof detail - (size_t)n,
                 " (and %llu more without a valid token before it)", (unsigned long long)folded);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", core_err_last());
    if (reg_audit_record(q->r, who, "api.refused", target, detail) != 0)
        core_log(CORE_LOG_WARN, "audit of a refused request failed: %s", core_err_last());
    core_err_set(code, "%s", saved);
}

/* The scope of a node (reg_node_scope): on the routes it may use (pull and node ones)
 * that name a model, that model must be the one it is enrolled for — checked here, before
 * anything is looked up, so a node learns nothing of other models (not even whether they
 * exist). Persons pass. */
static int node_scope(srv_req *q, const route *rt)
{
    if (q->user.role != REG_ROLE_NODE || (rt->action != REG_ACT_PULL && rt->action != REG_ACT_NODE))
        return 0;
    const char *p = rt->pattern;
    for (int k = 0; k < SRV_MAX_PARAMS && (p = strchr(p, '{')) != NULL; k++, p++)
        if (!strncmp(p, "{name}", 6))
            return core_name_valid(q->params[k])
                       ? reg_node_scope(q->r, &q->user, q->params[k])
                       : core_err_set(MLV_EFORBIDDEN, "forbidden: not a model name");
    return 0;
}

static int dispatch(srv_req *q, const char *method, const char *path)
{
    bool path_known = false;
    int rc = 0;
    for (int i = 0; i < N_ROUTES; i++) {
        int m = match(ROUTES[i].pattern, path, q);
        if (m == 0) continue;
        path_known = true;
        const char *want = ROUTES[i].method;
        if (strcmp(want, method) != 0 && !(q->head && !strcmp(want, "GET"))) continue;
        q->route = i;
        if (ROUTES[i].action != ROUTE_PUBLIC) {
            if ((rc = authenticate(q)) != 0) return rc;
            if (ROUTES[i].action >= 0 && (rc = reg_authorize(&q->user, ROUTES[i].action)) != 0)
                return rc;
            if ((rc = node_scope(q, &ROUTES[i])) != 0) return rc;
        }
        if (m < 0) return m; /* a malformed parameter, reported once the caller may know */
        return ROUTES[i].fn(q);
    }
    if (path_known) {
        q->status = 405;
        return core_err_set(MLV_EINVAL, "method %s is not allowed on %s", method, path);
    }
    return core_err_set(MLV_ENOTFOUND, "no route %s %.200s", method, path);
}

/* ============================================================ served model ==== */

/* With --serve-model, /v1/... and /health belong to the engine's OpenAI server. */
static bool engine_path(const struct reg_server *s, const char *path)
{
    return s->serve &&
           (!strcmp(path, "/health") || !strcmp(path, "/v1") || !strncmp(path, "/v1/", 4));
}

/* Any valid token (an enabled user of any role) may use the served model; a refusal comes
 * in OpenAI's error shape, naming the served model as the engine's replies do. */
static int serve_engine(srv_req *q)
{
    eng_server *e = srv_serve_engine(q->s->serve);
    int rc = authenticate(q);
    if (rc == 0) {
        eng_server_handle(e, q->c);
        q->replied = true;
        return 0;
    }
    int status = srv_status(q, rc);
    char id[128], extra[256];
    eng_server_current(e, id, sizeof id);
    snprintf(extra, sizeof extra, "%s%s%s%s",
             status == 401 ? "WWW-Authenticate: Bearer realm=\"mlvault\"\r\n" : "",
             id[0] ? "X-Mlvault-Model: " : "", id, id[0] ? "\r\n" : "");
    char *msg = core_utf8_valid_copy(core_err_last(), strlen(core_err_last()));
    json_t *j = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", msg ? msg : "refused",
                          "type", status == 401 ? "invalid_request_error" : "server_error", "param",
                          "code", status == 401 ? "invalid_api_key" : core_err_name(rc));
    free(msg);
    char *text = j ? core_json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");
    srv_reply_bytes(q, status, "application/json", text, strlen(text), extra);
    free(text);
    return 0;
}

static int serve_request(struct mg_connection *c, struct reg_server *s, reg_ctx **slot)
{
    double t0 = core_now_s();
    const struct mg_request_info *ri = mg_get_request_info(c);
    srv_req q = {.s = s, .c = c, .ri = ri, .route = -1};
    const char *method = ri->request_method ? ri->request_method : "";
    const char *path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
    if (!path) path = "";
    q.head = !strcmp(method, "HEAD");
    core_err_clear();
    int rc;
    bool engine = false;
    if (!*slot && reg_open(slot, s->home) != 0) *slot = NULL;
    if (!(q.r = *slot))
        rc = core_err_set(MLV_EBUSY, "the catalog cannot be opened: %s", core_err_last());
    else if ((engine = engine_path(s, path)))
        rc = serve_engine(&q);
    else
        rc = dispatch(&q, method, path);
    if (rc != 0 && !q.replied) {
        int status = q.status == 405 ? 405 : srv_status(&q, rc);
        if (q.r && (status == 401 || status == 403)) audit_refused(&q, method, path, status, rc);
        if (status >= 500) core_log(CORE_LOG_WARN, "%s %s: %s", method, path, core_err_last());
        reply_error(&q, status, rc, core_err_last());
    } else if (rc != 0) {
        core_log(CORE_LOG_WARN, "%s %s: after %llu bytes: %s", method, path,
                 (unsigned long long)q.sent, core_err_last());
    }
    json_decref(q.err_extra);
    if (engine && q.authed) return 200; /* counted and logged by the engine (mlvault_inference_*) */
    double dt = core_now_s() - t0;
    srv_metrics_observe(s, q.route, method, q.status, dt);
    core_log(CORE_LOG_INFO, "%s %s \"%s %.200s\" %d %llu %.1fms", ri->remote_addr,
             q.authed ? q.user.name : "-", method, path, q.status, (unsigned long long)q.sent,
             dt * 1000);
    return q.status ? q.status : 500;
}

/* CivetWeb's worker threads have the 100 KiB stacks the library was built with, too
 * small for libgit2, SQLite and the engine beneath a push; each request runs on a
 * thread of ours with a proper stack while the worker waits (glibc reuses the stacks
 * of joined threads, so this costs microseconds). */
#define REQUEST_STACK ((size_t)8 << 20)

typedef struct request_run {
    struct mg_connection *c;
    struct reg_server *s;
    reg_ctx **slot;
    int status;
} request_run;

static void *request_main(void *arg)
{
    request_run *run = arg;
    run->status = serve_request(run->c, run->s, run->slot);
    return NULL;
}

static int handle(struct mg_connection *c, void *cbdata)
{
    request_run run = {.c = c, .s = cbdata, .slot = mg_get_thread_pointer(c)};
    reg_ctx *fallback = NULL;
    if (!run.slot) run.slot = &fallback; /* not a worker thread: a connection of its own */
    if (core_run_on_stack(REQUEST_STACK, request_main, &run) != 0) {
        core_err_clear();
        mg_send_http_error(c, 503, "%s", "server overloaded: cannot start a request thread");
        run.status = 503;
    }
    reg_close(fallback);
    return run.status;
}

/* =========================================================== thread hooks ==== */

static void *init_thread(const struct mg_context *ctx, int type)
{
    (void)ctx;
    if (type != 1) return NULL; /* worker threads only */
    return calloc(1, sizeof(reg_ctx *));
}

static void exit_thread(const struct mg_context *ctx, int type, void *p)
{
    (void)ctx, (void)type;
    reg_ctx **slot = p;
    if (!slot) return;
    reg_close(*slot);
    free(slot);
}

static int log_message(const struct mg_connection *c, const char *msg)
{
    (void)c;
    core_log(CORE_LOG_WARN, "http: %s", msg);
    return 1;
}

/* ============================================================ start, stop ==== */

/* CivetWeb wants certificate and key in one PEM file. */
static int tls_pem(struct reg_server *s, const char *cert, const char *key)
{
    char *a = NULL, *b = NULL;
    size_t na, nb;
    int rc = core_read_file(cert, 1 << 20, &a, &na);
    if (rc == 0) rc = core_read_file(key, 1 << 20, &b, &nb);
    if (rc) goto done;
    if (!strstr(a, "-----BEGIN CERTIFICATE-----") || !strstr(b, "PRIVATE KEY-----")) {
        rc = core_err_set(MLV_EINVAL, "%s must be a PEM certificate and %s a PEM private key", cert,
                          key);
        goto done;
    }
    char *tmpdir = core_path_join(s->home, "tmp");
    if (!tmpdir || asprintf(&s->tls_pem, "%s/tls-XXXXXX", tmpdir) < 0) {
        s->tls_pem = NULL;
        free(tmpdir);
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    core_mkdir_p(tmpdir, 0700);
    free(tmpdir);
    int fd = mkstemp(s->tls_pem); /* mode 0600 */
    if (fd < 0) {
        rc = core_err_set(MLV_EIO, "%s: %s", s->tls_pem, strerror(errno));
        free(s->tls_pem);
        s->tls_pem = NULL;
        goto done;
    }
    rc = core_write_all(fd, a, na);
    if (rc == 0 && na && a[na - 1] != '\n') rc = core_write_all(fd, "\n", 1);
    if (rc == 0) rc = core_write_all(fd, b, nb);
    close(fd);
done:
    if (b) memset(b, 0, nb);
    free(a);
    free(b);
    return rc;
}

/* CivetWeb 1.15 loads libssl at run time and calls SSL_get_peer_certificate on every
 * TLS connection; OpenSSL 3 only has it as a macro (SSL_get1_peer_certificate). mlvault
 * links registry/tls/ssl_compat.c, which supplies it under the name CivetWeb opens; this
 * checks that it took effect rather than crash on the first HTTPS request. */
static int tls_usable(void)
{
    void *h = dlopen("libssl.so", RTLD_LAZY | RTLD_LOCAL);
    bool ok = h && dlsym(h, "SSL_get_peer_certificate") != NULL;
    if (h) dlclose(h);
    if (ok) return 0;
    return core_err_set(MLV_EUNSUPPORTED,
                        "TLS: CivetWeb %s needs SSL_get_peer_certificate, which OpenSSL 3 lacks "
                        "and the ssl-compat library (built beside mlvault) supplies; it was "
                        "not found: keep build/ssl-compat/ beside the binary",
                        mg_version());
}

static void server_free(struct reg_server *s)
{
    if (!s) return;
    if (s->tls_pem) {
        unlink(s->tls_pem);
        free(s->tls_pem);
    }
    reg_close(s->main);
    pthread_mutex_destroy(&s->up_mu);
    pthread_mutex_destroy(&s->anon_mu);
    free(s->up_busy);
    free(s->web_dir);
    free(s->metrics);
    free(s->home);
    free(s->listen);
    free(s->exe);
    free(s);
}

int reg_server_start(reg_server **out, const reg_server_opts *o)
{
    *out = NULL;
    if (!o->home) return core_err_set(MLV_EINVAL, "no data home");
    if (!o->tls_cert != !o->tls_key)
        return core_err_set(MLV_EINVAL, "TLS needs both --tls-cert and --tls-key");
    struct reg_server *s = calloc(1, sizeof *s);
    if (!s) return core_err_set(MLV_ENOMEM, "out of memory");
    pthread_mutex_init(&s->up_mu, NULL);
    pthread_mutex_init(&s->anon_mu, NULL);
    int rc = 0;
    s->home = strdup(o->home);
    s->listen = strdup(o->listen && *o->listen ? o->listen : "127.0.0.1:8080");
    s->exe = strdup(o->exe ? o->exe : "/proc/self/exe");
    s->metrics = calloc(1, sizeof *s->metrics);
    if (!s->home || !s->listen || !s->exe || !s->metrics) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto fail;
    }
    s->validate = o->validate;
    s->max_body = o->max_body ? o->max_body : (uint64_t)1 << 20;
    s->max_upload = o->max_upload ? o->max_upload : (uint64_t)64 << 30;
    s->max_uploads = o->max_uploads > 0 ? o->max_uploads : 8;
    s->tls = o->tls_cert != NULL;
    if (o->web_dir) {
        struct stat st;
        if (!(s->web_dir = realpath(o->web_dir, NULL)) || stat(s->web_dir, &st) != 0 ||
            !S_ISDIR(st.st_mode)) {
            rc = core_err_set(MLV_EINVAL, "--web-dir %s: %s", o->web_dir,
                              s->web_dir ? "not a directory" : strerror(errno));
            goto fail;
        }
    }
    if ((rc = reg_open(&s->main, s->home)) != 0) goto fail;
    srv_uploads_sweep(s->main);
    if (s->tls) {
        if (!(mg_check_feature(2) & 2)) {
            rc = core_err_set(MLV_EUNSUPPORTED, "this CivetWeb library was built without TLS");
            goto fail;
        }
        if ((rc = tls_usable()) != 0) goto fail;
        if ((rc = tls_pem(s, o->tls_cert, o->tls_key)) != 0) goto fail;
    }
    /* listening_ports: "ADDR:PORT", with an "s" suffix for TLS */
    if (!strrchr(s->listen, ':')) {
        rc = core_err_set(MLV_EINVAL, "--listen wants ADDR:PORT, not '%s'", s->listen);
        goto fail;
    }
    char ports[300];
    snprintf(ports, sizeof ports, "%s%s", s->listen, s->tls ? "s" : "");
    const char *opts[32];
    int n = 0;
    opts[n++] = "listening_ports", opts[n++] = ports;
    /* --serve-model: a worker for every request that may be generating or queued, beside
     * the API's */
    char threads[16];
    int want = 64;
    if (o->serve_model) {
        int seqs = o->batch.max_seqs > 0 ? o->batch.max_seqs : 8;
        int queue = o->batch.max_queue > 0 ? o->batch.max_queue : 64;
        if (seqs + queue + 16 > want) want = seqs + queue + 16;
    }
    snprintf(threads, sizeof threads, "%d", want);
    opts[n++] = "num_threads", opts[n++] = threads;
    opts[n++] = "enable_keep_alive", opts[n++] = "yes";
    opts[n++] = "keep_alive_timeout_ms", opts[n++] = "15000";
    opts[n++] = "request_timeout_ms", opts[n++] = "120000";
    opts[n++] = "tcp_nodelay", opts[n++] = "1";
    opts[n++] = "enable_directory_listing", opts[n++] = "no";
    opts[n++] = "decode_url", opts[n++] = "yes";
    if (s->tls) {
        opts[n++] = "ssl_certificate", opts[n++] = s->tls_pem;
        opts[n++] = "ssl_protocol_version", opts[n++] = "4"; /* TLS 1.2 and later */
    }
    opts[n++] = NULL;
    if ((rc = reg_jobs_scheduler_start(
             &s->jobs,
             &(reg_jobs_scheduler_opts){.home = s->home,
                                        .exe = s->exe,
                                        .workers = o->job_workers > 0 ? o->job_workers : 1})) != 0)
        goto fail;
    if (o->serve_model &&
        (rc = srv_serve_start(&s->serve, s->home, o->serve_model, &o->load, &o->batch)) != 0)
        goto fail;
    struct mg_callbacks cb = {0};
    cb.init_thread = init_thread;
    cb.exit_thread = exit_thread;
    cb.log_message = log_message;
    mg_init_library(s->tls ? MG_FEATURES_TLS : 0);
    s->mg = mg_start(&cb, s, opts);
    if (!s->mg) {
        rc = core_err_set(MLV_EIO, "cannot listen on %s (in use, or not an address here?)",
                          s->listen);
        goto fail;
    }
    mg_set_request_handler(s->mg, "/", handle, s);
    struct mg_server_port sp[4];
    int np = mg_get_server_ports(s->mg, 4, sp);
    s->port = np > 0 ? sp[0].port : 0;
    *out = s;
    return 0;
fail:
    if (s->jobs) reg_jobs_scheduler_stop(s->jobs);
    srv_serve_stop(s->serve);
    server_free(s);
    return rc;
}

int reg_server_port(const reg_server *s)
{
    return s ? s->port : 0;
}

void reg_server_stop(reg_server *s)
{
    if (!s) return;
    if (s->mg) mg_stop(s->mg); /* requests end first: generations run to their end */
    srv_serve_stop(s->serve);
    if (s->jobs) reg_jobs_scheduler_stop(s->jobs);
    server_free(s);
}
