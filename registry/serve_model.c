/* registry/serve_model.c: the registry serving a channel's current release itself
 * (`mlvault serve --serve-model NAME@CHANNEL`): a thread that follows the channel's
 * release record in the catalog and swaps each new release's version into the engine's
 * OpenAI server (engine/openai.c), which server.c hands /v1/... and /health. The
 * versions come from this home (reg_load: verified and decrypted into memory), not over
 * the network: serving nodes (node.c) are the remote counterpart. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "registry/registry.h"
#include "registry/serve_model.h"

#define TICK_S 2          /* seconds between reads of the channel */
#define RELOG_S 60.0      /* the same error again is logged at most this often */
#define MAX_BACKOFF_S 300 /* a release that keeps failing to load: retried at most this often */

struct srv_serve {
    char *home;
    char model[65], channel[65];
    eng_load_opts load;
    eng_server *eng;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu; /* stop and the state below */
    pthread_cond_t cv;
    bool stop;
    int64_t sequence; /* of the release being served (0: none yet) */
    int version;
    char last_error[512]; /* "" when the last look went well */
    double last_logged;
    /* a release whose load failed: retried after 2, 4, 8, ... s (each load is audited) */
    int64_t failed_seq;
    int fails;
    double retry_at;
};

/* The internal actor of the loads: a viewer that no token can become. */
static const reg_user ACTOR = {.id = 0, .name = "mlvault-serve", .role = REG_ROLE_VIEWER};

/* Records what went wrong (for /health) and logs it, the same message at most once a
 * minute. */
static void note_error(srv_serve *w, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", what, core_err_last());
    double now = core_now_s();
    pthread_mutex_lock(&w->mu);
    bool again = !strcmp(msg, w->last_error) && now - w->last_logged < RELOG_S;
    snprintf(w->last_error, sizeof w->last_error, "%s", msg);
    if (!again) w->last_logged = now;
    pthread_mutex_unlock(&w->mu);
    if (!again) fprintf(stderr, "mlvault: serve-model %s@%s: %s\n", w->model, w->channel, msg);
}

/* A failed load of release seq: the next try waits 2 s, then twice as long each time. */
static void load_failed(srv_serve *w, int64_t seq, const char *what)
{
    note_error(w, what);
    w->fails = seq == w->failed_seq ? w->fails + 1 : 1;
    w->failed_seq = seq;
    double wait = TICK_S;
    for (int i = 1; i < w->fails && wait < MAX_BACKOFF_S; i++)
        wait *= 2;
    w->retry_at = core_now_s() + (wait < MAX_BACKOFF_S ? wait : MAX_BACKOFF_S);
}

/* One look at the channel; loads and swaps in a new release. */
static void tick(srv_serve *w, reg_ctx **r)
{
    if (!*r && reg_open(r, w->home) != 0) {
        *r = NULL;
        note_error(w, "opening the catalog");
        return;
    }
    json_t *rel = NULL;
    int rc = reg_channel_release(*r, &ACTOR, w->model, w->channel, &rel);
    if (rc == MLV_ENOTFOUND) { /* /health says loading, and why */
        note_error(w, "waiting for the first release");
        return;
    }
    if (rc) {
        note_error(w, "reading the channel's release");
        return;
    }
    json_t *rec = json_object_get(rel, "record");
    json_t *js = json_object_get(rec, "sequence"), *jv = json_object_get(rec, "version");
    if (!json_is_integer(js) || !json_is_integer(jv)) {
        json_decref(rel);
        core_err_set(MLV_EINTEGRITY, "the release record has no sequence or version");
        note_error(w, "reading the channel's release");
        return;
    }
    int64_t seq = json_integer_value(js);
    int version = (int)json_integer_value(jv);
    json_decref(rel);
    pthread_mutex_lock(&w->mu);
    bool same = seq == w->sequence, renewal = !same && version == w->version;
    if (renewal) w->sequence = seq; /* a renewed record of the version being served */
    if (same || renewal) w->last_error[0] = 0;
    pthread_mutex_unlock(&w->mu);
    if (same || renewal) return;
    if (seq == w->failed_seq && core_now_s() < w->retry_at) return;

    char ref[96];
    snprintf(ref, sizeof ref, "%s:%d", w->model, version);
    double t0 = core_now_s();
    reg_loaded l;
    eng_model *m = NULL;
    char what[160];
    snprintf(what, sizeof what, "release %lld (%s)", (long long)seq, ref);
    if ((rc = reg_load(*r, &ACTOR, ref, &l)) != 0) {
        load_failed(w, seq, what);
        return;
    }
    rc = reg_loaded_open_model(&l, &w->load, &m);
    reg_loaded_clear(&l);
    if (rc) {
        load_failed(w, seq, what);
        return;
    }
    /* the state /health shows changes with the model it describes */
    pthread_mutex_lock(&w->mu);
    int64_t old_seq = w->sequence;
    int old_version = w->version;
    w->sequence = seq;
    w->version = version;
    w->last_error[0] = 0;
    pthread_mutex_unlock(&w->mu);
    if ((rc = eng_server_swap(w->eng, m, ref)) != 0) { /* m freed */
        pthread_mutex_lock(&w->mu);
        w->sequence = old_seq;
        w->version = old_version;
        pthread_mutex_unlock(&w->mu);
        load_failed(w, seq, what);
        return;
    }
    w->failed_seq = 0;
    fprintf(stderr, "mlvault: serve-model %s@%s: serving %s (release %lld, loaded in %.1f s)\n",
            w->model, w->channel, ref, (long long)seq, core_now_s() - t0);
}

static void *watch_main(void *arg)
{
    srv_serve *w = arg;
    reg_ctx *r = NULL;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        pthread_mutex_unlock(&w->mu);
        core_err_clear();
        tick(w, &r);
        pthread_mutex_lock(&w->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += TICK_S;
        while (!w->stop && pthread_cond_timedwait(&w->cv, &w->mu, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&w->mu);
    reg_close(r);
    return NULL;
}

/* /health: which channel this follows, the release served and the last error. */
static void health_hook(void *arg, json_t *doc)
{
    srv_serve *w = arg;
    char ch[140];
    snprintf(ch, sizeof ch, "%s@%s", w->model, w->channel);
    pthread_mutex_lock(&w->mu);
    json_object_set_new(doc, "channel", json_string(ch));
    json_object_set_new(doc, "release_sequence",
                        w->sequence ? json_integer(w->sequence) : json_null());
    char *err =
        w->last_error[0] ? core_utf8_valid_copy(w->last_error, strlen(w->last_error)) : NULL;
    pthread_mutex_unlock(&w->mu);
    json_object_set_new(doc, "last_error", err ? json_string(err) : json_null());
    free(err);
}

int srv_serve_start(srv_serve **out, const char *home, const char *spec, const eng_load_opts *lo,
                    const eng_batcher_opts *bo)
{
    *out = NULL;
    reg_ref ref;
    if (!spec || reg_ref_parse(spec, &ref) != 0 || !ref.channel[0] || ref.version != 0)
        return core_err_set(MLV_EINVAL, "--serve-model wants NAME@CHANNEL, not '%.100s'",
                            spec ? spec : "");
    srv_serve *w = calloc(1, sizeof *w);
    if (!w || !(w->home = strdup(home))) {
        free(w);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    snprintf(w->model, sizeof w->model, "%s", ref.name);
    snprintf(w->channel, sizeof w->channel, "%s", ref.channel);
    if (lo) w->load = *lo;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    eng_server_opts eo = {.hooks = {.health = health_hook, .arg = w}};
    if (bo) eo.batch = *bo;
    int rc = eng_server_new(&w->eng, &eo), err;
    if (rc == 0 && (err = pthread_create(&w->thread, NULL, watch_main, w)) != 0)
        rc = core_err_set(MLV_EIO, "cannot start the serve-model thread: %s", strerror(err));
    if (rc) {
        srv_serve_stop(w);
        return rc;
    }
    w->started = true;
    *out = w;
    return 0;
}

eng_server *srv_serve_engine(srv_serve *w)
{
    return w ? w->eng : NULL;
}

void srv_serve_stop(srv_serve *w)
{
    if (!w) return;
    if (w->started) {
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    eng_server_free(w->eng);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->home);
    free(w);
}
