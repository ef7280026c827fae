/* cli/cmd_quantize.c: `mlvault quantize REF|FILE --type TYPE [--method rtn|imatrix|gptq]
 * [--calib DATASET] [--tensor-type PATTERN=TYPE]... [--max-drop POINTS --eval-data
 * DATASET] [--max-rounds N] [--name NAME] [--ctx N] [--calib-tokens N] [--hessian-mb N]
 * [--threads N] [-o OUT.gguf] [--json]` — a stored version becomes a new version (same
 * model name unless --name) whose lineage is the input version plus the recipe (type,
 * method, every tensor's type, calibration dataset and digest, raised tensors); its
 * evaluation on --eval-data is recorded beside the input's. A file becomes a file (-o),
 * no vault.
 *
 * --max-drop: after quantizing, the candidate is evaluated against the input; while it
 * loses POINTS or more of next-token accuracy, the quantized tensors whose rounding
 * costs most (measured on calibration activations, quantize/quantize.h) are raised one
 * type and the model rebuilt; it stops at success, when nothing is left to raise or
 * after --max-rounds rounds, and then fails (MLV_EGATE) with the best result reached,
 * storing nothing. Every step runs before anything is stored.
 *
 * With a registry server (--registry / $MLVAULT_URL) the same options run there as a job
 * (cli/cmd_job.c) on a stored version, and its result prints as a local run's would,
 * with the same exit code. Inside a job, progress also goes to the job's row. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "quantize/quantize.h"

static const cli_opt_spec SPEC[] = {
    {"type", 0, true, false},         {"method", 0, true, false},     {"calib", 0, true, false},
    {"tensor-type", 0, true, true},   {"max-drop", 0, true, false},   {"eval-data", 0, true, false},
    {"max-rounds", 0, true, false},   {"name", 0, true, false},       {"ctx", 'c', true, false},
    {"calib-tokens", 0, true, false}, {"threads", 't', true, false},  {"backend", 0, true, false},
    {"output", 'o', true, false},     {"hessian-mb", 0, true, false},
};

static const char *USAGE =
    "usage: mlvault quantize REF|FILE --type Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q4_K|Q6_K|Q4_K_M|Q5_K_M\n"
    "         [--method rtn|imatrix|gptq] [--calib DATASET] [--tensor-type PATTERN=TYPE]...\n"
    "         [--max-drop POINTS --eval-data DATASET] [--max-rounds N] [--name NAME]\n"
    "         [--ctx N] [--calib-tokens N] [--hessian-mb N] [--threads N] [-o OUT.gguf] [--json]";

typedef struct qcmd {
    cli_args a;
    qnt_target target;
    int method;
    qnt_override ov[CLI_MAX_REPEAT];
    size_t n_ov;
    double max_drop; /* < 0: none */
    double max_rounds, ctx, calib_tokens, hessian_mb;
    const cli_source *calib_text; /* --calib, else --eval-data; set when cal is */
    char out_name[65];            /* a stored output's model: --name, else the input's */
    eng_load_opts lo;
    cli_source src, calib, evald;
    core_pool *pool;
    qnt_calib *cal;
    qnt_session *sess;
    qnt_plan plan;
    json_t *rounds;   /* [{raised, accuracy, drop}] */
    json_t *warnings; /* [text] */
} qcmd;

/* ------------------------------------------------------------------ options ---- */

static int parse_overrides(qcmd *q)
{
    const char **vals;
    int n = cli_opt_all(&q->a, "tensor-type", &vals);
    for (int i = 0; i < n; i++) {
        const char *eq = strrchr(vals[i], '=');
        if (!eq || eq == vals[i] || !eq[1])
            return core_err_set(MLV_EINVAL, "--tensor-type %s: expected PATTERN=TYPE", vals[i]);
        int type = -1;
        for (int t = 0; t < 64; t++)
            if (eng_type_name(t) && !strcasecmp(eng_type_name(t), eq + 1)) type = t;
        if (type < 0 ||
            (!qnt_type_supported(type) && type != ENG_F16 && type != ENG_F32 && type != ENG_BF16))
            return core_err_set(MLV_EINVAL,
                                "--tensor-type %s: unknown type '%s' (Q8_0, Q4_0, Q4_1, Q5_0, "
                                "Q5_1, Q4_K, Q5_K, Q6_K, F16, BF16, F32)",
                                vals[i], eq + 1);
        /* the pattern is the text before '='; kept as a copy inside the argument */
        char *pat = strndup(vals[i], (size_t)(eq - vals[i]));
        if (!pat) return core_err_set(MLV_ENOMEM, "out of memory");
        q->ov[q->n_ov].pattern = pat;
        q->ov[q->n_ov].type = type;
        q->n_ov++;
    }
    return 0;
}

static int parse_opts(qcmd *q, int argc, char **argv)
{
    int rc = cli_parse(&q->a, argc, argv, SPEC, sizeof SPEC / sizeof *SPEC);
    if (rc) return rc;
    if (q->a.npos != 1 || !cli_opt(&q->a, "type")) return core_err_set(MLV_EINVAL, "%s", USAGE);
    if ((rc = qnt_target_parse(cli_opt(&q->a, "type"), &q->target))) return rc;
    const char *m = cli_opt(&q->a, "method") ? cli_opt(&q->a, "method") : "rtn";
    if ((q->method = qnt_method_parse(m)) < 0)
        return core_err_set(MLV_EINVAL, "--method %s: expected rtn, imatrix or gptq", m);
    if (q->method != QNT_RTN && !cli_opt(&q->a, "calib"))
        return core_err_set(MLV_EINVAL, "--method %s needs --calib DATASET (calibration text)", m);
    q->max_drop = -1;
    if ((rc = cli_opt_num(&q->a, "max-drop", 0, 100, false, &q->max_drop))) return rc;
    if (q->max_drop >= 0 && !cli_opt(&q->a, "eval-data"))
        return core_err_set(MLV_EINVAL, "--max-drop needs --eval-data DATASET (evaluation text)");
    q->max_rounds = 8;
    q->ctx = 512;
    q->calib_tokens = 8192;
    if ((rc = cli_opt_num(&q->a, "max-rounds", 0, 1000, true, &q->max_rounds)) ||
        (rc = cli_opt_num(&q->a, "ctx", 16, 65536, true, &q->ctx)) ||
        (rc = cli_opt_num(&q->a, "calib-tokens", 16, 1e9, true, &q->calib_tokens)) ||
        (rc = cli_opt_num(&q->a, "hessian-mb", 1, 1e9, true, &q->hessian_mb)))
        return rc;
    const char *name = cli_opt(&q->a, "name");
    if (name && !core_name_valid(name))
        return core_err_set(MLV_EINVAL, "--name %s: use [a-z0-9][a-z0-9._-]{0,63}", name);
    if ((rc = cli_load_opts(&q->a, &q->lo))) return rc;
    return parse_overrides(q);
}

int cli_quantize_spec(const cli_opt_spec **spec)
{
    *spec = SPEC;
    return (int)(sizeof SPEC / sizeof *SPEC);
}

int cli_quantize_check(int argc, char **argv)
{
    qcmd q;
    memset(&q, 0, sizeof q);
    int rc = parse_opts(&q, argc, argv);
    for (size_t i = 0; i < q.n_ov; i++)
        free((char *)q.ov[i].pattern);
    return rc;
}

/* Evaluation and calibration data must be text: valid UTF-8 without NUL bytes. */
static int check_text(const cli_source *s, const char *what)
{
    for (size_t i = 0; i < s->len; i++)
        if (s->data[i] == 0)
            return core_err_set(MLV_EINVAL, "%s %s is not text (a NUL byte at offset %zu)", what,
                                s->label, i);
    size_t bad = eng_utf8_check(s->data, s->len);
    if (bad < s->len)
        return core_err_set(MLV_EINVAL, "%s %s is not UTF-8 text (invalid byte at offset %zu)",
                            what, s->label, bad);
    if (s->len < 64)
        return core_err_set(MLV_EINVAL, "%s %s is too short (%zu bytes)", what, s->label, s->len);
    return 0;
}

/* ------------------------------------------------------------------ progress --- */

static void qprogress(void *arg, double f, const char *msg)
{
    (void)msg;
    cli_progress_bar(arg, f);
}

/* ------------------------------------------------------------------ GPTQ ------- */

static qnt_calib_opts calib_opts(const qcmd *q, bool hessian)
{
    qnt_calib_opts co = {
        .n_ctx = (uint32_t)q->ctx, .max_tokens = (size_t)q->calib_tokens, .hessian = hessian};
    if (cli_progress_wanted()) {
        co.progress = qprogress;
        co.progress_arg = "calibrate";
    }
    return co;
}

/* One group's Hessians for qnt_session_build (qnt_opts.calibrate). */
static int calibrate_group(void *arg, uint32_t first, uint32_t count, qnt_calib **out)
{
    qcmd *q = arg;
    qnt_calib_opts co = calib_opts(q, true);
    co.hessian_first = first;
    co.hessian_count = count;
    return qnt_calib_run(out, q->src.model, q->calib_text->data, q->calib_text->len, &co);
}

/* Layers per GPTQ calibration pass: all of them (0) when every Hessian fits in
 * --hessian-mb (default: a quarter of the memory), else as many as fit (at least 1). */
static uint32_t gptq_group_layers(const qcmd *q)
{
    const eng_hparams *hp = eng_model_hparams(q->src.model);
    double d = hp->n_embd, att = (double)hp->n_head * hp->head_dim, ff = hp->n_ff;
    double per_layer = (2 * d * d + att * att + ff * ff) * 4,
           total = per_layer * hp->n_layer + d * d * 4;
    double budget = q->hessian_mb > 0 ? q->hessian_mb * 1e6
                                      : (double)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE) / 4;
    if (total <= budget) return 0;
    double g = floor(budget / per_layer);
    return g < 1 ? 1 : (uint32_t)g;
}

/* --------------------------------------------------------------- evaluation ---- */

static int eval_image(qcmd *q, void *img, size_t len, reg_eval *e)
{
    eng_model *m = NULL;
    int rc = eng_model_open_mem(&m, img, len, NULL, &q->lo);
    if (rc) return core_err_wrap("the quantized model does not load: ");
    rc = cli_eval_model(m, ENG_METRIC_NEXT_TOKEN_ACCURACY, &q->evald, (uint32_t)q->ctx, NULL, e);
    eng_model_free(m);
    return rc;
}

/* The input's accuracy: a cached result of a stored input, else evaluated (and
 * recorded for a stored input). */
static int eval_input(qcmd *q, reg_eval *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->model_ref, sizeof e->model_ref, "%s", q->src.label);
    snprintf(e->model_digest, sizeof e->model_digest, "%s", q->src.digest);
    cli_eval_describe(e, q->src.model, ENG_METRIC_NEXT_TOKEN_ACCURACY, &q->evald, (uint32_t)q->ctx);
    if (q->src.stored) {
        int rc = reg_eval_find(q->src.r, &q->src.user, e->model_digest, e->dataset_digest,
                               e->metric, e->n_ctx, "", e);
        if (rc == 0) return 0;
        if (rc != MLV_ENOTFOUND) return rc;
        core_err_clear();
    }
    int rc = cli_eval_model(q->src.model, ENG_METRIC_NEXT_TOKEN_ACCURACY, &q->evald,
                            (uint32_t)q->ctx, NULL, e);
    if (rc == 0 && q->src.stored) rc = reg_eval_record(q->src.r, &q->src.user, e);
    return rc;
}

/* ------------------------------------------------------------------ tuning ----- */

typedef struct cand {
    size_t i;
    double s;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    double x = ((const cand *)a)->s, y = ((const cand *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Raises the most sensitive eighth (at least one) of the tensors that can go up; the
 * number raised in *n_raised (0: nothing left). */
static int raise_round(qcmd *q, json_t *raised_now, size_t *n_raised)
{
    *n_raised = 0;
    double *sens = calloc(q->plan.n ? q->plan.n : 1, sizeof *sens);
    cand *c = calloc(q->plan.n ? q->plan.n : 1, sizeof *c);
    int rc = 0;
    if (!sens || !c) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = qnt_session_sensitivity(q->sess, &q->plan, q->cal, q->pool, sens))) goto done;
    size_t n = 0;
    for (size_t i = 0; i < q->plan.n; i++) {
        const qnt_tensor_plan *t = &q->plan.t[i];
        if (!t->quantized || t->type == t->in_type || qnt_type_raise(t->type, t->n_in) < 0)
            continue;
        c[n].i = i;
        c[n].s = sens[i];
        n++;
    }
    qsort(c, n, sizeof *c, cmp_cand);
    size_t k = n ? (n + 7) / 8 : 0;
    for (size_t j = 0; j < k; j++) {
        qnt_tensor_plan *t = &q->plan.t[c[j].i];
        int to = qnt_type_raise(t->type, t->n_in);
        json_array_append_new(raised_now, json_pack("{s:s,s:s,s:s,s:f}", "tensor", t->name, "from",
                                                    eng_type_name(t->type), "to", eng_type_name(to),
                                                    "sensitivity", c[j].s));
        t->type = to;
        t->raised = true;
    }
    *n_raised = k;
done:
    free(sens);
    free(c);
    return rc;
}

/* ------------------------------------------------------------------ output ----- */

static json_t *type_counts(const qnt_plan *p)
{
    json_t *o = json_object();
    for (size_t i = 0; i < p->n; i++) {
        const char *tn = eng_type_name(p->t[i].type);
        json_t *v = json_object_get(o, tn);
        json_object_set_new(o, tn, json_integer(v ? json_integer_value(v) + 1 : 1));
    }
    return o;
}

/* The recipe recorded as the job's parameters in the new version's lineage. */
static char *recipe_json(const qcmd *q, const qnt_result *res)
{
    json_t *types = json_object(), *raised = json_array(), *ovs = json_array();
    for (size_t i = 0; i < q->plan.n; i++) {
        const qnt_tensor_plan *t = &q->plan.t[i];
        if (!t->quantized) continue;
        json_object_set_new(types, t->name, json_string(eng_type_name(t->type)));
        if (t->raised) json_array_append_new(raised, json_string(t->name));
    }
    const char **vals;
    int n = cli_opt_all(&q->a, "tensor-type", &vals);
    for (int i = 0; i < n; i++)
        json_array_append_new(ovs, json_string(vals[i]));
    json_t *calib = json_null();
    if (q->cal)
        calib = json_pack("{s:s,s:s,s:I,s:I}", "dataset", q->calib_text->label, "sha256",
                          q->calib_text->content_digest, "tokens",
                          (json_int_t)qnt_calib_tokens(q->cal), "ctx", (json_int_t)q->ctx);
    /* the stored types of the matrices that were dequantized first, in type order */
    json_t *deq = json_array();
    for (int type = 0; type < 64; type++)
        for (size_t i = 0; i < q->plan.n; i++) {
            int it = q->plan.t[i].in_type;
            if (q->plan.t[i].quantized && it == type && it != ENG_F32 && it != ENG_F16 &&
                it != ENG_BF16) {
                json_array_append_new(deq, json_string(eng_type_name(it)));
                break;
            }
        }
    json_t *j =
        json_pack("{s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:s,s:I}", "type", q->target.name, "method",
                  qnt_method_name(q->method), "tensor_types", types, "overrides", ovs, "raised",
                  raised, "calibration", calib, "dequantized_from", deq, "mlvault_version",
                  MLV_VERSION, "fallback_rtn", (json_int_t)res->n_fallback_rtn);
    if (q->max_drop >= 0) json_object_set_new(j, "max_drop", json_real(q->max_drop));
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return s;
}

/* Where a stored version's file is written before it is pushed: HOME/tmp/quant-XXXXXX/
 * NAME.TYPE.gguf (0600; the home's start-up sweep removes leftovers of a crash). */
static int tmp_target(qcmd *q, char *dir, size_t dcap, char *path, size_t pcap)
{
    const char *home = cli_home(&q->a);
    snprintf(dir, dcap, "%s/tmp", home);
    int rc = core_mkdir_p(dir, 0700);
    if (rc) return rc;
    snprintf(dir, dcap, "%s/tmp/quant-XXXXXX", home);
    if (!mkdtemp(dir)) return core_err_set(MLV_EIO, "%s: %s", dir, strerror(errno));
    snprintf(path, pcap, "%s/%s.%s.gguf", dir, q->out_name, q->target.name);
    return 0;
}

/* Pushes the written file as a new version whose lineage is the input and the recipe. */
static int push(qcmd *q, const char *path, const qnt_result *res, reg_pushed *out)
{
    char *params = recipe_json(q, res);
    if (!params) return core_err_set(MLV_ENOMEM, "out of memory");
    char note[256] = "";
    if (q->plan.input_quantized)
        snprintf(note, sizeof note,
                 "quantized from %s, whose matrices were stored quantized and were "
                 "dequantized first",
                 q->src.label);
    const char *parents[1] = {q->src.label};
    const char *datasets[1];
    size_t n_ds = 0;
    if (q->cal && q->calib_text->stored) datasets[n_ds++] = q->calib_text->label;
    reg_push_opts po = {.name = q->out_name,
                        .path = path,
                        .parents = parents,
                        .n_parents = 1,
                        .note = note,
                        .job_kind = "quantize",
                        .job_params = params,
                        .datasets = datasets,
                        .n_datasets = n_ds};
    int rc = reg_push(q->src.r, &q->src.user, &po, out);
    free(params);
    return rc;
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

void cli_quantize_print(const cli_args *a, const json_t *j)
{
    if (a->json) {
        cli_print_json(json_incref((json_t *)j));
        return;
    }
    char hb[32];
    core_human_bytes(hb, sizeof hb, (uint64_t)num(j, "bytes"));
    json_t *warnings = json_object_get(j, "warnings"), *raised = json_object_get(j, "raised");
    for (size_t i = 0; i < json_array_size(warnings); i++)
        printf("warning: %s\n", json_string_value(json_array_get(warnings, i)));
    printf("%s -> %s: %s %s, %s (%.2f bits per weight) in %.1f s\n", str(j, "input"),
           str(j, "output"), str(j, "type"), str(j, "method"), hb, num(j, "bpw"),
           num(j, "seconds"));
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(j, "tensor_types"), k, v)
        printf("  %-5s %lld tensors\n", k, (long long)json_integer_value(v));
    json_t *ev = json_object_get(j, "evaluation");
    if (ev)
        printf("  next-token accuracy on %s: %.2f%% -> %.2f%% (drop %.2f points), perplexity "
               "%.4f -> %.4f\n",
               str(ev, "dataset"), num(ev, "input") * 100, num(ev, "output") * 100, num(ev, "drop"),
               num(ev, "input_perplexity"), num(ev, "output_perplexity"));
    for (size_t i = 0; i < json_array_size(raised); i++) {
        json_t *r = json_array_get(raised, i);
        printf("  raised %s to %s\n", str(r, "tensor"), str(r, "type"));
    }
}

static void print_result(const qcmd *q, const char *out, const char *digest, size_t img_len,
                         const qnt_result *res, const reg_eval *base, const reg_eval *cand,
                         double secs)
{
    uint64_t elems = 0;
    for (size_t i = 0; i < q->plan.n; i++)
        elems += (uint64_t)q->plan.t[i].n_in * (uint64_t)q->plan.t[i].n_out;
    double bpw = elems ? (double)res->bytes_out * 8.0 / (double)elems : 0;
    json_t *raised = json_array();
    for (size_t i = 0; i < q->plan.n; i++)
        if (q->plan.t[i].raised)
            json_array_append_new(raised, json_pack("{s:s,s:s}", "tensor", q->plan.t[i].name,
                                                    "type", eng_type_name(q->plan.t[i].type)));
    json_t *j = json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:o,s:o,s:O,s:O,s:I,s:f}", "input", q->src.label,
        "output", out, "type", q->target.name, "method", qnt_method_name(q->method), "bytes",
        (json_int_t)img_len, "tensor_bytes_in", (json_int_t)res->bytes_in, "tensor_bytes",
        (json_int_t)res->bytes_out, "bpw", bpw, "tensor_types", type_counts(&q->plan), "raised",
        raised, "rounds", q->rounds, "warnings", q->warnings, "fallback_rtn",
        (json_int_t)res->n_fallback_rtn, "seconds", secs);
    if (digest) json_object_set_new(j, "digest", json_string(digest));
    if (q->cal)
        json_object_set_new(j, "calibration_tokens",
                            json_integer((json_int_t)qnt_calib_tokens(q->cal)));
    if (cand)
        json_object_set_new(j, "evaluation",
                            json_pack("{s:s,s:s,s:f,s:f,s:f,s:f,s:f,s:I}", "dataset",
                                      cand->dataset_ref, "metric", cand->metric, "input",
                                      base->value, "output", cand->value, "drop",
                                      (base->value - cand->value) * 100, "input_perplexity",
                                      base->perplexity, "output_perplexity", cand->perplexity,
                                      "n_samples", (json_int_t)cand->n_samples));
    cli_quantize_print(&q->a, j);
    json_decref(j);
}

/* On a registry server: the same quantization as a job there (of a stored version),
 * printed as a local run prints it; a failed --max-drop prints its report with --json. */
static int quantize_remote(const qcmd *q)
{
    struct stat st;
    if (stat(q->a.pos[0], &st) == 0 || cli_opt(&q->a, "output"))
        return core_err_set(MLV_EINVAL,
                            "%s: a registry server quantizes stored versions; push the file "
                            "first (mlvault push), or unset MLVAULT_URL to quantize it here",
                            q->a.pos[0]);
    json_t *job = NULL;
    int rc = cli_job_submit_wait(&q->a, "quantize", &job);
    if (rc == 0)
        cli_quantize_print(&q->a, json_object_get(job, "result"));
    else if (q->a.json && json_object_get(job, "output")) {
        char *msg = strdup(core_err_last());
        cli_print_json(json_incref(json_object_get(job, "output")));
        if (msg) core_err_set(rc, "%s", msg);
        free(msg);
    }
    json_decref(job);
    return rc;
}

/* ------------------------------------------------------------------ command ---- */

static void qcmd_clear(qcmd *q)
{
    for (size_t i = 0; i < q->n_ov; i++)
        free((char *)q->ov[i].pattern);
    qnt_session_free(q->sess);
    qnt_calib_free(q->cal);
    qnt_plan_clear(&q->plan);
    core_pool_free(q->pool);
    cli_source_clear(&q->src);
    cli_source_clear(&q->calib);
    cli_source_clear(&q->evald);
    json_decref(q->rounds);
    json_decref(q->warnings);
}

int cmd_quantize(int argc, char **argv)
{
    qcmd q;
    memset(&q, 0, sizeof q);
    q.rounds = json_array();
    q.warnings = json_array();
    double t0 = core_now_s();
    void *img = NULL;
    size_t img_len = 0;
    reg_eval base, cand;
    char tmpdir[4200] = "", tmppath[4400] = "";
    int rc = parse_opts(&q, argc, argv);
    if (rc) goto done;
    if (cli_remote_url(&q.a)) {
        rc = quantize_remote(&q);
        goto done;
    }
    const char *outpath = cli_opt(&q.a, "output");
    struct stat st;
    bool file_input = stat(q.a.pos[0], &st) == 0;
    if (file_input && !outpath) {
        rc = core_err_set(MLV_EINVAL,
                          "%s is a file: give -o OUT.gguf (a stored version becomes "
                          "a new version instead)",
                          q.a.pos[0]);
        goto done;
    }
    if (!file_input && outpath) {
        rc = core_err_set(MLV_EINVAL, "-o is for file input; a stored version becomes a new "
                                      "version (--name NAME to choose its model)");
        goto done;
    }
    /* data first: small, and bad data should not cost a model load */
    if (cli_opt(&q.a, "calib") && ((rc = cli_open_data(&q.a, cli_opt(&q.a, "calib"), &q.calib)) ||
                                   (rc = check_text(&q.calib, "calibration dataset"))))
        goto done;
    if (cli_opt(&q.a, "eval-data") &&
        ((rc = cli_open_data(&q.a, cli_opt(&q.a, "eval-data"), &q.evald)) ||
         (rc = check_text(&q.evald, "evaluation dataset"))))
        goto done;
    if ((rc = cli_open_model(&q.a, q.a.pos[0], &q.lo, &q.src))) goto done;
    if (!file_input && !q.src.r && (rc = cli_open_auth(&q.a, &q.src.r, &q.src.user))) goto done;
    if (!file_input) {
        const char *name = cli_opt(&q.a, "name");
        size_t n = name ? strlen(name) : strcspn(q.src.label, ":");
        snprintf(q.out_name, sizeof q.out_name, "%.*s", (int)n, name ? name : q.src.label);
    }
    /* a new version needs the push right: refuse before the work, not after */
    if (!file_input && (rc = reg_authorize(&q.src.user, REG_ACT_PUSH))) goto done;
    size_t in_len = 0;
    const uint8_t *in_img = eng_model_image(q.src.model, &in_len);
    const eng_gguf *g = eng_model_gguf(q.src.model);
    if ((rc = qnt_plan_make(&q.plan, g, &q.target, q.ov, q.n_ov))) goto done;
    if (q.plan.input_quantized)
        json_array_append_new(q.warnings,
                              json_string("the input's matrices are stored quantized: they are "
                                          "dequantized first, and the result cannot be better "
                                          "than the input"));
    if ((rc = core_pool_new(&q.pool, q.lo.threads))) goto done;
    uint32_t group = 0;
    if (q.method != QNT_RTN || q.max_drop >= 0) {
        q.calib_text = q.calib.data ? &q.calib : &q.evald;
        if (!q.calib.data)
            json_array_append_new(q.warnings,
                                  json_string("no --calib: sensitivity measured on the evaluation "
                                              "data"));
        if (q.method == QNT_GPTQ) group = gptq_group_layers(&q);
        qnt_calib_opts co = calib_opts(&q, q.method == QNT_GPTQ && group == 0);
        if ((rc = qnt_calib_run(&q.cal, q.src.model, q.calib_text->data, q.calib_text->len, &co)))
            goto done;
    }
    if ((rc = qnt_session_new(&q.sess, g, in_img))) goto done;
    qnt_opts qo = {.method = q.method, .calib = q.cal, .pool = q.pool};
    if (group) { /* GPTQ in groups of layers: the Hessians would not fit at once */
        qo.calibrate = calibrate_group;
        qo.calibrate_arg = &q;
        qo.group_layers = group;
        json_array_append_new(q.warnings,
                              json_sprintf("GPTQ's Hessians do not fit --hessian-mb at once: "
                                           "calibrating %u layers per pass",
                                           group));
    }
    if (cli_progress_wanted()) {
        qo.progress = qprogress;
        qo.progress_arg = (void *)"quantize";
    }
    /* Without an evaluation the file is written straight where it goes; with one, the
     * image stays in memory until the tuning is done. */
    const bool in_mem = q.evald.data != NULL, evaluated = in_mem;
    const char *dest = outpath;
    if (!file_input) {
        if ((rc = tmp_target(&q, tmpdir, sizeof tmpdir, tmppath, sizeof tmppath))) goto done;
        dest = tmppath;
    }
    qnt_result res;
    if ((rc = qnt_session_build(q.sess, &q.plan, &qo, in_mem ? NULL : dest, &img, &img_len, &res)))
        goto done;
    if (evaluated) {
        if ((rc = eval_input(&q, &base))) goto done;
        memset(&cand, 0, sizeof cand);
        if ((rc = eval_image(&q, img, img_len, &cand))) goto done;
        double drop = (base.value - cand.value) * 100;
        json_array_append_new(q.rounds,
                              json_pack("{s:i,s:f,s:f,s:o}", "round", 0, "accuracy", cand.value,
                                        "drop", drop, "raised", json_array()));
        double best_drop = drop;
        for (int round = 1; q.max_drop >= 0 && drop >= q.max_drop; round++) {
            json_t *raised = json_array();
            size_t n_raised = 0;
            if (round > (int)q.max_rounds || (rc = raise_round(&q, raised, &n_raised)) != 0 ||
                n_raised == 0) {
                json_decref(raised);
                if (rc) goto done;
                rc = core_err_set(
                    MLV_EGATE,
                    "--max-drop %.2f not reached: the best result lost %.2f points "
                    "(%.2f%% -> %.2f%% next-token accuracy) after %d round%s; %s; "
                    "nothing stored",
                    q.max_drop, best_drop, base.value * 100, (base.value - best_drop / 100) * 100,
                    round - 1, round == 2 ? "" : "s",
                    round > (int)q.max_rounds ? "--max-rounds reached" : "nothing left to raise");
                if (q.a.json) {
                    json_t *j = json_pack("{s:s,s:f,s:f,s:f,s:O}", "error", core_err_last(),
                                          "max_drop", q.max_drop, "best_drop", best_drop,
                                          "input_accuracy", base.value, "rounds", q.rounds);
                    cli_print_json(j);
                }
                goto done;
            }
            free(img);
            img = NULL;
            if ((rc = qnt_session_build(q.sess, &q.plan, &qo, NULL, &img, &img_len, &res))) {
                json_decref(raised);
                goto done;
            }
            if ((rc = eval_image(&q, img, img_len, &cand))) {
                json_decref(raised);
                goto done;
            }
            drop = (base.value - cand.value) * 100;
            if (drop < best_drop) best_drop = drop;
            json_array_append_new(q.rounds,
                                  json_pack("{s:i,s:f,s:f,s:o}", "round", round, "accuracy",
                                            cand.value, "drop", drop, "raised", raised));
        }
    }
    if (in_mem) {
        char odir[4096];
        snprintf(odir, sizeof odir, "%s", dest);
        char *slash = strrchr(odir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(odir, sizeof odir, ".");
        if ((rc = core_write_atomic(dest, odir, img, img_len, file_input ? 0644 : 0600))) goto done;
    } else {
        struct stat ost;
        img_len = stat(dest, &ost) == 0 ? (size_t)ost.st_size : 0;
    }
    char out[160];
    const char *digest = NULL;
    reg_pushed pushed;
    if (file_input) {
        snprintf(out, sizeof out, "%.150s", outpath);
    } else {
        if ((rc = push(&q, dest, &res, &pushed))) goto done;
        snprintf(out, sizeof out, "%s:%d", pushed.name, pushed.version);
        digest = pushed.digest;
        if (evaluated) {
            snprintf(cand.model_ref, sizeof cand.model_ref, "%s", out);
            snprintf(cand.model_digest, sizeof cand.model_digest, "%s", pushed.digest);
            if ((rc = reg_eval_record(q.src.r, &q.src.user, &cand))) goto done;
        }
    }
    print_result(&q, out, digest, img_len, &res, evaluated ? &base : NULL, evaluated ? &cand : NULL,
                 core_now_s() - t0);
done:
    free(img);
    if (tmpdir[0]) core_rm_rf(tmpdir);
    qcmd_clear(&q);
    return rc;
}
