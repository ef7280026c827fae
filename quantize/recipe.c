/* quantize/recipe.c: which type each tensor of a model gets — the target's base type,
 * llama.cpp's rules for the output matrix, the _M mixes and K-type fallbacks
 * (llama.cpp's llama_tensor_get_type, in spirit), then --tensor-type overrides. Not
 * for the quantization itself (blocks.c, gptq.c, quantize.c). */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quantize/quantize.h"

static const struct {
    const char *name;
    int base;
    bool mix;
    int file_type; /* LLAMA_FTYPE_MOSTLY_* */
} TARGETS[] = {
    {"Q8_0", ENG_Q8_0, false, 7},  {"Q4_0", ENG_Q4_0, false, 2},   {"Q4_1", ENG_Q4_1, false, 3},
    {"Q5_0", ENG_Q5_0, false, 8},  {"Q5_1", ENG_Q5_1, false, 9},   {"Q4_K", ENG_Q4_K, false, 14},
    {"Q6_K", ENG_Q6_K, false, 18}, {"Q4_K_M", ENG_Q4_K, true, 15}, {"Q5_K_M", ENG_Q5_K, true, 17},
};
#define N_TARGETS (sizeof TARGETS / sizeof TARGETS[0])

int qnt_target_parse(const char *s, qnt_target *out)
{
    for (size_t i = 0; s && i < N_TARGETS; i++)
        if (!strcasecmp(s, TARGETS[i].name)) {
            memset(out, 0, sizeof *out);
            snprintf(out->name, sizeof out->name, "%s", TARGETS[i].name);
            out->base = TARGETS[i].base;
            out->mix = TARGETS[i].mix;
            out->file_type = TARGETS[i].file_type;
            return 0;
        }
    return core_err_set(MLV_EINVAL,
                        "unknown quantization type '%s' (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, "
                        "Q6_K, Q4_K_M, Q5_K_M)",
                        s ? s : "");
}

const char *qnt_method_name(int method)
{
    switch (method) {
    case QNT_RTN: return "rtn";
    case QNT_IMATRIX: return "imatrix";
    case QNT_GPTQ: return "gptq";
    default: return NULL;
    }
}

int qnt_method_parse(const char *s)
{
    for (int m = QNT_RTN; m <= QNT_GPTQ; m++)
        if (s && !strcasecmp(s, qnt_method_name(m))) return m;
    return -1;
}

double qnt_type_bpw(int type)
{
    size_t be = 0, bb = 0;
    if (eng_type_block(type, &be, &bb) != 0 || !be) return 0;
    return (double)bb * 8.0 / (double)be;
}

static bool is_k_type(int t)
{
    return t == ENG_Q4_K || t == ENG_Q5_K || t == ENG_Q6_K;
}

/* llama.cpp's fallbacks for rows that are not whole 256-element super-blocks. */
static int k_fallback(int type, int64_t n_in)
{
    if (!is_k_type(type) || n_in % 256 == 0) return type;
    return type == ENG_Q4_K ? ENG_Q5_0 : type == ENG_Q5_K ? ENG_Q5_1 : ENG_Q8_0;
}

int qnt_type_raise(int type, int64_t n_in)
{
    switch (type) {
    case ENG_Q4_0:
    case ENG_Q4_1:
    case ENG_Q5_0:
    case ENG_Q5_1:
    case ENG_Q4_K:
    case ENG_Q5_K: return k_fallback(ENG_Q6_K, n_in);
    case ENG_Q6_K: return ENG_Q8_0;
    case ENG_Q8_0: return ENG_F16;
    default: return -1;
    }
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers and every third
 * one between get more bits in the _M mixes. */
static bool use_more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* "blk.N.<rest>" -> N and rest; -1 for other names. */
static int layer_of(const char *name, const char **rest)
{
    if (strncmp(name, "blk.", 4) != 0) return -1;
    char *end;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > 100000) return -1;
    *rest = end + 1;
    return (int)l;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* A weight matrix the recipe quantizes: 2-D, "*.weight", not a norm. */
static bool quantizable(const eng_gguf_tensor *t)
{
    return t->n_dims == 2 && has_suffix(t->name, ".weight") && !strstr(t->name, "_norm");
}

void qnt_plan_clear(qnt_plan *p)
{
    if (!p) return;
    free(p->t);
    memset(p, 0, sizeof *p);
}

static int apply_overrides(qnt_plan *p, const qnt_override *ov, size_t n_ov)
{
    for (size_t k = 0; k < n_ov; k++) {
        if (!ov[k].pattern || !*ov[k].pattern)
            return core_err_set(MLV_EINVAL, "--tensor-type: empty pattern");
        int type = ov[k].type;
        if (!qnt_type_supported(type) && type != ENG_F16 && type != ENG_F32 && type != ENG_BF16)
            return core_err_set(MLV_EINVAL, "--tensor-type %s: cannot quantize to %s",
                                ov[k].pattern,
                                eng_type_name(type) ? eng_type_name(type) : "that type");
        size_t len = strlen(ov[k].pattern);
        char *anchored = malloc(len + 5);
        if (!anchored) return core_err_set(MLV_ENOMEM, "out of memory");
        snprintf(anchored, len + 5, "^(%s)$", ov[k].pattern);
        regex_t re;
        int e = regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB);
        free(anchored);
        if (e) {
            char msg[128];
            regerror(e, &re, msg, sizeof msg);
            return core_err_set(MLV_EINVAL, "--tensor-type %s: not a valid pattern (%s)",
                                ov[k].pattern, msg);
        }
        size_t hits = 0;
        for (size_t i = 0; i < p->n; i++) {
            qnt_tensor_plan *t = &p->t[i];
            if (!t->quantized || regexec(&re, t->name, 0, NULL, 0) != 0) continue;
            t->type = type == ENG_F32 || type == ENG_BF16 ? type
                      : t->n_in % 32                      ? ENG_F16
                                                          : k_fallback(type, t->n_in);
            t->overridden = true;
            hits++;
        }
        regfree(&re);
        if (!hits)
            return core_err_set(MLV_EINVAL,
                                "--tensor-type %s: the pattern matches no weight matrix of the "
                                "model (names look like blk.0.attn_v.weight, output.weight)",
                                ov[k].pattern);
    }
    return 0;
}

int qnt_plan_make(qnt_plan *out, const eng_gguf *g, const qnt_target *tg, const qnt_override *ov,
                  size_t n_ov)
{
    memset(out, 0, sizeof *out);
    const char *arch = NULL;
    if (eng_gguf_get_str(g, "general.architecture", &arch) != 0)
        return core_err_set(MLV_EINVAL, "quantize: the model has no general.architecture");
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0)
        return core_err_set(MLV_EUNSUPPORTED,
                            "quantize: architecture '%s' is not supported (llama, qwen2)", arch);
    char key[64];
    int64_t n_layer = 0;
    snprintf(key, sizeof key, "%s.block_count", arch);
    if (eng_gguf_get_int(g, key, &n_layer) != 0 || n_layer <= 0 || n_layer > 100000)
        return core_err_set(MLV_EINVAL, "quantize: %s is missing or out of range", key);

    size_t n = eng_gguf_n_tensors(g);
    out->target = *tg;
    out->n_layer = (uint32_t)n_layer;
    if (!(out->t = calloc(n ? n : 1, sizeof *out->t)))
        return core_err_set(MLV_ENOMEM, "out of memory");
    out->n = n;
    bool has_output = eng_gguf_find_tensor(g, "output.weight") >= 0;
    for (size_t i = 0; i < n; i++) {
        eng_gguf_tensor t;
        int rc = eng_gguf_tensor_info(g, i, &t);
        if (rc) {
            qnt_plan_clear(out);
            return rc;
        }
        qnt_tensor_plan *p = &out->t[i];
        snprintf(p->name, sizeof p->name, "%s", t.name);
        p->in_type = p->type = t.type;
        p->layer = -1;
        p->n_in = (int64_t)t.dims[0];
        p->n_out = t.n_dims > 1 ? (int64_t)t.dims[1] : 1;
        if (!quantizable(&t)) continue;
        if (strlen(t.name) >= sizeof p->name) {
            qnt_plan_clear(out);
            return core_err_set(MLV_EINVAL, "quantize: tensor name too long: %.40s...", t.name);
        }
        size_t be = 0, bb = 0;
        eng_type_block(t.type, &be, &bb);
        if (t.type != ENG_F32 && t.type != ENG_F16 && t.type != ENG_BF16)
            out->input_quantized = true;
        p->quantized = true;
        int type = tg->base;
        const char *rest = NULL;
        int layer = layer_of(t.name, &rest);
        bool output = !strcmp(t.name, "output.weight") ||
                      (!has_output && !strcmp(t.name, "token_embd.weight"));
        p->layer = output ? (int)n_layer : layer;
        if (output) {
            if (type != ENG_Q8_0 && type != ENG_Q6_K) type = ENG_Q6_K;
        } else if (tg->mix && layer >= 0 &&
                   (!strcmp(rest, "attn_v.weight") || !strcmp(rest, "ffn_down.weight")) &&
                   use_more_bits(layer, (int)n_layer)) {
            type = ENG_Q6_K;
        }
        /* rows no block type fits become F16, as llama.cpp does */
        p->type = p->n_in % 32 ? ENG_F16 : k_fallback(type, p->n_in);
    }
    int rc = apply_overrides(out, ov, n_ov);
    if (rc) qnt_plan_clear(out);
    return rc;
}
