/* engine/openai.c: the OpenAI-compatible HTTP API of engine.h ("OpenAI server") over a
 * batcher — request parsing and validation into typed parameters, prompts through the
 * model's tokenizer and chat template, stop strings and UTF-8-safe streaming (SSE over
 * chunked transfer encoding), replies in OpenAI's shapes, the reference-counted served
 * model and its swap, /health, Prometheus metrics, and a CivetWeb listener of its own.
 * Not the registry's API: registry/server.c embeds this through eng_server_handle, after
 * its own authentication. docs/openai.md is the user's reference. */
#include <civetweb.h>
#include <openssl/crypto.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "engine/engine.h"

#define MAX_BODY ((size_t)1 << 20) /* request bodies: 1 MiB */
#define MAX_STOP 4                 /* stop strings, as OpenAI allows */
#define MAX_STOP_LEN 1024          /* bytes of one stop string */
#define MAX_MESSAGES 4096
#define MAX_ID 128                      /* a served model's id */
#define REQUEST_STACK ((size_t)4 << 20) /* our listener's request threads (jansson recurses) */

/* ================================================================ metrics ==== */

enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_HEALTH, EP_METRICS, EP_OTHER, N_EP };
static const char *EP_NAME[N_EP] = {
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "other"};
#define N_CODES 10
static const int CODES[N_CODES] = {200, 400, 404, 405, 413, 429, 500, 503, 499, 0};
/* 499: the client went away mid-reply (nginx's convention); 0: any other status */

/* Latency buckets (seconds): 0.4 and 0.5 are the P99 alert thresholds of docs/. */
#define N_LAT 14
static const double LAT_BOUNDS[N_LAT - 1] = {0.05, 0.1, 0.25, 0.4, 0.5, 1,  2.5,
                                             5,    10,  20,   30,  60,  120};
#define N_TTFT 13
static const double TTFT_BOUNDS[N_TTFT - 1] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.4,
                                               0.5,  1,     2.5,  5,   10,   30};

typedef struct histo {
    _Atomic uint64_t buckets[N_LAT]; /* non-cumulative; N_LAT >= N_TTFT */
    _Atomic uint64_t sum_us;
} histo;

#define RING 64 /* seconds kept by the rate rings (>= 60) */
typedef struct rate_ring {
    int64_t sec[RING];
    uint64_t n[RING];
} rate_ring;

typedef struct metrics {
    _Atomic uint64_t requests[N_EP][N_CODES];
    histo latency[2], ttft[2]; /* by EP_COMPLETIONS, EP_CHAT */
    _Atomic uint64_t generated, prompt;
    pthread_mutex_t rate_mu;
    rate_ring tokens, done; /* generated tokens, completed requests, per second */
} metrics;

static void ring_add(rate_ring *r, int64_t now, uint64_t k)
{
    int i = (int)(now % RING);
    if (r->sec[i] != now) r->sec[i] = now, r->n[i] = 0;
    r->n[i] += k;
}

/* Sum over the seconds (now - span, now]. */
static uint64_t ring_sum(const rate_ring *r, int64_t now, int span)
{
    uint64_t s = 0;
    for (int i = 0; i < RING; i++)
        if (r->sec[i] > now - span && r->sec[i] <= now) s += r->n[i];
    return s;
}

static void histo_observe(histo *h, const double *bounds, int n, double v)
{
    int b = n - 1;
    for (int i = 0; i < n - 1; i++)
        if (v <= bounds[i]) {
            b = i;
            break;
        }
    atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(v > 0 ? v * 1e6 : 0), memory_order_relaxed);
}

/* ================================================================= server ==== */

/* One served model: its batcher, id and chat template. refs: the server's current
 * pointer holds one, each request using it one more; the last release frees it. */
typedef struct served {
    eng_model *m;
    eng_batcher *b;
    char id[MAX_ID];
    int refs; /* under eng_server.mu */
    int tmpl;
    char sys[512];
    uint32_t n_ctx;
    int64_t created; /* unix time it was swapped in */
} served;

struct eng_server {
    eng_server_opts o;
    pthread_mutex_t mu; /* cur and every served's refs; inflight */
    pthread_cond_t idle;
    served *cur;
    int inflight;          /* requests inside eng_server_handle */
    _Atomic int stopping;  /* eng_server_free began: generations stop at their next token */
    struct mg_context *mg; /* our own listener, when eng_server_listen started one */
    int port;
    metrics m;
    char *api_key; /* o.api_key's copy, or NULL */
};

static void served_free(served *sv)
{
    if (!sv) return;
    eng_batcher_free(sv->b);
    eng_model_free(sv->m);
    free(sv);
}

static served *acquire(eng_server *s)
{
    pthread_mutex_lock(&s->mu);
    served *sv = s->cur;
    if (sv) sv->refs++;
    pthread_mutex_unlock(&s->mu);
    return sv;
}

static void release(eng_server *s, served *sv)
{
    if (!sv) return;
    pthread_mutex_lock(&s->mu);
    bool last = --sv->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last) {
        core_log(CORE_LOG_INFO, "engine: %s unloaded", sv->id);
        served_free(sv);
    }
}

int eng_server_new(eng_server **out, const eng_server_opts *o)
{
    *out = NULL;
    eng_server *s = calloc(1, sizeof *s);
    if (!s) return core_err_set(MLV_ENOMEM, "out of memory");
    if (o) s->o = *o;
    if (s->o.max_tokens_default == 0) s->o.max_tokens_default = 256;
    if (s->o.api_key && !(s->api_key = strdup(s->o.api_key))) {
        free(s);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    s->o.api_key = NULL; /* the copy above is the one used */
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle, NULL);
    pthread_mutex_init(&s->m.rate_mu, NULL);
    *out = s;
    return 0;
}

void eng_server_free(eng_server *s)
{
    if (!s) return;
    atomic_store(&s->stopping, 1);
    if (s->mg) mg_stop(s->mg); /* waits for its workers, whose generations now end */
    pthread_mutex_lock(&s->mu);
    while (s->inflight > 0)
        pthread_cond_wait(&s->idle, &s->mu);
    served *cur = s->cur;
    s->cur = NULL;
    pthread_mutex_unlock(&s->mu);
    release(s, cur);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->m.rate_mu);
    if (s->api_key) OPENSSL_cleanse(s->api_key, strlen(s->api_key));
    free(s->api_key);
    free(s);
}

/* With an API key, whether the request carries it (compared in constant time). */
static bool key_ok(const eng_server *s, struct mg_connection *c)
{
    if (!s->api_key) return true;
    const char *h = mg_get_header(c, "Authorization");
    size_t n = strlen(s->api_key);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ')
        h++;
    return strlen(h) == n && CRYPTO_memcmp(h, s->api_key, n) == 0;
}

int eng_server_swap(eng_server *s, eng_model *m, const char *id)
{
    if (!m) return core_err_set(MLV_EINVAL, "no model to serve");
    size_t n = id ? strlen(id) : 0;
    bool ok = n > 0 && n < MAX_ID;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)id[i] > 0x20 && (unsigned char)id[i] < 0x7f && id[i] != '"' &&
             id[i] != '\\';
    if (!ok) {
        eng_model_free(m);
        return core_err_set(MLV_EINVAL,
                            "a served model's id is 1 to %d printable characters "
                            "without spaces or quotes",
                            MAX_ID - 1);
    }
    served *sv = calloc(1, sizeof *sv);
    if (!sv) {
        eng_model_free(m);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    sv->m = m;
    int rc = eng_batcher_new(&sv->b, m, &s->o.batch);
    if (rc) {
        core_err_wrap("serving %s: ", id);
        served_free(sv);
        return rc;
    }
    memcpy(sv->id, id, n + 1);
    sv->tmpl = eng_chat_template_of(eng_model_gguf(m), sv->sys);
    sv->n_ctx = eng_batcher_n_ctx(sv->b);
    sv->created = (int64_t)time(NULL);
    sv->refs = 1; /* the server's */
    pthread_mutex_lock(&s->mu);
    served *old = s->cur;
    s->cur = sv;
    pthread_mutex_unlock(&s->mu);
    core_log(CORE_LOG_INFO, "engine: serving %s (context %u)", sv->id, sv->n_ctx);
    release(s, old); /* freed now, or when its last request ends */
    return 0;
}

void eng_server_current(eng_server *s, char *id, size_t n)
{
    if (!n) return;
    pthread_mutex_lock(&s->mu);
    snprintf(id, n, "%s", s->cur ? s->cur->id : "");
    pthread_mutex_unlock(&s->mu);
}

double eng_server_rps(eng_server *s)
{
    int64_t now = (int64_t)core_now_s();
    pthread_mutex_lock(&s->m.rate_mu);
    uint64_t n = ring_sum(&s->m.done, now, 60);
    pthread_mutex_unlock(&s->m.rate_mu);
    return (double)n / 60.0;
}

/* ================================================================ replies ==== */

/* One request being handled. */
typedef struct oreq {
    eng_server *s;
    struct mg_connection *c;
    int ep;
    int status;         /* sent (0: none yet) */
    bool chunked;       /* the body goes as chunks (HTTP/1.1 streaming) */
    bool gone;          /* a write failed: the client went away */
    char model[MAX_ID]; /* the id named in X-Mlvault-Model ("" when none is loaded) */
    double t0;
} oreq;

/* Headers of a reply: length >= 0 sets Content-Length, -1 a body of unknown length
 * (chunked on HTTP/1.1, else until the connection closes). */
static void send_head(oreq *q, int status, const char *ctype, long long length, const char *extra)
{
    q->status = status;
    mg_response_header_start(q->c, status);
    mg_response_header_add(q->c, "Content-Type", ctype, -1);
    if (length >= 0) {
        char len[24];
        snprintf(len, sizeof len, "%lld", length);
        mg_response_header_add(q->c, "Content-Length", len, -1);
    } else {
        const char *v = mg_get_request_info(q->c)->http_version;
        q->chunked = v && strcmp(v, "1.0") != 0;
        if (q->chunked)
            mg_response_header_add(q->c, "Transfer-Encoding", "chunked", -1);
        else
            mg_response_header_add(q->c, "Connection", "close", -1);
    }
    mg_response_header_add(q->c, "Cache-Control", "no-store", -1);
    mg_response_header_add(q->c, "X-Content-Type-Options", "nosniff", -1);
    if (q->model[0]) mg_response_header_add(q->c, "X-Mlvault-Model", q->model, -1);
    if (extra && *extra) mg_response_header_add_lines(q->c, extra);
    mg_response_header_send(q->c);
}

static int body_write(oreq *q, const void *data, size_t n)
{
    if (q->gone) return -1;
    if (q->chunked) {
        char head[24];
        int hl = snprintf(head, sizeof head, "%zx\r\n", n);
        char *buf = malloc((size_t)hl + n + 2);
        if (!buf) return q->gone = true, -1;
        memcpy(buf, head, (size_t)hl);
        if (n) memcpy(buf + hl, data, n);
        memcpy(buf + hl + n, "\r\n", 2);
        int w = mg_write(q->c, buf, (size_t)hl + n + 2);
        free(buf);
        if (w != hl + (int)n + 2) q->gone = true;
    } else if (n) {
        int w = mg_write(q->c, data, n);
        if (w <= 0 || (size_t)w != n) q->gone = true;
    }
    return q->gone ? -1 : 0;
}

static void reply_bytes(oreq *q, int status, const char *ctype, const char *body, size_t n,
                        const char *extra)
{
    send_head(q, status, ctype, (long long)n, extra);
    if (n && mg_write(q->c, body, n) != (int)n) q->gone = true;
}

static void reply_json(oreq *q, int status, json_t *j, const char *extra)
{
    char *text = j ? core_json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":null}}";
        reply_bytes(q, 500, "application/json", oom, sizeof oom - 1, NULL);
        return;
    }
    reply_bytes(q, status, "application/json", text, strlen(text), extra);
    free(text);
}

/* An error in OpenAI's shape: {"error":{"message","type","param","code"}}. */
typedef struct oerr {
    int status;
    const char *type; /* invalid_request_error, server_error, ... */
    const char *code; /* may be NULL */
    char param[64];   /* "" for null */
    char msg[600];
} oerr;

static int fail(oerr *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(oerr *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    e->type = status == 429   ? "rate_limit_error"
              : status >= 500 ? "server_error"
              : status == 404 ? "invalid_request_error"
                              : "invalid_request_error";
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static void reply_error(oreq *q, const oerr *e)
{
    char *msg = core_utf8_valid_copy(e->msg, strlen(e->msg));
    json_t *j = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", msg ? msg : "error", "type",
                          e->type ? e->type : "invalid_request_error", "param",
                          e->param[0] ? json_string(e->param) : json_null(), "code",
                          e->code ? json_string(e->code) : json_null());
    free(msg);
    const char *extra = NULL;
    if (e->status == 401)
        extra = "WWW-Authenticate: Bearer realm=\"mlvault\"\r\n";
    else if (e->status == 429)
        extra = "Retry-After: 1\r\n";
    else if (e->status == 503)
        extra = "Retry-After: 2\r\n";
    else if (e->status == 413)
        extra = "Connection: close\r\n"; /* the rest of the body is not read */
    reply_json(q, e->status, j, extra);
}

/* ====================================================== request parameters ==== */

typedef struct params {
    bool chat;
    const char *prompt; /* completions: borrowed from the body */
    size_t prompt_len;
    eng_chat_msg *msgs; /* chat: contents borrowed from the body or owned[] */
    size_t n_msgs;
    char **owned; /* contents joined from parts */
    size_t n_owned;
    int64_t max_tokens; /* 0: the server's default */
    double temperature, top_p;
    const char *stop[MAX_STOP];
    size_t stop_len[MAX_STOP];
    int n_stop;
    size_t max_stop; /* longest stop string */
    uint64_t seed;
    bool stream, include_usage;
} params;

static void params_clear(params *p)
{
    for (size_t i = 0; i < p->n_owned; i++)
        free(p->owned[i]);
    free(p->owned);
    free(p->msgs);
}

static int get_num(oerr *e, const json_t *o, const char *key, double lo, double hi, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return fail(e, 400, key, NULL, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return fail(e, 400, key, NULL, "'%s' must be between %g and %g, not %g", key, lo, hi, x);
    *out = x;
    return 0;
}

static int get_int(oerr *e, const json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9.0e18) {
        x = (int64_t)json_real_value(v);
    } else {
        return fail(e, 400, key, NULL, "'%s' must be an integer", key);
    }
    if (x < lo || x > hi)
        return fail(e, 400, key, NULL, "'%s' must be between %lld and %lld, not %lld", key,
                    (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return 0;
}

static int get_bool(oerr *e, const json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return fail(e, 400, key, NULL, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* A parameter we only accept at its neutral value. */
static int neutral_only(oerr *e, const json_t *o, const char *key, const char *why)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v) || json_is_false(v)) return 0;
    if (json_is_number(v) && json_number_value(v) == 0) return 0;
    if (json_is_string(v) && json_string_length(v) == 0) return 0;
    if ((json_is_object(v) && json_object_size(v) == 0) ||
        (json_is_array(v) && !json_array_size(v)))
        return 0;
    return fail(e, 400, key, "unsupported_parameter", "'%s' is not supported by this server%s", key,
                why ? why : "");
}

static int parse_stop(oerr *e, const json_t *o, params *p)
{
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v)) return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > MAX_STOP)
            return fail(e, 400, "stop", NULL, "'stop' takes at most %d strings, not %zu", MAX_STOP,
                        n);
        items = NULL;
    } else if (!json_is_string(v)) {
        return fail(e, 400, "stop", NULL, "'stop' must be a string or an array of strings");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        if (!json_is_string(s))
            return fail(e, 400, "stop", NULL, "'stop' must be a string or an array of strings");
        size_t len = json_string_length(s);
        if (len == 0) return fail(e, 400, "stop", NULL, "a stop string must not be empty");
        if (len > MAX_STOP_LEN)
            return fail(e, 400, "stop", NULL, "a stop string is at most %d bytes, not %zu",
                        MAX_STOP_LEN, len);
        p->stop[p->n_stop] = json_string_value(s);
        p->stop_len[p->n_stop++] = len;
        if (len > p->max_stop) p->max_stop = len;
    }
    return 0;
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts. */
static int parse_content(oerr *e, params *p, json_t *c, size_t i, const char *role,
                         const char **out)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (json_is_null(c) || !c) {
        if (!strcmp(role, "assistant")) return *out = "", 0;
        return fail(e, 400, param, NULL, "'%s' is required", param);
    }
    if (json_is_string(c)) {
        if (strlen(json_string_value(c)) != json_string_length(c))
            return fail(e, 400, param, NULL, "'%s' contains a NUL character", param);
        *out = json_string_value(c);
        return 0;
    }
    if (!json_is_array(c))
        return fail(e, 400, param, NULL, "'%s' must be a string or an array of text parts", param);
    core_buf b = {0};
    size_t k;
    json_t *part;
    json_array_foreach(c, k, part)
    {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            core_buf_free(&b);
            return fail(e, 400, param, "unsupported_content",
                        "'%s' parts must be {\"type\": \"text\", \"text\": ...}: this server "
                        "reads text only",
                        param);
        }
        if (strlen(json_string_value(text)) != json_string_length(text)) {
            core_buf_free(&b);
            return fail(e, 400, param, NULL, "'%s' contains a NUL character", param);
        }
        if (k > 0) core_buf_append(&b, "\n", 1);
        core_buf_append(&b, json_string_value(text), json_string_length(text));
    }
    core_buf_append(&b, "", 0);
    char *joined = core_buf_take(&b);
    char **no = joined ? realloc(p->owned, sizeof *no * (p->n_owned + 1)) : NULL;
    if (!no) {
        free(joined);
        return fail(e, 500, NULL, NULL, "out of memory");
    }
    p->owned = no;
    p->owned[p->n_owned++] = joined;
    *out = joined;
    return 0;
}

static int parse_messages(oerr *e, const json_t *o, params *p)
{
    json_t *m = json_object_get(o, "messages");
    if (!m || json_is_null(m)) return fail(e, 400, "messages", NULL, "'messages' is required");
    if (!json_is_array(m) || json_array_size(m) == 0)
        return fail(e, 400, "messages", NULL, "'messages' must be a non-empty array");
    size_t n = json_array_size(m);
    if (n > MAX_MESSAGES)
        return fail(e, 400, "messages", NULL, "at most %d messages, not %zu", MAX_MESSAGES, n);
    if (!(p->msgs = calloc(n, sizeof *p->msgs))) return fail(e, 500, NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(m, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(msg))
            return fail(e, 400, param, NULL, "'%s' must be an object {role, content}", param);
        json_t *role = json_object_get(msg, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) return fail(e, 400, param, NULL, "'%s' is required", param);
        const char *r = json_string_value(role);
        if (!strcmp(r, "developer")) r = "system"; /* OpenAI's newer name for it */
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
            return fail(e, 400, param, NULL,
                        "'%s' must be system, developer, user or assistant, not '%.40s' (tools "
                        "and functions are not supported)",
                        param, r);
        p->msgs[i].role = r;
        if (parse_content(e, p, json_object_get(msg, "content"), i, r, &p->msgs[i].content))
            return -1;
        p->n_msgs++;
    }
    return 0;
}

/* Every parameter of a body, validated; nothing here depends on the model. */
static int parse_params(oerr *e, const json_t *o, bool chat, params *p)
{
    memset(p, 0, sizeof *p);
    p->chat = chat;
    p->temperature = 1.0; /* OpenAI's defaults */
    p->top_p = 1.0;
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model))
        return fail(e, 400, "model", NULL, "'model' must be a string");
    if (chat) {
        if (parse_messages(e, o, p)) return -1;
    } else {
        json_t *pr = json_object_get(o, "prompt");
        if (!pr || json_is_null(pr)) return fail(e, 400, "prompt", NULL, "'prompt' is required");
        if (json_is_array(pr) && json_array_size(pr) == 1 && json_is_string(json_array_get(pr, 0)))
            pr = json_array_get(pr, 0);
        if (!json_is_string(pr))
            return fail(e, 400, "prompt", NULL,
                        "'prompt' must be a string (several prompts or token ids are not "
                        "supported)");
        p->prompt = json_string_value(pr);
        p->prompt_len = json_string_length(pr);
        if (neutral_only(e, o, "suffix", NULL)) return -1;
        if (neutral_only(e, o, "echo", " (echo must be false)")) return -1;
        int64_t best_of = 1;
        if (get_int(e, o, "best_of", 1, 1, &best_of)) return -1;
    }
    int64_t n = 1, mt = 0, mct = 0;
    if (get_int(e, o, "n", 1, 1 << 20, &n)) return -1;
    if (n != 1)
        return fail(e, 400, "n", "unsupported_value", "only n=1 is supported, not %lld",
                    (long long)n);
    if (get_int(e, o, "max_tokens", 1, (int64_t)1 << 30, &mt)) return -1;
    if (chat && get_int(e, o, "max_completion_tokens", 1, (int64_t)1 << 30, &mct)) return -1;
    p->max_tokens = mct ? mct : mt;
    if (get_num(e, o, "temperature", 0, 2, &p->temperature)) return -1;
    if (get_num(e, o, "top_p", 0, 1, &p->top_p)) return -1;
    if (parse_stop(e, o, p)) return -1;
    json_t *seed = json_object_get(o, "seed");
    if (seed && !json_is_null(seed)) {
        int64_t sd = 0;
        if (get_int(e, o, "seed", INT64_MIN, INT64_MAX, &sd)) return -1;
        p->seed = (uint64_t)sd;
    } else if (core_random(&p->seed, sizeof p->seed) != 0) {
        return fail(e, 500, NULL, NULL, "no random seed: %s", core_err_last());
    }
    if (get_bool(e, o, "stream", &p->stream)) return -1;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!p->stream)
            return fail(e, 400, "stream_options", NULL,
                        "'stream_options' is only allowed when 'stream' is true");
        if (!json_is_object(so))
            return fail(e, 400, "stream_options", NULL, "'stream_options' must be an object");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return fail(e, 400, "stream_options.include_usage", NULL,
                        "'stream_options.include_usage' must be true or false");
        p->include_usage = json_is_true(iu);
    }
    double pen = 0;
    if (get_num(e, o, "presence_penalty", -2, 2, &pen) ||
        get_num(e, o, "frequency_penalty", -2, 2, &pen))
        return -1;
    if (neutral_only(e, o, "presence_penalty", " (only 0)") ||
        neutral_only(e, o, "frequency_penalty", " (only 0)") ||
        neutral_only(e, o, "logprobs", NULL) || neutral_only(e, o, "top_logprobs", NULL) ||
        neutral_only(e, o, "logit_bias", NULL) || neutral_only(e, o, "tools", NULL) ||
        neutral_only(e, o, "functions", NULL))
        return -1;
    json_t *tc = json_object_get(o, "tool_choice");
    if (tc && !json_is_null(tc) && !(json_is_string(tc) && !strcmp(json_string_value(tc), "none")))
        return fail(e, 400, "tool_choice", "unsupported_parameter",
                    "'tool_choice' is not supported by this server");
    json_t *rf = json_object_get(o, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_object_get(rf, "type");
        if (!json_is_object(rf) || !json_is_string(t) || strcmp(json_string_value(t), "text"))
            return fail(e, 400, "response_format", "unsupported_parameter",
                        "only response_format {\"type\": \"text\"} is supported");
    }
    json_t *user = json_object_get(o, "user");
    if (user && !json_is_null(user) && !json_is_string(user))
        return fail(e, 400, "user", NULL, "'user' must be a string");
    return 0;
}

/* The prompt's tokens for the served model; the number to generate (capped by the
 * context). */
static int prepare(oerr *e, const params *p, const served *sv, uint32_t max_default, int32_t **ids,
                   size_t *n_ids, uint32_t *n_predict)
{
    *ids = NULL;
    *n_ids = 0;
    const eng_tokenizer *tok = eng_model_tokenizer(sv->m);
    const char *param = p->chat ? "messages" : "prompt";
    int rc;
    if (p->chat) {
        char *text = NULL;
        rc = eng_chat_apply(sv->tmpl, sv->sys, p->msgs, p->n_msgs, true, &text);
        if (!rc) rc = eng_tokenize(tok, text, strlen(text), true, true, ids, n_ids);
        free(text);
    } else {
        rc = eng_tokenize(tok, p->prompt, p->prompt_len, true, false, ids, n_ids);
    }
    if (rc == MLV_ENOMEM) return fail(e, 500, NULL, NULL, "out of memory");
    if (rc) return fail(e, 400, param, NULL, "%s", core_err_last());
    if (*n_ids == 0) return fail(e, 400, param, NULL, "'%s' is empty", param);
    if (*n_ids >= sv->n_ctx)
        return fail(e, 400, param, "context_length_exceeded",
                    "the prompt is %zu tokens: this model's context is %u tokens, and it needs "
                    "room for at least one more",
                    *n_ids, sv->n_ctx);
    uint64_t want = p->max_tokens > 0 ? (uint64_t)p->max_tokens : max_default;
    uint64_t room = sv->n_ctx - *n_ids;
    *n_predict = (uint32_t)(want < room ? want : room);
    return 0;
}

/* ============================================================ generation ==== */

/* One generation's text, stop strings and streaming. */
typedef struct gen {
    oreq *q;
    const params *p;
    const char *kind; /* "text_completion" | "chat.completion.chunk" */
    char id[40];
    int64_t created;
    core_buf text; /* every byte generated */
    size_t sent;   /* text[0, sent) went out (streaming) */
    size_t end;    /* the answer is text[0, end) once a stop string was found */
    bool stop_hit;
    bool started; /* stream: headers and the role chunk sent */
    bool oom;
    double t_first; /* time of the first token, 0 before */
} gen;

static int sse(gen *g, json_t *chunk)
{
    char *text = chunk ? core_json_dumps(chunk, JSON_COMPACT) : NULL;
    json_decref(chunk);
    if (!text) return g->oom = true, -1;
    core_buf b = {0};
    core_buf_appendf(&b, "data: %s\n\n", text);
    free(text);
    int rc = b.failed ? -1 : body_write(g->q, b.data, b.len);
    core_buf_free(&b);
    return rc;
}

/* A stream chunk: content (may be NULL: none), finish_reason (may be NULL). */
static json_t *chunk_json(gen *g, const char *content, const char *finish, bool role)
{
    json_t *choice;
    if (g->p->chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (content) json_object_set_new(delta, "content", json_string(content));
        choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "delta", delta, "logprobs",
                           "finish_reason", finish ? json_string(finish) : json_null());
    } else {
        choice = json_pack("{s:i,s:s,s:n,s:o}", "index", 0, "text", content ? content : "",
                           "logprobs", "finish_reason", finish ? json_string(finish) : json_null());
    }
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", g->id, "object", g->kind, "created",
                     (json_int_t)g->created, "model", g->q->model, "choices", choice);
}

static int stream_start(gen *g)
{
    if (g->started) return 0;
    g->started = true;
    send_head(g->q, 200, "text/event-stream", -1, NULL);
    if (g->p->chat) return sse(g, chunk_json(g, "", NULL, true));
    return 0;
}

/* Sends text[sent, upto) as one chunk (invalid UTF-8 replaced, as the final text is). */
static int emit(gen *g, size_t upto)
{
    if (stream_start(g)) return -1;
    if (upto <= g->sent) return 0;
    char *piece = core_utf8_valid_copy(g->text.data + g->sent, upto - g->sent);
    if (!piece) return g->oom = true, -1;
    g->sent = upto;
    int rc = sse(g, chunk_json(g, piece, NULL, false));
    free(piece);
    return rc;
}

/* The longest tail of the text that is the start of a stop string: it may yet become one,
 * so it is held back. */
static size_t holdback(const gen *g)
{
    size_t best = 0, avail = g->text.len - g->sent;
    for (int i = 0; i < g->p->n_stop; i++) {
        size_t k = g->p->stop_len[i] - 1;
        if (k > avail) k = avail;
        for (; k > best; k--)
            if (!memcmp(g->text.data + g->text.len - k, g->p->stop[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

/* hi, moved back to the start of a UTF-8 character that is not complete before hi. */
static size_t utf8_cut(const char *s, size_t lo, size_t hi)
{
    for (size_t i = hi; i > lo && hi - i < 4; i--) {
        unsigned char c = (unsigned char)s[i - 1];
        if ((c & 0xc0) == 0x80) continue; /* a continuation byte: look further back */
        size_t need = c < 0x80         ? 1
                      : (c >> 5) == 6  ? 2
                      : (c >> 4) == 14 ? 3
                      : (c >> 3) == 30 ? 4
                                       : 1;
        return i - 1 + need > hi ? i - 1 : hi;
    }
    return hi;
}

static int on_token(void *arg, int32_t id, const char *piece, size_t len)
{
    (void)id;
    gen *g = arg;
    eng_server *s = g->q->s;
    if (g->t_first == 0) g->t_first = core_now_s();
    int64_t now = (int64_t)core_now_s();
    pthread_mutex_lock(&s->m.rate_mu);
    ring_add(&s->m.tokens, now, 1);
    pthread_mutex_unlock(&s->m.rate_mu);
    if (atomic_load(&s->stopping)) return 1;
    size_t old = g->text.len;
    core_buf_append(&g->text, piece, len);
    if (g->text.failed) return g->oom = true, 1;
    if (g->p->n_stop) {
        /* a stop string ending in this piece starts at most max_stop - 1 bytes before it */
        size_t from = old >= g->p->max_stop ? old - g->p->max_stop + 1 : 0;
        if (from < g->sent) from = g->sent;
        size_t hit = SIZE_MAX;
        for (int i = 0; i < g->p->n_stop; i++) {
            const char *f =
                memmem(g->text.data + from, g->text.len - from, g->p->stop[i], g->p->stop_len[i]);
            if (f && (size_t)(f - g->text.data) < hit) hit = (size_t)(f - g->text.data);
        }
        if (hit != SIZE_MAX) { /* finish() sends what comes before it */
            g->stop_hit = true;
            g->end = hit;
            return 1;
        }
    }
    if (!g->p->stream) return 0;
    size_t upto = utf8_cut(g->text.data, g->sent, g->text.len - holdback(g));
    if (upto > g->sent && emit(g, upto)) return 1; /* the client went away */
    if (!g->started && stream_start(g)) return 1;
    return 0;
}

static const char *finish_reason(const gen *g, const eng_batch_result *r)
{
    if (g->stop_hit || !strcmp(r->stop_reason, "eog")) return "stop";
    return "length";
}

static json_t *usage_json(const eng_batch_result *r)
{
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)r->n_prompt, "completion_tokens",
                     (json_int_t)r->n_gen, "total_tokens", (json_int_t)(r->n_prompt + r->n_gen));
}

static void random_id(char *out, size_t n, const char *prefix)
{
    unsigned char raw[12] = {0};
    char hex[25];
    core_random(raw, sizeof raw);
    core_hex(hex, raw, sizeof raw);
    snprintf(out, n, "%s%s", prefix, hex);
}

/* The end of a successful generation: the rest of the stream, or the whole reply. */
static void finish(gen *g, const eng_batch_result *r)
{
    oreq *q = g->q;
    const char *why = finish_reason(g, r);
    size_t end = g->stop_hit ? g->end : g->text.len;
    if (g->p->stream) {
        if (emit(g, end) == 0 && sse(g, chunk_json(g, NULL, why, false)) == 0 &&
            g->p->include_usage) {
            json_t *u = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", g->id, "object", g->kind,
                                  "created", (json_int_t)g->created, "model", q->model, "choices",
                                  "usage", usage_json(r));
            sse(g, u);
        }
        static const char done[] = "data: [DONE]\n\n";
        if (!body_write(q, done, sizeof done - 1) && q->chunked) body_write(q, "", 0);
        return;
    }
    char *text = core_utf8_valid_copy(g->text.data ? g->text.data : "", end);
    if (!text) {
        oerr e;
        fail(&e, 500, NULL, NULL, "out of memory");
        reply_error(q, &e);
        return;
    }
    json_t *choice = g->p->chat
                         ? json_pack("{s:i,s:{s:s,s:s},s:n,s:s}", "index", 0, "message", "role",
                                     "assistant", "content", text, "logprobs", "finish_reason", why)
                         : json_pack("{s:i,s:s,s:n,s:s}", "index", 0, "text", text, "logprobs",
                                     "finish_reason", why);
    free(text);
    json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", g->id, "object",
                          g->p->chat ? "chat.completion" : "text_completion", "created",
                          (json_int_t)g->created, "model", q->model, "choices", choice, "usage",
                          usage_json(r));
    reply_json(q, 200, j, NULL);
}

/* Reads the body (at most MAX_BODY bytes, valid UTF-8, a JSON object). */
static int read_body(oerr *e, oreq *q, json_t **out)
{
    *out = NULL;
    long long cl = mg_get_request_info(q->c)->content_length;
    if (cl > (long long)MAX_BODY)
        return fail(e, 413, NULL, "request_too_large",
                    "the request body is %lld bytes: the limit is %zu (1 MiB)", cl, MAX_BODY);
    size_t cap = cl >= 0 ? (size_t)cl : MAX_BODY + 1, got = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return fail(e, 500, NULL, NULL, "out of memory");
    int n;
    while (got < cap && (n = mg_read(q->c, buf + got, cap - got)) > 0)
        got += (size_t)n;
    int rc = 0;
    json_error_t je;
    size_t bad;
    if (got > MAX_BODY) {
        rc = fail(e, 413, NULL, "request_too_large", "the request body is over the %zu-byte limit",
                  MAX_BODY);
    } else if (cl >= 0 && got != (size_t)cl) {
        rc = fail(e, 400, NULL, NULL, "the request body ended after %zu of %lld bytes", got, cl);
    } else if (got == 0) {
        rc = fail(e, 400, NULL, NULL, "the request body is empty: send a JSON object");
    } else if ((bad = eng_utf8_check(buf, got)) != got) {
        rc = fail(e, 400, NULL, NULL, "the request body is not valid UTF-8 (byte %zu)", bad);
    } else if (!(*out = json_loadb(buf, got, JSON_REJECT_DUPLICATES, &je))) {
        rc = fail(e, 400, NULL, NULL,
                  "We could not parse the JSON body of your request: %s (line %d, column %d)",
                  je.text, je.line, je.column);
    } else if (!json_is_object(*out)) {
        rc = fail(e, 400, NULL, NULL, "the request body must be a JSON object");
        json_decref(*out);
        *out = NULL;
    }
    free(buf);
    return rc;
}

static void complete(oreq *q, bool chat)
{
    eng_server *s = q->s;
    oerr e = {0};
    json_t *body = NULL;
    params p;
    memset(&p, 0, sizeof p);
    served *sv = acquire(s);
    gen g = {.q = q, .p = &p};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (sv) snprintf(q->model, sizeof q->model, "%s", sv->id);
    if (read_body(&e, q, &body)) goto done;
    if (!sv) {
        fail(&e, 503, NULL, "model_not_loaded", "no model is loaded yet: retry shortly");
        goto done;
    }
    if (parse_params(&e, body, chat, &p)) goto done;
    g.kind = chat ? "chat.completion.chunk" : "text_completion";
    random_id(g.id, sizeof g.id, chat ? "chatcmpl-" : "cmpl-");
    g.created = (int64_t)time(NULL);
    eng_batch_result r = {0};
    for (int attempt = 0;; attempt++) {
        uint32_t n_predict = 0;
        free(ids);
        if (prepare(&e, &p, sv, s->o.max_tokens_default, &ids, &n_ids, &n_predict)) goto done;
        eng_batch_req req = {.prompt = ids,
                             .n_prompt = n_ids,
                             .n_predict = n_predict,
                             .sp = {.temp = (float)p.temperature,
                                    .top_k = 0,
                                    .top_p = (float)p.top_p,
                                    .min_p = 0,
                                    .repeat_penalty = 1,
                                    .repeat_last_n = 64,
                                    .seed = p.seed},
                             .on_token = on_token,
                             .arg = &g};
        memset(&r, 0, sizeof r);
        int rc = eng_batch_run(sv->b, &req, &r);
        if (rc == 0) break;
        if (rc == MLV_EBUSY && attempt == 0 && !g.started && g.text.len == 0) {
            /* the model is being unloaded: once more on the one that replaces it */
            release(s, sv);
            if (!(sv = acquire(s))) {
                fail(&e, 503, NULL, "model_not_loaded", "the model was unloaded: retry shortly");
                goto done;
            }
            snprintf(q->model, sizeof q->model, "%s", sv->id);
            g.stop_hit = false;
            g.t_first = 0;
            continue;
        }
        if (rc == MLV_ELIMIT)
            fail(&e, 429, NULL, "queue_full",
                 "the server is busy: every generation slot is taken and the queue is full; "
                 "retry in a moment");
        else if (rc == MLV_EBUSY)
            fail(&e, 503, NULL, "model_unloading", "the model is being unloaded: retry");
        else if (rc == MLV_EINVAL)
            fail(&e, 400, chat ? "messages" : "prompt", NULL, "%s", core_err_last());
        else
            fail(&e, 500, NULL, NULL, "generation failed: %s", core_err_last());
        if (g.started) { /* too late for a status: an error event ends the stream */
            json_t *ej = json_pack("{s:{s:s,s:s}}", "error", "message", e.msg, "type", e.type);
            sse(&g, ej);
            if (q->chunked) body_write(q, "", 0);
            q->status = 200;
            e.status = 0;
        }
        goto done;
    }
    if (g.oom && !g.started) {
        fail(&e, 500, NULL, NULL, "out of memory");
        goto done;
    }
    if (atomic_load(&s->stopping) && !g.started && !g.stop_hit &&
        !strcmp(r.stop_reason, "callback")) {
        fail(&e, 503, NULL, "shutting_down", "the server is shutting down");
        goto done;
    }
    if (q->gone) {
        q->status = 499;
    } else {
        finish(&g, &r);
        if (q->gone) q->status = 499;
    }
    /* metrics of a generation that ran */
    metrics *m = &s->m;
    double now = core_now_s();
    int k = chat ? 1 : 0;
    histo_observe(&m->latency[k], LAT_BOUNDS, N_LAT, now - q->t0);
    if (g.t_first > 0) histo_observe(&m->ttft[k], TTFT_BOUNDS, N_TTFT, g.t_first - q->t0);
    atomic_fetch_add_explicit(&m->generated, r.n_gen, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->prompt, r.n_prompt, memory_order_relaxed);
    pthread_mutex_lock(&m->rate_mu);
    ring_add(&m->done, (int64_t)now, 1);
    pthread_mutex_unlock(&m->rate_mu);
done:
    if (e.status) reply_error(q, &e);
    release(s, sv);
    free(ids);
    core_buf_free(&g.text);
    params_clear(&p);
    json_decref(body);
}

/* ========================================================== other routes ==== */

static json_t *model_object(const served *sv)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", sv->id, "object", "model", "created",
                     (json_int_t)sv->created, "owned_by", "mlvault");
}

static void models(oreq *q, const char *which)
{
    served *sv = acquire(q->s);
    if (sv) snprintf(q->model, sizeof q->model, "%s", sv->id);
    if (which) { /* GET /v1/models/{id} */
        if (sv && !strcmp(which, sv->id)) {
            reply_json(q, 200, model_object(sv), NULL);
        } else {
            oerr e;
            fail(&e, 404, "model", "model_not_found",
                 "The model '%.100s' does not exist: this "
                 "server serves '%s'",
                 which, sv ? sv->id : "nothing yet");
            reply_error(q, &e);
        }
    } else {
        json_t *data = json_array();
        if (sv) json_array_append_new(data, model_object(sv));
        reply_json(q, 200, json_pack("{s:s,s:o}", "object", "list", "data", data), NULL);
    }
    release(q->s, sv);
}

static void health(oreq *q)
{
    eng_server *s = q->s;
    served *sv = acquire(s);
    json_t *doc;
    if (sv) {
        eng_batch_stats st = {0};
        eng_batcher_stats(sv->b, &st);
        snprintf(q->model, sizeof q->model, "%s", sv->id);
        doc = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i}", "status", "ok", "model", sv->id, "n_ctx",
                        (int)sv->n_ctx, "running", st.running, "waiting", st.waiting, "max_seqs",
                        st.max_seqs, "max_queue", st.max_queue);
    } else {
        doc = json_pack("{s:s}", "status", "loading");
    }
    if (doc && s->o.hooks.health) s->o.hooks.health(s->o.hooks.arg, doc);
    reply_json(q, sv ? 200 : 503, doc, NULL);
    release(s, sv);
}

static void histo_text(core_buf *b, const char *name, const histo *h, const double *bounds, int n,
                       const char *endpoint)
{
    uint64_t cum = 0;
    for (int i = 0; i < n; i++) {
        cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < n - 1)
            core_buf_appendf(b, "%s_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", name, endpoint,
                             bounds[i], (unsigned long long)cum);
        else
            core_buf_appendf(b, "%s_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", name, endpoint,
                             (unsigned long long)cum);
    }
    core_buf_appendf(b, "%s_sum{endpoint=\"%s\"} %.6f\n", name, endpoint,
                     atomic_load_explicit(&h->sum_us, memory_order_relaxed) / 1e6);
    core_buf_appendf(b, "%s_count{endpoint=\"%s\"} %llu\n", name, endpoint,
                     (unsigned long long)cum);
}

void eng_server_metrics(eng_server *s, core_buf *b)
{
    metrics *m = &s->m;
    core_prom_head(
        b, "mlvault_inference_requests_total", "counter",
        "Requests to the inference server by endpoint and status (499: the client went away).");
    for (int ep = 0; ep < N_EP; ep++)
        for (int c = 0; c < N_CODES; c++) {
            uint64_t n = atomic_load_explicit(&m->requests[ep][c], memory_order_relaxed);
            if (!n) continue;
            if (CODES[c])
                core_buf_appendf(b,
                                 "mlvault_inference_requests_total{endpoint=\"%s\",code=\"%d\"} "
                                 "%llu\n",
                                 EP_NAME[ep], CODES[c], (unsigned long long)n);
            else
                core_buf_appendf(b,
                                 "mlvault_inference_requests_total{endpoint=\"%s\",code=\"other\"} "
                                 "%llu\n",
                                 EP_NAME[ep], (unsigned long long)n);
        }
    core_prom_head(b, "mlvault_inference_request_duration_seconds", "histogram",
                   "Time from a completion request's arrival to the end of its reply.");
    histo_text(b, "mlvault_inference_request_duration_seconds", &m->latency[0], LAT_BOUNDS, N_LAT,
               EP_NAME[EP_COMPLETIONS]);
    histo_text(b, "mlvault_inference_request_duration_seconds", &m->latency[1], LAT_BOUNDS, N_LAT,
               EP_NAME[EP_CHAT]);
    core_prom_head(b, "mlvault_inference_ttft_seconds", "histogram",
                   "Time from a completion request's arrival to its first generated token.");
    histo_text(b, "mlvault_inference_ttft_seconds", &m->ttft[0], TTFT_BOUNDS, N_TTFT,
               EP_NAME[EP_COMPLETIONS]);
    histo_text(b, "mlvault_inference_ttft_seconds", &m->ttft[1], TTFT_BOUNDS, N_TTFT,
               EP_NAME[EP_CHAT]);
    core_prom_head(b, "mlvault_inference_generated_tokens_total", "counter", "Tokens generated.");
    core_buf_appendf(b, "mlvault_inference_generated_tokens_total %llu\n",
                     (unsigned long long)atomic_load(&m->generated));
    core_prom_head(b, "mlvault_inference_prompt_tokens_total", "counter",
                   "Prompt tokens processed.");
    core_buf_appendf(b, "mlvault_inference_prompt_tokens_total %llu\n",
                     (unsigned long long)atomic_load(&m->prompt));
    int64_t now = (int64_t)core_now_s();
    pthread_mutex_lock(&m->rate_mu);
    uint64_t recent = ring_sum(&m->tokens, now, 10);
    pthread_mutex_unlock(&m->rate_mu);
    core_prom_head(b, "mlvault_inference_tokens_per_second", "gauge",
                   "Tokens generated per second over the last 10 seconds.");
    core_buf_appendf(b, "mlvault_inference_tokens_per_second %.3f\n", recent / 10.0);
    served *sv = acquire(s);
    eng_batch_stats st = {0};
    if (sv) eng_batcher_stats(sv->b, &st);
    core_prom_head(b, "mlvault_inference_queue_length", "gauge",
                   "Requests waiting for a generation slot.");
    core_buf_appendf(b, "mlvault_inference_queue_length %d\n", st.waiting);
    core_prom_head(b, "mlvault_inference_running_sequences", "gauge",
                   "Sequences being generated now.");
    core_buf_appendf(b, "mlvault_inference_running_sequences %d\n", st.running);
    core_prom_head(b, "mlvault_inference_model_info", "gauge", "The model being served (1).");
    if (sv) {
        core_buf_appendf(b, "mlvault_inference_model_info{model=\"");
        core_prom_label(b, sv->id);
        core_buf_appendf(b, "\"} 1\n");
    }
    release(s, sv);
}

static void metrics_reply(oreq *q)
{
    core_buf b = {0};
    eng_server_metrics(q->s, &b);
    if (q->s->o.hooks.metrics) q->s->o.hooks.metrics(q->s->o.hooks.arg, &b);
    if (b.failed) {
        core_buf_free(&b);
        oerr e;
        fail(&e, 500, NULL, NULL, "out of memory");
        reply_error(q, &e);
        return;
    }
    reply_bytes(q, 200, "text/plain; version=0.0.4; charset=utf-8", b.data ? b.data : "", b.len,
                NULL);
    core_buf_free(&b);
}

/* ============================================================== dispatch ==== */

static bool method_is(const char *m, const char *want)
{
    return m && !strcmp(m, want);
}

int eng_server_handle(eng_server *s, struct mg_connection *c)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *path = ri->local_uri ? ri->local_uri : "";
    const char *method = ri->request_method;
    int ep;
    if (!strcmp(path, "/health"))
        ep = EP_HEALTH;
    else if (!strcmp(path, "/metrics"))
        ep = EP_METRICS;
    else if (!strcmp(path, "/v1/completions"))
        ep = EP_COMPLETIONS;
    else if (!strcmp(path, "/v1/chat/completions"))
        ep = EP_CHAT;
    else if (!strcmp(path, "/v1/models") || !strncmp(path, "/v1/models/", 11))
        ep = EP_MODELS;
    else if (!strcmp(path, "/v1") || !strncmp(path, "/v1/", 4))
        ep = EP_OTHER;
    else
        return 0;
    pthread_mutex_lock(&s->mu);
    s->inflight++;
    pthread_mutex_unlock(&s->mu);
    oreq q = {.s = s, .c = c, .ep = ep, .t0 = core_now_s()};
    oerr e = {0};
    bool get = method_is(method, "GET"), post = method_is(method, "POST");
    if (ep != EP_HEALTH && ep != EP_METRICS && !key_ok(s, c)) {
        eng_server_current(s, q.model, sizeof q.model);
        fail(&e, 401, NULL, "invalid_api_key", "%s",
             mg_get_header(c, "Authorization") ? "Incorrect API key provided"
                                               : "No API key provided: send Authorization: "
                                                 "Bearer KEY");
        reply_error(&q, &e);
    } else if (ep == EP_OTHER) {
        eng_server_current(s, q.model, sizeof q.model);
        fail(&e, 404, NULL, "unknown_url", "Unknown request URL: %.8s %.200s", method ? method : "",
             path);
        reply_error(&q, &e);
    } else if ((ep == EP_COMPLETIONS || ep == EP_CHAT) ? !post : !get) {
        eng_server_current(s, q.model, sizeof q.model);
        fail(&e, 405, NULL, "method_not_allowed", "%.8s %s: use %s", method ? method : "?", path,
             (ep == EP_COMPLETIONS || ep == EP_CHAT) ? "POST" : "GET");
        reply_error(&q, &e);
    } else {
        switch (ep) {
        case EP_HEALTH: health(&q); break;
        case EP_METRICS: metrics_reply(&q); break;
        case EP_MODELS: models(&q, path[10] == '/' && path[11] ? path + 11 : NULL); break;
        default: complete(&q, ep == EP_CHAT);
        }
    }
    int ci = N_CODES - 1;
    for (int i = 0; i < N_CODES - 1; i++)
        if (CODES[i] == q.status) ci = i;
    atomic_fetch_add_explicit(&s->m.requests[ep][ci], 1, memory_order_relaxed);
    core_log(CORE_LOG_INFO, "engine: %s %s %d %s %.1fms", method ? method : "?", path, q.status,
             q.model, (core_now_s() - q.t0) * 1000);
    pthread_mutex_lock(&s->mu);
    if (--s->inflight == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    return 1;
}

/* ============================================================== listener ==== */

typedef struct request_run {
    eng_server *s;
    struct mg_connection *c;
    int handled;
} request_run;

static void *request_main(void *arg)
{
    request_run *run = arg;
    run->handled = eng_server_handle(run->s, run->c);
    if (!run->handled) {
        oreq q = {.s = run->s, .c = run->c};
        oerr e;
        const struct mg_request_info *ri = mg_get_request_info(run->c);
        fail(&e, 404, NULL, "unknown_url", "Unknown request URL: %.8s %.200s",
             ri->request_method ? ri->request_method : "", ri->local_uri ? ri->local_uri : "");
        reply_error(&q, &e);
    }
    return NULL;
}

/* CivetWeb's workers have small stacks (the library's build setting) and jansson's parser
 * recurses: each request runs on a thread of ours with a proper stack while the worker
 * waits, as the registry's server does. */
static int listener_handle(struct mg_connection *c, void *cbdata)
{
    request_run run = {.s = cbdata, .c = c};
    if (core_run_on_stack(REQUEST_STACK, request_main, &run) != 0) {
        mg_send_http_error(c, 503, "%s", "server overloaded: cannot start a request thread");
        return 503;
    }
    return 200;
}

static int listener_log(const struct mg_connection *c, const char *msg)
{
    (void)c;
    core_log(CORE_LOG_WARN, "engine http: %s", msg);
    return 1;
}

int eng_server_listen(eng_server *s, const char *addr)
{
    if (s->mg) return core_err_set(MLV_EINVAL, "the server is already listening");
    if (!addr || !*addr) addr = "127.0.0.1:8000";
    if (!strrchr(addr, ':') || strlen(addr) > 200)
        return core_err_set(MLV_EINVAL, "listen address '%.200s': expected ADDR:PORT", addr);
    /* a worker per request that can be generating or queued, and a few for /health and
     * /metrics beside them */
    int seqs = s->o.batch.max_seqs > 0 ? s->o.batch.max_seqs : 8;
    int queue = s->o.batch.max_queue > 0 ? s->o.batch.max_queue : 64;
    char threads[16];
    snprintf(threads, sizeof threads, "%d", seqs + queue + 16);
    const char *opts[16];
    int n = 0;
    opts[n++] = "listening_ports", opts[n++] = addr;
    opts[n++] = "num_threads", opts[n++] = threads;
    opts[n++] = "enable_keep_alive", opts[n++] = "yes";
    opts[n++] = "keep_alive_timeout_ms", opts[n++] = "15000";
    /* a limit on each network read and write, not on the request: generations may be long */
    opts[n++] = "request_timeout_ms", opts[n++] = "600000";
    opts[n++] = "tcp_nodelay", opts[n++] = "1";
    opts[n++] = "decode_url", opts[n++] = "yes";
    opts[n++] = NULL;
    struct mg_callbacks cb = {0};
    cb.log_message = listener_log;
    mg_init_library(0);
    s->mg = mg_start(&cb, s, opts);
    if (!s->mg)
        return core_err_set(MLV_EIO, "cannot listen on %s (in use, or not an address here?)", addr);
    mg_set_request_handler(s->mg, "/", listener_handle, s);
    struct mg_server_port sp[4];
    int np = mg_get_server_ports(s->mg, 4, sp);
    s->port = np > 0 ? sp[0].port : 0;
    return 0;
}

int eng_server_port(const eng_server *s)
{
    return s ? s->port : 0;
}
