/* cli/cmd_job.c: `mlvault job submit quantize|eval REF [OPTIONS] [--wait]`, `job list
 * [--state S]`, `job show ID`, `job log ID [--follow]`, `job cancel ID` — on the local
 * home or, with --registry / $MLVAULT_URL, on a registry server (docs/api.md, Jobs) —
 * and `job run ID`, which the scheduler (registry/jobs.c) starts in each job's child
 * process. Also the validator of job parameters and the waiting the remote quantize and
 * eval share. The jobs table and the scheduler are registry/jobs.c's.
 *
 * A job's parameters are the command line of the same local command: "ref" is its
 * positional argument, every other key a long option (true: a flag; an array: a
 * repeated option). On the server a job names stored versions only: no file paths. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

static const char *USAGE =
    "usage: mlvault job submit quantize|eval REF [OPTIONS] [--wait] | job list [--state S]\n"
    "       mlvault job show ID | job log ID [--follow] | job cancel ID";

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int parse_id(const char *s, int64_t *id)
{
    char *end;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v <= 0)
        return core_err_set(MLV_EINVAL, "job id '%s': expected a positive whole number",
                            s ? s : "");
    *id = v;
    return 0;
}

static const char *jstr(const json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

/* ---------------------------------------------------------- params ↔ argv ---- */

static int kind_spec(const char *kind, const cli_opt_spec **spec)
{
    if (kind && !strcmp(kind, "quantize")) return cli_quantize_spec(spec);
    if (kind && !strcmp(kind, "eval")) return cli_eval_spec(spec);
    return core_err_set(MLV_EINVAL, "unknown job kind '%s' (quantize, eval)", kind ? kind : "");
}

/* Options that name a dataset or a model besides the positional one. */
static bool names_artifact(const char *opt)
{
    return !strcmp(opt, "calib") || !strcmp(opt, "eval-data") || !strcmp(opt, "data") ||
           !strcmp(opt, "baseline");
}

typedef struct argv_buf {
    char *v[160];
    int n;
} argv_buf;

static void argv_free(argv_buf *b)
{
    for (int i = 0; i < b->n; i++)
        free(b->v[i]);
    b->n = 0;
}

static int argv_add(argv_buf *b, const char *s)
{
    if (b->n + 1 >= (int)(sizeof b->v / sizeof *b->v))
        return core_err_set(MLV_EINVAL, "job parameters: too many options");
    if (!(b->v[b->n] = strdup(s))) return core_err_set(MLV_ENOMEM, "out of memory");
    b->v[++b->n] = NULL;
    return 0;
}

static int argv_add_value(argv_buf *b, const char *opt, const json_t *v)
{
    char num[64];
    if (json_is_string(v)) return argv_add(b, json_string_value(v));
    if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        return argv_add(b, num);
    }
    if (json_is_real(v)) {
        snprintf(num, sizeof num, "%.15g", json_real_value(v));
        return argv_add(b, num);
    }
    return core_err_set(MLV_EINVAL, "job parameter %s: expected a string or a number", opt);
}

/* A job's parameters as the command line of its command (argv[0] = the kind). Only the
 * command's own options: the common ones (--home, --token, --registry, --json) are the
 * runner's, and -o (a file output) has no place on a server. Refs must be references to
 * stored versions, never paths. */
static int params_to_argv(const char *kind, const json_t *params, argv_buf *b)
{
    const cli_opt_spec *spec;
    int nspec = kind_spec(kind, &spec);
    if (nspec < 0) return nspec;
    if (!json_is_object(params)) return core_err_set(MLV_EINVAL, "job parameters: not an object");
    int rc = argv_add(b, kind);
    const char *ref = json_string_value(json_object_get(params, "ref"));
    reg_ref rr;
    if (rc == 0 && !ref)
        rc = core_err_set(MLV_EINVAL, "%s job parameters need \"ref\" (the model)", kind);
    if (rc == 0 && reg_ref_parse(ref, &rr) != 0)
        rc = core_err_set(MLV_EINVAL,
                          "job parameter ref %s: expected a stored version (NAME, "
                          "NAME:VERSION or NAME@CHANNEL), not a file",
                          ref);
    if (rc == 0) rc = argv_add(b, ref);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)params, k, v)
    {
        if (rc) break;
        if (!strcmp(k, "ref")) continue;
        const cli_opt_spec *sp = NULL;
        for (int i = 0; i < nspec; i++)
            if (!strcmp(spec[i].name, k)) sp = &spec[i];
        if (!sp || !strcmp(k, "output")) {
            rc = core_err_set(MLV_EINVAL, "job parameter %s: %s has no option --%s", k, kind, k);
            break;
        }
        char opt[72];
        snprintf(opt, sizeof opt, "--%s", k);
        if (!sp->takes_value) {
            if (!json_is_true(v))
                rc = core_err_set(MLV_EINVAL, "job parameter %s: a flag (true)", k);
            else
                rc = argv_add(b, opt);
            continue;
        }
        if (json_is_array(v) && !sp->repeat) {
            rc = core_err_set(MLV_EINVAL, "job parameter %s: one value, not an array", k);
            break;
        }
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        for (size_t i = 0; rc == 0 && i < n; i++) {
            const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
            if (names_artifact(k)) {
                const char *s = json_string_value(e);
                if (!s || reg_ref_parse(s, &rr) != 0) {
                    rc = core_err_set(MLV_EINVAL,
                                      "job parameter %s: expected a stored version (NAME or "
                                      "NAME:VERSION), not a file",
                                      k);
                    break;
                }
            }
            if ((rc = argv_add(b, opt)) == 0) rc = argv_add_value(b, k, e);
        }
    }
    if (rc) argv_free(b);
    return rc;
}

int cli_job_validate(void *ctx, const char *kind, const json_t *params)
{
    (void)ctx;
    if (kind && !strcmp(kind, "gate")) {
        json_t *p = json_object_get(params, "promotion");
        if (!json_is_integer(p) || json_integer_value(p) <= 0)
            return core_err_set(MLV_EINVAL, "gate job parameters: {\"promotion\": ID}");
        return 0;
    }
    argv_buf b = {.n = 0};
    int rc = params_to_argv(kind, params, &b);
    if (rc) return rc;
    rc = !strcmp(kind, "quantize") ? cli_quantize_check(b.n, b.v) : cli_eval_check(b.n, b.v);
    argv_free(&b);
    return rc;
}

/* The options given in `a` (parsed against a command's spec) as job parameters. */
static int args_to_params(const cli_args *a, json_t **out)
{
    *out = NULL;
    if (a->npos != 1)
        return core_err_set(MLV_EINVAL, "a job runs on one model: give exactly one REF");
    json_t *p = json_pack("{s:s}", "ref", a->pos[0]);
    if (!p) return core_err_set(MLV_ENOMEM, "out of memory");
    for (int i = 0; i < a->nspec; i++) {
        const cli_opt_spec *sp = &a->spec[i];
        if (!a->nvals[i] || !strcmp(sp->name, "wait")) continue;
        json_t *v;
        if (!sp->takes_value) {
            v = json_true();
        } else if (sp->repeat) {
            v = json_array();
            for (int k = 0; k < a->nvals[i]; k++)
                json_array_append_new(v, json_string(a->vals[i][k]));
        } else {
            v = json_string(a->vals[i][a->nvals[i] - 1]);
        }
        json_object_set_new(p, sp->name, v);
    }
    *out = p;
    return 0;
}

/* ------------------------------------------------------------ registry calls ---- */

/* One place for "local home or server": each helper does the one or the other. */
typedef struct jctx {
    const cli_args *a;
    bool remote;
    reg_ctx *r;
    reg_user me;
} jctx;

static int jctx_open(jctx *c, const cli_args *a)
{
    memset(c, 0, sizeof *c);
    c->a = a;
    c->remote = cli_remote_url(a) != NULL;
    return c->remote ? 0 : cli_open_auth(a, &c->r, &c->me);
}

static void jctx_close(jctx *c)
{
    reg_close(c->r);
    c->r = NULL;
}

static int j_get(jctx *c, int64_t id, json_t **job)
{
    if (!c->remote) return reg_job_get(c->r, &c->me, id, job);
    char path[64];
    snprintf(path, sizeof path, "/api/v1/jobs/%lld", (long long)id);
    return cli_api(c->a, "GET", path, NULL, job);
}

static int j_submit(jctx *c, const char *kind, json_t *params, json_t **job)
{
    *job = NULL;
    if (c->remote) {
        json_t *body = json_pack("{s:s,s:O}", "kind", kind, "params", params);
        int rc = cli_api(c->a, "POST", "/api/v1/jobs", body, job);
        json_decref(body);
        return rc;
    }
    reg_job_validate v = {cli_job_validate, NULL};
    int64_t id;
    int rc = reg_job_submit(c->r, &c->me, &v, kind, params, &id);
    return rc ? rc : reg_job_get(c->r, &c->me, id, job);
}

/* The log from `offset`: *text (caller frees) and its length. Over the API the log is
 * text/plain, fetched as a download into a private temp file. */
static int j_log(jctx *c, int64_t id, uint64_t offset, char **text, size_t *len)
{
    if (!c->remote) return reg_job_log(c->r, &c->me, id, offset, text, len);
    *text = NULL;
    *len = 0;
    char dir[] = "/tmp/mlvault-log-XXXXXX", dest[64], path[96];
    if (!mkdtemp(dir)) return core_err_set(MLV_EIO, "temp dir: %s", strerror(errno));
    snprintf(dest, sizeof dest, "%s/log", dir);
    snprintf(path, sizeof path, "/api/v1/jobs/%lld/log?offset=%llu", (long long)id,
             (unsigned long long)offset);
    reg_client *cl = NULL;
    int rc = cli_client(c->a, &cl);
    if (rc == 0) rc = reg_client_download(cl, path, dest, NULL);
    if (rc == 0) rc = core_read_file(dest, 1u << 21, text, len);
    reg_client_free(cl);
    core_rm_rf(dir);
    return rc;
}

static bool ended(const json_t *job)
{
    const char *s = jstr(job, "state");
    return !strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

/* ------------------------------------------------------------------ waiting ---- */

static void fmt_eta(char *out, size_t n, const json_t *eta)
{
    if (!json_is_integer(eta)) {
        snprintf(out, n, "%s", "");
        return;
    }
    long long s = json_integer_value(eta);
    if (s >= 3600)
        snprintf(out, n, ", ETA %lldh%02lldm", s / 3600, s / 60 % 60);
    else if (s >= 60)
        snprintf(out, n, ", ETA %lldm%02llds", s / 60, s % 60);
    else
        snprintf(out, n, ", ETA %llds", s);
}

static void draw(const json_t *job)
{
    double f = json_number_value(json_object_get(job, "progress"));
    int w = 30, k = (int)(f * w + 0.5);
    char eta[40];
    fmt_eta(eta, sizeof eta, json_object_get(job, "eta_s"));
    fprintf(stderr, "\r\033[Kjob %lld %-9s [",
            (long long)json_integer_value(json_object_get(job, "id")), jstr(job, "state"));
    for (int i = 0; i < w; i++)
        fputc(i < k ? '#' : '.', stderr);
    fprintf(stderr, "] %3.0f%% %.40s%s", f * 100, jstr(job, "message"), eta);
    fflush(stderr);
}

/* The error of a job that did not succeed, as the code the command itself would have
 * returned: the child names it ("mlvault: error code: EGATE" in its log, kept by the
 * scheduler as error_code); a killed or cancelled job has none and is an I/O failure. */
static int job_error(const json_t *job)
{
    const char *state = jstr(job, "state"), *error = jstr(job, "error");
    long long id = (long long)json_integer_value(json_object_get(job, "id"));
    const char *code = json_string_value(json_object_get(job, "error_code"));
    if (!strcmp(state, "cancelled"))
        return core_err_set(MLV_EIO, "job %lld was cancelled%s%s", id, *error ? ": " : "", error);
    if (code) return core_err_set(core_err_from_name(code), "%s", *error ? error : "job failed");
    return core_err_set(MLV_EIO, "job %lld failed: %s", id, *error ? error : "no reason given");
}

static int wait_job(jctx *c, int64_t id, json_t **out)
{
    *out = NULL;
    const bool tty = isatty(2);
    bool drawn = false;
    json_t *job = NULL;
    int rc;
    for (;;) {
        json_decref(job);
        job = NULL;
        if ((rc = j_get(c, id, &job)) != 0) break;
        if (tty && !strcmp(jstr(job, "state"), "running")) {
            draw(job);
            drawn = true;
        }
        if (ended(job)) break;
        sleep_ms(c->remote ? 500 : 250);
    }
    if (drawn) {
        if (rc == 0) draw(job);
        fputc('\n', stderr);
    }
    if (rc) {
        json_decref(job);
        return rc;
    }
    *out = job;
    return strcmp(jstr(job, "state"), "succeeded") ? job_error(job) : 0;
}

int cli_job_wait(const cli_args *a, int64_t id, json_t **job)
{
    *job = NULL;
    jctx c;
    int rc = jctx_open(&c, a);
    if (rc == 0) rc = wait_job(&c, id, job);
    jctx_close(&c);
    return rc;
}

int cli_job_submit_wait(const cli_args *a, const char *kind, json_t **out)
{
    *out = NULL;
    json_t *params = NULL, *job = NULL;
    jctx c;
    int rc = args_to_params(a, &params);
    if (rc) return rc;
    rc = jctx_open(&c, a);
    if (rc == 0) rc = j_submit(&c, kind, params, &job);
    if (rc == 0) {
        int64_t id = (int64_t)json_integer_value(json_object_get(job, "id"));
        if (isatty(2))
            fprintf(stderr, "job %lld: %s %s on %s\n", (long long)id, kind, a->pos[0],
                    c.remote ? cli_remote_url(a) : "this home");
        json_decref(job);
        job = NULL;
        rc = wait_job(&c, id, out);
    }
    jctx_close(&c);
    json_decref(params);
    return rc;
}

/* ------------------------------------------------------------------ printing ---- */

static void params_text(char *out, size_t n, const json_t *params)
{
    size_t len = 0;
    out[0] = 0;
    const char *ref = json_string_value(json_object_get(params, "ref"));
    if (ref) len += (size_t)snprintf(out, n, "%s", ref);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)params, k, v)
    {
        if (!strcmp(k, "ref") || len >= n) continue;
        char *val = json_is_string(v) ? strdup(json_string_value(v))
                                      : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (json_is_true(v))
            len += (size_t)snprintf(out + len, n - len, "%s--%s", len ? " " : "", k);
        else
            len += (size_t)snprintf(out + len, n - len, "%s--%s %s", len ? " " : "", k,
                                    val ? val : "?");
        free(val);
    }
}

static void print_job(const json_t *j)
{
    char params[512];
    params_text(params, sizeof params, json_object_get(j, "params"));
    printf("job %lld: %s %s\n", (long long)json_integer_value(json_object_get(j, "id")),
           jstr(j, "kind"), params);
    printf("  state       %s\n", jstr(j, "state"));
    printf("  submitted   %s by %s\n", jstr(j, "created_at"), jstr(j, "created_by"));
    if (*jstr(j, "started_at")) printf("  started     %s\n", jstr(j, "started_at"));
    if (*jstr(j, "finished_at")) printf("  finished    %s\n", jstr(j, "finished_at"));
    if (!strcmp(jstr(j, "state"), "running")) {
        char eta[40];
        fmt_eta(eta, sizeof eta, json_object_get(j, "eta_s"));
        printf("  progress    %.0f%% %s%s\n",
               json_number_value(json_object_get(j, "progress")) * 100, jstr(j, "message"), eta);
        if (json_is_true(json_object_get(j, "cancel_requested"))) printf("  cancelling\n");
    }
    if (*jstr(j, "error")) printf("  error       %s\n", jstr(j, "error"));
    json_t *ec = json_object_get(j, "exit_code");
    if (json_is_integer(ec) && json_integer_value(ec) != 0)
        printf("  exit code   %lld\n", (long long)json_integer_value(ec));
    json_t *res = json_object_get(j, "result");
    if (res && !json_is_null(res)) {
        char *s = json_dumps(res, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
        if (s) printf("  result      %.400s%s\n", s, strlen(s) > 400 ? " ..." : "");
        free(s);
    }
}

static void print_list(const json_t *arr)
{
    printf("%-6s %-9s %-10s %5s  %-16s %-20s %s\n", "ID", "KIND", "STATE", "PROG", "USER",
           "CREATED", "PARAMS");
    size_t i;
    json_t *j;
    json_array_foreach(arr, i, j)
    {
        char params[160];
        params_text(params, sizeof params, json_object_get(j, "params"));
        printf("%-6lld %-9s %-10s %4.0f%%  %-16s %-20s %s\n",
               (long long)json_integer_value(json_object_get(j, "id")), jstr(j, "kind"),
               jstr(j, "state"), json_number_value(json_object_get(j, "progress")) * 100,
               jstr(j, "created_by"), jstr(j, "created_at"), params);
    }
}

/* A finished job's result printed as its command prints it. */
static void print_result(const cli_args *a, const json_t *job)
{
    const json_t *res = json_object_get(job, "result");
    const char *kind = jstr(job, "kind");
    if (!res || json_is_null(res))
        print_job(job);
    else if (!strcmp(kind, "quantize"))
        cli_quantize_print(a, res);
    else if (!strcmp(kind, "eval"))
        cli_eval_print(a, res);
    else
        print_job(job);
}

/* ------------------------------------------------------------------ job run ---- */

/* The child's side (`mlvault job run ID --home HOME`, started by the scheduler with
 * MLVAULT_JOB_TOKEN): runs the job's command here with --json, so that its stdout is
 * the result, and says its error code on stderr for the scheduler. */
static int job_run(const cli_args *a, int64_t id)
{
    const char *tok = getenv("MLVAULT_JOB_TOKEN");
    if (!tok || !*tok)
        return core_err_set(MLV_EINVAL, "job run is started by the server (no MLVAULT_JOB_TOKEN)");
    /* The command authenticates with the job's token, and runs here: never on a server
     * named in the environment, which would only queue another job. */
    if (setenv("MLVAULT_TOKEN", tok, 1) != 0 || unsetenv("MLVAULT_URL") != 0)
        return core_err_set(MLV_ENOMEM, "out of memory");
    cli_args local = *a;
    local.registry = NULL;
    local.token = NULL;
    reg_ctx *r = NULL;
    json_t *params = NULL;
    char kind[16];
    argv_buf b = {.n = 0};
    int rc = reg_open(&r, cli_home(a));
    if (rc == 0) rc = reg_job_load(r, id, kind, &params);
    if (rc == 0) {
        cli_job_reporter_set(r, id);
        reg_job_progress(r, id, 0, kind);
        core_err_clear();
    }
    if (rc == 0 && !strcmp(kind, "gate")) {
        rc = cli_promote_gate(&local,
                              (int64_t)json_integer_value(json_object_get(params, "promotion")));
    } else if (rc == 0) {
        rc = params_to_argv(kind, params, &b);
        if (rc == 0 && !(rc = argv_add(&b, "--json")) && !(rc = argv_add(&b, "--home")))
            rc = argv_add(&b, cli_home(a));
        if (rc == 0) rc = !strcmp(kind, "quantize") ? cmd_quantize(b.n, b.v) : cmd_eval(b.n, b.v);
    }
    cli_job_reporter_set(NULL, 0);
    if (rc) {
        char *msg = strdup(core_err_last());
        fprintf(stderr, "mlvault: error code: %s\n", core_err_name(rc));
        fflush(stderr);
        if (msg) core_err_set(rc, "%s", msg);
        free(msg);
    }
    argv_free(&b);
    json_decref(params);
    reg_close(r);
    return rc;
}

/* ------------------------------------------------------------------ command ---- */

static int submit(int argc, char **argv)
{
    /* argv: submit KIND REF [OPTIONS]: the kind's own options plus --wait */
    const char *kind = argc > 1 ? argv[1] : "";
    const cli_opt_spec *ks;
    int nk = kind_spec(kind, &ks);
    if (nk < 0) return nk;
    cli_opt_spec spec[32];
    if (nk + 1 > 32) return core_err_set(MLV_EINVAL, "too many options");
    memcpy(spec, ks, (size_t)nk * sizeof *spec);
    spec[nk] = (cli_opt_spec){"wait", 0, false, false};
    cli_args a;
    int rc = cli_parse(&a, argc - 1, argv + 1, spec, nk + 1);
    if (rc) return rc;
    json_t *params = NULL, *job = NULL;
    if ((rc = args_to_params(&a, &params)) != 0) return rc;
    /* the command's own checks, here, before anything is queued */
    if ((rc = cli_job_validate(NULL, kind, params)) != 0) {
        json_decref(params);
        return rc;
    }
    jctx c;
    if ((rc = jctx_open(&c, &a)) == 0) rc = j_submit(&c, kind, params, &job);
    json_decref(params);
    if (rc == 0 && cli_flag(&a, "wait")) {
        int64_t id = (int64_t)json_integer_value(json_object_get(job, "id"));
        if (isatty(2)) fprintf(stderr, "job %lld submitted\n", (long long)id);
        json_decref(job);
        job = NULL;
        rc = wait_job(&c, id, &job);
        if (rc == 0)
            print_result(&a, job);
        else if (a.json && job)
            cli_print_json(json_incref(job));
    } else if (rc == 0 && a.json) {
        cli_print_json(json_incref(job));
    } else if (rc == 0) {
        printf("submitted job %lld (%s %s)%s\n",
               (long long)json_integer_value(json_object_get(job, "id")), kind, a.pos[0],
               c.remote ? "" : "; the registry server on this home runs it");
    }
    json_decref(job);
    jctx_close(&c);
    return rc;
}

static int follow_log(jctx *c, int64_t id, bool follow)
{
    uint64_t off = 0;
    for (;;) {
        /* whether it had ended before this read: then this read is the last */
        json_t *job = NULL;
        int rc = follow ? j_get(c, id, &job) : 0;
        bool done = !follow || ended(job);
        json_decref(job);
        if (rc) return rc;
        for (;;) {
            char *text = NULL;
            size_t len = 0;
            if ((rc = j_log(c, id, off, &text, &len)) != 0) return rc;
            fwrite(text, 1, len, stdout);
            free(text);
            off += len;
            if (len < (1u << 20)) break;
        }
        fflush(stdout);
        if (done) return 0;
        sleep_ms(c->remote ? 1000 : 300);
    }
}

int cmd_job(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "submit")) return submit(argc - 1, argv + 1);
    static const cli_opt_spec SPEC[] = {{"state", 0, true, false}, {"follow", 'f', false, false}};
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, 2);
    if (rc) return rc;
    bool list = !strcmp(sub, "list"), show = !strcmp(sub, "show"), log = !strcmp(sub, "log"),
         cancel = !strcmp(sub, "cancel"), run = !strcmp(sub, "run");
    if (!(list && a.npos == 1) && !((show || log || cancel || run) && a.npos == 2))
        return core_err_set(MLV_EINVAL, "%s", USAGE);
    if ((cli_opt(&a, "state") && !list) || (cli_flag(&a, "follow") && !log))
        return core_err_set(MLV_EINVAL, "%s", USAGE);
    int64_t id = 0;
    if (!list && (rc = parse_id(a.pos[1], &id)) != 0) return rc;
    if (run) return job_run(&a, id);
    jctx c;
    if ((rc = jctx_open(&c, &a)) != 0) return rc;
    json_t *out = NULL;
    if (list) {
        const char *state = cli_opt(&a, "state");
        if (!c.remote) {
            rc = reg_job_list(c.r, &c.me, state, &out);
        } else {
            char path[128];
            snprintf(path, sizeof path, "/api/v1/jobs%s%.64s", state ? "?state=" : "",
                     state ? state : "");
            rc = cli_api(&a, "GET", path, NULL, &out);
        }
        if (rc == 0 && a.json)
            cli_print_json(json_incref(out));
        else if (rc == 0)
            print_list(out);
    } else if (show) {
        if ((rc = j_get(&c, id, &out)) == 0) {
            if (a.json)
                cli_print_json(json_incref(out));
            else
                print_job(out);
        }
    } else if (log) {
        rc = follow_log(&c, id, cli_flag(&a, "follow"));
    } else {
        if (!c.remote) {
            rc = reg_job_cancel(c.r, &c.me, id);
            if (rc == 0) rc = reg_job_get(c.r, &c.me, id, &out);
        } else {
            char path[64];
            snprintf(path, sizeof path, "/api/v1/jobs/%lld/cancel", (long long)id);
            rc = cli_api(&a, "POST", path, NULL, &out);
        }
        if (rc == 0 && a.json)
            cli_print_json(json_incref(out));
        else if (rc == 0 && !strcmp(jstr(out, "state"), "cancelled"))
            printf("cancelled job %lld\n", (long long)id);
        else if (rc == 0)
            printf("cancelling job %lld: its process is being stopped\n", (long long)id);
    }
    json_decref(out);
    jctx_close(&c);
    return rc;
}
