/* engine/model.c: llama and qwen2 decoder-only transformers from GGUF (llama.cpp's
 * tensor names and hyperparameter keys) on the op layer of engine/backend.h, and the
 * sequence contexts that hold a KV cache. Weights are used in place from the file
 * image (mmap'd file or a caller's buffer); 1-D tensors (norms, biases) are converted
 * to F32 once at load. Not for sampling or evaluation (sample.c, eval.c). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/kernels.h"

#define N_BATCH 256 /* tokens per forward step; scratch is sized for this */

typedef struct layer {
    float *attn_norm, *ffn_norm;
    float *bq, *bk, *bv; /* NULL when the model has no QKV bias */
    eng_weight wq, wk, wv, wo, w_gate, w_up, w_down;
} layer;

struct eng_model {
    eng_hparams hp;
    eng_gguf *g;
    eng_tokenizer *tok;
    eng_backend *be;
    const uint8_t *image;
    size_t image_len;
    bool mapped;
    void *owned; /* caller's buffer we took */
    void (*owned_free)(void *);
    eng_weight tok_embd, output;
    float *output_norm, *rope_freqs;
    layer *layers;
    float **f32_owned; /* every converted 1-D tensor, freed with the model */
    size_t n_f32_owned;
    pthread_mutex_t lock; /* one forward pass at a time (the backend's scratch) */
};

struct eng_ctx {
    eng_model *m;
    uint32_t n_ctx, pos;
    uint16_t **k_cache, **v_cache; /* per layer (n_ctx, n_kv * head_dim) fp16 */
    float *x, *xb, *q, *k, *v, *att, *gate, *up;
    int32_t *positions;
    eng_observe_fn observe; /* calibration hook, usually NULL */
    void *observe_arg;
};

/* ------------------------------------------------------------------ loading ---- */

enum { LAYER_MATRICES = 7 };

/* The matrices of a layer, for figures over all weights. */
static void layer_matrices(const layer *L, const eng_weight *out[LAYER_MATRICES])
{
    const eng_weight *ws[LAYER_MATRICES] = {&L->wq,     &L->wk,   &L->wv,    &L->wo,
                                            &L->w_gate, &L->w_up, &L->w_down};
    memcpy(out, ws, sizeof ws);
}

static int load_err(const char *fmt, const char *a, const char *b)
{
    return core_err_set(MLV_EINVAL, fmt, a, b);
}

static int hp_u32(const eng_model *m, const char *suffix, uint32_t *out, bool required,
                  uint32_t dflt)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->hp.arch, suffix);
    int64_t v;
    if (eng_gguf_get_int(m->g, key, &v) != 0) {
        core_err_clear();
        if (required) return load_err("model: metadata %s%s is missing", key, "");
        *out = dflt;
        return 0;
    }
    if (v <= 0 || v > (1 << 24)) return load_err("model: metadata %s%s is out of range", key, "");
    *out = (uint32_t)v;
    return 0;
}

static float hp_f32(const eng_model *m, const char *suffix, float dflt)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->hp.arch, suffix);
    float v;
    if (eng_gguf_get_f32(m->g, key, &v) != 0) {
        core_err_clear();
        return dflt;
    }
    return v;
}

/* A tensor's info by name; MLV_EINVAL naming it when absent and required. */
static int find(const eng_model *m, const char *name, bool required, eng_gguf_tensor *t,
                bool *found)
{
    int64_t i = eng_gguf_find_tensor(m->g, name);
    if (found) *found = i >= 0;
    if (i < 0) return required ? load_err("model: tensor %s is missing%s", name, "") : 0;
    return eng_gguf_tensor_info(m->g, (size_t)i, t);
}

static int weight(eng_model *m, const char *name, int64_t n_in, int64_t n_out, bool required,
                  eng_weight *w)
{
    eng_gguf_tensor t;
    bool found;
    int rc = find(m, name, required, &t, &found);
    if (rc || !found) return rc;
    if (t.n_dims != 2 || (int64_t)t.dims[0] != n_in || (int64_t)t.dims[1] != n_out) {
        return core_err_set(
            MLV_EINVAL, "model: tensor %s has shape [%llu, %llu], expected [%lld, %lld]", name,
            (unsigned long long)t.dims[0], (unsigned long long)(t.n_dims > 1 ? t.dims[1] : 1),
            (long long)n_in, (long long)n_out);
    }
    if (t.type >= ENG_NTYPES || !eng_kernels_ref()->vec_dot[t.type])
        return core_err_set(MLV_EUNSUPPORTED,
                            "model: tensor %s has type %s, which the engine "
                            "cannot compute with",
                            name, eng_type_name(t.type) ? eng_type_name(t.type) : "(unknown)");
    w->type = t.type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = (size_t)(t.size / (uint64_t)n_out);
    w->data = m->image + eng_gguf_data_offset(m->g) + t.offset;
    return 0;
}

/* A 1-D tensor of n elements (any type we dequantize), as an owned F32 array. */
static int vec(eng_model *m, const char *name, int64_t n, bool required, float **out)
{
    *out = NULL;
    eng_gguf_tensor t;
    bool found;
    int rc = find(m, name, required, &t, &found);
    if (rc || !found) return rc;
    if (t.n_dims != 1 || (int64_t)t.n_elems != n)
        return core_err_set(MLV_EINVAL, "model: tensor %s has %llu elements, expected %lld", name,
                            (unsigned long long)t.n_elems, (long long)n);
    float **list = realloc(m->f32_owned, sizeof *list * (m->n_f32_owned + 1));
    if (!list) return core_err_set(MLV_ENOMEM, "out of memory");
    m->f32_owned = list;
    float *v = malloc(sizeof *v * (size_t)n);
    if (!v) return core_err_set(MLV_ENOMEM, "out of memory");
    m->f32_owned[m->n_f32_owned++] = v;
    rc = eng_dequantize_row(t.type, m->image + eng_gguf_data_offset(m->g) + t.offset, v, n);
    if (rc) return core_err_wrap("model: tensor %s: ", name);
    *out = v;
    return 0;
}

static int load_hparams(eng_model *m)
{
    eng_hparams *hp = &m->hp;
    const char *arch;
    if (eng_gguf_get_str(m->g, "general.architecture", &arch) != 0)
        return core_err_set(MLV_EINVAL, "model: general.architecture is missing");
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0)
        return core_err_set(MLV_EUNSUPPORTED,
                            "model: architecture '%s' is not supported (llama, qwen2)", arch);
    snprintf(hp->arch, sizeof hp->arch, "%s", arch);
    int rc;
    if ((rc = hp_u32(m, "embedding_length", &hp->n_embd, true, 0)) ||
        (rc = hp_u32(m, "block_count", &hp->n_layer, true, 0)) ||
        (rc = hp_u32(m, "feed_forward_length", &hp->n_ff, true, 0)) ||
        (rc = hp_u32(m, "attention.head_count", &hp->n_head, true, 0)) ||
        (rc = hp_u32(m, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head)) ||
        (rc = hp_u32(m, "context_length", &hp->n_ctx_train, false, 2048)))
        return rc;
    if (hp->n_layer > 1024 || hp->n_head > 1024)
        return core_err_set(MLV_EINVAL, "model: %u layers / %u heads is out of range", hp->n_layer,
                            hp->n_head);
    if ((rc = hp_u32(m, "attention.key_length", &hp->head_dim, false, hp->n_embd / hp->n_head)))
        return rc;
    if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0 || hp->head_dim % 2 != 0 ||
        hp->head_dim > 1024)
        return core_err_set(MLV_EINVAL, "model: %u heads, %u kv heads, head size %u do not fit",
                            hp->n_head, hp->n_head_kv, hp->head_dim);
    if ((rc = hp_u32(m, "rope.dimension_count", &hp->n_rot, false, hp->head_dim))) return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        return core_err_set(MLV_EINVAL, "model: rope dimension %u does not fit head size %u",
                            hp->n_rot, hp->head_dim);
    hp->rms_eps = hp_f32(m, "attention.layer_norm_rms_epsilon", 1e-5f);
    hp->rope_base = hp_f32(m, "rope.freq_base", 10000.0f);
    hp->rope_scale = 1.0f;
    char key[128];
    const char *stype;
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    if (eng_gguf_get_str(m->g, key, &stype) == 0 && !strcmp(stype, "linear")) {
        float f = hp_f32(m, "rope.scaling.factor", 1.0f);
        if (f > 0) hp->rope_scale = 1.0f / f;
    }
    core_err_clear();
    if (!(hp->rms_eps > 0) || !(hp->rope_base > 0))
        return core_err_set(MLV_EINVAL, "model: rms epsilon / rope base must be positive");
    hp->rope_neox = !strcmp(arch, "qwen2");
    return 0;
}

static int load_tensors(eng_model *m)
{
    eng_hparams *hp = &m->hp;
    eng_gguf_tensor te;
    int rc = find(m, "token_embd.weight", true, &te, NULL);
    if (rc) return rc;
    if (te.n_dims != 2 || te.dims[0] != hp->n_embd || te.dims[1] == 0 || te.dims[1] > (1u << 24))
        return core_err_set(MLV_EINVAL, "model: token_embd.weight does not have %u columns",
                            hp->n_embd);
    hp->n_vocab = (uint32_t)te.dims[1];
    const int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim,
                  kvd = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff, nv = hp->n_vocab;
    if ((rc = weight(m, "token_embd.weight", d, nv, true, &m->tok_embd))) return rc;
    bool has_out = eng_gguf_find_tensor(m->g, "output.weight") >= 0;
    hp->tied_output = !has_out;
    if ((rc = weight(m, has_out ? "output.weight" : "token_embd.weight", d, nv, true, &m->output)))
        return rc;
    if ((rc = vec(m, "output_norm.weight", d, true, &m->output_norm))) return rc;
    if ((rc = vec(m, "rope_freqs.weight", hp->n_rot / 2, false, &m->rope_freqs))) return rc;
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) return core_err_set(MLV_ENOMEM, "out of memory");
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        layer *L = &m->layers[l];
        char n[9][64];
        const char *parts[9] = {"attn_norm",   "ffn_norm", "attn_q", "attn_k",  "attn_v",
                                "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        for (int i = 0; i < 9; i++)
            snprintf(n[i], sizeof n[i], "blk.%u.%s.weight", l, parts[i]);
        char bq[64], bk[64], bv[64];
        snprintf(bq, sizeof bq, "blk.%u.attn_q.bias", l);
        snprintf(bk, sizeof bk, "blk.%u.attn_k.bias", l);
        snprintf(bv, sizeof bv, "blk.%u.attn_v.bias", l);
        if ((rc = vec(m, n[0], d, true, &L->attn_norm)) ||
            (rc = vec(m, n[1], d, true, &L->ffn_norm)) ||
            (rc = weight(m, n[2], d, qd, true, &L->wq)) ||
            (rc = weight(m, n[3], d, kvd, true, &L->wk)) ||
            (rc = weight(m, n[4], d, kvd, true, &L->wv)) ||
            (rc = weight(m, n[5], qd, d, true, &L->wo)) ||
            (rc = weight(m, n[6], d, ff, true, &L->w_gate)) ||
            (rc = weight(m, n[7], d, ff, true, &L->w_up)) ||
            (rc = weight(m, n[8], ff, d, true, &L->w_down)) ||
            (rc = vec(m, bq, qd, false, &L->bq)) || (rc = vec(m, bk, kvd, false, &L->bk)) ||
            (rc = vec(m, bv, kvd, false, &L->bv)))
            return rc;
    }
    return 0;
}

static int model_open(eng_model *m, const eng_load_opts *opts)
{
    int rc = eng_gguf_open_mem(&m->g, m->image, m->image_len);
    if (!rc) rc = load_hparams(m);
    if (!rc) rc = load_tensors(m);
    if (!rc) rc = eng_tokenizer_load(&m->tok, m->g);
    if (!rc && eng_tokenizer_n_vocab(m->tok) > m->hp.n_vocab)
        rc = core_err_set(MLV_EINVAL, "model: the tokenizer has %zu tokens, the embedding %u",
                          eng_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
    if (!rc) rc = eng_backend_cpu_new(&m->be, opts ? opts->backend : 0, opts ? opts->threads : 0);
    if (!rc && pthread_mutex_init(&m->lock, NULL) != 0)
        rc = core_err_set(MLV_ENOMEM, "model: cannot create a mutex");
    return rc;
}

static void model_release(eng_model *m)
{
    if (m->be) m->be->ops->free(m->be);
    eng_tokenizer_free(m->tok);
    eng_gguf_free(m->g);
    for (size_t i = 0; i < m->n_f32_owned; i++)
        free(m->f32_owned[i]);
    free(m->f32_owned);
    free(m->layers);
    if (m->mapped) munmap((void *)m->image, m->image_len);
    if (m->owned_free) m->owned_free(m->owned);
}

int eng_model_open_file(eng_model **out, const char *path, const eng_load_opts *opts)
{
    *out = NULL;
    int fd;
    uint64_t size;
    int rc = core_open_regular(path, &fd, &size);
    if (rc) return rc;
    if (size == 0 || size > SIZE_MAX) {
        close(fd);
        return core_err_set(MLV_EINVAL, "%s: not a GGUF file (size %llu)", path,
                            (unsigned long long)size);
    }
    void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return core_err_set(MLV_EIO, "%s: mmap: %s", path, strerror(errno));
    madvise(p, (size_t)size, MADV_WILLNEED);
    eng_model *m = calloc(1, sizeof *m);
    if (!m) {
        munmap(p, (size_t)size);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    m->image = p;
    m->image_len = (size_t)size;
    m->mapped = true;
    if ((rc = model_open(m, opts)) != 0) {
        core_err_wrap("%s: ", path);
        model_release(m);
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int eng_model_open_mem(eng_model **out, void *buf, size_t len, void (*free_fn)(void *),
                       const eng_load_opts *opts)
{
    *out = NULL;
    eng_model *m = calloc(1, sizeof *m);
    if (!m) {
        if (free_fn) free_fn(buf);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    m->image = buf;
    m->image_len = len;
    m->owned = buf;
    m->owned_free = free_fn;
    int rc = model_open(m, opts);
    if (rc) {
        model_release(m);
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void eng_model_free(eng_model *m)
{
    if (!m) return;
    model_release(m);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

const eng_hparams *eng_model_hparams(const eng_model *m)
{
    return &m->hp;
}
const eng_tokenizer *eng_model_tokenizer(const eng_model *m)
{
    return m->tok;
}
const eng_gguf *eng_model_gguf(const eng_model *m)
{
    return m->g;
}
const char *eng_model_backend_name(const eng_model *m)
{
    return m->be->ops->name(m->be);
}

uint64_t eng_model_weight_bytes(const eng_model *m)
{
    uint64_t n = (uint64_t)m->output.row_bytes * m->output.n_out;
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        const eng_weight *ws[LAYER_MATRICES];
        layer_matrices(&m->layers[l], ws);
        for (size_t i = 0; i < LAYER_MATRICES; i++)
            n += (uint64_t)ws[i]->row_bytes * ws[i]->n_out;
    }
    return n;
}

/* The largest activation row any product needs (the types may differ per layer). */
static size_t max_act_bytes(const eng_model *m)
{
    size_t max = eng_act_row_bytes(m->output.type, m->output.n_in);
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        const eng_weight *ws[LAYER_MATRICES];
        layer_matrices(&m->layers[l], ws);
        for (size_t i = 0; i < LAYER_MATRICES; i++) {
            size_t a = eng_act_row_bytes(ws[i]->type, ws[i]->n_in);
            if (a > max) max = a;
        }
    }
    return max;
}

/* ----------------------------------------------------------------- contexts ---- */

int eng_ctx_new(eng_ctx **out, eng_model *m, uint32_t n_ctx)
{
    *out = NULL;
    const eng_hparams *hp = &m->hp;
    if (n_ctx == 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (n_ctx > (1u << 20))
        return core_err_set(MLV_EINVAL, "context of %u tokens is too large", n_ctx);
    eng_backend *be = m->be;
    eng_ctx *c = calloc(1, sizeof *c);
    if (!c) return core_err_set(MLV_ENOMEM, "out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, qd = (size_t)hp->n_head * hp->head_dim;
    c->k_cache = calloc(hp->n_layer, sizeof *c->k_cache);
    c->v_cache = calloc(hp->n_layer, sizeof *c->v_cache);
    int rc = 0;
    if (!c->k_cache || !c->v_cache) rc = MLV_ENOMEM;
    for (uint32_t l = 0; !rc && l < hp->n_layer; l++) {
        c->k_cache[l] = be->ops->alloc(be, sizeof(uint16_t) * n_ctx * kvd);
        c->v_cache[l] = be->ops->alloc(be, sizeof(uint16_t) * n_ctx * kvd);
        if (!c->k_cache[l] || !c->v_cache[l]) rc = MLV_ENOMEM;
    }
    const size_t B = N_BATCH, d = hp->n_embd, wide = qd > d ? qd : d;
    if (!rc) {
        c->x = be->ops->alloc(be, sizeof(float) * B * d);
        c->xb = be->ops->alloc(be, sizeof(float) * B * wide);
        c->q = be->ops->alloc(be, sizeof(float) * B * qd);
        c->k = be->ops->alloc(be, sizeof(float) * B * kvd);
        c->v = be->ops->alloc(be, sizeof(float) * B * kvd);
        c->att = be->ops->alloc(be, sizeof(float) * B * qd);
        c->gate = be->ops->alloc(be, sizeof(float) * B * hp->n_ff);
        c->up = be->ops->alloc(be, sizeof(float) * B * hp->n_ff);
        c->positions = malloc(sizeof(int32_t) * B);
        if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->gate || !c->up ||
            !c->positions)
            rc = MLV_ENOMEM;
    }
    if (rc) {
        eng_ctx_free(c);
        return core_err_set(MLV_ENOMEM, "out of memory for a context of %u tokens", n_ctx);
    }
    pthread_mutex_lock(&m->lock);
    rc = be->ops->reserve(be, max_act_bytes(m), N_BATCH, (int)n_ctx, (int)hp->head_dim);
    pthread_mutex_unlock(&m->lock);
    if (rc) {
        eng_ctx_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void eng_ctx_free(eng_ctx *c)
{
    if (!c) return;
    eng_backend *be = c->m->be;
    for (uint32_t l = 0; l < c->m->hp.n_layer; l++) {
        if (c->k_cache) be->ops->release(be, c->k_cache[l]);
        if (c->v_cache) be->ops->release(be, c->v_cache[l]);
    }
    free(c->k_cache);
    free(c->v_cache);
    float *bufs[] = {c->x, c->xb, c->q, c->k, c->v, c->att, c->gate, c->up};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        be->ops->release(be, bufs[i]);
    free(c->positions);
    free(c);
}

uint32_t eng_ctx_pos(const eng_ctx *c)
{
    return c->pos;
}
uint32_t eng_ctx_n_ctx(const eng_ctx *c)
{
    return c->n_ctx;
}
const eng_model *eng_ctx_model(const eng_ctx *c)
{
    return c->m;
}

const uint8_t *eng_model_image(const eng_model *m, size_t *len)
{
    *len = m->image_len;
    return m->image;
}

void eng_ctx_set_observer(eng_ctx *c, eng_observe_fn fn, void *arg)
{
    c->observe = fn;
    c->observe_arg = arg;
}

void eng_ctx_truncate(eng_ctx *c, uint32_t pos)
{
    if (pos < c->pos) c->pos = pos;
}

/* ------------------------------------------------------------------ forward ---- */

/* A run of rows of one forward step that belong to one sequence: rows row0 .. row0+n-1
 * are that sequence's next n tokens, at positions c->pos .. c->pos+n-1. A prompt step
 * is one span of T rows; a batched decode step is n spans of one row each. */
typedef struct span {
    eng_ctx *c;
    int row0, n;
} span;

/* One step of T <= N_BATCH rows over the sequences of `spans` (their rows in order,
 * covering 0..T-1), on the scratch buffers of s (one of the spans' contexts). The weight
 * products, norms and activations run over all T rows at once; RoPE takes each row's
 * own position; the KV cache and attention are per span. Logits, when not NULL, for
 * every row (all_logits) or the last one. The observer of s sees the products' inputs
 * only when the step is one sequence (a batch mixes sequences its hook did not ask
 * about). */
static void forward_spans(eng_ctx *s, const span *spans, int n_spans, const int32_t *tokens, int T,
                          float *logits, bool all_logits)
{
    eng_model *m = s->m;
    const eng_hparams *hp = &m->hp;
    eng_backend *be = m->be;
    const eng_backend_ops *op = be->ops;
    const int d = (int)hp->n_embd, hd = (int)hp->head_dim, nh = (int)hp->n_head,
              nkv = (int)hp->n_head_kv, ff = (int)hp->n_ff;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < n_spans; i++)
        for (int t = 0; t < spans[i].n; t++)
            s->positions[spans[i].row0 + t] = (int32_t)spans[i].c->pos + t;
    const eng_observe_fn observe = n_spans == 1 ? s->observe : NULL;
    /* several sequences of one row each (eng_decode_batch): rows are spans in order */
    const bool one_row_spans = n_spans > 1 && T == n_spans;
    const uint16_t *kc[N_BATCH], *vc[N_BATCH];
#define OBSERVE(layer, site, x, n)                                                                 \
    if (observe) observe(s->observe_arg, (layer), (site), (x), T, (n))

    op->get_rows(be, s->x, &m->tok_embd, tokens, T);
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const layer *L = &m->layers[l];
        /* attention block: x += Wo . attn(rope(Wq xn), rope(Wk xn), Wv xn) */
        op->rmsnorm(be, s->xb, s->x, L->attn_norm, T, d, hp->rms_eps);
        {
            float *const ys[3] = {s->q, s->k, s->v};
            const eng_weight *const ws[3] = {&L->wq, &L->wk, &L->wv};
            const float *const bs[3] = {L->bq, L->bk, L->bv};
            OBSERVE(l, ENG_SITE_QKV, s->xb, d);
            op->matmul_n(be, 3, ys, ws, bs, s->xb, T);
        }
        op->rope(be, s->q, T, nh, hd, (int)hp->n_rot, s->positions, hp->rope_base, hp->rope_scale,
                 m->rope_freqs, hp->rope_neox);
        op->rope(be, s->k, T, nkv, hd, (int)hp->n_rot, s->positions, hp->rope_base, hp->rope_scale,
                 m->rope_freqs, hp->rope_neox);
        for (int i = 0; i < n_spans; i++) {
            eng_ctx *c = spans[i].c;
            const size_t r0 = (size_t)spans[i].row0;
            const int n = spans[i].n, pos0 = (int)c->pos;
            op->store_kv(be, c->k_cache[l], c->v_cache[l], s->k + r0 * nkv * hd,
                         s->v + r0 * nkv * hd, n, pos0, nkv * hd);
            if (!one_row_spans)
                op->attention(be, s->att + r0 * nh * hd, s->q + r0 * nh * hd, c->k_cache[l],
                              c->v_cache[l], n, pos0, nh, nkv, hd, scale);
        }
        if (one_row_spans) { /* a batched step: every sequence's attention as one job */
            for (int i = 0; i < n_spans; i++) {
                kc[i] = spans[i].c->k_cache[l];
                vc[i] = spans[i].c->v_cache[l];
            }
            op->attention_seqs(be, n_spans, s->att, s->q, kc, vc, s->positions, nh, nkv, hd, scale);
        }
        OBSERVE(l, ENG_SITE_ATTN_OUT, s->att, nh * hd);
        op->matmul(be, s->xb, &L->wo, NULL, s->att, T);
        op->add(be, s->x, s->xb, (int64_t)T * d);
        /* feed-forward block: x += W_down . (silu(W_gate xn) * (W_up xn)) */
        op->rmsnorm(be, s->xb, s->x, L->ffn_norm, T, d, hp->rms_eps);
        {
            float *const ys[2] = {s->gate, s->up};
            const eng_weight *const ws[2] = {&L->w_gate, &L->w_up};
            OBSERVE(l, ENG_SITE_FFN_IN, s->xb, d);
            op->matmul_n(be, 2, ys, ws, NULL, s->xb, T);
        }
        op->swiglu(be, s->gate, s->gate, s->up, (int64_t)T * ff);
        OBSERVE(l, ENG_SITE_FFN_DOWN, s->gate, ff);
        op->matmul(be, s->xb, &L->w_down, NULL, s->gate, T);
        op->add(be, s->x, s->xb, (int64_t)T * d);
    }
    for (int i = 0; i < n_spans; i++)
        spans[i].c->pos += (uint32_t)spans[i].n;
    if (!logits) return;
    if (all_logits) {
        op->rmsnorm(be, s->x, s->x, m->output_norm, T, d, hp->rms_eps);
        OBSERVE(hp->n_layer, ENG_SITE_OUTPUT, s->x, d);
        op->matmul(be, logits, &m->output, NULL, s->x, T);
    } else {
        float *last = s->x + (size_t)(T - 1) * d;
        op->rmsnorm(be, last, last, m->output_norm, 1, d, hp->rms_eps);
        op->matmul(be, logits, &m->output, NULL, last, 1);
    }
#undef OBSERVE
}

/* One step of T <= N_BATCH tokens of one sequence at positions c->pos.. */
static void forward(eng_ctx *c, const int32_t *tokens, int T, float *logits, bool all_logits)
{
    const span one = {c, 0, T};
    forward_spans(c, &one, 1, tokens, T, logits, all_logits);
}

static int check_tokens(const eng_model *m, const int32_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= m->hp.n_vocab)
            return core_err_set(MLV_EINVAL, "decode: token id %d is out of range (vocabulary %u)",
                                tokens[i], m->hp.n_vocab);
    return 0;
}

int eng_decode(eng_ctx *c, const int32_t *tokens, size_t n, float *logits, bool all_logits)
{
    const eng_hparams *hp = &c->m->hp;
    if (n == 0) return core_err_set(MLV_EINVAL, "decode: no tokens");
    if (n > c->n_ctx - c->pos)
        return core_err_set(MLV_EINVAL,
                            "decode: %zu more tokens do not fit the context (%u of %u used)", n,
                            c->pos, c->n_ctx);
    int rc = check_tokens(c->m, tokens, n);
    if (rc) return rc;
    pthread_mutex_lock(&c->m->lock);
    for (size_t i = 0; i < n; i += N_BATCH) {
        int T = (int)(n - i < N_BATCH ? n - i : N_BATCH);
        bool last = i + (size_t)T == n;
        float *lg = NULL;
        if (logits && all_logits)
            lg = logits + i * hp->n_vocab;
        else if (logits && last)
            lg = logits;
        forward(c, tokens + i, T, lg, all_logits);
    }
    pthread_mutex_unlock(&c->m->lock);
    return 0;
}

int eng_decode_batch(eng_ctx *const *cs, const int32_t *tokens, size_t n, float *logits)
{
    if (!cs || !tokens || n == 0 || n > N_BATCH)
        return core_err_set(MLV_EINVAL, "decode batch: %zu sequences (1 to %d)", n, N_BATCH);
    eng_model *m = cs[0] ? cs[0]->m : NULL;
    span spans[N_BATCH];
    for (size_t i = 0; i < n; i++) {
        eng_ctx *c = cs[i];
        if (!c || c->m != m)
            return core_err_set(MLV_EINVAL, "decode batch: sequence %zu is %s", i,
                                c ? "of another model" : "missing");
        if (c->pos >= c->n_ctx)
            return core_err_set(MLV_EINVAL, "decode batch: sequence %zu has a full context (%u)", i,
                                c->n_ctx);
        for (size_t j = 0; j < i; j++)
            if (cs[j] == c)
                return core_err_set(
                    MLV_EINVAL, "decode batch: sequences %zu and %zu are the same context", j, i);
        spans[i] = (span){c, (int)i, 1};
    }
    int rc = check_tokens(m, tokens, n);
    if (rc) return rc;
    pthread_mutex_lock(&m->lock);
    /* every row is the last (only) row of its sequence: all the logits are wanted */
    forward_spans(cs[0], spans, (int)n, tokens, (int)n, logits, true);
    pthread_mutex_unlock(&m->lock);
    return 0;
}
