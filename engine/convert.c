/* engine/convert.c: model conversion, as llama.cpp's convert_hf_to_gguf.py does it —
 * Hugging Face folders (LlamaForCausalLM, Qwen2ForCausalLM; config.json, tokenizer.json,
 * tokenizer_config.json, one or more *.safetensors of F32/F16/BF16) to GGUF, and GGUF
 * to GGUF with another weight type (F32, F16, BF16, Q8_0). Bytes are laid out by
 * engine/gguf_write.c, weights are produced tensor by tensor (a few rows at a time)
 * while the file is written, so memory stays bounded by a row, not the model.
 * safetensors headers are validated by engine/safetensors.c, the tokenizer's metadata
 * written by engine/convert_tokenizer.c. Not a quantizer beyond Q8_0 (quantize/ owns
 * the k-quants) and not a loader.
 *
 * Where we follow llama.cpp (convert_hf_to_gguf.py):
 *   - tensor names model.layers.N.self_attn.q_proj.weight -> blk.N.attn_q.weight, ...;
 *     rotary_emb.inv_freq dropped; lm_head.weight -> output.weight (dropped when
 *     tie_word_embeddings is set: the model then reads token_embd.weight);
 *   - llama's q_proj/k_proj rows (weights and biases) permuted per head so that
 *     ggml's "normal" rotary pairs (x[2i], x[2i+1]) see what HF's rotate_half pairs
 *     (x[i], x[i + d/2]) saw: row h*hd + 2i + k <- row h*hd + k*hd/2 + i;
 *   - out-types: 1-D tensors and *_norm.weight stay F32; others become the out-type,
 *     except Q8_0 rows that are not a multiple of 32, which fall back to F16; the
 *     Q8_0 blocks as ggml's quantize_row_q8_0_ref; general.file_type as llama.cpp's
 *     LlamaFileType (ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32).
 * Where we differ (see each place): ENG_OUT_AUTO keeps each weight's own dtype
 * (llama.cpp's "auto" picks one type for the file); general.name is config.json's
 * _name_or_path (last component), else the folder's name, with no further heuristics. */
#include "engine.h"
#include "engine/bytes.h"
#include "engine/convert_internal.h"
#include "engine/safetensors.h"

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
#define HF_MAX_FILES 4096

enum { FTYPE_ALL_F32 = 0, FTYPE_MOSTLY_F16 = 1, FTYPE_MOSTLY_Q8_0 = 7, FTYPE_MOSTLY_BF16 = 32 };

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

/* roundf (halves away from zero) for |v| < 2^22 without a libm call: adding the float
 * just below 0.5 and truncating gives the same integer for every such v. */
static inline int round_away(float v)
{
    return (int)(v + copysignf(0.49999997f, v));
}

/* ggml's quantize_row_q8_0_ref, block by block: d = amax/127 (stored as half),
 * q = roundf(x/d). x: (k,) floats, k a multiple of 32; y: k/32 blocks of 34 bytes.
 * Here rather than in quantize/ because the converter writes Q8_0 too, and the
 * engine does not depend on quantize/ (quantize/blocks.c calls it). */
static void quantize_row_q8_0(const float *x, unsigned char *y, int64_t k)
{
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); /* ggml's MAX() */
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        wr16(y, eng_fp32_to_fp16(d));
        for (int j = 0; j < QK8_0; j++) {
            const float x0 = x[j] * id;                                      /* |x0| <= 127 */
            y[2 + j] = x0 == x0 ? (unsigned char)(int8_t)round_away(x0) : 0; /* NaN: 0, not UB */
        }
    }
}

int eng_encode_row(int type, const float *x, void *out, int64_t n)
{
    unsigned char *dst = out;
    if (n < 0 || (type == ENG_Q8_0 && n % QK8_0) ||
        (type != ENG_F32 && type != ENG_F16 && type != ENG_BF16 && type != ENG_Q8_0))
        return core_err_set(MLV_EINVAL, "encode: %lld values cannot be written as %s", (long long)n,
                            eng_type_name(type) ? eng_type_name(type) : "that type");
    switch (type) {
    case ENG_F16:
        for (int64_t i = 0; i < n; i++)
            wr16(dst + 2 * i, eng_fp32_to_fp16(x[i]));
        break;
    case ENG_BF16:
        for (int64_t i = 0; i < n; i++)
            wr16(dst + 2 * i, fp32_to_bf16(x[i]));
        break;
    case ENG_Q8_0: quantize_row_q8_0(x, dst, n); break;
    default: /* F32 */
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            for (int b = 0; b < 4; b++)
                dst[4 * i + b] = (unsigned char)(u >> (8 * b));
        }
        break;
    }
    return 0;
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
            eng_encode_row(j->out_type, j->scratch, d + r * j->out_row, (int64_t)j->row_elems);
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
} hf_ctx;

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

/* What conversion reads: F32, F16 and BF16 weights of 1 to 4 non-empty dimensions;
 * __metadata__ is ignored, whatever it holds. */
static const eng_st_rules convert_rules = {
    .prefix = "convert: ",
    .dtypes = 1u << ENG_ST_F32 | 1u << ENG_ST_F16 | 1u << ENG_ST_BF16,
    .min_dims = 1,
    .max_dims = 4,
    .positive_dims = true,
};

/* One .safetensors file (validated by engine/safetensors.c): its tensors are added to
 * c->t, their data borrowed from the file's bytes. */
static int st_parse(hf_ctx *c, const eng_hf_file *f)
{
    eng_st_header h;
    int rc = eng_st_parse(&h, f->data, f->len, f->len, f->name, &convert_rules);
    if (rc) return rc;
    const unsigned char *data = (const unsigned char *)f->data + h.data_offset;
    for (size_t i = 0; i < h.n; i++) {
        const eng_st_tensor *s = &h.t[i];
        st_tensor t = {0};
        t.dtype = s->dtype == ENG_ST_F32 ? ENG_F32 : s->dtype == ENG_ST_F16 ? ENG_F16 : ENG_BF16;
        t.n_dims = s->n_dims;
        memcpy(t.shape, s->shape, s->n_dims * sizeof *s->shape);
        t.n_elems = s->n_elems;
        t.data = data + s->offset;
        t.file = f->name;
        if (c->n_t == c->t_cap) {
            size_t nc = c->t_cap ? c->t_cap * 2 : 256;
            st_tensor *x = realloc(c->t, nc * sizeof *x);
            if (!x) {
                rc = eng_convert_oom();
                goto done;
            }
            c->t = x;
            c->t_cap = nc;
        }
        if (!(t.name = strdup(s->name))) {
            rc = eng_convert_oom();
            goto done;
        }
        c->t[c->n_t++] = t;
    }
done:
    eng_st_header_clear(&h);
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
    if (!sts) return eng_convert_oom();
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
        rc = eng_convert_oom();
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
        eng_encode_row(j->out_type, j->b, d, (int64_t)j->row_elems);
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
        eng_encode_row(j->out_type, j->a, d, (int64_t)j->row_elems);
    }
    /* rows are read once; in order unless permuted (then drop the whole tensor at its end) */
    if (j->release && !j->perm_heads) release_pages(s->data + row * in_row, n * in_row);
    if (j->release && j->perm_heads && row + n == j->n_rows)
        release_pages(s->data, j->n_rows * in_row);
    return 0;
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
    const char *n = eng_json_cstr(json_object_get(c->cfg, "_name_or_path"));
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
        rc = eng_convert_oom();
        goto done;
    }
    if ((rc = eng_gguf_writer_new(&w))) goto done;
    uint64_t max_row = 1;
    for (size_t i = 0; i < c.n_t; i++)
        if (c.t[i].shape[c.t[i].n_dims - 1] > max_row) max_row = c.t[i].shape[c.t[i].n_dims - 1];
    if (max_row > SIZE_MAX / 2 / sizeof(float) ||
        !(scratch = malloc(2 * (size_t)max_row * sizeof(float)))) {
        rc = eng_convert_oom();
        goto done;
    }
    uint32_t ftype = outtype == ENG_OUT_AUTO ? FTYPE_ALL_F32 : file_type_of(outtype);
    bool ftype_seen = outtype != ENG_OUT_AUTO;
    /* the KV pairs come first in the file but general.file_type depends on the tensors:
     * map the tensors first, add them after the metadata */
    if (!(gnames = calloc(c.n_t ? c.n_t : 1, sizeof *gnames))) {
        rc = eng_convert_oom();
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
    eng_hf_tokenizer tk = {c.tok, c.tcfg, c.cfg, c.arch_name, c.n_vocab};
    if ((rc = add_hparams(&c, w, name, ftype)) || (rc = eng_convert_tokenizer(w, &tk))) goto done;
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
                rc = eng_convert_oom();
                goto done;
            }
            names = nx;
            cap = nc;
        }
        char *path = core_path_join(dir, e->d_name);
        if (!path || !(names[nf] = strdup(e->d_name))) {
            free(path);
            rc = eng_convert_oom();
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
