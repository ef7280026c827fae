/* engine/convert.c: model conversion, as llama.cpp's convert_hf_to_gguf.py does it —
 * Hugging Face folders (LlamaForCausalLM, Qwen2ForCausalLM; config.json, tokenizer.json,
 * tokenizer_config.json, one or more *.safetensors of F32/F16/BF16) to GGUF, and GGUF
 * to GGUF with another weight type (F32, F16, BF16, Q8_0). Bytes are laid out by
 * engine/gguf_write.c, weights are produced tensor by tensor (a few rows at a time)
 * while the file is written, so memory stays bounded by a row, not the model.
 * Not a quantizer beyond Q8_0 (quantize/ owns the k-quants) and not a loader.
 *
 * Where we follow llama.cpp (convert_hf_to_gguf.py, gguf-py's SpecialVocab):
 *   - tensor names model.layers.N.self_attn.q_proj.weight -> blk.N.attn_q.weight, ...;
 *     rotary_emb.inv_freq dropped; lm_head.weight -> output.weight (dropped when
 *     tie_word_embeddings is set: the model then reads token_embd.weight);
 *   - llama's q_proj/k_proj rows (weights and biases) permuted per head so that
 *     ggml's "normal" rotary pairs (x[2i], x[2i+1]) see what HF's rotate_half pairs
 *     (x[i], x[i + d/2]) saw: row h*hd + 2i + k <- row h*hd + k*hd/2 + i;
 *   - out-types: 1-D tensors and *_norm.weight stay F32; others become the out-type,
 *     except Q8_0 rows that are not a multiple of 32, which fall back to F16; the
 *     Q8_0 blocks as ggml's quantize_row_q8_0_ref; general.file_type as llama.cpp's
 *     LlamaFileType (ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32);
 *   - the tokenizer: model.vocab + added_tokens, [PAD<i>] (UNUSED) filling holes up to
 *     config vocab_size; added tokens CONTROL when special or looking special
 *     (<|...|>), else USER_DEFINED; merges in the "a b" form (["a","b"] pairs joined,
 *     spaces inside a part written as U+0120); special ids from tokenizer_config.json
 *     (string or {content} matched against added_tokens), then config.json's *_token_id;
 *     add_bos/eos/sep from tokenizer_config.json, else a TemplateProcessing
 *     post-processor; chat_template (string or named list).
 * Where we differ (see each place): ENG_OUT_AUTO keeps each weight's own dtype
 * (llama.cpp's "auto" picks one type for the file); tokenizer.ggml.pre is named from
 * the model and tokenizer.json's pre-tokenizer rather than by hashing a tokenization:
 * qwen2 -> "qwen2"; llama with the Llama-3 Split regex -> "llama-bpe", with
 * Digits(individual) + ByteLevel -> "smollm", with ByteLevel alone -> "gpt2"; anything
 * else is refused, as llama.cpp refuses an unknown hash. general.name is config.json's
 * _name_or_path (last component), else the folder's name, with no further heuristics. */
#include "engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define QK8_0 32
#define ST_MAX_HEADER (100ull << 20) /* safetensors' own limit on the JSON header */
#define HF_MAX_FILES 4096

enum { FTYPE_ALL_F32 = 0, FTYPE_MOSTLY_F16 = 1, FTYPE_MOSTLY_Q8_0 = 7, FTYPE_MOSTLY_BF16 = 32 };
enum { TOK_NORMAL = 1, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5 };

static bool outtype_valid(int t)
{
    return t == ENG_F32 || t == ENG_F16 || t == ENG_BF16 || t == ENG_Q8_0;
}

static uint32_t file_type_of(int type)
{
    switch (type) {
    case ENG_F16: return FTYPE_MOSTLY_F16;
    case ENG_BF16: return FTYPE_MOSTLY_BF16;
    case ENG_Q8_0: return FTYPE_MOSTLY_Q8_0;
    default: return FTYPE_ALL_F32;
    }
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !memcmp(s + a - b, suffix, b);
}

/* The type a weight is written in (llama.cpp's prepare_tensors rule). */
static int weight_type(const char *gguf_name, uint32_t n_dims, uint64_t row_len, int want)
{
    if (n_dims <= 1 || ends_with(gguf_name, "_norm.weight")) return ENG_F32;
    if (want == ENG_Q8_0 && row_len % QK8_0) return ENG_F16; /* llama.cpp's QuantError path */
    return want;
}

/* ------------------------------------------------------------ row encoders ---- */

/* ggml's ggml_compute_fp32_to_bf16: round to nearest even, NaN kept quiet. */
static uint16_t fp32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

/* ggml's quantize_row_q8_0_ref, block by block: d = amax/127 (stored as half),
 * q = roundf(x/d). x: (k,) floats, k a multiple of 32; y: k/32 blocks of 34 bytes.
 * (The quantize issue moves this beside the other quantizers.) */
static void quantize_row_q8_0(const float *x, unsigned char *y, int64_t k)
{
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); /* ggml's MAX() */
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        put16(y, eng_fp32_to_fp16(d));
        for (int j = 0; j < QK8_0; j++) {
            const float x0 = x[j] * id;
            y[2 + j] = x0 == x0 ? (unsigned char)(int8_t)roundf(x0) : 0; /* NaN: 0, not UB */
        }
    }
}

/* n floats -> one row of `type` (F32, F16, BF16 or Q8_0), little-endian. */
static void encode_row(int type, const float *x, unsigned char *dst, int64_t n)
{
    switch (type) {
    case ENG_F16:
        for (int64_t i = 0; i < n; i++)
            put16(dst + 2 * i, eng_fp32_to_fp16(x[i]));
        break;
    case ENG_BF16:
        for (int64_t i = 0; i < n; i++)
            put16(dst + 2 * i, fp32_to_bf16(x[i]));
        break;
    case ENG_Q8_0: quantize_row_q8_0(x, dst, n); break;
    default:
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            for (int b = 0; b < 4; b++)
                dst[4 * i + b] = (unsigned char)(u >> (8 * b));
        }
        break;
    }
}

static uint64_t row_bytes(int type, uint64_t n)
{
    size_t be, bb;
    eng_type_block(type, &be, &bb);
    return n / be * bb;
}

/* ------------------------------------------------------------ file mapping ---- */

typedef struct mapped {
    void *p;
    size_t len;
} mapped;

/* Maps a regular file read-only (an empty file maps to an empty buffer). */
static int map_file(const char *path, mapped *m)
{
    m->p = NULL;
    m->len = 0;
    int fd;
    uint64_t size;
    int rc = core_open_regular(path, &fd, &size);
    if (rc) return rc;
    if (size > SIZE_MAX) {
        close(fd);
        return core_err_set(MLV_EINVAL, "%s: too large to map", path);
    }
    if (size) {
        void *p = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            rc = core_err_set(MLV_EIO, "mmap %s: %s", path, strerror(errno));
            close(fd);
            return rc;
        }
        m->p = p;
        m->len = (size_t)size;
    }
    close(fd);
    return 0;
}

/* Drops the pages of a finished tensor from a read-only file mapping (they would be
 * read again from the file if touched), so a conversion's resident memory stays near
 * one tensor rather than growing to the whole input. Only for our own mappings: on a
 * caller's heap buffer this would zero memory. */
static void release_pages(const void *p, uint64_t len)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + len) / page * page;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

static void unmap_file(mapped *m)
{
    if (m->p) munmap(m->p, m->len);
    m->p = NULL;
    m->len = 0;
}

/* ============================================================ GGUF -> GGUF ==== */

typedef struct gg_job {
    const unsigned char *src; /* the tensor's bytes in the input (mapped) */
    int in_type, out_type;
    uint64_t row_elems, in_row, out_row;
    float *scratch; /* row_elems floats, shared */
} gg_job;

/* Rows [row, row + n): copied when the type stays, else dequantized and re-encoded. */
static int gg_fill(void *arg, uint64_t row, uint64_t n, void *dst)
{
    const gg_job *j = arg;
    unsigned char *d = dst;
    const unsigned char *s = j->src + row * j->in_row;
    if (j->in_type == j->out_type) {
        memcpy(d, s, (size_t)(n * j->in_row));
    } else {
        for (uint64_t r = 0; r < n; r++) {
            int rc = eng_dequantize_row(j->in_type, s + r * j->in_row, j->scratch,
                                        (int64_t)j->row_elems);
            if (rc) return rc;
            encode_row(j->out_type, j->scratch, d + r * j->out_row, (int64_t)j->row_elems);
        }
    }
    release_pages(s, n * j->in_row); /* rows are read once, in order */
    return 0;
}

int eng_convert_gguf(const char *in_path, int outtype, const char *out_path)
{
    if (!outtype_valid(outtype))
        return core_err_set(MLV_EINVAL,
                            "convert: out-type %d is not one of F32, F16, BF16, Q8_0 (a GGUF "
                            "input needs an explicit one)",
                            outtype);
    mapped in = {0};
    eng_gguf *g = NULL;
    eng_gguf_writer *w = NULL;
    gg_job *jobs = NULL;
    float *scratch = NULL;
    int rc = map_file(in_path, &in);
    if (rc) return rc;
    if ((rc = eng_gguf_open_mem(&g, in.p, in.len))) {
        core_err_wrap("%s: ", in_path);
        goto done;
    }
    if ((rc = eng_gguf_writer_new(&w))) goto done;
    for (size_t i = 0; i < eng_gguf_n_kv(g); i++)
        if ((rc = eng_gguf_copy_kv(w, g, i))) {
            core_err_wrap("convert %s: ", in_path);
            goto done;
        }
    if ((rc = eng_gguf_set_u32(w, "general.file_type", file_type_of(outtype)))) goto done;
    if (outtype == ENG_Q8_0 &&
        (rc = eng_gguf_set_u32(w, "general.quantization_version", 2))) /* GGML_QNT_VERSION */
        goto done;

    size_t nt = eng_gguf_n_tensors(g);
    uint64_t max_row = 1;
    for (size_t i = 0; i < nt; i++) {
        eng_gguf_tensor t;
        eng_gguf_tensor_info(g, i, &t);
        if (t.dims[0] > max_row) max_row = t.dims[0];
    }
    if (max_row > SIZE_MAX / sizeof(float) ||
        !(scratch = malloc((size_t)max_row * sizeof(float))) ||
        !(jobs = calloc(nt ? nt : 1, sizeof *jobs))) {
        rc = core_err_set(MLV_ENOMEM, "convert: out of memory");
        goto done;
    }
    const unsigned char *data = (const unsigned char *)in.p + eng_gguf_data_offset(g);
    for (size_t i = 0; i < nt; i++) {
        eng_gguf_tensor t;
        eng_gguf_tensor_info(g, i, &t);
        gg_job *j = &jobs[i];
        j->src = data + t.offset;
        j->in_type = t.type;
        j->out_type = weight_type(t.name, t.n_dims, t.dims[0], outtype);
        j->row_elems = t.dims[0];
        j->in_row = row_bytes(t.type, t.dims[0]);
        j->out_row = row_bytes(j->out_type, t.dims[0]);
        j->scratch = scratch;
        /* Refuse a type we cannot dequantize now, not after writing half the file. */
        if (j->in_type != j->out_type &&
            (rc = eng_dequantize_row(t.type, j->src, scratch, (int64_t)t.dims[0]))) {
            core_err_wrap("convert %s: tensor '%s': ", in_path, t.name);
            goto done;
        }
        if ((rc = eng_gguf_add_tensor_fill(w, t.name, j->out_type, t.n_dims, t.dims, gg_fill, j)))
            goto done;
    }
    rc = eng_gguf_write_file(w, out_path);
done:
    free(jobs);
    free(scratch);
    eng_gguf_writer_free(w);
    eng_gguf_free(g);
    unmap_file(&in);
    return rc;
}

/* ============================================================== HF -> GGUF ==== */

enum { ARCH_LLAMA = 1, ARCH_QWEN2 = 2 };

typedef struct st_tensor {
    char *name;       /* HF name, owned */
    const char *file; /* borrowed from the file list */
    int dtype;        /* ENG_F32 / ENG_F16 / ENG_BF16 */
    uint32_t n_dims;
    uint64_t shape[4]; /* as stored: shape[0] is the slowest axis */
    uint64_t n_elems;
    const unsigned char *data;
} st_tensor;

typedef struct hf_job {
    const st_tensor *src;
    int out_type;
    uint64_t row_elems, n_rows, out_row;
    uint32_t perm_heads; /* 0: rows as they are; else permuted for this many heads */
    bool release;        /* the source is our own mapping: drop its pages when done */
    float *a, *b;        /* scratch, row_elems floats each, shared */
} hf_job;

typedef struct hf_ctx {
    const eng_hf_file *files;
    size_t n_files;
    json_t *cfg, *tok, *tcfg; /* config.json, tokenizer.json, tokenizer_config.json */
    int arch;
    const char *arch_name;
    /* hyper-parameters */
    uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv, n_ctx, n_vocab, head_dim;
    bool has_n_ctx, has_n_ff, has_head_kv, has_head_dim, has_theta, has_eps, tied;
    float rope_theta, rms_eps, rope_linear;
    st_tensor *t;
    size_t n_t, t_cap;
    char **owned; /* strings we made (pad tokens, joined merges) */
    size_t n_owned, owned_cap;
} hf_ctx;

static int hf_oom(void)
{
    return core_err_set(MLV_ENOMEM, "convert: out of memory");
}

static char *hf_own(hf_ctx *c, char *s)
{
    if (!s) return NULL;
    if (c->n_owned == c->owned_cap) {
        size_t nc = c->owned_cap ? c->owned_cap * 2 : 64;
        char **o = realloc(c->owned, nc * sizeof *o);
        if (!o) {
            free(s);
            return NULL;
        }
        c->owned = o;
        c->owned_cap = nc;
    }
    return c->owned[c->n_owned++] = s;
}

/* A JSON string as a C string, or NULL when it is not a string or holds a NUL byte
 * (GGUF strings could, but the writer takes C strings). */
static const char *json_cstr(const json_t *v)
{
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

static const eng_hf_file *hf_find(const hf_ctx *c, const char *name)
{
    for (size_t i = 0; i < c->n_files; i++)
        if (!strcmp(c->files[i].name, name)) return &c->files[i];
    return NULL;
}

static int hf_json(const eng_hf_file *f, json_t **out)
{
    json_error_t jerr;
    *out = json_loadb(f->len ? (const char *)f->data : "", f->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out)
        return core_err_set(MLV_EINVAL, "convert: %s: not valid JSON (line %d: %s)", f->name,
                            jerr.line, jerr.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return core_err_set(MLV_EINVAL, "convert: %s: not a JSON object", f->name);
    }
    return 0;
}

/* ------------------------------------------------------------ safetensors ---- */

typedef struct st_range {
    uint64_t begin, end;
    const char *name;
} st_range;

static int cmp_range(const void *a, const void *b)
{
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static bool json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* One .safetensors file: 8-byte little-endian header length, a JSON header of
 * name -> {dtype, shape, data_offsets} (plus __metadata__, ignored), then the data,
 * indexed entirely by the tensors without overlaps or holes (the format's rule). */
static int st_parse(hf_ctx *c, const eng_hf_file *f)
{
    const unsigned char *p = f->data;
    json_t *root = NULL;
    st_range *ranges = NULL;
    int rc = 0;
    if (f->len < 8)
        return core_err_set(MLV_EINVAL,
                            "convert: safetensors %s: shorter than its 8-byte header "
                            "length",
                            f->name);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER || hlen > f->len - 8)
        return core_err_set(MLV_EINVAL,
                            "convert: safetensors %s: header length %" PRIu64
                            " exceeds the file (%zu bytes) or 100 MiB",
                            f->name, hlen, f->len);
    json_error_t jerr;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return core_err_set(MLV_EINVAL, "convert: safetensors %s: header is not valid JSON: %s",
                            f->name, jerr.text);
    if (!json_is_object(root)) {
        rc = core_err_set(MLV_EINVAL, "convert: safetensors %s: header is not a JSON object",
                          f->name);
        goto done;
    }
    const unsigned char *data = p + 8 + hlen;
    uint64_t data_len = f->len - 8 - hlen;
    size_t n = json_object_size(root), nr = 0;
    if (!(ranges = calloc(n ? n : 1, sizeof *ranges))) {
        rc = hf_oom();
        goto done;
    }
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v)
    {
        if (!strcmp(name, "__metadata__")) continue;
        json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
               *offs = json_object_get(v, "data_offsets");
        if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) ||
            !json_is_array(offs) || json_array_size(offs) != 2) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': needs dtype, shape and "
                              "data_offsets [begin, end]",
                              f->name, name);
            goto done;
        }
        const char *dtype = json_string_value(dt);
        int type;
        unsigned esize;
        if (!strcmp(dtype, "F32"))
            type = ENG_F32, esize = 4;
        else if (!strcmp(dtype, "F16"))
            type = ENG_F16, esize = 2;
        else if (!strcmp(dtype, "BF16"))
            type = ENG_BF16, esize = 2;
        else {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': dtype '%.40s' is not "
                              "supported (F32, F16 and BF16 are)",
                              f->name, name, dtype);
            goto done;
        }
        size_t nd = json_array_size(shape);
        if (nd < 1 || nd > 4) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': %zu dimensions (1 to 4 "
                              "are supported)",
                              f->name, name, nd);
            goto done;
        }
        st_tensor t = {0};
        t.n_elems = 1;
        for (size_t d = 0; d < nd; d++) {
            uint64_t dim;
            if (!json_u64(json_array_get(shape, d), &dim) || dim == 0) {
                rc = core_err_set(MLV_EINVAL,
                                  "convert: safetensors %s: tensor '%.120s': shape is not a list "
                                  "of positive integers",
                                  f->name, name);
                goto done;
            }
            if (dim > (uint64_t)INT64_MAX / esize ||
                t.n_elems > (uint64_t)INT64_MAX / esize / dim) {
                rc = core_err_set(MLV_EINVAL,
                                  "convert: safetensors %s: tensor '%.120s': shape overflows",
                                  f->name, name);
                goto done;
            }
            t.shape[d] = dim;
            t.n_elems *= dim;
        }
        uint64_t begin, end;
        if (!json_u64(json_array_get(offs, 0), &begin) ||
            !json_u64(json_array_get(offs, 1), &end) || end < begin) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': bad "
                              "data_offsets",
                              f->name, name);
            goto done;
        }
        if (end > data_len) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': data_offsets [%" PRIu64
                              ", %" PRIu64 "] are past the %" PRIu64 " data bytes",
                              f->name, name, begin, end, data_len);
            goto done;
        }
        if (end - begin != t.n_elems * esize) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s': %" PRIu64
                              " bytes for a %s tensor of %" PRIu64 " elements",
                              f->name, name, end - begin, dtype, t.n_elems);
            goto done;
        }
        t.dtype = type;
        t.n_dims = (uint32_t)nd;
        t.data = data + begin;
        t.file = f->name;
        if (c->n_t == c->t_cap) {
            size_t nc = c->t_cap ? c->t_cap * 2 : 256;
            st_tensor *x = realloc(c->t, nc * sizeof *x);
            if (!x) {
                rc = hf_oom();
                goto done;
            }
            c->t = x;
            c->t_cap = nc;
        }
        if (!(t.name = strdup(name))) {
            rc = hf_oom();
            goto done;
        }
        c->t[c->n_t++] = t;
        ranges[nr++] = (st_range){begin, end, c->t[c->n_t - 1].name};
    }
    qsort(ranges, nr, sizeof *ranges, cmp_range);
    uint64_t at = 0;
    for (size_t i = 0; i < nr; i++) {
        if (ranges[i].begin < at) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: tensor '%.120s' overlaps tensor '%.120s'",
                              f->name, ranges[i].name, ranges[i - 1].name);
            goto done;
        }
        if (ranges[i].begin > at) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: safetensors %s: unindexed bytes before tensor '%.120s'",
                              f->name, ranges[i].name);
            goto done;
        }
        at = ranges[i].end;
    }
    if (at != data_len)
        rc = core_err_set(MLV_EINVAL,
                          "convert: safetensors %s: %" PRIu64 " data bytes but the tensors cover "
                          "%" PRIu64,
                          f->name, data_len, at);
done:
    free(ranges);
    json_decref(root);
    return rc;
}

static int cmp_file(const void *a, const void *b)
{
    return strcmp((*(const eng_hf_file *const *)a)->name, (*(const eng_hf_file *const *)b)->name);
}

static int cmp_tname(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Every *.safetensors file, in name order; names unique across files; when
 * model.safetensors.index.json is there, its weight_map must name exactly these
 * tensors, each in the file that holds it. */
static int st_load_all(hf_ctx *c)
{
    const eng_hf_file **sts = calloc(c->n_files ? c->n_files : 1, sizeof *sts);
    const st_tensor **byname = NULL;
    json_t *index = NULL;
    size_t ns = 0;
    int rc = 0;
    if (!sts) return hf_oom();
    for (size_t i = 0; i < c->n_files; i++)
        if (ends_with(c->files[i].name, ".safetensors")) sts[ns++] = &c->files[i];
    if (ns == 0) {
        rc = core_err_set(MLV_EINVAL, "convert: no *.safetensors file");
        goto done;
    }
    qsort(sts, ns, sizeof *sts, cmp_file);
    for (size_t i = 0; i < ns; i++)
        if ((rc = st_parse(c, sts[i]))) goto done;
    if (!(byname = malloc((c->n_t ? c->n_t : 1) * sizeof *byname))) {
        rc = hf_oom();
        goto done;
    }
    for (size_t i = 0; i < c->n_t; i++)
        byname[i] = &c->t[i];
    qsort(byname, c->n_t, sizeof *byname, cmp_tname);
    for (size_t i = 1; i < c->n_t; i++)
        if (!strcmp(byname[i - 1]->name, byname[i]->name)) {
            const char *x = byname[i - 1]->file, *y = byname[i]->file;
            if (strcmp(x, y) > 0) x = y, y = byname[i - 1]->file;
            rc = core_err_set(MLV_EINVAL, "convert: tensor '%.120s' is in both %s and %s",
                              byname[i]->name, x, y);
            goto done;
        }
    const eng_hf_file *ix = hf_find(c, "model.safetensors.index.json");
    if (ix) {
        if ((rc = hf_json(ix, &index))) goto done;
        json_t *map = json_object_get(index, "weight_map");
        if (!json_is_object(map)) {
            rc = core_err_set(MLV_EINVAL, "convert: %s: no weight_map object", ix->name);
            goto done;
        }
        const char *k;
        json_t *v;
        json_object_foreach(map, k, v)
        {
            st_tensor key = {.name = (char *)k}, *kp = &key;
            const st_tensor **hit = bsearch(&kp, byname, c->n_t, sizeof *byname, cmp_tname);
            if (!hit) {
                rc = core_err_set(MLV_EINVAL,
                                  "convert: %s lists tensor '%.120s', which no "
                                  "*.safetensors file holds",
                                  ix->name, k);
                goto done;
            }
            if (!json_is_string(v) || strcmp(json_string_value(v), (*hit)->file)) {
                rc = core_err_set(MLV_EINVAL,
                                  "convert: %s puts tensor '%.120s' in another file "
                                  "than %s",
                                  ix->name, k, (*hit)->file);
                goto done;
            }
        }
        if (json_object_size(map) != c->n_t) {
            rc = core_err_set(MLV_EINVAL, "convert: %s lists %zu tensors, the files hold %zu",
                              ix->name, json_object_size(map), c->n_t);
            goto done;
        }
    }
done:
    json_decref(index);
    free(byname);
    free(sts);
    return rc;
}

/* ----------------------------------------------------------------- config ---- */

/* An integer hyper-parameter that fits a u32 (GGUF stores them so). */
static int cfg_u32(hf_ctx *c, const char *key, bool required, uint32_t *out, bool *present)
{
    json_t *v = json_object_get(c->cfg, key);
    if (present) *present = false;
    if (!v || json_is_null(v)) {
        if (!required) return 0;
        return core_err_set(MLV_EINVAL, "convert: config.json: '%s' is missing", key);
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
        json_integer_value(v) > (json_int_t)UINT32_MAX)
        return core_err_set(MLV_EINVAL,
                            "convert: config.json: '%s' is not a positive 32-bit "
                            "integer",
                            key);
    *out = (uint32_t)json_integer_value(v);
    if (present) *present = true;
    return 0;
}

static int cfg_f32(hf_ctx *c, const char *key, float *out, bool *present)
{
    json_t *v = json_object_get(c->cfg, key);
    *present = false;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return core_err_set(MLV_EINVAL, "convert: config.json: '%s' is not a number", key);
    *out = (float)json_number_value(v);
    *present = true;
    return 0;
}

static int read_config(hf_ctx *c)
{
    json_t *archs = json_object_get(c->cfg, "architectures");
    const char *a = json_is_array(archs) ? json_string_value(json_array_get(archs, 0)) : NULL;
    if (!a)
        return core_err_set(MLV_EINVAL, "convert: config.json: no architectures[0] (llama.cpp "
                                        "picks the converter by it)");
    if (!strcmp(a, "LlamaForCausalLM")) {
        c->arch = ARCH_LLAMA;
        c->arch_name = "llama";
    } else if (!strcmp(a, "Qwen2ForCausalLM")) {
        c->arch = ARCH_QWEN2;
        c->arch_name = "qwen2";
    } else {
        return core_err_set(MLV_EINVAL,
                            "convert: config.json: architecture '%.80s' is not "
                            "supported (LlamaForCausalLM and Qwen2ForCausalLM are)",
                            a);
    }
    int rc;
    bool has_vocab;
    if ((rc = cfg_u32(c, "num_hidden_layers", true, &c->n_layer, NULL)) ||
        (rc = cfg_u32(c, "hidden_size", true, &c->n_embd, NULL)) ||
        (rc = cfg_u32(c, "num_attention_heads", true, &c->n_head, NULL)) ||
        (rc = cfg_u32(c, "intermediate_size", false, &c->n_ff, &c->has_n_ff)) ||
        (rc = cfg_u32(c, "max_position_embeddings", false, &c->n_ctx, &c->has_n_ctx)) ||
        (rc = cfg_u32(c, "num_key_value_heads", false, &c->n_head_kv, &c->has_head_kv)) ||
        (rc = cfg_u32(c, "head_dim", false, &c->head_dim, &c->has_head_dim)) ||
        (rc = cfg_u32(c, "vocab_size", c->arch == ARCH_LLAMA, &c->n_vocab, &has_vocab)) ||
        (rc = cfg_f32(c, "rope_theta", &c->rope_theta, &c->has_theta)) ||
        (rc = cfg_f32(c, "rms_norm_eps", &c->rms_eps, &c->has_eps)))
        return rc;
    if (c->n_layer > 100000)
        return core_err_set(MLV_EINVAL, "convert: config.json: %" PRIu32 " layers", c->n_layer);
    if (!c->has_head_dim && c->n_embd % c->n_head)
        return core_err_set(MLV_EINVAL,
                            "convert: config.json: hidden_size %" PRIu32
                            " is not a multiple of num_attention_heads %" PRIu32,
                            c->n_embd, c->n_head);
    if (c->has_head_kv && c->n_head % c->n_head_kv)
        return core_err_set(MLV_EINVAL, "convert: config.json: num_attention_heads is not a "
                                        "multiple of num_key_value_heads");
    json_t *tie = json_object_get(c->cfg, "tie_word_embeddings");
    c->tied = json_is_true(tie);
    json_t *rs = json_object_get(c->cfg, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        json_t *ty = json_object_get(rs, "rope_type");
        if (!ty) ty = json_object_get(rs, "type");
        json_t *fa = json_object_get(rs, "factor");
        if (c->arch == ARCH_LLAMA && json_is_string(ty) &&
            !strcmp(json_string_value(ty), "linear") && json_is_number(fa)) {
            c->rope_linear = (float)json_number_value(fa);
        } else {
            return core_err_set(MLV_EUNSUPPORTED, "convert: config.json: this rope_scaling is "
                                                  "not supported (linear, for llama, is)");
        }
    }
    if (!has_vocab) c->n_vocab = 0; /* qwen2: the tokenizer's size */
    return 0;
}

/* ----------------------------------------------------------- tensor names ---- */

static const struct {
    const char *hf, *gguf;
    int perm; /* 1: permute as q, 2: as k (llama only) */
} layer_map[] = {
    {"input_layernorm.weight", "attn_norm.weight", 0},
    {"self_attn.q_proj.weight", "attn_q.weight", 1},
    {"self_attn.q_proj.bias", "attn_q.bias", 1},
    {"self_attn.k_proj.weight", "attn_k.weight", 2},
    {"self_attn.k_proj.bias", "attn_k.bias", 2},
    {"self_attn.v_proj.weight", "attn_v.weight", 0},
    {"self_attn.v_proj.bias", "attn_v.bias", 0},
    {"self_attn.o_proj.weight", "attn_output.weight", 0},
    {"self_attn.o_proj.bias", "attn_output.bias", 0},
    {"post_attention_layernorm.weight", "ffn_norm.weight", 0},
    {"mlp.gate_proj.weight", "ffn_gate.weight", 0},
    {"mlp.up_proj.weight", "ffn_up.weight", 0},
    {"mlp.down_proj.weight", "ffn_down.weight", 0},
};

/* 0: mapped to out (and *perm); 1: a tensor llama.cpp drops; MLV_EINVAL otherwise. */
static int map_name(const hf_ctx *c, const char *hf, char out[64], int *perm)
{
    *perm = 0;
    if (!strcmp(hf, "model.embed_tokens.weight")) {
        snprintf(out, 64, "token_embd.weight");
        return 0;
    }
    if (!strcmp(hf, "model.norm.weight")) {
        snprintf(out, 64, "output_norm.weight");
        return 0;
    }
    if (!strcmp(hf, "lm_head.weight")) {
        if (c->tied) return 1;
        snprintf(out, 64, "output.weight");
        return 0;
    }
    const char *p = hf;
    if (!strncmp(p, "model.layers.", 13)) {
        p += 13;
        uint64_t bid = 0;
        const char *digits = p;
        while (*p >= '0' && *p <= '9' && p - digits < 9)
            bid = bid * 10 + (uint64_t)(*p++ - '0');
        bool ok =
            p > digits && *p == '.' && !(digits[0] == '0' && p - digits > 1) && bid < c->n_layer;
        if (ok) {
            p++;
            if (!strcmp(p, "self_attn.rotary_emb.inv_freq")) return 1;
            for (size_t i = 0; i < sizeof layer_map / sizeof layer_map[0]; i++)
                if (!strcmp(p, layer_map[i].hf)) {
                    snprintf(out, 64, "blk.%" PRIu64 ".%s", bid, layer_map[i].gguf);
                    if (c->arch == ARCH_LLAMA) *perm = layer_map[i].perm;
                    return 0;
                }
        }
    }
    return core_err_set(MLV_EINVAL, "convert: cannot map tensor '%.120s' to a GGUF name", hf);
}

/* Rows [row, row + n) of one output tensor. A row is dims[0] = shape[last] elements;
 * a permuted 1-D bias is one row whose elements move. */
static int hf_fill(void *arg, uint64_t row, uint64_t n, void *dst)
{
    const hf_job *j = arg;
    const st_tensor *s = j->src;
    unsigned char *d = dst;
    uint64_t in_row = row_bytes(s->dtype, j->row_elems);
    int rc;
    if (j->perm_heads && s->n_dims == 1) {
        uint64_t hd = j->row_elems / j->perm_heads, half = hd / 2;
        if ((rc = eng_dequantize_row(s->dtype, s->data, j->a, (int64_t)j->row_elems))) return rc;
        for (uint64_t o = 0; o < j->row_elems; o++) {
            uint64_t h = o / hd, rem = o % hd;
            j->b[o] = j->a[h * hd + (rem % 2) * half + rem / 2];
        }
        encode_row(j->out_type, j->b, d, (int64_t)j->row_elems);
        if (j->release) release_pages(s->data, in_row);
        return 0;
    }
    uint64_t hd = j->perm_heads ? j->n_rows / j->perm_heads : 0, half = hd / 2;
    for (uint64_t r = row; r < row + n; r++, d += j->out_row) {
        uint64_t sr = r;
        if (j->perm_heads) {
            uint64_t h = r / hd, rem = r % hd;
            sr = h * hd + (rem % 2) * half + rem / 2;
        }
        const unsigned char *sp = s->data + sr * in_row;
        if (s->dtype == j->out_type) {
            memcpy(d, sp, (size_t)in_row);
            continue;
        }
        if ((rc = eng_dequantize_row(s->dtype, sp, j->a, (int64_t)j->row_elems))) return rc;
        encode_row(j->out_type, j->a, d, (int64_t)j->row_elems);
    }
    /* rows are read once; in order unless permuted (then drop the whole tensor at its end) */
    if (j->release && !j->perm_heads) release_pages(s->data + row * in_row, n * in_row);
    if (j->release && j->perm_heads && row + n == j->n_rows)
        release_pages(s->data, j->n_rows * in_row);
    return 0;
}

/* -------------------------------------------------------------- tokenizer ---- */

/* gguf-py's SpecialVocab types; cls has no GGUF key, unk's is "unknown". */
static const struct {
    const char *typ, *id_key, *add_key;
} specials[] = {
    {"bos", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token"},
    {"eos", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_eos_token"},
    {"unk", "tokenizer.ggml.unknown_token_id", NULL},
    {"sep", "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.add_sep_token"},
    {"pad", "tokenizer.ggml.padding_token_id", NULL},
    {"cls", NULL, NULL},
    {"mask", "tokenizer.ggml.mask_token_id", NULL},
};
#define N_SPECIAL (sizeof specials / sizeof specials[0])

/* Insertion-ordered (as the Python dicts are) special ids and add_* flags. */
typedef struct special_set {
    int id_order[N_SPECIAL], n_ids;
    int64_t id[N_SPECIAL];
    int add_order[N_SPECIAL], n_add;
    bool add[N_SPECIAL];
    bool add_set[N_SPECIAL], id_set[N_SPECIAL];
} special_set;

static void special_id(special_set *s, size_t typ, int64_t id)
{
    if (s->id_set[typ]) return; /* the first source wins */
    s->id_set[typ] = true;
    s->id[typ] = id;
    s->id_order[s->n_ids++] = (int)typ;
}

static void special_add(special_set *s, size_t typ, bool v)
{
    if (!s->add_set[typ]) s->add_order[s->n_add++] = (int)typ;
    s->add_set[typ] = true;
    s->add[typ] = v;
}

/* tokenizer_config.json's "<typ>_token": a string or {"content": ...}; NULL if none. */
static const char *tcfg_token(const hf_ctx *c, const char *typ)
{
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    json_t *e = c->tcfg ? json_object_get(c->tcfg, key) : NULL;
    if (json_is_object(e)) e = json_object_get(e, "content");
    return json_is_string(e) ? json_string_value(e) : NULL;
}

static const char *special_content(const json_t *proc_item)
{
    json_t *st = json_object_get(proc_item, "SpecialToken");
    return json_is_string(json_object_get(st, "id")) ? json_string_value(json_object_get(st, "id"))
                                                     : NULL;
}

/* SpecialVocab._try_load_from_tokenizer_json: the post-processor's say on add_bos /
 * add_eos (RobertaProcessing, or a TemplateProcessing whose single template starts or
 * ends with a special token), then tokenizer_config.json's tokens and add_* flags,
 * then config.json's *_token_id. (The EOT/EOM fallback for a template ending in
 * another token than eos is not reproduced.) */
static int special_tokens(hf_ctx *c, json_t *added, size_t n_vocab, special_set *s)
{
    memset(s, 0, sizeof *s);
    const char *bos = tcfg_token(c, "bos"), *eos = tcfg_token(c, "eos");
    const char *cls = tcfg_token(c, "cls"), *sep = tcfg_token(c, "sep");
    if (!bos && cls && c->tcfg) bos = cls;
    if (!eos && sep && c->tcfg) eos = sep;
    json_t *pp = json_object_get(c->tok, "post_processor");
    if (json_is_object(pp)) {
        json_t *procs = json_object_get(pp, "processors");
        size_t np = json_is_array(procs) ? json_array_size(procs) : 1;
        for (size_t i = 0; i < np; i++) {
            json_t *pr = json_is_array(procs) ? json_array_get(procs, i) : pp;
            const char *ty = json_string_value(json_object_get(pr, "type"));
            if (!ty) continue;
            if (!strcmp(ty, "RobertaProcessing")) {
                special_add(s, 0, true);
                special_add(s, 1, true);
                special_add(s, 3, true);
            } else if (!strcmp(ty, "TemplateProcessing")) {
                json_t *single = json_object_get(pr, "single");
                size_t ns = json_is_array(single) ? json_array_size(single) : 0;
                if (ns > 1) {
                    const char *first = special_content(json_array_get(single, 0));
                    const char *last = special_content(json_array_get(single, ns - 1));
                    if (first) {
                        if (!c->tcfg) bos = first;
                        special_add(s, 0,
                                    (bos && !strcmp(first, bos)) || (cls && !strcmp(first, cls)));
                    }
                    if (last) {
                        if (!c->tcfg) eos = last;
                        special_add(s, 1, eos && !strcmp(last, eos));
                    }
                }
            }
        }
    }
    for (size_t k = 0; c->tcfg && k < N_SPECIAL; k++) {
        char key[32];
        snprintf(key, sizeof key, "add_%s_token", specials[k].typ);
        json_t *a = json_object_get(c->tcfg, key);
        if (json_is_boolean(a)) special_add(s, k, json_is_true(a));
        const char *content = k == 0 ? bos : k == 1 ? eos : tcfg_token(c, specials[k].typ);
        if (!content) continue;
        size_t i;
        json_t *at;
        json_array_foreach(added, i, at)
        {
            const char *ac = json_string_value(json_object_get(at, "content"));
            json_t *id = json_object_get(at, "id");
            if (ac && !strcmp(ac, content)) {
                if (json_is_integer(id)) special_id(s, k, json_integer_value(id));
                break;
            }
        }
    }
    for (size_t k = 0; k < N_SPECIAL; k++) {
        char key[32];
        snprintf(key, sizeof key, "%s_token_id", specials[k].typ);
        json_t *id = json_object_get(c->cfg, key);
        if (json_is_integer(id)) special_id(s, k, json_integer_value(id));
    }
    for (int i = 0; i < s->n_ids; i++) {
        int k = s->id_order[i];
        if (!specials[k].id_key) continue; /* cls: not written */
        if (s->id[k] < 0 || (uint64_t)s->id[k] >= n_vocab)
            return core_err_set(MLV_EINVAL,
                                "convert: %s token id %" PRId64 " is outside the "
                                "vocabulary of %zu",
                                specials[k].typ, s->id[k], n_vocab);
    }
    return 0;
}

static bool looks_special(const char *t)
{
    size_t n = strlen(t);
    if (!strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") ||
        !strcmp(t, "[@BOS@]"))
        return true;
    if (n >= 4 && !strncmp(t, "<|", 2) && !strcmp(t + n - 2, "|>")) return true;
    /* "<｜" ... "｜>" (fullwidth bar, deepseek) */
    if (n >= 8 && !strncmp(t, "<\xef\xbd\x9c", 4) && !strcmp(t + n - 4, "\xef\xbd\x9c>"))
        return true;
    return n >= 8 && !strncmp(t, "<unused", 7) && t[n - 1] == '>';
}

/* A user-defined token with "▁" (U+2581) written as a space, as llama.cpp does. */
static char *lower_blocks_to_spaces(const char *t)
{
    size_t n = strlen(t), o = 0;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(t + i, "\xe2\x96\x81", 3)) {
            r[o++] = ' ';
            i += 3;
        } else {
            r[o++] = t[i++];
        }
    }
    r[o] = 0;
    return r;
}

/* Which pre-tokenizer llama.cpp's hash would name (see the file comment). */
static int detect_pre(const hf_ctx *c, const char **out)
{
    static const char *llama3_re[] = {
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
        "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    };
    if (c->arch == ARCH_QWEN2) {
        *out = "qwen2";
        return 0;
    }
    json_t *pt = json_object_get(c->tok, "pre_tokenizer");
    json_t *seq = json_object_get(pt, "pretokenizers");
    size_t n = json_is_array(seq) ? json_array_size(seq) : pt && !json_is_null(pt) ? 1 : 0;
    bool digits = false, bytelevel = false, bl_regex = false, llama3 = false;
    int other = 0, splits = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_is_array(seq) ? json_array_get(seq, i) : pt;
        const char *ty = json_string_value(json_object_get(p, "type"));
        if (!ty) {
            other++;
        } else if (!strcmp(ty, "Digits") && json_is_true(json_object_get(p, "individual_digits"))) {
            digits = true;
        } else if (!strcmp(ty, "ByteLevel")) {
            json_t *ur = json_object_get(p, "use_regex");
            bytelevel = true;
            bl_regex = !ur || json_is_true(ur);
        } else if (!strcmp(ty, "Split")) {
            const char *re =
                json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
            splits++;
            for (size_t k = 0; re && k < 2; k++)
                llama3 = llama3 || !strcmp(re, llama3_re[k]);
        } else {
            other++;
        }
    }
    if (!other && bytelevel) {
        if (splits == 1 && llama3 && !digits && !bl_regex)
            *out = "llama-bpe";
        else if (!splits && digits && bl_regex)
            *out = "smollm";
        else if (!splits && !digits && bl_regex)
            *out = "gpt2";
        else
            *out = NULL;
        if (*out) return 0;
    }
    return core_err_set(MLV_EUNSUPPORTED,
                        "convert: tokenizer.json: pre-tokenizer not recognised (Llama-3 Split + "
                        "ByteLevel, Digits + ByteLevel and ByteLevel are)");
}

/* tokenizer.json (byte-level BPE) -> tokenizer.ggml.* and the chat template. */
static int add_tokenizer(hf_ctx *c, eng_gguf_writer *w)
{
    const char **tokens = NULL, **merges = NULL;
    int32_t *types = NULL;
    int rc;
    json_t *model = json_object_get(c->tok, "model");
    json_t *vocab = json_object_get(model, "vocab"), *mj = json_object_get(model, "merges");
    json_t *added = json_object_get(c->tok, "added_tokens");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype || strcmp(mtype, "BPE") || !json_is_object(vocab))
        return core_err_set(MLV_EUNSUPPORTED, "convert: tokenizer.json: only a BPE model with a "
                                              "vocab object is supported");
    if (added && !json_is_array(added))
        return core_err_set(MLV_EINVAL, "convert: tokenizer.json: added_tokens is not a list");
    if (!added)
        added = json_array(); /* an empty list for the loops below */
    else
        json_incref(added);
    if (!added) return hf_oom();

    /* the vocabulary size: config's vocab_size, else the largest id + 1 */
    uint64_t n_vocab = c->n_vocab, max_id = 0;
    bool any = false;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (json_int_t)INT32_MAX) {
            rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: token '%.80s' has a bad id", k);
            goto done;
        }
        if ((uint64_t)json_integer_value(v) > max_id) max_id = (uint64_t)json_integer_value(v);
        any = true;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        json_t *id = json_object_get(v, "id"), *ct = json_object_get(v, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)INT32_MAX || !json_is_string(ct)) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: added token %zu needs an id "
                              "and a content",
                              i);
            goto done;
        }
        if ((uint64_t)json_integer_value(id) > max_id) max_id = (uint64_t)json_integer_value(id);
        any = true;
    }
    if (!any) {
        rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: empty vocabulary");
        goto done;
    }
    if (!n_vocab) n_vocab = max_id + 1;
    if (max_id >= n_vocab) {
        rc = core_err_set(MLV_EINVAL,
                          "convert: tokenizer.json: token id %" PRIu64 " is not below "
                          "vocab_size %" PRIu64,
                          max_id, n_vocab);
        goto done;
    }
    if (!(tokens = calloc(n_vocab, sizeof *tokens)) || !(types = calloc(n_vocab, sizeof *types))) {
        rc = hf_oom();
        goto done;
    }
    json_object_foreach(vocab, k, v)
    {
        tokens[json_integer_value(v)] = k; /* a later duplicate id wins, as in Python */
        types[json_integer_value(v)] = TOK_NORMAL;
    }
    json_array_foreach(added, i, v)
    {
        json_t *ct = json_object_get(v, "content");
        size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
        const char *t = json_cstr(ct);
        if (!t) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: added token %zu contains a "
                              "NUL byte",
                              id);
            goto done;
        }
        if (json_is_true(json_object_get(v, "special")) || looks_special(t)) {
            tokens[id] = t;
            types[id] = TOK_CONTROL;
        } else {
            if (!(tokens[id] = hf_own(c, lower_blocks_to_spaces(t)))) {
                rc = hf_oom();
                goto done;
            }
            types[id] = TOK_USER_DEFINED;
        }
    }
    for (uint64_t id = 0; id < n_vocab; id++) {
        if (tokens[id]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%" PRIu64 "]", id);
        if (!(tokens[id] = hf_own(c, strdup(pad)))) {
            rc = hf_oom();
            goto done;
        }
        types[id] = TOK_UNUSED;
    }

    /* merges: "a b" strings, or ["a", "b"] pairs (transformers >= 4.45) */
    size_t n_merges = json_is_array(mj) ? json_array_size(mj) : 0;
    if (mj && !json_is_array(mj)) {
        rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: model.merges is not a list");
        goto done;
    }
    if (!(merges = calloc(n_merges ? n_merges : 1, sizeof *merges))) {
        rc = hf_oom();
        goto done;
    }
    json_array_foreach(mj, i, v)
    {
        if (json_is_string(v) && (merges[i] = json_cstr(v))) continue;
        const char *a = json_cstr(json_array_get(v, 0));
        const char *b = json_cstr(json_array_get(v, 1));
        if (!json_is_array(v) || json_array_size(v) != 2 || !a || !b) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: merge %zu is neither \"a b\" "
                              "nor [\"a\", \"b\"]",
                              i);
            goto done;
        }
        core_buf m = {0};
        for (const char *part = a;; part = b) {
            for (const char *q = part; *q; q++) {
                if (*q == ' ')
                    core_buf_append(&m, "\xc4\xa0", 2); /* chr(ord(' ') + 256) */
                else
                    core_buf_append(&m, q, 1);
            }
            if (part == b) break;
            core_buf_append(&m, " ", 1);
        }
        if (!(merges[i] = hf_own(c, core_buf_take(&m)))) {
            rc = hf_oom();
            goto done;
        }
    }

    const char *pre;
    if ((rc = detect_pre(c, &pre))) goto done;
    special_set ss;
    if ((rc = special_tokens(c, added, (size_t)n_vocab, &ss))) goto done;

    if ((rc = eng_gguf_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = eng_gguf_set_str(w, "tokenizer.ggml.pre", pre)) ||
        (rc = eng_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (size_t)n_vocab)) ||
        (rc = eng_gguf_set_arr_data(w, "tokenizer.ggml.token_type", ENG_GGUF_I32, types,
                                    (size_t)n_vocab)))
        goto done;
    if (n_merges && (rc = eng_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, n_merges)))
        goto done;
    for (int s = 0; s < ss.n_ids; s++) {
        int t = ss.id_order[s];
        if (specials[t].id_key &&
            (rc = eng_gguf_set_u32(w, specials[t].id_key, (uint32_t)ss.id[t])))
            goto done;
    }
    for (int s = 0; s < ss.n_add; s++) {
        int t = ss.add_order[s];
        if (specials[t].add_key && (rc = eng_gguf_set_bool(w, specials[t].add_key, ss.add[t])))
            goto done;
    }
    json_t *ct = c->tcfg ? json_object_get(c->tcfg, "chat_template") : NULL;
    if (json_is_string(ct)) {
        if (!json_cstr(ct)) {
            rc = core_err_set(MLV_EINVAL, "convert: tokenizer_config.json: chat_template "
                                          "contains a NUL byte");
            goto done;
        }
        rc = eng_gguf_set_str(w, "tokenizer.chat_template", json_string_value(ct));
    } else if (json_is_array(ct)) {
        /* named templates: tokenizer.chat_template.NAME, the names in
         * tokenizer.chat_templates, "default" as tokenizer.chat_template */
        const char *names[64], *def = NULL;
        size_t nn = 0;
        json_array_foreach(ct, i, v)
        {
            const char *nm = json_cstr(json_object_get(v, "name"));
            const char *tp = json_cstr(json_object_get(v, "template"));
            if (!nm || !*nm || !tp) continue;
            char key[160], clean[100];
            size_t l = 0;
            for (const char *q = nm; *q && l < sizeof clean - 1; q++)
                clean[l++] =
                    (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9')
                        ? *q
                        : '_';
            clean[l] = 0;
            if (!strcmp(clean, "default")) {
                def = tp;
                continue;
            }
            snprintf(key, sizeof key, "tokenizer.chat_template.%s", clean);
            if ((rc = eng_gguf_set_str(w, key, tp))) goto done;
            if (nn < 64 && !(names[nn] = hf_own(c, strdup(clean)))) {
                rc = hf_oom();
                goto done;
            }
            if (nn < 64) nn++;
        }
        if (nn && (rc = eng_gguf_set_arr_str(w, "tokenizer.chat_templates", names, nn))) goto done;
        if (def) rc = eng_gguf_set_str(w, "tokenizer.chat_template", def);
    }
done:
    json_decref(added);
    free(tokens);
    free(types);
    free(merges);
    return rc;
}

/* --------------------------------------------------------------- assembly ---- */

static int set_arch_u32(eng_gguf_writer *w, const hf_ctx *c, const char *key, uint32_t v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", c->arch_name, key);
    return eng_gguf_set_u32(w, k, v);
}

static int set_arch_f32(eng_gguf_writer *w, const hf_ctx *c, const char *key, float v)
{
    char k[128];
    snprintf(k, sizeof k, "%s.%s", c->arch_name, key);
    return eng_gguf_set_f32(w, k, v);
}

/* general.* and the hyper-parameters, in llama.cpp's order. */
static int add_hparams(hf_ctx *c, eng_gguf_writer *w, const char *name, uint32_t ftype)
{
    int rc;
    if ((rc = eng_gguf_set_str(w, "general.architecture", c->arch_name)) ||
        (rc = eng_gguf_set_str(w, "general.type", "model")) ||
        (rc = eng_gguf_set_str(w, "general.name", name)) ||
        (rc = set_arch_u32(w, c, "block_count", c->n_layer)))
        return rc;
    if (c->has_n_ctx && (rc = set_arch_u32(w, c, "context_length", c->n_ctx))) return rc;
    if ((rc = set_arch_u32(w, c, "embedding_length", c->n_embd))) return rc;
    if (c->has_n_ff && (rc = set_arch_u32(w, c, "feed_forward_length", c->n_ff))) return rc;
    if ((rc = set_arch_u32(w, c, "attention.head_count", c->n_head))) return rc;
    if (c->has_head_kv && (rc = set_arch_u32(w, c, "attention.head_count_kv", c->n_head_kv)))
        return rc;
    if (c->has_theta && (rc = set_arch_f32(w, c, "rope.freq_base", c->rope_theta))) return rc;
    if (c->has_eps && (rc = set_arch_f32(w, c, "attention.layer_norm_rms_epsilon", c->rms_eps)))
        return rc;
    if (c->has_head_dim && ((rc = set_arch_u32(w, c, "attention.key_length", c->head_dim)) ||
                            (rc = set_arch_u32(w, c, "attention.value_length", c->head_dim))))
        return rc;
    if ((rc = eng_gguf_set_u32(w, "general.file_type", ftype))) return rc;
    if (c->arch == ARCH_LLAMA) {
        uint32_t rot = c->has_head_dim ? c->head_dim : c->n_embd / c->n_head;
        if ((rc = set_arch_u32(w, c, "vocab_size", c->n_vocab)) ||
            (rc = set_arch_u32(w, c, "rope.dimension_count", rot)))
            return rc;
        if (c->rope_linear) {
            char k[128];
            snprintf(k, sizeof k, "%s.rope.scaling.type", c->arch_name);
            if ((rc = eng_gguf_set_str(w, k, "linear")) ||
                (rc = set_arch_f32(w, c, "rope.scaling.factor", c->rope_linear)))
                return rc;
        }
    }
    return eng_gguf_set_u32(w, "general.quantization_version", 2);
}

/* The model's name: config.json's _name_or_path (its last component), else `fallback`
 * (the folder's name), else the architecture. */
static void model_name(const hf_ctx *c, const char *fallback, char out[256])
{
    const char *n = json_cstr(json_object_get(c->cfg, "_name_or_path"));
    if (n) {
        size_t l = strlen(n);
        while (l && n[l - 1] == '/')
            l--;
        const char *s = n + l;
        while (s > n && s[-1] != '/')
            s--;
        if (s < n + l && (size_t)(n + l - s) < 256) {
            snprintf(out, 256, "%.*s", (int)(n + l - s), s);
            return;
        }
    }
    snprintf(out, 256, "%s", fallback && *fallback ? fallback : c->arch_name);
}

static void hf_ctx_clear(hf_ctx *c)
{
    json_decref(c->cfg);
    json_decref(c->tok);
    json_decref(c->tcfg);
    for (size_t i = 0; i < c->n_t; i++)
        free(c->t[i].name);
    free(c->t);
    for (size_t i = 0; i < c->n_owned; i++)
        free(c->owned[i]);
    free(c->owned);
}

/* The whole HF conversion; writes to out_path, or into *out / *len when out_path is
 * NULL. fallback_name: the folder's name, for general.name. */
static int convert_hf(const eng_hf_file *files, size_t n, int outtype, const char *out_path,
                      void **out, size_t *len, const char *fallback_name, bool mapped)
{
    hf_ctx c;
    memset(&c, 0, sizeof c);
    c.files = files;
    c.n_files = n;
    eng_gguf_writer *w = NULL;
    hf_job *jobs = NULL;
    float *scratch = NULL;
    char(*gnames)[64] = NULL;
    int rc = 0;
    if (outtype != ENG_OUT_AUTO && !outtype_valid(outtype))
        return core_err_set(MLV_EINVAL, "convert: out-type %d is not auto, F32, F16, BF16 or Q8_0",
                            outtype);
    if (n > HF_MAX_FILES) return core_err_set(MLV_EINVAL, "convert: %zu files is too many", n);
    for (size_t i = 0; i < n; i++) {
        if (!files[i].name || !*files[i].name || (files[i].len && !files[i].data))
            return core_err_set(MLV_EINVAL, "convert: file %zu has no name or no data", i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(files[i].name, files[j].name))
                return core_err_set(MLV_EINVAL, "convert: file '%.120s' given twice",
                                    files[i].name);
    }
    const eng_hf_file *f;
    if (!(f = hf_find(&c, "config.json"))) {
        rc = core_err_set(MLV_EINVAL, "convert: no config.json");
        goto done;
    }
    if ((rc = hf_json(f, &c.cfg)) || (rc = read_config(&c))) goto done;
    if (!(f = hf_find(&c, "tokenizer.json"))) {
        rc = core_err_set(MLV_EINVAL, "convert: no tokenizer.json (only Hugging Face fast "
                                      "tokenizers are converted)");
        goto done;
    }
    if ((rc = hf_json(f, &c.tok))) goto done;
    if ((f = hf_find(&c, "tokenizer_config.json")) && (rc = hf_json(f, &c.tcfg))) goto done;
    if ((rc = st_load_all(&c))) goto done;

    /* names, types and shapes of every output tensor, checked before anything is written */
    if (!(jobs = calloc(c.n_t ? c.n_t : 1, sizeof *jobs))) {
        rc = hf_oom();
        goto done;
    }
    if ((rc = eng_gguf_writer_new(&w))) goto done;
    uint64_t max_row = 1;
    for (size_t i = 0; i < c.n_t; i++)
        if (c.t[i].shape[c.t[i].n_dims - 1] > max_row) max_row = c.t[i].shape[c.t[i].n_dims - 1];
    if (max_row > SIZE_MAX / 2 / sizeof(float) ||
        !(scratch = malloc(2 * (size_t)max_row * sizeof(float)))) {
        rc = hf_oom();
        goto done;
    }
    uint32_t ftype = outtype == ENG_OUT_AUTO ? FTYPE_ALL_F32 : file_type_of(outtype);
    bool ftype_seen = outtype != ENG_OUT_AUTO;
    /* the KV pairs come first in the file but general.file_type depends on the tensors:
     * map the tensors first, add them after the metadata */
    if (!(gnames = calloc(c.n_t ? c.n_t : 1, sizeof *gnames))) {
        rc = hf_oom();
        goto done;
    }
    size_t nj = 0;
    for (size_t i = 0; i < c.n_t; i++) {
        const st_tensor *t = &c.t[i];
        int perm;
        int m = map_name(&c, t->name, gnames[nj], &perm);
        if (m < 0) {
            rc = m;
            goto done;
        }
        if (m == 1) continue;
        hf_job *j = &jobs[nj];
        j->src = t;
        j->row_elems = t->shape[t->n_dims - 1];
        j->n_rows = t->n_elems / j->row_elems;
        int want = outtype == ENG_OUT_AUTO ? t->dtype : outtype;
        j->out_type = weight_type(gnames[nj], t->n_dims, j->row_elems, want);
        j->out_row = row_bytes(j->out_type, j->row_elems);
        j->a = scratch;
        j->b = scratch + max_row;
        j->release = mapped;
        if (perm) {
            uint32_t heads = perm == 2 && c.has_head_kv ? c.n_head_kv : c.n_head;
            uint64_t axis = t->shape[0];
            if (t->n_dims > 2 || axis % (2ull * heads)) {
                rc = core_err_set(MLV_EINVAL,
                                  "convert: tensor '%.120s': %" PRIu64 " rows cannot "
                                  "be split into %" PRIu32 " rotary heads",
                                  t->name, axis, heads);
                goto done;
            }
            j->perm_heads = heads;
        }
        if (!ftype_seen && t->n_dims >= 2) {
            ftype = file_type_of(j->out_type);
            ftype_seen = true;
        }
        nj++;
    }
    char name[256];
    model_name(&c, fallback_name, name);
    if ((rc = add_hparams(&c, w, name, ftype)) || (rc = add_tokenizer(&c, w))) goto done;
    for (size_t i = 0; i < nj; i++) {
        const st_tensor *t = jobs[i].src;
        uint64_t dims[4];
        for (uint32_t d = 0; d < t->n_dims; d++)
            dims[d] = t->shape[t->n_dims - 1 - d];
        if ((rc = eng_gguf_add_tensor_fill(w, gnames[i], jobs[i].out_type, t->n_dims, dims, hf_fill,
                                           &jobs[i]))) {
            core_err_wrap("convert: tensor '%.120s': ", t->name);
            goto done;
        }
    }
    rc = out_path ? eng_gguf_write_file(w, out_path) : eng_gguf_write_mem(w, out, len);
done:
    eng_gguf_writer_free(w);
    free(gnames);
    free(jobs);
    free(scratch);
    hf_ctx_clear(&c);
    return rc;
}

int eng_convert_hf_mem(const eng_hf_file *files, size_t n, int outtype, void **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (n && !files) return core_err_set(MLV_EINVAL, "convert: no files");
    return convert_hf(files, n, outtype, NULL, out, len, NULL, false);
}

/* The files of the folder that the conversion reads. */
static bool hf_wanted(const char *name)
{
    return !strcmp(name, "config.json") || !strcmp(name, "tokenizer.json") ||
           !strcmp(name, "tokenizer_config.json") ||
           !strcmp(name, "model.safetensors.index.json") ||
           (strlen(name) > 12 && ends_with(name, ".safetensors"));
}

int eng_convert_hf_dir(const char *dir, int outtype, const char *out_path)
{
    DIR *d = opendir(dir);
    if (!d)
        return core_err_set(errno == ENOENT    ? MLV_ENOTFOUND
                            : errno == ENOTDIR ? MLV_EINVAL
                                               : MLV_EIO,
                            "convert: %s: %s", dir, strerror(errno));
    eng_hf_file *files = NULL;
    mapped *maps = NULL;
    char **names = NULL;
    size_t nf = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!hf_wanted(e->d_name)) continue;
        if (nf == HF_MAX_FILES) {
            rc = core_err_set(MLV_EINVAL, "convert: %s: more than %d model files", dir,
                              HF_MAX_FILES);
            goto done;
        }
        if (nf == cap) {
            size_t nc = cap ? cap * 2 : 16;
            eng_hf_file *fx = realloc(files, nc * sizeof *fx);
            if (fx) files = fx;
            mapped *mx = fx ? realloc(maps, nc * sizeof *mx) : NULL;
            if (mx) maps = mx;
            char **nx = mx ? realloc(names, nc * sizeof *nx) : NULL;
            if (!nx) {
                rc = hf_oom();
                goto done;
            }
            names = nx;
            cap = nc;
        }
        char *path = core_path_join(dir, e->d_name);
        if (!path || !(names[nf] = strdup(e->d_name))) {
            free(path);
            rc = hf_oom();
            goto done;
        }
        rc = map_file(path, &maps[nf]);
        free(path);
        if (rc) {
            free(names[nf]);
            goto done;
        }
        files[nf] = (eng_hf_file){names[nf], maps[nf].p, maps[nf].len};
        nf++;
    }
    {
        char base[4096];
        snprintf(base, sizeof base, "%s", dir);
        size_t l = strlen(base);
        while (l > 1 && base[l - 1] == '/')
            base[--l] = 0;
        const char *b = strrchr(base, '/');
        rc = convert_hf(files, nf, outtype, out_path, NULL, NULL, b ? b + 1 : base, true);
        if (rc) core_err_wrap("%s: ", dir);
    }
done:
    closedir(d);
    for (size_t i = 0; i < nf; i++) {
        unmap_file(&maps[i]);
        free(names[i]);
    }
    free(files);
    free(maps);
    free(names);
    return rc;
}
