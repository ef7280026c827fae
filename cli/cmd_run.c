/* cli/cmd_run.c: `mlvault run REF|FILE [--prompt TEXT | --chat] [-n N] [--temp T]
 * [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S] [--threads N]
 * [--ctx N] [--backend ref|cpu] [--json]` — text generation with the built-in engine.
 * Text streams to stdout as it is generated; timings go to stderr (or into --json).
 * --chat with --prompt answers one user message through the model's chat template;
 * --chat alone is a conversation on stdin, one message per line. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

/* Options shared with `eval`: --threads, --backend. */
int cli_load_opts(const cli_args *a, eng_load_opts *lo)
{
    memset(lo, 0, sizeof *lo);
    double th = 0;
    int rc = cli_opt_num(a, "threads", 0, 1024, true, &th);
    if (rc) return rc;
    lo->threads = (int)th;
    const char *b = cli_opt(a, "backend");
    if (!b || !strcmp(b, "cpu"))
        lo->backend = ENG_BACKEND_CPU;
    else if (!strcmp(b, "ref"))
        lo->backend = ENG_BACKEND_REF;
    else
        return core_err_set(MLV_EINVAL, "--backend %s: expected cpu or ref", b);
    return 0;
}

static int stream_piece(void *arg, int32_t id, const char *piece, size_t len)
{
    (void)id;
    if (arg) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int print_result(const cli_args *a, const cli_source *src, const eng_gen_result *g,
                        const eng_sampler_params *sp, int threads)
{
    const double pre = g->prefill_s > 0 ? g->n_prompt / g->prefill_s : 0;
    const double dec = g->decode_s > 0 ? g->n_decoded / g->decode_s : 0;
    if (a->json) {
        char *text = core_utf8_valid_copy(g->text, strlen(g->text));
        json_t *o =
            !text
                ? NULL
                : json_pack("{s:s,s:s,s:i,s:o,s:o,s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:s,s:I,s:f}",
                            "model", src->label, "backend", eng_model_backend_name(src->model),
                            "threads", threads, "prompt_ids", ids_json(g->prompt_ids, g->n_prompt),
                            "ids", ids_json(g->ids, g->n_gen), "text", text, "n_prompt",
                            (json_int_t)g->n_prompt, "n_gen", (json_int_t)g->n_gen, "n_decoded",
                            (json_int_t)g->n_decoded, "prefill_s", g->prefill_s, "decode_s",
                            g->decode_s, "prefill_tokens_per_s", pre, "decode_tokens_per_s", dec,
                            "stop_reason", g->stop_reason, "seed", (json_int_t)sp->seed, "temp",
                            (double)sp->temp);
        free(text);
        if (!o) return core_err_set(MLV_ENOMEM, "out of memory");
        cli_print_json(o);
    } else {
        fprintf(
            stderr,
            "\n[%s] prompt %zu tokens, %.1f tok/s; generated %zu tokens, %.1f tok/s; stop: %s\n",
            eng_model_backend_name(src->model), g->n_prompt, pre, g->n_gen, dec, g->stop_reason);
    }
    return 0;
}

/* Renders the conversation and feeds what the cache does not hold yet. */
static int chat_tokens(const eng_model *m, int tmpl, const char *sys, const eng_chat_msg *msgs,
                       size_t n, int32_t **ids, size_t *n_ids)
{
    char *text = NULL;
    int rc = eng_chat_apply(tmpl, sys, msgs, n, true, &text);
    if (!rc) rc = eng_tokenize(eng_model_tokenizer(m), text, strlen(text), true, true, ids, n_ids);
    free(text);
    return rc;
}

static int chat_loop(const cli_args *a, cli_source *src, eng_ctx *c, const eng_sampler_params *sp,
                     uint32_t n_predict)
{
    char sys[512];
    int tmpl = eng_chat_template_of(eng_model_gguf(src->model), sys);
    eng_chat_msg *msgs = NULL;
    size_t n = 0;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    bool tty = isatty(0);
    for (;;) {
        if (tty) fputs("> ", stderr);
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = 0;
        if (got == 0) continue;
        eng_chat_msg *nm = realloc(msgs, sizeof *msgs * (n + 2));
        if (!nm) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
        msgs = nm;
        msgs[n].role = "user";
        msgs[n++].content = strdup(line);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if ((rc = chat_tokens(src->model, tmpl, sys, msgs, n, &ids, &n_ids)) != 0) break;
        eng_ctx_truncate(c, 0); /* the whole conversation again: simple and always right */
        eng_gen_result g;
        rc = eng_generate(c, ids, n_ids, n_predict, sp, stream_piece, (void *)1, &g);
        free(ids);
        if (rc) break;
        fputc('\n', stdout);
        msgs[n].role = "assistant";
        msgs[n++].content = g.text;
        g.text = NULL;
        if (!a->json) print_result(a, src, &g, sp, 0);
        eng_gen_result_clear(&g);
    }
    for (size_t i = 0; i < n; i++)
        free((char *)msgs[i].content);
    free(msgs);
    free(line);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    static const cli_opt_spec spec[] = {
        {"prompt", 'p', true, false},  {"chat", 0, false, false},
        {"n", 'n', true, false},       {"temp", 0, true, false},
        {"top-k", 0, true, false},     {"top-p", 0, true, false},
        {"min-p", 0, true, false},     {"seed", 0, true, false},
        {"threads", 't', true, false}, {"ctx", 'c', true, false},
        {"backend", 0, true, false},   {"repeat-penalty", 0, true, false},
    };
    cli_args a;
    int rc = cli_parse(&a, argc, argv, spec, sizeof spec / sizeof *spec);
    if (rc) return rc;
    const char *prompt = cli_opt(&a, "prompt");
    bool chat = cli_flag(&a, "chat");
    if (a.npos != 1 || (!prompt && !chat))
        return core_err_set(MLV_EINVAL,
                            "usage: mlvault run REF|FILE (--prompt TEXT | --chat) [-n N] "
                            "[--temp T] [--top-k K] [--top-p P] [--min-p P] [--seed S] "
                            "[--threads N] [--json]");
    double n = 128, temp = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05, rp = 1.0, ctx = 0,
           seed = -1;
    if ((rc = cli_opt_num(&a, "n", 1, 1 << 20, true, &n)) ||
        (rc = cli_opt_num(&a, "temp", 0, 100, false, &temp)) ||
        (rc = cli_opt_num(&a, "top-k", 0, 1 << 24, true, &top_k)) ||
        (rc = cli_opt_num(&a, "top-p", 0, 1, false, &top_p)) ||
        (rc = cli_opt_num(&a, "min-p", 0, 1, false, &min_p)) ||
        (rc = cli_opt_num(&a, "repeat-penalty", 0.01, 100, false, &rp)) ||
        (rc = cli_opt_num(&a, "ctx", 16, 1 << 20, true, &ctx)) ||
        (rc = cli_opt_num(&a, "seed", 0, 18446744073709549568.0, true, &seed)))
        return rc;
    eng_sampler_params sp = {
        (float)temp, (int32_t)top_k, (float)top_p, (float)min_p, (float)rp, 64, 0};
    if (seed >= 0) {
        sp.seed = (uint64_t)seed;
    } else if ((rc = core_random(&sp.seed, sizeof sp.seed)) != 0) {
        return rc;
    } else {
        sp.seed >>= 11; /* printable and exactly representable in JSON */
    }
    eng_load_opts lo;
    if ((rc = cli_load_opts(&a, &lo)) != 0) return rc;
    cli_source src = {0};
    eng_ctx *c = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    eng_gen_result g = {0};
    if ((rc = cli_open_model(&a, a.pos[0], &lo, &src)) != 0) goto done;
    const eng_tokenizer *tok = eng_model_tokenizer(src.model);
    if (chat && !prompt) {
        if ((rc = eng_ctx_new(&c, src.model, (uint32_t)ctx)) == 0)
            rc = chat_loop(&a, &src, c, &sp, (uint32_t)n);
        goto done;
    }
    if (chat) {
        char sys[512];
        int tmpl = eng_chat_template_of(eng_model_gguf(src.model), sys);
        eng_chat_msg msg = {"user", prompt};
        rc = chat_tokens(src.model, tmpl, sys, &msg, 1, &ids, &n_ids);
    } else {
        rc = eng_tokenize(tok, prompt, strlen(prompt), true, true, &ids, &n_ids);
    }
    if (rc) goto done;
    if (n_ids == 0) {
        rc = core_err_set(MLV_EINVAL, "the prompt is empty");
        goto done;
    }
    uint32_t need = (uint32_t)(n_ids + (size_t)n + 1);
    if ((rc = eng_ctx_new(&c, src.model, ctx > 0 ? (uint32_t)ctx : need)) != 0) goto done;
    rc = eng_generate(c, ids, n_ids, (uint32_t)n, &sp, stream_piece, a.json ? NULL : (void *)1, &g);
    if (rc) goto done;
    rc = print_result(&a, &src, &g, &sp,
                      lo.threads > 0 ? lo.threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
done:
    eng_gen_result_clear(&g);
    free(ids);
    eng_ctx_free(c);
    cli_source_clear(&src);
    return rc;
}
