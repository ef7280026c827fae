/* engine/generate.c: a prompt's tokens -> prefill -> sample/decode until n_predict
 * tokens, an end-of-generation token or a full context; timings per phase. The only
 * allocations are made before the first token (history, logits, sampler). */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

void eng_gen_result_clear(eng_gen_result *r)
{
    if (!r) return;
    free(r->prompt_ids);
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}

int eng_generate(eng_ctx *c, const int32_t *prompt, size_t n_prompt, uint32_t n_predict,
                 const eng_sampler_params *sp,
                 int (*on_token)(void *arg, int32_t id, const char *piece, size_t len), void *arg,
                 eng_gen_result *out)
{
    memset(out, 0, sizeof *out);
    const eng_model *m = eng_ctx_model(c);
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    const uint32_t nv = eng_model_hparams(m)->n_vocab;
    if (n_prompt == 0) return core_err_set(MLV_EINVAL, "generate: the prompt is empty");
    if (n_prompt >= eng_ctx_n_ctx(c) - eng_ctx_pos(c))
        return core_err_set(MLV_EINVAL,
                            "generate: a prompt of %zu tokens does not fit a context "
                            "of %u",
                            n_prompt, eng_ctx_n_ctx(c));
    eng_sampler *s = NULL;
    float *logits = malloc(sizeof *logits * nv);
    int32_t *hist = malloc(sizeof *hist * (n_prompt + n_predict + 1));
    core_buf text = {0}, piece = {0};
    int rc = 0;
    if (!logits || !hist) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = eng_sampler_new(&s, sp, nv))) goto done;
    memcpy(hist, prompt, sizeof *hist * n_prompt);
    double t0 = core_now_s();
    if ((rc = eng_decode(c, prompt, n_prompt, logits, false))) goto done;
    out->prefill_s = core_now_s() - t0;
    out->stop_reason = "length";
    size_t n_gen = 0;
    double decode_s = 0;
    while (n_gen < n_predict) {
        int32_t id = eng_sample(s, logits, hist, n_prompt + n_gen);
        if (eng_token_is_eog(tok, id)) {
            out->stop_reason = "eog";
            break;
        }
        hist[n_prompt + n_gen++] = id;
        piece.len = 0;
        if ((rc = eng_token_piece(tok, id, false, &piece))) goto done;
        core_buf_append(&text, piece.data ? piece.data : "", piece.len);
        if (on_token && on_token(arg, id, piece.data ? piece.data : "", piece.len)) {
            out->stop_reason = "callback";
            break;
        }
        if (n_gen == n_predict) break;
        if (eng_ctx_pos(c) >= eng_ctx_n_ctx(c)) {
            out->stop_reason = "context";
            break;
        }
        double t1 = core_now_s();
        if ((rc = eng_decode(c, &id, 1, logits, false))) goto done;
        decode_s += core_now_s() - t1;
        out->n_decoded++;
    }
    out->decode_s = decode_s;
    out->n_gen = n_gen;
    out->prompt_ids = malloc(sizeof *hist * n_prompt);
    out->ids = malloc(sizeof *hist * (n_gen ? n_gen : 1));
    core_buf_append(&text, "", 0);
    out->text = core_buf_take(&text);
    if (!out->prompt_ids || !out->ids || !out->text) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    out->n_prompt = n_prompt;
    memcpy(out->prompt_ids, hist, sizeof *hist * n_prompt);
    memcpy(out->ids, hist + n_prompt, sizeof *hist * n_gen);
done:
    if (rc) eng_gen_result_clear(out);
    eng_sampler_free(s);
    free(logits);
    free(hist);
    core_buf_free(&text);
    core_buf_free(&piece);
    return rc;
}
