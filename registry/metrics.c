/* registry/metrics.c: /healthz and /metrics — the registry's Prometheus exposition
 * (text format 0.0.4; DESIGN.md, Observability): HTTP requests and latency by route
 * pattern, jobs by state, promotions by state, each channel's current accuracy, open
 * upload sessions, build info. Request counters are lock-free atomics updated by every
 * worker; the rest is read from the catalog when scraped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/serve_model.h"
#include "registry/server_internal.h"

static const char *METHODS[SRV_N_METHODS] = {"GET", "POST", "PUT", "DELETE", "HEAD", "other"};
static const int CODES[SRV_N_CODES] = {200, 201, 206, 304, 400, 401, 403, 404, 405, 409,
                                       413, 416, 422, 429, 500, 501, 503, 0,   -1};
/* upper bounds in seconds; the last bucket is +Inf */
static const double BOUNDS[SRV_N_BUCKETS - 1] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,  0.5,   1,    2.5,   10};

static int route_slot(int route)
{
    return route >= 0 && route < srv_route_count() ? route : SRV_MAX_ROUTES - 1;
}

static const char *route_label(int slot)
{
    return slot == SRV_MAX_ROUTES - 1 ? "unmatched" : srv_route_pattern(slot);
}

void srv_metrics_observe(struct reg_server *s, int route, const char *method, int status,
                         double seconds)
{
    srv_metrics *m = s->metrics;
    int r = route_slot(route), mi = SRV_N_METHODS - 1, ci = SRV_N_CODES - 1;
    for (int i = 0; i < SRV_N_METHODS - 1; i++)
        if (!strcmp(method, METHODS[i])) mi = i;
    for (int i = 0; i < SRV_N_CODES - 1; i++)
        if (CODES[i] == status) ci = i;
    atomic_fetch_add_explicit(&m->requests[r][mi][ci], 1, memory_order_relaxed);
    int b = SRV_N_BUCKETS - 1;
    for (int i = 0; i < SRV_N_BUCKETS - 1; i++)
        if (seconds <= BOUNDS[i]) {
            b = i;
            break;
        }
    atomic_fetch_add_explicit(&m->buckets[r][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->count[r], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_us[r], (uint64_t)(seconds * 1e6), memory_order_relaxed);
}

static void http_metrics(core_buf *b, srv_metrics *m)
{
    core_prom_head(b, "mlvault_http_requests_total", "counter",
                   "HTTP requests by route pattern, method and status.");
    for (int r = 0; r < SRV_MAX_ROUTES; r++) {
        if (r >= srv_route_count() && r != SRV_MAX_ROUTES - 1) continue;
        for (int mi = 0; mi < SRV_N_METHODS; mi++)
            for (int ci = 0; ci < SRV_N_CODES; ci++) {
                uint64_t n = atomic_load_explicit(&m->requests[r][mi][ci], memory_order_relaxed);
                if (!n) continue;
                core_buf_appendf(b, "mlvault_http_requests_total{route=\"");
                core_prom_label(b, route_label(r));
                if (CODES[ci] > 0)
                    core_buf_appendf(b, "\",method=\"%s\",code=\"%d\"} %llu\n", METHODS[mi],
                                     CODES[ci], (unsigned long long)n);
                else
                    core_buf_appendf(b, "\",method=\"%s\",code=\"%s\"} %llu\n", METHODS[mi],
                                     CODES[ci] == 0 ? "none" : "other", (unsigned long long)n);
            }
    }
    core_prom_head(b, "mlvault_http_request_duration_seconds", "histogram",
                   "Time from request to the end of the reply, by route pattern.");
    for (int r = 0; r < SRV_MAX_ROUTES; r++) {
        uint64_t count = atomic_load_explicit(&m->count[r], memory_order_relaxed);
        if (!count) continue;
        uint64_t cum = 0;
        for (int i = 0; i < SRV_N_BUCKETS; i++) {
            cum += atomic_load_explicit(&m->buckets[r][i], memory_order_relaxed);
            core_buf_appendf(b, "mlvault_http_request_duration_seconds_bucket{route=\"");
            core_prom_label(b, route_label(r));
            if (i < SRV_N_BUCKETS - 1)
                core_buf_appendf(b, "\",le=\"%g\"} %llu\n", BOUNDS[i], (unsigned long long)cum);
            else
                core_buf_appendf(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        /* +Inf must equal _count: use the bucket total, read once */
        core_buf_appendf(b, "mlvault_http_request_duration_seconds_sum{route=\"");
        core_prom_label(b, route_label(r));
        core_buf_appendf(b, "\"} %.6f\n",
                         atomic_load_explicit(&m->sum_us[r], memory_order_relaxed) / 1e6);
        core_buf_appendf(b, "mlvault_http_request_duration_seconds_count{route=\"");
        core_prom_label(b, route_label(r));
        core_buf_appendf(b, "\"} %llu\n", (unsigned long long)cum);
    }
}

/* {"state": n, ...} as one gauge with a label. */
static void gauge_by(core_buf *b, const char *name, const char *lbl, json_t *counts)
{
    const char *k;
    json_t *v;
    json_object_foreach(counts, k, v)
    {
        if (!json_is_integer(v)) continue;
        core_buf_appendf(b, "%s{%s=\"", name, lbl);
        core_prom_label(b, k);
        core_buf_appendf(b, "\"} %lld\n", (long long)json_integer_value(v));
    }
}

int api_metrics(srv_req *q)
{
    json_t *jobs = NULL, *counts = NULL, *acc = NULL;
    if (q->r && reg_jobs_counts(q->r, &jobs) != 0) jobs = NULL;
    if (q->r && reg_promote_stats(q->r, &counts, &acc) != 0) counts = acc = NULL;
    core_buf b = {0};
    http_metrics(&b, q->s->metrics);
    core_prom_head(&b, "mlvault_jobs", "gauge", "Jobs by state.");
    gauge_by(&b, "mlvault_jobs", "state", jobs);
    core_prom_head(&b, "mlvault_promotions", "gauge", "Promotion requests by state.");
    gauge_by(&b, "mlvault_promotions", "state", counts);
    core_prom_head(&b, "mlvault_channel_accuracy", "gauge",
                   "Gate metric of the version each channel points at (a fraction).");
    size_t i;
    json_t *a;
    json_array_foreach(acc, i, a)
    {
        json_t *v = json_object_get(a, "value");
        if (!json_is_number(v)) continue;
        core_buf_appendf(&b, "mlvault_channel_accuracy{model=\"");
        core_prom_label(&b, json_string_value(json_object_get(a, "model")));
        core_buf_appendf(&b, "\",channel=\"");
        core_prom_label(&b, json_string_value(json_object_get(a, "channel")));
        core_buf_appendf(&b, "\",metric=\"");
        core_prom_label(&b, json_string_value(json_object_get(a, "metric")));
        core_buf_appendf(&b, "\"} %.9g\n", json_number_value(v));
    }
    core_prom_head(&b, "mlvault_uploads_open", "gauge", "Upload sessions open.");
    core_buf_appendf(&b, "mlvault_uploads_open %d\n", q->r ? srv_uploads_open(q->r) : 0);
    core_prom_head(&b, "mlvault_build_info", "gauge", "The mlvault version serving (always 1).");
    core_buf_appendf(&b, "mlvault_build_info{version=\"%s\"} 1\n", MLV_VERSION);
    if (q->s->serve) eng_server_metrics(srv_serve_engine(q->s->serve), &b); /* --serve-model */
    json_decref(jobs);
    json_decref(counts);
    json_decref(acc);
    char *text = core_buf_take(&b);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");
    srv_reply_bytes(q, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
    free(text);
    return 0;
}

int api_healthz(srv_req *q)
{
    return srv_reply_json(q, 200, json_pack("{s:s,s:s}", "status", "ok", "version", MLV_VERSION));
}
