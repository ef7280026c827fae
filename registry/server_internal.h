/* registry/server_internal.h: what the HTTP server's files share (server.c, api_*.c,
 * uploads.c, metrics.c, web.c) — the server, one request, the reply helpers and the route
 * handlers. Not for other modules: the public face is reg_server_* in registry.h. */
#ifndef MLV_SERVER_INTERNAL_H
#define MLV_SERVER_INTERNAL_H

#include <civetweb.h>
#include <pthread.h>
#include <stdatomic.h>

#include "registry/reg_internal.h"

/* ------------------------------------------------------------------ metrics --- */
#define SRV_MAX_ROUTES 64
#define SRV_N_METHODS 6 /* GET POST PUT DELETE HEAD other */
#define SRV_N_CODES 19
#define SRV_N_BUCKETS 12

typedef struct srv_metrics {
    /* requests by (route, method, status); route SRV_MAX_ROUTES - 1 is "unmatched" */
    _Atomic uint64_t requests[SRV_MAX_ROUTES][SRV_N_METHODS][SRV_N_CODES];
    _Atomic uint64_t buckets[SRV_MAX_ROUTES][SRV_N_BUCKETS]; /* non-cumulative */
    _Atomic uint64_t count[SRV_MAX_ROUTES];
    _Atomic uint64_t sum_us[SRV_MAX_ROUTES];
} srv_metrics;

/* ------------------------------------------------------------------- server --- */
struct reg_server {
    struct mg_context *mg;
    char *home;
    char *listen;
    char *exe;
    char *tls_pem; /* HOME/tmp/tls-XXXXXX: cert and key in one PEM, removed at stop */
    reg_job_validate validate;
    uint64_t max_body, max_upload;
    int max_uploads;
    int port;
    bool tls;
    reg_ctx *main; /* the server's own catalog connection (main thread) */
    reg_jobs_scheduler *jobs;
    srv_metrics *metrics;
    struct srv_serve *serve; /* --serve-model: the engine's OpenAI server (serve_model.c) */
    char *web_dir;           /* --web-dir: the UI's files from here (realpath), else embedded */
    /* upload sessions: creating one, and one request at a time per session */
    pthread_mutex_t up_mu;
    char (*up_busy)[33];
    int n_up_busy, cap_up_busy;
    /* refused requests without a valid token: audited at most once per interval, with
     * the count of those folded in, so no one without a token can flood the chain */
    pthread_mutex_t anon_mu;
    double anon_last;
    uint64_t anon_folded;
};

/* ------------------------------------------------------------------ request --- */
#define SRV_MAX_PARAMS 4

typedef struct srv_req {
    struct reg_server *s;
    struct mg_connection *c;
    const struct mg_request_info *ri;
    reg_ctx *r; /* this worker thread's catalog connection */
    reg_user user;
    bool authed;
    bool head;                          /* HEAD: headers only */
    int route;                          /* index into the route table, -1 when none */
    const char *params[SRV_MAX_PARAMS]; /* decoded path parameters, in pattern order */
    char pbuf[1024];                    /* their storage */
    int status;                         /* the status sent */
    uint64_t sent;                      /* body bytes sent */
    bool replied;
    bool too_many;     /* MLV_ELIMIT means 429 (too many sessions), not 413 */
    json_t *err_extra; /* merged into an error body ({"received": N}) */
} srv_req;

typedef int (*srv_handler)(srv_req *q);

/* The status of an MLV_E* code — the one place the API maps codes to statuses. */
int srv_status(const srv_req *q, int code);

/* Replies. Each sends headers and body once; a handler returns 0 after one of them,
 * or a negative code (and its message in the error slot) for the dispatcher to send. */
int srv_reply_json(srv_req *q, int status, json_t *j); /* steals j */
int srv_reply_bytes(srv_req *q, int status, const char *ctype, const void *data, size_t n,
                    const char *extra_headers);
/* Starts a streamed reply: headers only (with Content-Length); then srv_write. */
int srv_reply_start(srv_req *q, int status, const char *ctype, uint64_t length,
                    const char *extra_headers);
int srv_write(srv_req *q, const void *data, size_t n);

/* The request's JSON body: an object, at most max_body bytes and 32 levels deep.
 * *out owned by the caller. An empty body gives an empty object. */
int srv_read_json(srv_req *q, json_t **out);
/* A query-string parameter (decoded) into out: 1, or 0 when absent (out is then "");
 * MLV_EINVAL when the value does not fit in n bytes. */
int srv_query(const srv_req *q, const char *name, char *out, size_t n);
/* A typed field of a JSON body: MLV_EINVAL naming the field when it has the wrong type.
 * Absent (or null) fields leave *out as it is unless `required`. */
int srv_str_field(const json_t *o, const char *key, bool required, size_t max, const char **out);
int srv_int_field(const json_t *o, const char *key, bool required, int64_t lo, int64_t hi,
                  int64_t *out);
int srv_num_field(const json_t *o, const char *key, bool required, double lo, double hi,
                  double *out);
/* A download of `size` bytes (api_artifacts.c): reads the Range header ("bytes=A-",
 * "A-B", "-N") into the inclusive range [*a, *b] and writes the reply's headers
 * (Accept-Ranges, X-Mlvault-Sha256 unless sha256 is NULL, X-Mlvault-Size, Content-Range
 * when partial) into
 * `headers`. Returns the status to send, 200 or 206 — or 416 once it has answered an
 * unsatisfiable range itself. */
int srv_range_start(srv_req *q, uint64_t size, const char *sha256, uint64_t *a, uint64_t *b,
                    char *headers, size_t n);
/* NAME or NAME:V from the {name} and {v} parameters ("latest" = no version). */
void srv_ref(const srv_req *q, char *out, size_t n);

/* ------------------------------------------------------------------- routes --- */
/* api_artifacts.c */
int api_whoami(srv_req *q);
int api_users_list(srv_req *q);
int api_users_add(srv_req *q);
int api_user_disable(srv_req *q);
int api_user_token(srv_req *q);
int api_registry_key(srv_req *q);
int api_models(srv_req *q);
int api_model(srv_req *q);
int api_version(srv_req *q);
int api_lineage(srv_req *q);
int api_manifest(srv_req *q);
int api_signature(srv_req *q);
int api_evaluations(srv_req *q);
int api_verify(srv_req *q);
int api_download(srv_req *q);
int api_audit(srv_req *q);
int api_audit_verify(srv_req *q);
int api_fsck(srv_req *q);
int api_keys_list(srv_req *q);
int api_key_trust(srv_req *q);
int api_import_key(srv_req *q);
/* api_flow.c */
int api_jobs_submit(srv_req *q);
int api_jobs_list(srv_req *q);
int api_job_get(srv_req *q);
int api_job_log(srv_req *q);
int api_job_cancel(srv_req *q);
int api_channels(srv_req *q);
int api_channel_set(srv_req *q);
int api_channel_release(srv_req *q);
int api_promote(srv_req *q);
int api_promotions(srv_req *q);
int api_promotion(srv_req *q);
int api_approve(srv_req *q);
int api_reject(srv_req *q);
/* api_nodes.c */
int api_nodes_enroll(srv_req *q);
int api_nodes_list(srv_req *q);
int api_node_state(srv_req *q);
int api_node_keys(srv_req *q);
int api_node_blob(srv_req *q);
int api_channel_renew(srv_req *q);
/* api_bundles.c */
int api_bundle_create(srv_req *q);
int api_bundle_get(srv_req *q);
int api_bundle_delete(srv_req *q);
/* uploads.c */
int api_upload_open(srv_req *q);
int api_upload_list(srv_req *q);
int api_upload_get(srv_req *q);
int api_upload_put(srv_req *q);
int api_upload_commit(srv_req *q);
int api_upload_delete(srv_req *q);
/* Removes sessions older than 24 hours and folders with no session (at start). */
void srv_uploads_sweep(reg_ctx *r);
int srv_uploads_open(reg_ctx *r);
/* web.c: the UI, GET|HEAD / and /ui/{asset}, public */
int api_web_index(srv_req *q);
int api_web_file(srv_req *q);
/* The files of web/, sorted by path: written at build time into the build's web_assets.c
 * by scripts/embed-web.cmake. etag is the quoted SHA-256 of the bytes. */
typedef struct srv_web_asset {
    const char *path; /* "app.js", "pages/models.js" */
    const unsigned char *data;
    size_t size;
    const char *etag;
} srv_web_asset;
extern const srv_web_asset srv_web_assets[];
extern const int srv_web_n_assets;
/* metrics.c */
int api_metrics(srv_req *q);
int api_healthz(srv_req *q);
void srv_metrics_observe(struct reg_server *s, int route, const char *method, int status,
                         double seconds);
/* The route table's patterns, for metric labels (server.c). */
const char *srv_route_pattern(int route);
int srv_route_count(void);

#endif
