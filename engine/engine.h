/* engine: models' insides — GGUF v3 and safetensors readers, tensor types, and (in
 * later work) tokenizers, the forward pass, sampling and evaluation. It knows nothing
 * of storage, users or the registry. */
#ifndef MLV_ENGINE_H
#define MLV_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ===================================================================== GGUF ====
 * engine/gguf.c: GGUF v3 as llama.cpp writes it (little-endian; magic "GGUF";
 * version 3 (2 accepted); tensor count and KV count as u64; KV pairs; tensor infos;
 * data aligned to general.alignment, default 32). Type ids as in ggml.h. The reader
 * validates everything before it allocates: counts and string lengths against the
 * bytes actually available, known value and tensor types, dimensions whose product
 * does not overflow, tensor data inside the file, aligned and not overlapping. */
enum eng_ggml_type {
    ENG_F32 = 0,
    ENG_F16 = 1,
    ENG_Q4_0 = 2,
    ENG_Q4_1 = 3,
    ENG_Q5_0 = 6,
    ENG_Q5_1 = 7,
    ENG_Q8_0 = 8,
    ENG_Q8_1 = 9,
    ENG_Q2_K = 10,
    ENG_Q3_K = 11,
    ENG_Q4_K = 12,
    ENG_Q5_K = 13,
    ENG_Q6_K = 14,
    ENG_Q8_K = 15,
    ENG_BF16 = 30,
};
/* "F32", "Q4_K", ... or NULL for an id we do not know. */
const char *eng_type_name(int type);
/* Block size in elements and bytes per block for a known type (0 when unknown). */
int eng_type_block(int type, size_t *block_elems, size_t *block_bytes);

typedef struct eng_gguf eng_gguf;

enum eng_gguf_vtype {
    ENG_GGUF_U8 = 0,
    ENG_GGUF_I8 = 1,
    ENG_GGUF_U16 = 2,
    ENG_GGUF_I16 = 3,
    ENG_GGUF_U32 = 4,
    ENG_GGUF_I32 = 5,
    ENG_GGUF_F32 = 6,
    ENG_GGUF_BOOL = 7,
    ENG_GGUF_STRING = 8,
    ENG_GGUF_ARRAY = 9,
    ENG_GGUF_U64 = 10,
    ENG_GGUF_I64 = 11,
    ENG_GGUF_F64 = 12,
};

/* Parses the header, metadata and tensor infos of a GGUF file (reads only what it
 * needs; the tensor data is not loaded). *out owned by the caller (eng_gguf_free). */
int eng_gguf_open_file(eng_gguf **out, const char *path);
/* The same over a buffer (e.g. decrypted into memory); `data` is borrowed and must
 * outlive the handle. */
int eng_gguf_open_mem(eng_gguf **out, const void *data, size_t len);
void eng_gguf_free(eng_gguf *g);

uint32_t eng_gguf_version(const eng_gguf *g);
size_t eng_gguf_alignment(const eng_gguf *g);
uint64_t eng_gguf_data_offset(const eng_gguf *g); /* start of the tensor data section */

int64_t eng_gguf_find_key(const eng_gguf *g, const char *key); /* index or -1 */
size_t eng_gguf_n_kv(const eng_gguf *g);
const char *eng_gguf_key(const eng_gguf *g, size_t i);
int eng_gguf_kv_type(const eng_gguf *g, size_t i);
/* Typed getters: borrowed strings valid while g lives; return MLV_EINVAL on a type
 * mismatch. get_int accepts any integer type; arr_* for arrays. */
int eng_gguf_get_str(const eng_gguf *g, const char *key, const char **out);
int eng_gguf_get_int(const eng_gguf *g, const char *key, int64_t *out);
int eng_gguf_get_f32(const eng_gguf *g, const char *key, float *out);
int eng_gguf_arr_info(const eng_gguf *g, const char *key, int *elem_type, uint64_t *n);
int eng_gguf_arr_str(const eng_gguf *g, const char *key, uint64_t i, const char **out);
/* A bool value (MLV_EINVAL when the key holds another type). */
int eng_gguf_get_bool(const eng_gguf *g, const char *key, bool *out);
/* An array of numbers (any scalar element type, bool as one byte): *data points at
 * *n elements in host layout (uint8_t, int16_t, float, double, ...), 8-byte aligned,
 * borrowed while g lives. MLV_EINVAL for arrays of strings or arrays. */
int eng_gguf_arr_data(const eng_gguf *g, const char *key, int *elem_type, uint64_t *n,
                      const void **data);

size_t eng_gguf_n_tensors(const eng_gguf *g);
typedef struct eng_gguf_tensor {
    const char *name; /* borrowed */
    int type;
    uint32_t n_dims;
    uint64_t dims[4];
    uint64_t n_elems;
    uint64_t offset; /* relative to the data section */
    uint64_t size;   /* bytes */
} eng_gguf_tensor;
int eng_gguf_tensor_info(const eng_gguf *g, size_t i, eng_gguf_tensor *out);
/* Index of the tensor with that name, or -1. */
int64_t eng_gguf_find_tensor(const eng_gguf *g, const char *name);

/* ============================================================ describe ========
 * engine/describe.c: what a model artifact is, for its manifest. */
typedef struct eng_model_info {
    char format[16];       /* "gguf" | "safetensors" */
    char architecture[64]; /* general.architecture, or config.json model_type */
    uint64_t parameters;   /* total elements over all tensors */
    char **tensor_types;   /* sorted, unique type names; owned */
    size_t n_tensor_types;
} eng_model_info;

/* A single .gguf file. MLV_EINVAL with a clear message when it is not valid GGUF. */
int eng_describe_gguf(const char *path, eng_model_info *out);
/* A Hugging Face folder: config.json (model_type / architectures) and every
 * *.safetensors file (8-byte little-endian header length, JSON header of
 * name -> {dtype, shape, data_offsets}, validated against the file size). */
int eng_describe_hf_dir(const char *dir, eng_model_info *out);
void eng_model_info_clear(eng_model_info *m);

/* ============================================================ dequantize ======
 * engine/quant.c: plain C reference dequantization of every tensor type the engine
 * computes with, block layouts as ggml's ggml-common.h and values as its
 * dequantize_row_* (bit for bit). Fast CPU and CUDA variants are tested against these.
 *
 *   type  elems/block  bytes/block  layout (little-endian; "half" = IEEE fp16)
 *   F32        1            4       float
 *   F16        1            2       half
 *   BF16       1            2       upper 16 bits of a float
 *   Q8_0      32           34       d:half, qs[32]:int8            x = qs*d
 *   Q4_0      32           18       d:half, qs[16]:nibbles         x = (q-8)*d
 *   Q4_1      32           20       d:half, m:half, qs[16]         x = q*d + m
 *   Q5_0      32           22       d:half, qh[4], qs[16]          x = (q-16)*d
 *   Q5_1      32           24       d:half, m:half, qh[4], qs[16]  x = q*d + m
 *   Q4_K     256          144       d,dmin:half, scales[12] (8 x 6-bit scale and min),
 *                                   qs[128]                       x = d*sc*q - dmin*m
 *   Q6_K     256          210       ql[128], qh[64], scales[16]:int8, d:half
 *                                                                 x = d*sc*(q-32)
 */

/* Dequantizes `n` elements (a multiple of the type's block size) of tensor type `type`
 * from `src` (n / block_elems blocks, any alignment) into dst (n floats).
 * MLV_EINVAL for a negative n, one that is not a whole number of blocks, or NULL
 * buffers with n > 0; MLV_EUNSUPPORTED (naming the type) for a type without a
 * dequantizer here (Q2_K, Q3_K, Q5_K, Q8_1, Q8_K, unknown ids). */
int eng_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* IEEE 754 half <-> float. fp16_to_fp32 is exact (subnormals, inf, NaN with its
 * payload). fp32_to_fp16 rounds to nearest, ties to even; too large values become
 * inf, tiny ones subnormals or a signed zero; a NaN stays a NaN (its payload truncated,
 * the quiet bit set when truncation would leave none). */
float eng_fp16_to_fp32(uint16_t h);
uint16_t eng_fp32_to_fp16(float f);
/* bfloat16 -> float: exact (the 16 bits become the float's upper half). */
float eng_bf16_to_fp32(uint16_t b);

#endif
