/* quantize/quantize.c: a whole llama/qwen2 GGUF -> a quantized GGUF image, tensor by
 * tensor as a plan says (recipe.c), with round-to-nearest, imatrix or GPTQ; a session
 * keeps what it quantized so that sensitivity tuning re-quantizes only the tensors it
 * raises; and the measured sensitivity of each tensor. Not for choosing types
 * (recipe.c) or storing the result (cli/cmd_quantize.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quantize/quantize.h"

typedef struct variant {
    int type, method;
    void *data; /* owned */
    size_t size;
    struct variant *next;
} variant;

struct qnt_session {
    const eng_gguf *g;
    const uint8_t *image;
    uint64_t data_off;
    size_t n;
    variant **cache; /* per tensor: every variant built so far */
    variant **used;  /* per tensor: the variant the last build wrote (NULL: the input's) */
};

int qnt_session_new(qnt_session **out, const eng_gguf *in, const uint8_t *image)
{
    *out = NULL;
    qnt_session *s = calloc(1, sizeof *s);
    if (!s) return core_err_set(MLV_ENOMEM, "out of memory");
    s->g = in;
    s->image = image;
    s->data_off = eng_gguf_data_offset(in);
    s->n = eng_gguf_n_tensors(in);
    s->cache = calloc(s->n ? s->n : 1, sizeof *s->cache);
    s->used = calloc(s->n ? s->n : 1, sizeof *s->used);
    if (!s->cache || !s->used) {
        qnt_session_free(s);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    *out = s;
    return 0;
}

void qnt_session_free(qnt_session *s)
{
    if (!s) return;
    for (size_t i = 0; s->cache && i < s->n; i++)
        for (variant *v = s->cache[i], *nx; v; v = nx) {
            nx = v->next;
            free(v->data);
            free(v);
        }
    free(s->cache);
    free(s->used);
    free(s);
}

/* ------------------------------------------------------------ row parallelism --- */

typedef struct par_job {
    int64_t rows;
    int (*fn)(void *arg, int64_t r0, int64_t r1);
    void *arg;
    int rc; /* the first failure's code (any one of them) */
} par_job;

static void par_worker(void *arg, int ith, int nth)
{
    par_job *j = arg;
    int64_t per = (j->rows + nth - 1) / nth, r0 = per * ith, r1 = r0 + per;
    if (r1 > j->rows) r1 = j->rows;
    int rc = r0 < r1 ? j->fn(j->arg, r0, r1) : 0;
    if (rc) __atomic_store_n(&j->rc, rc, __ATOMIC_RELAXED);
}

/* fn over rows [0, rows) split across the pool; the first error is returned (its
 * message is on the failing thread, so the code alone comes back with a message). */
static int par_rows(core_pool *pool, int64_t rows, int (*fn)(void *, int64_t, int64_t), void *arg)
{
    if (!pool || core_pool_size(pool) <= 1 || rows < 2) return fn(arg, 0, rows);
    par_job j = {.rows = rows, .fn = fn, .arg = arg};
    core_pool_run(pool, par_worker, &j);
    return j.rc ? core_err_set(j.rc, "quantize: a worker failed") : 0;
}

/* ------------------------------------------------------------- one tensor ------ */

typedef struct qjob {
    const float *w; /* (rows, cols) */
    int type;
    int64_t cols;
    size_t row_bytes;
    uint8_t *dst;
    const float *imp; /* NULL = RTN */
} qjob;

static int quant_rows(void *arg, int64_t r0, int64_t r1)
{
    qjob *j = arg;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->w + r * j->cols;
        uint8_t *y = j->dst + (size_t)r * j->row_bytes;
        bool plain = j->type == ENG_F32 || j->type == ENG_F16 || j->type == ENG_BF16;
        int rc = plain ? eng_encode_row(j->type, x, y, j->cols)
                       : qnt_quantize_row(j->type, x, y, j->cols, j->imp);
        if (rc) return rc;
    }
    return 0;
}

typedef struct deqjob {
    const uint8_t *src;
    int type;
    int64_t cols;
    size_t row_bytes;
    float *out;
    int64_t bad_row; /* first row with a NaN or an infinity, or -1 */
} deqjob;

static int deq_rows(void *arg, int64_t r0, int64_t r1)
{
    deqjob *j = arg;
    for (int64_t r = r0; r < r1; r++) {
        float *o = j->out + r * j->cols;
        const uint8_t *src = j->src + (size_t)r * j->row_bytes;
        int rc = eng_dequantize_row(j->type, src, o, j->cols);
        if (rc) return rc;
        for (int64_t c = 0; c < j->cols; c++)
            if (!isfinite(o[c])) {
                j->bad_row = r; /* any one of them will do for the message */
                break;
            }
    }
    return 0;
}

static size_t row_bytes_of(int type, int64_t cols)
{
    size_t be = 0, bb = 0;
    if (eng_type_block(type, &be, &bb) != 0 || !be) return 0;
    return (size_t)cols / be * bb;
}

/* The tensor's weights as F32 (rows, cols); *out owned by the caller (free()). */
static int load_f32(const qnt_session *s, size_t i, const qnt_tensor_plan *p, core_pool *pool,
                    float **out)
{
    eng_gguf_tensor t;
    int rc = eng_gguf_tensor_info(s->g, i, &t);
    if (rc) return rc;
    float *w = malloc((size_t)p->n_in * (size_t)p->n_out * sizeof *w);
    if (!w) return core_err_set(MLV_ENOMEM, "out of memory for tensor %s", p->name);
    deqjob j = {.src = s->image + s->data_off + t.offset,
                .type = t.type,
                .cols = p->n_in,
                .row_bytes = row_bytes_of(t.type, p->n_in),
                .out = w,
                .bad_row = -1};
    if ((rc = par_rows(pool, p->n_out, deq_rows, &j))) {
        free(w);
        return core_err_wrap("tensor %s: ", p->name);
    }
    if (j.bad_row >= 0) {
        free(w);
        return core_err_set(MLV_EINVAL, "tensor %s: row %lld holds a NaN or an infinity", p->name,
                            (long long)j.bad_row);
    }
    *out = w;
    return 0;
}

static variant *find_variant(const qnt_session *s, size_t i, int type, int method)
{
    for (variant *v = s->cache[i]; v; v = v->next)
        if (v->type == type && v->method == method) return v;
    return NULL;
}

/* Quantizes tensor i to its planned type with `method` (falling back to what the
 * calibration allows), caching the result. */
static int build_tensor(qnt_session *s, size_t i, const qnt_tensor_plan *p, const qnt_opts *o,
                        qnt_result *res, variant **out)
{
    /* a variant built earlier with the requested method (GPTQ groups) serves as is */
    variant *v = find_variant(s, i, p->type, o->method);
    if (v) {
        *out = v;
        return 0;
    }
    int method = o->method;
    const float *imp = NULL, *H = NULL;
    int64_t n_in = 0;
    bool plain = p->type == ENG_F32 || p->type == ENG_F16 || p->type == ENG_BF16;
    if (plain) method = QNT_RTN;
    if (method != QNT_RTN) {
        imp = o->calib ? qnt_calib_imatrix(o->calib, p->name, &n_in) : NULL;
        if (method == QNT_GPTQ) H = o->calib ? qnt_calib_hessian(o->calib, p->name, &n_in) : NULL;
        if (imp && n_in != p->n_in)
            return core_err_set(MLV_EINVAL, "tensor %s: calibration saw %lld inputs, not %lld",
                                p->name, (long long)n_in, (long long)p->n_in);
        if (method == QNT_GPTQ && !H) method = imp ? QNT_IMATRIX : QNT_RTN;
        if (method == QNT_IMATRIX && !imp) method = QNT_RTN;
        if (method != o->method) res->n_fallback_rtn++;
    }
    if ((v = find_variant(s, i, p->type, method))) {
        *out = v;
        return 0;
    }
    size_t rb = row_bytes_of(p->type, p->n_in);
    if (!rb)
        return core_err_set(MLV_EINVAL, "tensor %s: rows of %lld do not fit type %s", p->name,
                            (long long)p->n_in, eng_type_name(p->type));
    float *w = NULL;
    int rc = load_f32(s, i, p, o->pool, &w);
    if (rc) return rc;
    if (!(v = calloc(1, sizeof *v)) || !(v->data = malloc(rb * (size_t)p->n_out))) {
        free(v);
        free(w);
        return core_err_set(MLV_ENOMEM, "out of memory for tensor %s", p->name);
    }
    v->type = p->type;
    v->method = method;
    v->size = rb * (size_t)p->n_out;
    if (method == QNT_GPTQ) {
        rc = qnt_gptq(p->type, w, p->n_out, p->n_in, H, 0, v->data, o->pool);
    } else {
        qjob j = {.w = w,
                  .type = p->type,
                  .cols = p->n_in,
                  .row_bytes = rb,
                  .dst = v->data,
                  .imp = method == QNT_IMATRIX ? imp : NULL};
        rc = par_rows(o->pool, p->n_out, quant_rows, &j);
    }
    free(w);
    if (rc) {
        free(v->data);
        free(v);
        return core_err_wrap("tensor %s: ", p->name);
    }
    v->next = s->cache[i];
    s->cache[i] = v;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------- the model ------- */

/* GPTQ a group of layers at a time, each with the Hessians of that group only. */
static int gptq_groups(qnt_session *s, const qnt_plan *plan, const qnt_opts *o, qnt_result *res)
{
    const uint32_t g = o->group_layers ? o->group_layers : 1;
    for (uint32_t first = 0; first <= plan->n_layer; first += g) {
        qnt_calib *gc = NULL;
        int rc = o->calibrate(o->calibrate_arg, first, g, &gc);
        if (rc) return rc;
        qnt_opts go = *o;
        go.calib = gc;
        for (size_t i = 0; rc == 0 && i < plan->n; i++) {
            const qnt_tensor_plan *p = &plan->t[i];
            eng_gguf_tensor t;
            if (!p->quantized || p->layer < (int)first || p->layer >= (int)(first + g)) continue;
            if ((rc = eng_gguf_tensor_info(s->g, i, &t)) || p->type == t.type) continue;
            if (o->progress) {
                char msg[160];
                snprintf(msg, sizeof msg, "GPTQ layers %u-%u", first, first + g - 1);
                o->progress(o->progress_arg, (double)first / (plan->n_layer + 1), msg);
            }
            variant *v = NULL;
            rc = build_tensor(s, i, p, &go, res, &v);
        }
        qnt_calib_free(gc);
        if (rc) return rc;
    }
    return 0;
}

static bool kv_replaced(const char *key)
{
    return !strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version");
}

int qnt_session_build(qnt_session *s, const qnt_plan *plan, const qnt_opts *o, const char *path,
                      void **out, size_t *len, qnt_result *res)
{
    if (out) *out = NULL;
    if (len) *len = 0;
    memset(res, 0, sizeof *res);
    if (plan->n != s->n) return core_err_set(MLV_EINVAL, "quantize: the plan is for another model");
    double t0 = core_now_s();
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < plan->n; i++)
        if (plan->t[i].quantized) total += (uint64_t)plan->t[i].n_in * (uint64_t)plan->t[i].n_out;

    int rc = 0;
    if (o->method == QNT_GPTQ && o->calibrate && (rc = gptq_groups(s, plan, o, res))) return rc;
    eng_gguf_writer *w = NULL;
    rc = eng_gguf_writer_new(&w);
    for (size_t k = 0; rc == 0 && k < eng_gguf_n_kv(s->g); k++)
        if (!kv_replaced(eng_gguf_key(s->g, k))) rc = eng_gguf_copy_kv(w, s->g, k);
    if (rc == 0) rc = eng_gguf_set_u32(w, "general.quantization_version", 2);
    if (rc == 0) rc = eng_gguf_set_u32(w, "general.file_type", (uint32_t)plan->target.file_type);

    for (size_t i = 0; rc == 0 && i < plan->n; i++) {
        const qnt_tensor_plan *p = &plan->t[i];
        eng_gguf_tensor t;
        if ((rc = eng_gguf_tensor_info(s->g, i, &t))) break;
        if (strcmp(t.name, p->name) != 0) {
            rc = core_err_set(MLV_EINVAL, "quantize: the plan is for another model");
            break;
        }
        const void *data = s->image + s->data_off + t.offset;
        size_t size = (size_t)t.size;
        int type = t.type;
        s->used[i] = NULL;
        if (p->quantized && p->type != t.type) {
            if (o->progress) {
                char msg[160];
                snprintf(msg, sizeof msg, "%s -> %s", p->name, eng_type_name(p->type));
                o->progress(o->progress_arg, total ? (double)done / (double)total : 0, msg);
            }
            variant *v = NULL;
            if ((rc = build_tensor(s, i, p, o, res, &v))) break;
            data = v->data;
            size = v->size;
            type = v->type;
            s->used[i] = v;
            res->n_quantized++;
        }
        if (p->quantized) {
            res->n_params += (uint64_t)p->n_in * (uint64_t)p->n_out;
            done += (uint64_t)p->n_in * (uint64_t)p->n_out;
        }
        res->bytes_in += t.size;
        res->bytes_out += size;
        rc = eng_gguf_add_tensor(w, t.name, type, t.n_dims, t.dims, data, size);
    }
    if (rc == 0) {
        if (o->progress) o->progress(o->progress_arg, 1.0, "writing");
        rc = path ? eng_gguf_write_file(w, path) : eng_gguf_write_mem(w, out, len);
    }
    eng_gguf_writer_free(w);
    res->seconds = core_now_s() - t0;
    return rc;
}

/* ------------------------------------------------------------ sensitivity ------ */

typedef struct sjob {
    const float *w, *q, *imp; /* (rows, cols), (rows, cols), (cols) */
    int64_t cols;
    double *err, *sig; /* per row: sum_j imp_j (w - q)^2, sum_j imp_j w^2 */
} sjob;

static int sens_rows(void *arg, int64_t r0, int64_t r1)
{
    sjob *j = arg;
    for (int64_t r = r0; r < r1; r++) {
        const float *w = j->w + r * j->cols, *q = j->q + r * j->cols;
        double e = 0, g = 0;
        for (int64_t c = 0; c < j->cols; c++) {
            double d = (double)w[c] - (double)q[c];
            e += j->imp[c] * d * d;
            g += j->imp[c] * (double)w[c] * (double)w[c];
        }
        j->err[r] = e;
        j->sig[r] = g;
    }
    return 0;
}

int qnt_session_sensitivity(qnt_session *s, const qnt_plan *plan, const qnt_calib *calib,
                            core_pool *pool, double *s_out)
{
    if (plan->n != s->n) return core_err_set(MLV_EINVAL, "quantize: the plan is for another model");
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < plan->n; i++) {
        const qnt_tensor_plan *p = &plan->t[i];
        const variant *v = s->used[i];
        s_out[i] = 0;
        int64_t n_in = 0;
        const float *imp = calib ? qnt_calib_imatrix(calib, p->name, &n_in) : NULL;
        if (!p->quantized || !imp || n_in != p->n_in || !v) continue;
        size_t n = (size_t)p->n_in * (size_t)p->n_out;
        float *w = NULL, *q = malloc(n * sizeof *q);
        double *sums = malloc(2 * (size_t)p->n_out * sizeof *sums);
        if (!q || !sums) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
        } else if ((rc = load_f32(s, i, p, pool, &w)) == 0) {
            deqjob dj = {.src = v->data,
                         .type = v->type,
                         .cols = p->n_in,
                         .row_bytes = row_bytes_of(v->type, p->n_in),
                         .out = q,
                         .bad_row = -1};
            sjob sj = {
                .w = w, .q = q, .imp = imp, .cols = p->n_in, .err = sums, .sig = sums + p->n_out};
            if ((rc = par_rows(pool, p->n_out, deq_rows, &dj)) == 0 &&
                (rc = par_rows(pool, p->n_out, sens_rows, &sj)) == 0) {
                double e = 0, g = 0;
                for (int64_t r = 0; r < p->n_out; r++) {
                    e += sj.err[r];
                    g += sj.sig[r];
                }
                s_out[i] = g > 0 ? e / g : 0;
            }
        }
        free(w);
        free(q);
        free(sums);
    }
    return rc;
}
