/* quantize/quantize.h: turns a model's weights into llama.cpp block formats —
 * round-to-nearest (byte for byte ggml's reference quantizers), importance-weighted
 * ("imatrix": the rounding error of each column weighted by the mean squared activation
 * seen on calibration text) and GPTQ (error-compensating column updates from the
 * calibration Hessian) — under a recipe that decides each tensor's type (llama.cpp's
 * mixes, --tensor-type overrides, and raises chosen by measured sensitivity).
 *
 *   blocks.c   block quantizers per type, and the affine grid GPTQ rounds onto
 *   calib.c    calibration: activation statistics from forward passes of the engine
 *   gptq.c     GPTQ on one matrix
 *   recipe.c   types, mixes, overrides, the per-tensor plan
 *   quantize.c a whole GGUF model -> a quantized GGUF image, tensor by tensor
 *
 * Not here: storing versions, lineage and evaluation (cli/cmd_quantize.c with the
 * registry and engine/eval.c). Depends on engine/ and core/ only. */
#ifndef MLV_QUANTIZE_H
#define MLV_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "engine/engine.h"

/* ============================================================== block quantizers ===
 * quantize/blocks.c. Types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (layouts as
 * in engine/engine.h, values as ggml's dequantize_row_*). */
bool qnt_type_supported(int type);

/* x: n floats (a whole number of the type's blocks) -> dst: n / block_elems blocks.
 * imp == NULL: round to nearest, exactly as ggml's quantize_row_<type>_ref (so the
 * bytes equal llama.cpp's quantizer without an importance matrix). imp != NULL: n
 * non-negative importances (imatrix: mean x_j^2 over calibration tokens); each block's
 * scales (and mins) are searched to minimise sum_j imp'_j (x_j - deq_j)^2 with
 * imp'_j = imp_j * sqrt(sigma^2 + x_j^2), sigma^2 the block's mean square.
 * MLV_EINVAL for an unsupported type or n not a whole number of blocks. */
int qnt_quantize_row(int type, const float *x, void *dst, int64_t n, const float *imp);

/* One block unpacked onto its grid: element j's value is
 *   scale[j / sub] * q_j + offset[j / sub],  qmin <= q_j <= qmax,
 * with scale and offset already as the packed block stores them (fp16-rounded d,
 * 6-bit K scales, ...). GPTQ fits a block's grid once from the (partially updated)
 * weights, then rounds each column onto it as the updates arrive. */
#define QNT_MAX_BLOCK 256
typedef struct qnt_grid {
    int type, n, sub, qmin, qmax; /* n = block elements, sub = elements per scale */
    float scale[16], offset[16];  /* per sub-block (n / sub of them) */
    float iscale[16];             /* 1 / scale, 0 where scale is 0 */
    /* the packed header: d, dmin / m as fp16 bits; K types' sub-block scales/mins */
    uint16_t d, m;
    uint8_t sc[16], mn[16];
} qnt_grid;
/* Fits the grid of one block x[g->n] (imp as for qnt_quantize_row, may be NULL) and
 * rounds x onto it: q[n] receives the levels. */
int qnt_grid_fit(int type, const float *x, const float *imp, qnt_grid *g, int16_t *q);
/* The nearest level of element j for value v (clamped to [qmin, qmax]; ties may go
 * either way); *deq = its value on the grid. v must be finite. */
static inline int qnt_grid_round(const qnt_grid *g, int j, float v, float *deq)
{
    int s = j / g->sub;
    float r = (v - g->offset[s]) * g->iscale[s];
    int q;
    if (r >= (float)g->qmax)
        q = g->qmax;
    else if (r <= (float)g->qmin)
        q = g->qmin;
    else
        q = (int)(r + (r >= 0 ? 0.5f : -0.5f));
    if (g->iscale[s] == 0.0f) q = g->qmin > 0 ? g->qmin : 0;
    *deq = g->scale[s] * (float)q + g->offset[s];
    return q;
}
/* Packs the grid and levels q[n] into one block of the type (dst: block_bytes). */
void qnt_grid_pack(const qnt_grid *g, const int16_t *q, void *dst);

/* =================================================================== calibration ===
 * quantize/calib.c. Runs the model over calibration text (windows of n_ctx tokens,
 * logits of every token so the output matrix is seen too) and accumulates, for every
 * site of every layer (engine/engine.h, enum eng_site), the mean squared activation
 * per input column and, when asked, the Hessian H = sum_t x_t x_t^T. */
typedef struct qnt_calib qnt_calib;
typedef struct qnt_calib_opts {
    uint32_t n_ctx;    /* window length, 0 = 512 */
    size_t max_tokens; /* stop after this many tokens, 0 = all of the text */
    bool hessian;      /* accumulate H as well (GPTQ) */
    /* with hessian: only for layers [hessian_first, hessian_first + hessian_count)
     * (count 0 = every layer; the output matrix counts as layer n_layer) */
    uint32_t hessian_first, hessian_count;
    void (*progress)(void *arg, double frac, const char *msg);
    void *progress_arg;
} qnt_calib_opts;
/* text: UTF-8 (MLV_EINVAL naming the byte offset when it is not, or when it is too
 * short to give one window of 16 tokens). The Hessians asked for are held at once,
 * about 4 (3 d^2 + ff^2) bytes per layer: MLV_EINVAL beyond half of the machine's
 * memory (qnt_opts.calibrate takes them a group of layers at a time). *out owned by the caller
 * (qnt_calib_free). */
int qnt_calib_run(qnt_calib **out, eng_model *m, const char *text, size_t len,
                  const qnt_calib_opts *o);
void qnt_calib_free(qnt_calib *c);
size_t qnt_calib_tokens(const qnt_calib *c);
/* The statistics a weight tensor's input had, by the tensor's GGUF name
 * ("blk.3.attn_q.weight", "output.weight", "token_embd.weight" when tied): imatrix =
 * n_in means of x_j^2; hessian = n_in x n_in floats (row-major, symmetric, divided by
 * the token count) or NULL when not accumulated. NULL (no error set) for a tensor no
 * product reads (an untied token_embd, norms). Borrowed until qnt_calib_free. */
const float *qnt_calib_imatrix(const qnt_calib *c, const char *tensor, int64_t *n_in);
const float *qnt_calib_hessian(const qnt_calib *c, const char *tensor, int64_t *n_in);

/* ========================================================================= GPTQ ===
 * quantize/gptq.c. w: (rows, cols) F32, row-major (a GGUF matrix: cols = dims[0]),
 * overwritten (it holds the compensated weights afterwards); H: (cols, cols) from
 * qnt_calib_hessian. Columns are quantized in order, block by block of the type; after
 * each column its rounding error, scaled by the inverse Hessian's Cholesky factor, is
 * spread over the columns not yet quantized (Frantar et al., 2022, with lazy batch
 * updates). Each block's grid is fitted when GPTQ reaches it (imp = diag H). damp:
 * fraction of mean(diag H) added to the diagonal (0 = 0.01). dst: rows * row bytes.
 * pool may be NULL (one thread). */
int qnt_gptq(int type, float *w, int64_t rows, int64_t cols, const float *H, double damp, void *dst,
             core_pool *pool);

/* ======================================================================= recipes ===
 * quantize/recipe.c. A target ("file type") is a base type or a llama.cpp-style mix:
 *   Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q6_K   every weight matrix at that type
 *   Q4_K_M Q5_K_M                         Q4_K / Q5_K, with attn_v and ffn_down of the
 *       layers llama.cpp's use_more_bits picks (first and last eighth, every third
 *       between) at Q6_K
 * In every target the output matrix (or the tied token embedding) is Q6_K unless the
 * target is Q8_0/Q6_K, 1-D tensors stay F32, and a K type on a row length that is not a
 * multiple of 256 falls back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K ->
 * Q8_0); rows that are not whole 32-element blocks become F16. Overrides
 * (--tensor-type PATTERN=TYPE, POSIX extended regex matched against the whole name)
 * apply last, in order, the last match winning. */
enum qnt_method { QNT_RTN = 0, QNT_IMATRIX = 1, QNT_GPTQ = 2 };
const char *qnt_method_name(int method);
int qnt_method_parse(const char *s); /* QNT_* or -1 */

typedef struct qnt_target {
    char name[16]; /* "Q4_K_M" */
    int base;      /* ENG_Q4_K */
    bool mix;      /* the _M mixes */
    int file_type; /* llama.cpp's general.file_type (LLAMA_FTYPE_MOSTLY_*) */
} qnt_target;
/* Case-insensitive; MLV_EINVAL listing the targets for anything else. */
int qnt_target_parse(const char *s, qnt_target *out);

typedef struct qnt_tensor_plan {
    char name[96];
    int layer;           /* blk.N -> N; the output matrix (or tied embedding) n_layer; else -1 */
    int in_type, type;   /* type it has, type it gets (in_type for kept tensors) */
    int64_t n_in, n_out; /* dims[0], rows */
    bool quantized;      /* a weight matrix this recipe quantizes */
    bool overridden;     /* an override set its type */
    bool raised;         /* raised by sensitivity tuning */
} qnt_tensor_plan;
typedef struct qnt_plan {
    qnt_target target;
    qnt_tensor_plan *t; /* in the file's tensor order */
    size_t n;
    uint32_t n_layer;
    bool input_quantized; /* some matrix was stored quantized: it is dequantized first */
} qnt_plan;
typedef struct qnt_override {
    const char *pattern;
    int type;
} qnt_override;
/* Decides every tensor's type for a llama/qwen2 GGUF (MLV_EUNSUPPORTED naming any
 * other architecture; MLV_EINVAL for a pattern that does not compile or matches no
 * tensor, or an override type we cannot quantize to). Clear with qnt_plan_clear. */
int qnt_plan_make(qnt_plan *out, const eng_gguf *g, const qnt_target *tg, const qnt_override *ov,
                  size_t n_ov);
void qnt_plan_clear(qnt_plan *p);
/* The next type up for a raised tensor: Q4_x/Q5_x/Q4_K/Q5_K -> Q6_K (Q8_0 when the rows
 * are not a multiple of 256), Q6_K -> Q8_0, Q8_0 -> F16; -1 from F16 or above. */
int qnt_type_raise(int type, int64_t n_in);
/* Bits per weight of a type (block bytes * 8 / block elements). */
double qnt_type_bpw(int type);

/* ===================================================================== a model ===
 * quantize/quantize.c. in: a parsed GGUF and its whole image (tensor data at
 * eng_gguf_data_offset + offset). Each matrix is dequantized to F32 when it is not,
 * quantized as the plan says with `method` (imatrix/gptq need calib; tensors without
 * statistics fall back to RTN, counted in the result), and written with the metadata
 * copied, general.file_type and general.quantization_version (2) set. */
typedef struct qnt_opts {
    int method;             /* QNT_* */
    const qnt_calib *calib; /* imatrix/gptq */
    /* GPTQ when every Hessian at once would not fit: calib has none, and calibrate is
     * called for groups of group_layers layers (first, count as qnt_calib_opts' hessian
     * range) before the model is written; the session quantizes each group's matrices
     * and frees *out (qnt_calib_free) before the next. */
    int (*calibrate)(void *arg, uint32_t first, uint32_t count, qnt_calib **out);
    void *calibrate_arg;
    uint32_t group_layers;
    core_pool *pool; /* may be NULL */
    void (*progress)(void *arg, double frac, const char *msg);
    void *progress_arg;
} qnt_opts;
typedef struct qnt_result {
    uint64_t n_params;            /* elements of the quantized matrices */
    uint64_t bytes_in, bytes_out; /* tensor data bytes */
    size_t n_quantized, n_fallback_rtn;
    double seconds;
} qnt_result;
/* A reusable session: tensors already quantized at some type are kept, so a plan that
 * raises a few tensors re-quantizes only those. image: the whole GGUF `in` was parsed
 * from (which checked every tensor's bounds), borrowed, as `in`, for the session's
 * life. */
typedef struct qnt_session qnt_session;
int qnt_session_new(qnt_session **out, const eng_gguf *in, const uint8_t *image);
void qnt_session_free(qnt_session *s);
/* Builds the quantized GGUF for `plan`: written to `path` (atomically, fsync'd) when it
 * is not NULL, else an image in *out (owned by the caller, free()) of *len bytes. */
int qnt_session_build(qnt_session *s, const qnt_plan *plan, const qnt_opts *o, const char *path,
                      void **out, size_t *len, qnt_result *res);
/* The measured sensitivity of each quantized tensor under the last build: the relative
 * output error its rounding causes on the calibration activations,
 *   sum_j imatrix_j * ||W[:, j] - Q[:, j]||^2 / sum_j imatrix_j * ||W[:, j]||^2
 * (needs calib; 0 for tensors without statistics). s[i] follows plan->t[i]; pool may
 * be NULL. */
int qnt_session_sensitivity(qnt_session *s, const qnt_plan *plan, const qnt_calib *calib,
                            core_pool *pool, double *s_out);

#endif
