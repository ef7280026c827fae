/* cli/cmd_eval.c: `mlvault eval REF|FILE --data DATASET_REF|FILE --metric
 * next_token_accuracy|perplexity|mc_accuracy|kld [--baseline REF|FILE] [--ctx N]
 * [--threads N] [--no-cache] [--json]` — DESIGN.md (Evaluation). A stored version's
 * result is recorded in the catalog (and shown by `mlvault show`); an identical earlier
 * result (same model, dataset digest, metric, context, baseline) is reused unless
 * --no-cache. A progress bar on a terminal; inside a job (`mlvault job run`), progress
 * also goes to the job's row. With a registry server (--registry / $MLVAULT_URL) the
 * evaluation runs there as a job and prints the same. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

/* Inside a job (`mlvault job run` sets it): where progress goes besides a terminal. One
 * process runs one job, so one reporter per process. */
static reg_ctx *job_reporter;
static int64_t job_reporter_id;

void cli_job_reporter_set(reg_ctx *r, int64_t id)
{
    job_reporter = r;
    job_reporter_id = id;
}

bool cli_progress_wanted(void)
{
    return job_reporter || isatty(2);
}

void cli_progress_bar(void *arg, double f)
{
    const char *label = arg;
    if (job_reporter && reg_job_progress(job_reporter, job_reporter_id, f, label) != 0) {
        /* progress is best effort: a busy catalog must not fail the job */
        core_log(CORE_LOG_WARN, "job progress: %s", core_err_last());
        core_err_clear();
    }
    if (!isatty(2)) return;
    int w = 30, k = (int)(f * w + 0.5);
    fprintf(stderr, "\r%s [", label);
    for (int i = 0; i < w; i++)
        fputc(i < k ? '#' : '.', stderr);
    fprintf(stderr, "] %3.0f%%", f * 100);
    if (f >= 1) fputc('\n', stderr);
    fflush(stderr);
}

static json_t *eval_json(const reg_eval *e, bool cached)
{
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:f,s:f,s:f,s:I,s:I,s:f,s:f,s:f,s:s,s:b}", "model", e->model_ref,
        "dataset", e->dataset_ref, "dataset_digest", e->dataset_digest, "metric", e->metric,
        "value", e->value, "ci_low", e->ci_low, "ci_high", e->ci_high, "n_samples",
        (json_int_t)e->n_samples, "ctx", (json_int_t)e->n_ctx, "accuracy", e->accuracy,
        "perplexity", e->perplexity, "seconds", e->seconds, "engine", e->engine, "cached", cached);
    if (!strcmp(e->metric, "kld")) {
        json_object_set_new(o, "same_top", json_real(e->same_top));
        json_object_set_new(o, "baseline_digest", json_string(e->baseline_digest));
    }
    if (e->model_digest[0]) json_object_set_new(o, "model_digest", json_string(e->model_digest));
    return o;
}

static double num(const json_t *j, const char *k)
{
    return json_number_value(json_object_get(j, k));
}

static const char *str(const json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

void cli_eval_print(const cli_args *a, const json_t *j)
{
    if (a->json) {
        cli_print_json(json_incref((json_t *)j));
        return;
    }
    const char *metric = str(j, "metric");
    const bool pct = strstr(metric, "accuracy") != NULL;
    const double value = num(j, "value"), lo = num(j, "ci_low"), hi = num(j, "ci_high");
    printf("%s on %s: %s = %.4f%s (95%% CI %.4f .. %.4f), %llu %s%s\n", str(j, "model"),
           str(j, "dataset"), metric, pct ? value * 100 : value, pct ? "%" : "",
           pct ? lo * 100 : lo, pct ? hi * 100 : hi, (unsigned long long)num(j, "n_samples"),
           strcmp(metric, "mc_accuracy") ? "scored tokens" : "questions",
           json_is_true(json_object_get(j, "cached")) ? " [cached]" : "");
    if (strcmp(metric, "mc_accuracy") != 0)
        printf("  next-token accuracy %.4f%%, perplexity %.4f", num(j, "accuracy") * 100,
               num(j, "perplexity"));
    if (!strcmp(metric, "kld")) printf(", same top token %.4f%%", num(j, "same_top") * 100);
    printf("%s  ctx %u, %.1f s, %s\n", strcmp(metric, "mc_accuracy") ? "\n" : "",
           (unsigned)num(j, "ctx"), num(j, "seconds"), str(j, "engine"));
}

static void print_eval(const cli_args *a, const reg_eval *e, bool cached)
{
    json_t *j = eval_json(e, cached);
    cli_eval_print(a, j);
    json_decref(j);
}

void cli_eval_describe(reg_eval *e, const eng_model *m, int metric, const cli_source *ds,
                       uint32_t ctx)
{
    snprintf(e->dataset_ref, sizeof e->dataset_ref, "%s", ds->label);
    snprintf(e->dataset_digest, sizeof e->dataset_digest, "%s", ds->content_digest);
    snprintf(e->metric, sizeof e->metric, "%s", eng_metric_name(metric));
    e->n_ctx = ctx;
    snprintf(e->engine, sizeof e->engine, "mlvault %s %s", MLV_VERSION, eng_model_backend_name(m));
}

int cli_eval_model(eng_model *m, int metric, const cli_source *ds, uint32_t ctx,
                   eng_model *baseline, reg_eval *e)
{
    cli_eval_describe(e, m, metric, ds, ctx);
    eng_eval_opts eo = {ctx, baseline, NULL, NULL};
    char label[64];
    snprintf(label, sizeof label, "eval %s", e->metric);
    if (cli_progress_wanted()) {
        eo.progress = cli_progress_bar;
        eo.progress_arg = label;
    }
    eng_eval_result res;
    int rc = eng_evaluate(m, metric, ds->data, ds->len, &eo, &res);
    if (rc) return rc;
    e->value = res.value;
    e->ci_low = res.ci_low;
    e->ci_high = res.ci_high;
    e->n_samples = res.n_samples;
    e->accuracy = res.accuracy;
    e->perplexity = res.perplexity;
    e->same_top = res.same_top;
    e->seconds = res.seconds;
    return 0;
}

static const cli_opt_spec SPEC[] = {
    {"data", 0, true, false},      {"metric", 0, true, false},    {"baseline", 0, true, false},
    {"ctx", 'c', true, false},     {"threads", 't', true, false}, {"backend", 0, true, false},
    {"no-cache", 0, false, false},
};

int cli_eval_spec(const cli_opt_spec **spec)
{
    *spec = SPEC;
    return (int)(sizeof SPEC / sizeof *SPEC);
}

typedef struct ecmd {
    cli_args a;
    const char *data, *bname;
    int metric;
    double ctx;
    eng_load_opts lo;
} ecmd;

/* Everything that can be checked before any work (and before a job is queued). */
static int parse_opts(ecmd *c, int argc, char **argv)
{
    int rc = cli_parse(&c->a, argc, argv, SPEC, sizeof SPEC / sizeof *SPEC);
    if (rc) return rc;
    c->data = cli_opt(&c->a, "data");
    const char *mname = cli_opt(&c->a, "metric") ? cli_opt(&c->a, "metric") : "next_token_accuracy";
    c->bname = cli_opt(&c->a, "baseline");
    if (c->a.npos != 1 || !c->data)
        return core_err_set(MLV_EINVAL, "usage: mlvault eval REF|FILE --data DATASET_REF|FILE "
                                        "--metric next_token_accuracy|perplexity|mc_accuracy|kld "
                                        "[--baseline REF|FILE] [--ctx N] [--json]");
    c->metric = eng_metric_parse(mname);
    if (c->metric < 0)
        return core_err_set(MLV_EINVAL,
                            "--metric %s: expected next_token_accuracy, perplexity, "
                            "mc_accuracy or kld",
                            mname);
    if ((c->metric == ENG_METRIC_KLD) != (c->bname != NULL))
        return core_err_set(MLV_EINVAL, c->metric == ENG_METRIC_KLD
                                            ? "--metric kld needs --baseline REF|FILE"
                                            : "--baseline is only for --metric kld");
    c->ctx = c->metric == ENG_METRIC_MC_ACCURACY ? 2048 : 512;
    if ((rc = cli_opt_num(&c->a, "ctx", 16, 65536, true, &c->ctx)) != 0) return rc;
    return cli_load_opts(&c->a, &c->lo);
}

int cli_eval_check(int argc, char **argv)
{
    ecmd c;
    return parse_opts(&c, argc, argv);
}

/* On a registry server: the same evaluation as a job there, printed the same way. */
static int eval_remote(const ecmd *c)
{
    json_t *job = NULL;
    int rc = cli_job_submit_wait(&c->a, "eval", &job);
    if (rc == 0) cli_eval_print(&c->a, json_object_get(job, "result"));
    json_decref(job);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    ecmd c;
    int rc = parse_opts(&c, argc, argv);
    if (rc) return rc;
    if (cli_remote_url(&c.a)) return eval_remote(&c);
    const cli_args *ap = &c.a;
    const char *data = c.data, *bname = c.bname;
    const int metric = c.metric;
    const double ctx = c.ctx;
    cli_source model = {0}, ds = {0}, base = {0};
    reg_eval e;
    memset(&e, 0, sizeof e);
    /* The data first: it is small, and a bad dataset should not cost a model load. */
    if ((rc = cli_open_data(ap, data, &ds)) != 0) goto done;
    if ((rc = cli_open_model(ap, ap->pos[0], &c.lo, &model)) != 0) goto done;
    if (bname && (rc = cli_open_model(ap, bname, &c.lo, &base)) != 0) goto done;
    snprintf(e.model_ref, sizeof e.model_ref, "%s", model.label);
    snprintf(e.model_digest, sizeof e.model_digest, "%s", model.digest);
    cli_eval_describe(&e, model.model, metric, &ds, (uint32_t)ctx);
    snprintf(e.baseline_digest, sizeof e.baseline_digest, "%s", base.digest);
    if (bname && !base.stored) e.baseline_digest[0] = 0;
    const bool record = model.stored && (!bname || base.stored);
    if (record && !cli_flag(ap, "no-cache")) {
        reg_eval hit;
        rc = reg_eval_find(model.r, &model.user, e.model_digest, e.dataset_digest, e.metric,
                           e.n_ctx, e.baseline_digest, &hit);
        if (rc == 0) {
            print_eval(ap, &hit, true);
            goto done;
        }
        if (rc != MLV_ENOTFOUND) goto done;
        core_err_clear();
    }
    if ((rc = cli_eval_model(model.model, metric, &ds, (uint32_t)ctx, base.model, &e)) != 0)
        goto done;
    if (record && (rc = reg_eval_record(model.r, &model.user, &e)) != 0) goto done;
    print_eval(ap, &e, false);
done:
    cli_source_clear(&model);
    cli_source_clear(&ds);
    cli_source_clear(&base);
    return rc;
}
