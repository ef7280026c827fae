/* engine: models' insides — GGUF v3 read/write, safetensors conversion, tensor types,
 * tokenizers and chat templates, the forward pass (llama, qwen2) on an op layer with a
 * plain C reference and fast CPU kernels, sampling, generation and evaluation. It
 * knows nothing of storage, users or the registry. */
#ifndef MLV_ENGINE_H
#define MLV_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "core/core_json.h"

struct mg_connection; /* CivetWeb */

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
 *   Q5_K     256          176       d,dmin:half, scales[12] (as Q4_K), qh[32] (5th bits),
 *                                   qs[128]                       x = d*sc*q - dmin*m
 *   Q6_K     256          210       ql[128], qh[64], scales[16]:int8, d:half
 *                                                                 x = d*sc*(q-32)
 */

/* Dequantizes `n` elements (a multiple of the type's block size) of tensor type `type`
 * from `src` (n / block_elems blocks, any alignment) into dst (n floats).
 * MLV_EINVAL for a negative n, one that is not a whole number of blocks, or NULL
 * buffers with n > 0; MLV_EUNSUPPORTED (naming the type) for a type without a
 * dequantizer here (Q2_K, Q3_K, Q8_1, Q8_K, unknown ids). */
int eng_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* IEEE 754 half <-> float. fp16_to_fp32 is exact (subnormals, inf, NaN with its
 * payload). fp32_to_fp16 rounds to nearest, ties to even; too large values become
 * inf, tiny ones subnormals or a signed zero; a NaN stays a NaN (its payload truncated,
 * the quiet bit set when truncation would leave none). */
float eng_fp16_to_fp32(uint16_t h);
uint16_t eng_fp32_to_fp16(float f);
/* bfloat16 -> float: exact (the 16 bits become the float's upper half). */
float eng_bf16_to_fp32(uint16_t b);

/* ================================================================ GGUF write ====
 * engine/gguf_write.c: builds a GGUF v3 file (or buffer) as llama.cpp writes it: the
 * header, KV pairs in the order they were set, tensor infos in the order they were
 * added, data aligned to general.alignment (32 unless set). Setting a key twice
 * replaces its value in place. Tensor data is borrowed until the write returns. */
typedef struct eng_gguf_writer eng_gguf_writer;
int eng_gguf_writer_new(eng_gguf_writer **out);
void eng_gguf_writer_free(eng_gguf_writer *w);
int eng_gguf_set_str(eng_gguf_writer *w, const char *key, const char *val);
int eng_gguf_set_u32(eng_gguf_writer *w, const char *key, uint32_t val);
int eng_gguf_set_i32(eng_gguf_writer *w, const char *key, int32_t val);
int eng_gguf_set_u64(eng_gguf_writer *w, const char *key, uint64_t val);
int eng_gguf_set_f32(eng_gguf_writer *w, const char *key, float val);
int eng_gguf_set_bool(eng_gguf_writer *w, const char *key, bool val);
int eng_gguf_set_arr_str(eng_gguf_writer *w, const char *key, const char *const *vals, size_t n);
/* An array of scalars: elem_type one of ENG_GGUF_U8..F64 (not STRING/ARRAY); data in
 * host layout, n elements. */
int eng_gguf_set_arr_data(eng_gguf_writer *w, const char *key, int elem_type, const void *data,
                          size_t n);
/* Copies one KV pair (any type, arrays included) from a parsed file. */
int eng_gguf_copy_kv(eng_gguf_writer *w, const eng_gguf *src, size_t i);
/* dims[0] is the fastest-moving (row length), as ggml's ne[]; size must equal the
 * type's byte size for those dims. */
int eng_gguf_add_tensor(eng_gguf_writer *w, const char *name, int type, uint32_t n_dims,
                        const uint64_t *dims, const void *data, size_t size);
/* A tensor whose bytes are produced while the file is written, so that a converter
 * needs no copy of the whole model in memory: fill(arg, row, n_rows, dst) writes rows
 * [row, row + n_rows) (a row = dims[0] elements of `type`) to dst and returns 0, or an
 * MLV_E* code (with its message set) that aborts the write. Rows come in order, a few
 * MiB at a time; arg is borrowed until the write returns. */
typedef int (*eng_gguf_fill_fn)(void *arg, uint64_t row, uint64_t n_rows, void *dst);
int eng_gguf_add_tensor_fill(eng_gguf_writer *w, const char *name, int type, uint32_t n_dims,
                             const uint64_t *dims, eng_gguf_fill_fn fill, void *arg);
/* Writes atomically (temp file in the same folder, fsync, rename). */
int eng_gguf_write_file(eng_gguf_writer *w, const char *path);
/* Into memory: *out owned by the caller (free()). */
int eng_gguf_write_mem(eng_gguf_writer *w, void **out, size_t *len);

/* ================================================================= convert ====
 * engine/convert.c: Hugging Face safetensors folders -> GGUF, and GGUF -> GGUF with
 * another weight type (the converter's out-types, as llama.cpp's convert script has).
 * Architectures llama (Q/K rows permuted for ggml's rotary layout, as llama.cpp's
 * converter does) and qwen2; tokenizer.json byte-level BPE becomes tokenizer.ggml.*
 * metadata with the pre-tokenizer named from the model; tokenizer_config.json's
 * chat_template is kept. Weights of dtype F32/F16/BF16. */
enum eng_outtype { ENG_OUT_AUTO = -1 }; /* or ENG_F32, ENG_F16, ENG_BF16, ENG_Q8_0 */

typedef struct eng_hf_file {
    const char *name; /* "config.json", "model-00001-of-00002.safetensors", ... */
    const void *data;
    size_t len;
} eng_hf_file;
/* Converts the files of an HF folder held in memory (e.g. decrypted from the vault).
 * outtype ENG_OUT_AUTO keeps each tensor's dtype (F32/F16/BF16). Result owned by the
 * caller (free()). */
int eng_convert_hf_mem(const eng_hf_file *files, size_t n, int outtype, void **out, size_t *len);
/* The same from a folder on disk to a GGUF file (written atomically). */
int eng_convert_hf_dir(const char *dir, int outtype, const char *out_path);
/* Rewrites a GGUF with every 2-D weight in outtype (F32, F16, BF16 or Q8_0; 1-D tensors
 * stay F32), other metadata kept, general.file_type updated. Quantized inputs are
 * dequantized first. */
int eng_convert_gguf(const char *in_path, int outtype, const char *out_path);
/* n floats -> one row of `type`, little-endian: F32, F16 (round to nearest even), BF16
 * (ggml's rounding) or Q8_0 (ggml's quantize_row_q8_0_ref, byte for byte; n a multiple
 * of 32). MLV_EINVAL for other types. The converter's writer, also quantize/'s. */
int eng_encode_row(int type, const float *x, void *dst, int64_t n);

/* =============================================================== tokenizer ====
 * engine/tokenizer.c (+ engine/unicode.c): tokenizers from GGUF metadata, as
 * llama.cpp's llama-vocab does: byte-level BPE ("gpt2" model; the pre-tokenizer
 * regexes named by tokenizer.ggml.pre: gpt2, llama3/llama-bpe, qwen2, smollm, ...),
 * and SentencePiece ("llama" model; scores, byte fallback <0xNN>, "▁" spaces). Special
 * and control tokens are matched in the text only when parse_special is set. */
/* The offset of the first byte of s[0..len) that is not part of valid UTF-8, or len
 * when it all is (what eng_tokenize refuses), so callers can check text up front. */
size_t eng_utf8_check(const char *s, size_t len);
typedef struct eng_tokenizer eng_tokenizer;
int eng_tokenizer_load(eng_tokenizer **out, const eng_gguf *g);
void eng_tokenizer_free(eng_tokenizer *t);
size_t eng_tokenizer_n_vocab(const eng_tokenizer *t);
/* Encodes len bytes of UTF-8 text (invalid UTF-8 -> MLV_EINVAL). add_special: BOS/EOS
 * as the model's add_bos_token/add_eos_token say. *ids owned by the caller (free()). */
int eng_tokenize(const eng_tokenizer *t, const char *text, size_t len, bool add_special,
                 bool parse_special, int32_t **ids, size_t *n);
/* Appends the bytes token `id` stands for (byte-level / byte-fallback decoded; special
 * tokens as their text only when render_special) to out. MLV_EINVAL for an id out of
 * range. Decoding a sequence = concatenating pieces (SentencePiece drops the leading
 * space of the first piece when the model adds a space prefix), then, for the BPE
 * pre-tokenizers llama.cpp marks so (gpt2, llama3, ...; not smollm or qwen2), its clean-up
 * of spaces before punctuation and contractions, as llama_detokenize does. */
int eng_token_piece(const eng_tokenizer *t, int32_t id, bool render_special, core_buf *out);
int eng_detokenize(const eng_tokenizer *t, const int32_t *ids, size_t n, bool render_special,
                   core_buf *out);
int32_t eng_token_bos(const eng_tokenizer *t); /* -1 when none */
int32_t eng_token_eos(const eng_tokenizer *t);
/* End of generation: EOS, EOT (<|im_end|>, <|eot_id|>, <|end_of_text|>, ...). */
bool eng_token_is_eog(const eng_tokenizer *t, int32_t id);

/* Chat templates (engine/chat.c): ChatML and Llama 3, recognised from
 * tokenizer.chat_template (a model without one gets ChatML). The default system prompt
 * the template carries (e.g. SmolLM2's) is applied when the first message is not a
 * system message, as the Jinja template does. */
typedef struct eng_chat_msg {
    const char *role; /* "system" | "user" | "assistant" */
    const char *content;
} eng_chat_msg;
enum { ENG_CHAT_CHATML = 1, ENG_CHAT_LLAMA3 = 2 };
/* Which template a model uses (ENG_CHAT_*). */
int eng_chat_template_of(const eng_gguf *g, char default_system[512]);
/* Renders messages (+ the assistant header when add_generation_prompt). No leading BOS:
 * tokenizing with add_special adds it (llama.cpp strips the template's). *out owned by
 * the caller (free()). MLV_EINVAL for an unknown role. */
int eng_chat_apply(int tmpl, const char *default_system, const eng_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out);

/* =================================================================== model ====
 * engine/model.c: llama and qwen2 decoder-only transformers from GGUF tensors:
 * token embedding, per layer RMSNorm -> attention (GQA, RoPE: "norm" pairs for llama,
 * "neox" for qwen2; QKV bias when present) -> residual -> RMSNorm -> SwiGLU FFN ->
 * residual; final RMSNorm; output = output.weight or the tied token embedding.
 * Weights stay where they are (mmap'd file or a caller's buffer); an eng_ctx holds one
 * sequence's KV cache (F16, as llama.cpp keeps it) and scratch space, allocated once. */
typedef struct eng_model eng_model;
typedef struct eng_ctx eng_ctx;

enum eng_backend_kind { ENG_BACKEND_AUTO = 0, ENG_BACKEND_REF = 1, ENG_BACKEND_CPU = 2 };
typedef struct eng_load_opts {
    int threads; /* 0 = every online CPU */
    int backend; /* ENG_BACKEND_*: REF = plain C reference kernels, CPU = fast SIMD */
} eng_load_opts;

typedef struct eng_hparams {
    char arch[32];
    uint32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx_train, n_rot;
    float rms_eps, rope_base, rope_scale;
    bool rope_neox, tied_output;
} eng_hparams;

/* Memory-maps a GGUF file. *out owned by the caller (eng_model_free). */
int eng_model_open_file(eng_model **out, const char *path, const eng_load_opts *opts);
/* Over a GGUF image in memory; takes ownership of buf (released with free_fn, which may
 * be NULL when the caller keeps it alive longer than the model). */
int eng_model_open_mem(eng_model **out, void *buf, size_t len, void (*free_fn)(void *),
                       const eng_load_opts *opts);
void eng_model_free(eng_model *m);
const eng_hparams *eng_model_hparams(const eng_model *m);
const eng_tokenizer *eng_model_tokenizer(const eng_model *m);
const eng_gguf *eng_model_gguf(const eng_model *m);
/* Bytes of weights one decoded token reads (every matrix once), for bandwidth figures. */
uint64_t eng_model_weight_bytes(const eng_model *m);
const char *eng_model_backend_name(const eng_model *m); /* "ref", "avx2", "avx512", ... */
/* The whole GGUF image the model runs from (mmap'd file or buffer); borrowed until
 * eng_model_free. */
const uint8_t *eng_model_image(const eng_model *m, size_t *len);

/* A sequence context of up to n_ctx positions (0 = min(train context, 4096)). */
int eng_ctx_new(eng_ctx **out, eng_model *m, uint32_t n_ctx);
void eng_ctx_free(eng_ctx *c);
uint32_t eng_ctx_pos(const eng_ctx *c); /* tokens in the KV cache */
const eng_model *eng_ctx_model(const eng_ctx *c);
uint32_t eng_ctx_n_ctx(const eng_ctx *c);
void eng_ctx_truncate(eng_ctx *c, uint32_t pos); /* forget positions >= pos */
/* Calibration (quantize/): fn sees the input of every weight product of a forward pass
 * before it is used — x is (T, n) F32, the activation the weights of `site` at `layer`
 * multiply (ENG_SITE_OUTPUT: layer is n_layer, x the final normalised rows, only when
 * logits of every token are asked for). Borrowed until fn returns. NULL fn stops it. */
enum eng_site {
    ENG_SITE_QKV = 0,      /* attn_q, attn_k, attn_v (the attention norm's output) */
    ENG_SITE_ATTN_OUT = 1, /* attn_output (the attention heads' output) */
    ENG_SITE_FFN_IN = 2,   /* ffn_gate, ffn_up (the FFN norm's output) */
    ENG_SITE_FFN_DOWN = 3, /* ffn_down (silu(gate) * up) */
    ENG_SITE_OUTPUT = 4,   /* output, or the tied token embedding */
    ENG_N_SITES = 5
};
typedef void (*eng_observe_fn)(void *arg, uint32_t layer, int site, const float *x, int T, int n);
void eng_ctx_set_observer(eng_ctx *c, eng_observe_fn fn, void *arg);
/* Feeds n tokens at positions pos..pos+n-1 (any n, processed in batches). logits, when
 * not NULL, receives n_vocab floats per token if all_logits, else only the last one's.
 * MLV_EINVAL for a token id out of range or a full context. */
int eng_decode(eng_ctx *c, const int32_t *tokens, size_t n, float *logits, bool all_logits);

/* Batched decoding: one token for each of n sequences (n <= 256, distinct contexts of
 * the same model, each with room for one more position) in one forward pass — the
 * weight products run over n rows at once, attention and the KV cache per sequence.
 * logits receives n * n_vocab floats (sequence i's at i * n_vocab). The result equals n
 * separate eng_decode calls up to float rounding. MLV_EINVAL for mixed models, a token
 * out of range or a full context (nothing decoded then). */
int eng_decode_batch(eng_ctx *const *cs, const int32_t *tokens, size_t n, float *logits);

/* ================================================================ sampling ====
 * engine/sample.c: llama.cpp's sampler chain order: repetition penalty -> top-k ->
 * top-p -> min-p -> temperature -> draw (xoshiro256** seeded from seed). temp <= 0 is
 * greedy (argmax, lowest id on ties). */
typedef struct eng_sampler_params {
    float temp;           /* 0.8 in the CLI; <= 0 greedy */
    int32_t top_k;        /* <= 0 off */
    float top_p;          /* >= 1 off */
    float min_p;          /* <= 0 off */
    float repeat_penalty; /* 1 off */
    int32_t repeat_last_n;
    uint64_t seed;
} eng_sampler_params;
typedef struct eng_sampler eng_sampler;
int eng_sampler_new(eng_sampler **out, const eng_sampler_params *p, uint32_t n_vocab);
void eng_sampler_free(eng_sampler *s);
/* Picks the next token from logits (n_vocab floats, modified in place); history = the
 * tokens so far (for the repetition penalty). */
int32_t eng_sample(eng_sampler *s, float *logits, const int32_t *history, size_t n_history);

/* ============================================================== generation ====
 * engine/generate.c: prompt -> tokens -> prefill -> sample/decode loop, stopping at
 * n_predict tokens or an end-of-generation token. on_token (may be NULL) sees each
 * generated token's bytes as it is produced; returning non-zero stops early. */
typedef struct eng_gen_result {
    int32_t *prompt_ids, *ids; /* owned; free with eng_gen_result_clear */
    size_t n_prompt, n_gen;
    size_t n_decoded; /* single-token decode steps (n_gen, or one less at the limit) */
    char *text;       /* generated text, owned */
    double prefill_s, decode_s;
    const char *stop_reason; /* "length" | "eog" | "callback" | "context" */
} eng_gen_result;
int eng_generate(eng_ctx *c, const int32_t *prompt, size_t n_prompt, uint32_t n_predict,
                 const eng_sampler_params *sp,
                 int (*on_token)(void *arg, int32_t id, const char *piece, size_t len), void *arg,
                 eng_gen_result *out);
void eng_gen_result_clear(eng_gen_result *r);

/* ================================================================ batching ====
 * engine/batch.c: continuous batching for serving. One scheduler thread owns max_seqs
 * sequence contexts. Requests wait in a FIFO queue of at most max_queue; each step the
 * scheduler admits waiting requests into free slots (prefilling their prompts), then
 * decodes one token for every running sequence in one eng_decode_batch call and
 * samples each with its own sampler. A sequence leaves its slot at n_predict tokens,
 * an end-of-generation token, a full context, or when its caller stops it. Generated
 * pieces go back to the thread that called eng_batch_run, which hands them to its
 * callback, so a slow client never stalls the others. */
typedef struct eng_batcher eng_batcher;
typedef struct eng_batcher_opts {
    int max_seqs;   /* sequences decoded together (0: 8) */
    uint32_t n_ctx; /* context of each sequence (0: min(train context, 2048)) */
    int max_queue;  /* requests waiting for a slot (0: 64); beyond it MLV_ELIMIT */
} eng_batcher_opts;
/* m is borrowed and must outlive the batcher. */
int eng_batcher_new(eng_batcher **out, eng_model *m, const eng_batcher_opts *o);
/* Stops the scheduler: waiting and running requests end with MLV_EBUSY ("the model is
 * being unloaded"); waits until every caller has left eng_batch_run, then frees the
 * contexts. (eng_server frees a batcher only once no request holds it anyway.) */
void eng_batcher_free(eng_batcher *b);
uint32_t eng_batcher_n_ctx(const eng_batcher *b);

typedef struct eng_batch_req {
    const int32_t *prompt; /* borrowed until eng_batch_run returns */
    size_t n_prompt;
    uint32_t n_predict;
    eng_sampler_params sp;
    /* Called on the caller's thread for each generated token, in order (end-of-
     * generation tokens are not passed); non-zero stops the sequence ("callback"). */
    int (*on_token)(void *arg, int32_t id, const char *piece, size_t len);
    void *arg;
} eng_batch_req;
typedef struct eng_batch_result {
    size_t n_prompt, n_gen;
    const char *stop_reason; /* "length" | "eog" | "callback" | "context" */
    double queue_s;          /* from submission until a slot took it */
    double ttft_s;           /* from submission to the first generated token */
    double total_s;          /* from submission to the end */
} eng_batch_result;
/* Runs one request to its end on the batch (blocking). MLV_ELIMIT when max_queue
 * requests are already waiting (nothing was queued); MLV_EINVAL for an empty prompt or
 * one that leaves no room in n_ctx; MLV_EBUSY when the batcher is being freed. */
int eng_batch_run(eng_batcher *b, const eng_batch_req *req, eng_batch_result *out);
typedef struct eng_batch_stats {
    int waiting, running, max_seqs, max_queue;
    uint64_t tokens;  /* generated since start */
    uint64_t steps;   /* batched decode steps */
    uint64_t seq_sum; /* sequences summed over steps (mean batch = seq_sum / steps) */
} eng_batch_stats;
void eng_batcher_stats(eng_batcher *b, eng_batch_stats *out);

/* ========================================================== OpenAI server ====
 * engine/openai.c: the OpenAI-compatible HTTP API (CivetWeb) over a batcher:
 *   GET  /v1/models              {object:"list", data:[{id, object:"model", owned_by}]}
 *   POST /v1/completions         prompt (a string), max_tokens, temperature, top_p, stop
 *                                (string or up to 4), seed, n (1 only), stream, echo
 *                                (false only), user (ignored)
 *   POST /v1/chat/completions    messages [{role, content}] through the model's chat
 *                                template; the same parameters
 *   GET  /health                 200 {status:"ok", model} or 503 {status:"loading"}
 *   GET  /metrics                Prometheus text: mlvault_inference_* request latency
 *                                and time-to-first-token histograms, generated tokens,
 *                                tokens/s, queue length, running sequences
 * Responses carry usage {prompt_tokens, completion_tokens, total_tokens}; stream: true
 * answers text/event-stream chunks ending with "data: [DONE]". Errors have OpenAI's
 * shape {error:{message, type, param, code}}: 400 invalid_request_error, 404, 429 when
 * the queue is full, 503 when no model is loaded. Every response names the model that
 * served it: "model" in the body and the X-Mlvault-Model header, both the id given to
 * eng_server_swap (e.g. "smollm2:3").
 *
 * The served model can change at any time (eng_server_swap): new requests go to the
 * new model at once; requests already running finish on the one they started on, which
 * is freed after the last of them ends. */
typedef struct eng_server eng_server;
typedef struct eng_server_hooks {
    /* Adds fields to the /health document (e.g. a node's state); may be NULL. */
    void (*health)(void *arg, json_t *doc);
    /* Appends Prometheus text to /metrics; may be NULL. */
    void (*metrics)(void *arg, core_buf *out);
    void *arg;
} eng_server_hooks;
typedef struct eng_server_opts {
    eng_batcher_opts batch;
    eng_server_hooks hooks;
    uint32_t max_tokens_default; /* max_tokens when a request gives none (0: 256) */
    /* Non-NULL: /v1/... wants "Authorization: Bearer API_KEY" (copied), else 401
     * invalid_api_key; /health and /metrics stay open for probes and scrapers. */
    const char *api_key;
} eng_server_opts;
int eng_server_new(eng_server **out, const eng_server_opts *o);
/* Stops the listener (when eng_server_listen started one), waits for requests in flight,
 * frees every model. */
void eng_server_free(eng_server *s);
/* Serves m (taken: freed with its batcher once no request uses it) as `id` from now on.
 * On failure m is freed and the previous model keeps serving. */
int eng_server_swap(eng_server *s, eng_model *m, const char *id);
/* The id served now, "" when none. */
void eng_server_current(eng_server *s, char *id, size_t n);
/* Handles a CivetWeb request for /v1/..., /health or /metrics (1: a reply was sent), or
 * returns 0 for any other path — for embedding in another CivetWeb server. */
int eng_server_handle(eng_server *s, struct mg_connection *c);
/* Listens on its own CivetWeb server ("127.0.0.1:8000"; port 0 picks a free one). */
int eng_server_listen(eng_server *s, const char *addr);
int eng_server_port(const eng_server *s);
/* The engine's metrics in Prometheus text appended to out (a host's /metrics). */
void eng_server_metrics(eng_server *s, core_buf *out);
/* Completed requests per second over the last 60 s. */
double eng_server_rps(eng_server *s);

/* ============================================================== evaluation ====
 * engine/eval.c: DESIGN.md (Evaluation). Text metrics run the text through windows of
 * n_ctx tokens (BOS first when the model adds one) and score the second half of each
 * window, as llama-perplexity does; mc_accuracy scores each choice by the summed log-
 * likelihood of its tokens after the context (lm-evaluation-harness's "acc"). */
enum eng_metric {
    ENG_METRIC_NEXT_TOKEN_ACCURACY = 1,
    ENG_METRIC_PERPLEXITY,
    ENG_METRIC_MC_ACCURACY,
    ENG_METRIC_KLD,
};
const char *eng_metric_name(int metric);
int eng_metric_parse(const char *name); /* ENG_METRIC_* or -1 */
typedef struct eng_eval_result {
    int metric;
    double value;                /* accuracy as a fraction; perplexity; mean KLD */
    double ci_low, ci_high;      /* 95% confidence interval */
    uint64_t n_samples;          /* scored tokens, or questions */
    double accuracy, perplexity; /* both text metrics, whichever was asked */
    double same_top;             /* kld: fraction of tokens with the same top-1 token */
    double seconds;
} eng_eval_result;
typedef struct eng_eval_opts {
    uint32_t n_ctx;      /* 0 = 512 */
    eng_model *baseline; /* kld only */
    void (*progress)(void *arg, double fraction);
    void *progress_arg;
} eng_eval_opts;
/* data: UTF-8 text (text metrics) or JSONL {"context","choices":[...],"answer":i}
 * (mc_accuracy). MLV_EINVAL with the line number for bad JSONL or a text too short. */
int eng_evaluate(eng_model *m, int metric, const char *data, size_t len, const eng_eval_opts *opts,
                 eng_eval_result *out);

#endif
