/* cli/cmd_eval.c: `mlvault eval REF|FILE --data DATASET_REF|FILE --metric
 * next_token_accuracy|perplexity|mc_accuracy|kld [--baseline REF|FILE] [--ctx N]
 * [--threads N] [--no-cache] [--json]` — DESIGN.md (Evaluation). A stored version's
 * result is recorded in the catalog (and shown by `mlvault show`); an identical earlier
 * result (same model, dataset digest, metric, context, baseline) is reused unless
 * --no-cache. A progress bar on a terminal. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

void cli_progress_bar(void *arg, double f)
{
    const char *label = arg;
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

static void print_eval(const cli_args *a, const reg_eval *e, bool cached)
{
    if (a->json) {
        cli_print_json(eval_json(e, cached));
        return;
    }
    const bool pct = strstr(e->metric, "accuracy") != NULL;
    printf("%s on %s: %s = %.4f%s (95%% CI %.4f .. %.4f), %llu %s%s\n", e->model_ref,
           e->dataset_ref, e->metric, pct ? e->value * 100 : e->value, pct ? "%" : "",
           pct ? e->ci_low * 100 : e->ci_low, pct ? e->ci_high * 100 : e->ci_high,
           (unsigned long long)e->n_samples,
           strcmp(e->metric, "mc_accuracy") ? "scored tokens" : "questions",
           cached ? " [cached]" : "");
    if (strcmp(e->metric, "mc_accuracy") != 0)
        printf("  next-token accuracy %.4f%%, perplexity %.4f", e->accuracy * 100, e->perplexity);
    if (!strcmp(e->metric, "kld")) printf(", same top token %.4f%%", e->same_top * 100);
    printf("%s  ctx %u, %.1f s, %s\n", strcmp(e->metric, "mc_accuracy") ? "\n" : "", e->n_ctx,
           e->seconds, e->engine);
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
    if (isatty(2)) {
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

int cmd_eval(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"data", 0, true, false},      {"metric", 0, true, false},    {"baseline", 0, true, false},
        {"ctx", 'c', true, false},     {"threads", 't', true, false}, {"backend", 0, true, false},
        {"no-cache", 0, false, false},
    };
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    const char *data = cli_opt(&a, "data");
    const char *mname = cli_opt(&a, "metric") ? cli_opt(&a, "metric") : "next_token_accuracy";
    const char *bname = cli_opt(&a, "baseline");
    if (a.npos != 1 || !data)
        return core_err_set(MLV_EINVAL, "usage: mlvault eval REF|FILE --data DATASET_REF|FILE "
                                        "--metric next_token_accuracy|perplexity|mc_accuracy|kld "
                                        "[--baseline REF|FILE] [--ctx N] [--json]");
    int metric = eng_metric_parse(mname);
    if (metric < 0)
        return core_err_set(MLV_EINVAL,
                            "--metric %s: expected next_token_accuracy, perplexity, "
                            "mc_accuracy or kld",
                            mname);
    if ((metric == ENG_METRIC_KLD) != (bname != NULL))
        return core_err_set(MLV_EINVAL, metric == ENG_METRIC_KLD
                                            ? "--metric kld needs --baseline REF|FILE"
                                            : "--baseline is only for --metric kld");
    double ctx = metric == ENG_METRIC_MC_ACCURACY ? 2048 : 512;
    if ((rc = cli_opt_num(&a, "ctx", 16, 65536, true, &ctx)) != 0) return rc;
    eng_load_opts lo;
    if ((rc = cli_load_opts(&a, &lo)) != 0) return rc;
    cli_source model = {0}, ds = {0}, base = {0};
    reg_eval e;
    memset(&e, 0, sizeof e);
    /* The data first: it is small, and a bad dataset should not cost a model load. */
    if ((rc = cli_open_data(&a, data, &ds)) != 0) goto done;
    if ((rc = cli_open_model(&a, a.pos[0], &lo, &model)) != 0) goto done;
    if (bname && (rc = cli_open_model(&a, bname, &lo, &base)) != 0) goto done;
    snprintf(e.model_ref, sizeof e.model_ref, "%s", model.label);
    snprintf(e.model_digest, sizeof e.model_digest, "%s", model.digest);
    cli_eval_describe(&e, model.model, metric, &ds, (uint32_t)ctx);
    snprintf(e.baseline_digest, sizeof e.baseline_digest, "%s", base.digest);
    if (bname && !base.stored) e.baseline_digest[0] = 0;
    const bool record = model.stored && (!bname || base.stored);
    if (record && !cli_flag(&a, "no-cache")) {
        reg_eval hit;
        rc = reg_eval_find(model.r, &model.user, e.model_digest, e.dataset_digest, e.metric,
                           e.n_ctx, e.baseline_digest, &hit);
        if (rc == 0) {
            print_eval(&a, &hit, true);
            goto done;
        }
        if (rc != MLV_ENOTFOUND) goto done;
        core_err_clear();
    }
    if ((rc = cli_eval_model(model.model, metric, &ds, (uint32_t)ctx, base.model, &e)) != 0)
        goto done;
    if (record && (rc = reg_eval_record(model.r, &model.user, &e)) != 0) goto done;
    print_eval(&a, &e, false);
done:
    cli_source_clear(&model);
    cli_source_clear(&ds);
    cli_source_clear(&base);
    return rc;
}
