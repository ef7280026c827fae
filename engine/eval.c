/* engine/eval.c: the evaluation metrics of DESIGN.md (Evaluation) on one model.
 *
 * Text metrics (next_token_accuracy, perplexity, kld): the text is tokenized (BOS first
 * when the model adds one), cut into consecutive windows of n_ctx tokens (a final
 * partial window is dropped; with BOS, each window's first token becomes BOS, as
 * llama-perplexity does); each window runs from an empty KV cache and the predictions
 * of positions n_ctx/2 .. n_ctx-1 are scored, the first half being context only.
 * Accuracy: argmax of the logits at i-1 == token i. Perplexity: exp(mean NLL). KLD:
 * mean KL(baseline || model) over the same positions, and the same-top-token rate.
 *
 * mc_accuracy: JSONL lines {"context", "choices": [...], "answer": i}; a choice's score
 * is the summed log-probability of its continuation tokens, where, as in
 * lm-evaluation-harness, whole = tokenize(context + choice), and the continuation is
 * whole[len(tokenize(context)):]; the pick is the highest score.
 *
 * 95% intervals: Wilson for accuracies, mean +- 1.96 standard errors for KLD, and
 * exp of that over the NLLs for perplexity. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

static const char *const METRICS[] = {NULL, "next_token_accuracy", "perplexity", "mc_accuracy",
                                      "kld"};

const char *eng_metric_name(int metric)
{
    return metric >= 1 && metric <= ENG_METRIC_KLD ? METRICS[metric] : "unknown";
}

int eng_metric_parse(const char *name)
{
    for (int i = 1; i <= ENG_METRIC_KLD; i++)
        if (name && !strcmp(name, METRICS[i])) return i;
    return -1;
}

static void wilson(double k, double n, double *lo, double *hi)
{
    const double z = 1.959964;
    if (n <= 0) {
        *lo = *hi = 0;
        return;
    }
    double p = k / n, den = 1 + z * z / n, mid = (p + z * z / (2 * n)) / den;
    double half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den;
    *lo = mid - half < 0 ? 0 : mid - half;
    *hi = mid + half > 1 ? 1 : mid + half;
}

/* log-softmax pieces of one logits row: max and log(sum(exp(x - max))), in double. */
static void log_norm(const float *x, uint32_t n, double *mx, double *lse, int32_t *argmax)
{
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int32_t)i;
    double m = x[best], sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += exp((double)x[i] - m);
    *mx = m;
    *lse = log(sum);
    *argmax = best;
}

/* Runs window w through ctx and returns logits for positions half-1 .. n_ctx-2 (the
 * predictions of the scored tokens) in out ((n_ctx - half) x n_vocab). */
static int run_window(eng_ctx *c, const int32_t *win, uint32_t n_ctx, uint32_t half, float *out)
{
    eng_ctx_truncate(c, 0);
    int rc = 0;
    if (half > 1) rc = eng_decode(c, win, half - 1, NULL, false);
    if (!rc) rc = eng_decode(c, win + half - 1, n_ctx - half, out, true);
    return rc;
}

static int eval_text(eng_model *m, int metric, const char *data, size_t len, const eng_eval_opts *o,
                     eng_eval_result *r)
{
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    const uint32_t n_ctx = o && o->n_ctx ? o->n_ctx : 512;
    eng_model *base = o ? o->baseline : NULL;
    if (n_ctx < 8)
        return core_err_set(MLV_EINVAL, "eval: a context of %u tokens is too short", n_ctx);
    if (metric == ENG_METRIC_KLD) {
        if (!base) return core_err_set(MLV_EINVAL, "eval: kld needs a baseline model");
        if (eng_model_hparams(base)->n_vocab != nv)
            return core_err_set(MLV_EINVAL,
                                "eval: the baseline's vocabulary (%u) differs from the "
                                "model's (%u)",
                                eng_model_hparams(base)->n_vocab, nv);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    eng_ctx *c = NULL, *cb = NULL;
    float *lg = NULL, *lgb = NULL;
    int rc = eng_tokenize(tok, data, len, true, false, &ids, &n_ids);
    if (rc) return core_err_wrap("eval: ");
    const size_t n_win = n_ids / n_ctx;
    const uint32_t half = n_ctx / 2, n_scored = n_ctx - half;
    if (n_win == 0) {
        rc = core_err_set(MLV_EINVAL, "eval: the text has %zu tokens, fewer than one window of %u",
                          n_ids, n_ctx);
        goto done;
    }
    if ((rc = eng_ctx_new(&c, m, n_ctx))) goto done;
    if (base && (rc = eng_ctx_new(&cb, base, n_ctx))) goto done;
    lg = malloc(sizeof *lg * (size_t)n_scored * nv);
    if (base) lgb = malloc(sizeof *lgb * (size_t)n_scored * nv);
    if (!lg || (base && !lgb)) {
        rc = core_err_set(MLV_ENOMEM, "out of memory for %u x %u logits", n_scored, nv);
        goto done;
    }
    const int32_t bos = eng_token_bos(tok);
    const bool add_bos = n_ids > 0 && bos >= 0 && ids[0] == bos;
    double nll_sum = 0, nll_sq = 0, kl_sum = 0, kl_sq = 0;
    uint64_t n = 0, correct = 0, same = 0;
    for (size_t w = 0; w < n_win; w++) {
        int32_t *win = ids + w * n_ctx;
        int32_t first = win[0];
        if (add_bos) win[0] = bos;
        rc = run_window(c, win, n_ctx, half, lg);
        if (!rc && base) rc = run_window(cb, win, n_ctx, half, lgb);
        win[0] = first;
        if (rc) goto done;
        for (uint32_t i = 0; i < n_scored; i++) {
            const float *row = lg + (size_t)i * nv;
            const int32_t target = win[half + i];
            double mx, lse;
            int32_t top;
            log_norm(row, nv, &mx, &lse, &top);
            double nll = -((double)row[target] - mx - lse);
            nll_sum += nll;
            nll_sq += nll * nll;
            correct += top == target;
            if (base) {
                const float *rb = lgb + (size_t)i * nv;
                double mxb, lseb;
                int32_t topb;
                log_norm(rb, nv, &mxb, &lseb, &topb);
                double kl = 0;
                for (uint32_t v = 0; v < nv; v++) {
                    double lpb = (double)rb[v] - mxb - lseb, lpm = (double)row[v] - mx - lse;
                    kl += exp(lpb) * (lpb - lpm);
                }
                kl_sum += kl;
                kl_sq += kl * kl;
                same += top == topb;
            }
            n++;
        }
        if (o && o->progress) o->progress(o->progress_arg, (double)(w + 1) / (double)n_win);
    }
    const double mean_nll = nll_sum / n, sd_nll = sqrt(fmax(nll_sq / n - mean_nll * mean_nll, 0));
    const double se_nll = sd_nll / sqrt((double)n);
    r->n_samples = n;
    r->accuracy = (double)correct / n;
    r->perplexity = exp(mean_nll);
    if (metric == ENG_METRIC_NEXT_TOKEN_ACCURACY) {
        r->value = r->accuracy;
        wilson((double)correct, (double)n, &r->ci_low, &r->ci_high);
    } else if (metric == ENG_METRIC_PERPLEXITY) {
        r->value = r->perplexity;
        r->ci_low = exp(mean_nll - 1.959964 * se_nll);
        r->ci_high = exp(mean_nll + 1.959964 * se_nll);
    } else {
        const double mean = kl_sum / n, sd = sqrt(fmax(kl_sq / n - mean * mean, 0));
        r->value = mean;
        r->ci_low = mean - 1.959964 * sd / sqrt((double)n);
        r->ci_high = mean + 1.959964 * sd / sqrt((double)n);
        r->same_top = (double)same / n;
    }
done:
    free(ids);
    free(lg);
    free(lgb);
    eng_ctx_free(c);
    eng_ctx_free(cb);
    return rc;
}

/* One question: the summed log-probabilities of each choice's continuation. */
static int score_choice(eng_ctx *c, const eng_tokenizer *tok, uint32_t nv, const char *context,
                        size_t na, const char *choice, float **lg, size_t *lg_cap, double *score)
{
    int32_t *whole = NULL;
    size_t nw = 0;
    size_t lc = strlen(context), lch = strlen(choice);
    char *joined = malloc(lc + lch + 1);
    int rc = joined ? 0 : core_err_set(MLV_ENOMEM, "out of memory");
    if (!rc) {
        memcpy(joined, context, lc);
        memcpy(joined + lc, choice, lch + 1);
        rc = eng_tokenize(tok, joined, lc + lch, true, false, &whole, &nw);
    }
    if (rc) goto done;
    if (na == 0 || nw <= na) {
        rc = core_err_set(MLV_EINVAL, "the choice \"%.40s\" adds no tokens to its context", choice);
        goto done;
    }
    if (nw > eng_ctx_n_ctx(c)) {
        rc = core_err_set(MLV_EINVAL, "a question of %zu tokens does not fit the context of %u", nw,
                          eng_ctx_n_ctx(c));
        goto done;
    }
    /* logits at positions na-1 .. nw-2 predict whole[na .. nw-1] */
    size_t need = (nw - na) * (size_t)nv;
    if (need > *lg_cap) {
        free(*lg);
        *lg = malloc(sizeof **lg * need);
        *lg_cap = *lg ? need : 0;
        if (!*lg) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            goto done;
        }
    }
    eng_ctx_truncate(c, 0);
    if (na > 1 && (rc = eng_decode(c, whole, na - 1, NULL, false))) goto done;
    if ((rc = eng_decode(c, whole + na - 1, nw - na, *lg, true))) goto done;
    double sum = 0;
    for (size_t i = 0; i < nw - na; i++) {
        double mx, lse;
        int32_t top;
        const float *row = *lg + i * nv;
        log_norm(row, nv, &mx, &lse, &top);
        sum += (double)row[whole[na + i]] - mx - lse;
    }
    *score = sum;
done:
    free(joined);
    free(whole);
    return rc;
}

static int eval_mc(eng_model *m, const char *data, size_t len, const eng_eval_opts *o,
                   eng_eval_result *r)
{
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    eng_ctx *c = NULL;
    float *lg = NULL;
    size_t lg_cap = 0, lines = 0, total = 0;
    uint64_t correct = 0, n = 0;
    int rc = eng_ctx_new(&c, m, o && o->n_ctx ? o->n_ctx : 2048);
    if (rc) return rc;
    for (size_t i = 0; i < len; i++)
        total += data[i] == '\n';
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        lines++;
        const char *line = p;
        p += ll + (nl ? 1 : 0);
        size_t k = 0;
        while (k < ll && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
            k++;
        if (k == ll) continue;
        json_error_t je;
        json_t *q = json_loadb(line, ll, JSON_REJECT_DUPLICATES, &je);
        json_t *ctx = json_object_get(q, "context"), *choices = json_object_get(q, "choices"),
               *ans = json_object_get(q, "answer");
        if (!q || !json_is_string(ctx) || !json_is_array(choices) || json_array_size(choices) < 2 ||
            !json_is_integer(ans) || json_integer_value(ans) < 0 ||
            (size_t)json_integer_value(ans) >= json_array_size(choices)) {
            rc = core_err_set(
                MLV_EINVAL,
                "eval: line %zu: expected {\"context\": text, \"choices\": [two or more "
                "texts], \"answer\": index of the right choice}%s%s",
                lines, q ? "" : ": ", q ? "" : je.text);
            json_decref(q);
            goto done;
        }
        /* the context's token count draws the boundary for every choice */
        int32_t *cids = NULL;
        size_t na = 0;
        if ((rc = eng_tokenize(tok, json_string_value(ctx), strlen(json_string_value(ctx)), true,
                               false, &cids, &na)) != 0) {
            core_err_wrap("eval: line %zu: ", lines);
            json_decref(q);
            goto done;
        }
        free(cids);
        double best = -INFINITY;
        size_t pick = 0, j;
        json_t *ch;
        json_array_foreach(choices, j, ch)
        {
            double s = 0;
            if (!json_is_string(ch)) {
                rc = core_err_set(MLV_EINVAL, "eval: line %zu: choice %zu is not a string", lines,
                                  j);
                break;
            }
            if ((rc = score_choice(c, tok, nv, json_string_value(ctx), na, json_string_value(ch),
                                   &lg, &lg_cap, &s))) {
                core_err_wrap("eval: line %zu: ", lines);
                break;
            }
            if (s > best) best = s, pick = j;
        }
        correct += pick == (size_t)json_integer_value(ans);
        json_decref(q);
        if (rc) goto done;
        n++;
        if (o && o->progress && total)
            o->progress(o->progress_arg, fmin(1.0, (double)lines / total));
    }
    if (n == 0) {
        rc = core_err_set(MLV_EINVAL, "eval: the data has no questions");
        goto done;
    }
    r->n_samples = n;
    r->value = r->accuracy = (double)correct / n;
    wilson((double)correct, (double)n, &r->ci_low, &r->ci_high);
done:
    free(lg);
    eng_ctx_free(c);
    return rc;
}

int eng_evaluate(eng_model *m, int metric, const char *data, size_t len, const eng_eval_opts *opts,
                 eng_eval_result *out)
{
    memset(out, 0, sizeof *out);
    out->metric = metric;
    double t0 = core_now_s();
    int rc;
    switch (metric) {
    case ENG_METRIC_NEXT_TOKEN_ACCURACY:
    case ENG_METRIC_PERPLEXITY:
    case ENG_METRIC_KLD: rc = eval_text(m, metric, data, len, opts, out); break;
    case ENG_METRIC_MC_ACCURACY: rc = eval_mc(m, data, len, opts, out); break;
    default: return core_err_set(MLV_EINVAL, "eval: unknown metric %d", metric);
    }
    out->seconds = core_now_s() - t0;
    return rc;
}
