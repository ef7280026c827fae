/* engine/backend.h (internal): the op layer the model code is written against. A
 * backend implements each op over whole tensors; engine/backend_cpu.c is the CPU one
 * (the plain C reference kernels or the SIMD ones behind engine/kernels.h, a thread
 * pool over all cores). A CUDA backend (engine/cuda/) and a training backward pass
 * stand beside it with the same signatures. Buffers passed to ops come from the
 * backend's alloc, so a device backend can keep them in device memory. Shapes are
 * written row-major, fastest dimension last: x (T, n) is T rows of n floats. */
#ifndef MLV_ENGINE_BACKEND_H
#define MLV_ENGINE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"

/* A weight matrix W (n_out, n_in) in one GGUF tensor type; rows are row_bytes apart. */
typedef struct eng_weight {
    int type;
    int64_t n_in, n_out;
    size_t row_bytes;
    const uint8_t *data; /* borrowed from the model's file image */
} eng_weight;

typedef struct eng_backend eng_backend;
typedef struct eng_backend_ops {
    const char *(*name)(const eng_backend *b);
    void (*free)(eng_backend *b);
    void *(*alloc)(eng_backend *b, size_t bytes); /* zeroed; NULL on ENOMEM */
    void (*release)(eng_backend *b, void *p);
    /* Sizes scratch space for products of up to max_T activation rows of up to
     * max_act_bytes each and attention over n_ctx keys of head_dim hd, so that no op
     * allocates afterwards (ops assume it was called). 0 or MLV_ENOMEM. */
    int (*reserve)(eng_backend *b, size_t max_act_bytes, int max_T, int n_ctx, int hd);
    /* y (T, n_out) = x (T, n_in) . W^T (+ bias (n_out) when not NULL) */
    void (*matmul)(eng_backend *b, float *y, const eng_weight *w, const float *bias, const float *x,
                   int T);
    /* ys[i] (T, ws[i].n_out) = x (T, n_in) . ws[i]^T (+ biases[i]) for i < n <= 3:
     * products that read the same input (q/k/v, gate/up) in one pass. biases may be
     * NULL, as may each biases[i]. */
    void (*matmul_n)(eng_backend *b, int n, float *const *ys, const eng_weight *const *ws,
                     const float *const *biases, const float *x, int T);
    /* y (T, n) = x / sqrt(mean(x^2) + eps) * g (n);  y may be x */
    void (*rmsnorm)(eng_backend *b, float *y, const float *x, const float *g, int T, int n,
                    float eps);
    /* x (T, n_head, head_dim) rotated in place at positions pos (T); the first n_rot
     * dims of each head; neox pairs (i, i + n_rot/2), else (2i, 2i+1); freq_factors
     * (n_rot/2, may be NULL) divide the angles as llama 3.1's rope_freqs do. */
    void (*rope)(eng_backend *b, float *x, int T, int n_head, int head_dim, int n_rot,
                 const int32_t *pos, float base, float freq_scale, const float *freq_factors,
                 bool neox);
    /* Writes k, v (T, n_kv * hd) as fp16 into the layer's caches (n_ctx, n_kv * hd) at
     * rows pos0 .. pos0+T-1. */
    void (*store_kv)(eng_backend *b, uint16_t *k_cache, uint16_t *v_cache, const float *k,
                     const float *v, int T, int pos0, int kv_dim);
    /* Causal attention of T queries at positions pos0.. against cache rows 0..pos0+T-1:
     * q (T, n_head, hd) -> out (T, n_head, hd); head h reads kv head h / (n_head/n_kv). */
    void (*attention)(eng_backend *b, float *out, const float *q, const uint16_t *k_cache,
                      const uint16_t *v_cache, int T, int pos0, int n_head, int n_kv, int hd,
                      float scale);
    /* One query row for each of n sequences (a batched decoding step): row i of q
     * (n_head, hd) at position pos[i] attends to rows 0..pos[i] of k_caches[i] and
     * v_caches[i] -> row i of out. The same numbers as n attention calls with T = 1,
     * spread over the threads as one job. */
    void (*attention_seqs)(eng_backend *b, int n, float *out, const float *q,
                           const uint16_t *const *k_caches, const uint16_t *const *v_caches,
                           const int32_t *pos, int n_head, int n_kv, int hd, float scale);
    /* y (n) = silu(gate) * up;  y may be gate */
    void (*swiglu)(eng_backend *b, float *y, const float *gate, const float *up, int64_t n);
    /* y (n) += x */
    void (*add)(eng_backend *b, float *y, const float *x, int64_t n);
    /* y (T, n_in) = rows ids (T) of W, dequantized */
    void (*get_rows)(eng_backend *b, float *y, const eng_weight *w, const int32_t *ids, int T);
} eng_backend_ops;

struct eng_backend {
    const eng_backend_ops *ops;
};

/* The CPU backend: kind ENG_BACKEND_REF (plain C kernels) or ENG_BACKEND_CPU/AUTO (the
 * fastest this CPU runs); threads <= 0 = every online CPU. *out owned by the caller
 * (b->ops->free). */
int eng_backend_cpu_new(eng_backend **out, int kind, int threads);

#endif
