/* engine/gguf.c: the GGUF reader — header, metadata (KV pairs) and tensor infos of a
 * GGUF v3 file (v2 accepted; same layout), little-endian, as llama.cpp writes it
 * (ggml/docs/gguf.md; type ids and block layouts as in ggml.h and ggml.c's type
 * traits). Not a writer and not a tensor loader: tensor data is never read here;
 * callers map or decrypt the file and use data_offset + tensor offset.
 *
 * Everything from the file is untrusted. Counts and lengths are checked against the
 * bytes that are actually left before anything is read or allocated, and storage
 * grows only with bytes really consumed, so a hostile header cannot make us allocate
 * more than about twice its own size. Parsed values live in one arena per handle;
 * getters hand out borrowed pointers into it. */
#include "engine.h"
#include "engine/gguf_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_KEY (1u << 20)       /* bytes in a key */
#define GGUF_MAX_META (1024ull << 20) /* bytes of parsed metadata in all */
#define GGUF_WINDOW (1u << 20)        /* pread window when reading a file */

/* ------------------------------------------------------------------ types ---- */

static const struct {
    int id;
    const char *name;
    size_t blck, bytes;
} type_table[] = {
    {ENG_F32, "F32", 1, 4},       {ENG_F16, "F16", 1, 2},       {ENG_Q4_0, "Q4_0", 32, 18},
    {ENG_Q4_1, "Q4_1", 32, 20},   {ENG_Q5_0, "Q5_0", 32, 22},   {ENG_Q5_1, "Q5_1", 32, 24},
    {ENG_Q8_0, "Q8_0", 32, 34},   {ENG_Q8_1, "Q8_1", 32, 36},   {ENG_Q2_K, "Q2_K", 256, 84},
    {ENG_Q3_K, "Q3_K", 256, 110}, {ENG_Q4_K, "Q4_K", 256, 144}, {ENG_Q5_K, "Q5_K", 256, 176},
    {ENG_Q6_K, "Q6_K", 256, 210}, {ENG_Q8_K, "Q8_K", 256, 292}, {ENG_BF16, "BF16", 1, 2},
};

const char *eng_type_name(int type)
{
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++)
        if (type_table[i].id == type) return type_table[i].name;
    return NULL;
}

int eng_type_block(int type, size_t *block_elems, size_t *block_bytes)
{
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++) {
        if (type_table[i].id != type) continue;
        if (block_elems) *block_elems = type_table[i].blck;
        if (block_bytes) *block_bytes = type_table[i].bytes;
        return 0;
    }
    if (block_elems) *block_elems = 0;
    if (block_bytes) *block_bytes = 0;
    return core_err_set(MLV_EINVAL, "unknown tensor type %d", type);
}

static bool vtype_known(uint32_t t)
{
    return t <= ENG_GGUF_F64;
}

/* ------------------------------------------------------------- the handle ---- */

typedef struct gkv {
    uint64_t key;  /* arena offset of the NUL-terminated key */
    uint32_t type; /* enum eng_gguf_vtype */
    uint32_t elem_type;
    uint64_t n;   /* string: byte length; array: element count */
    uint64_t off; /* string: arena offset of its bytes (NUL-terminated); array of
                   * scalars: host-layout elements; array of strings: u64 offsets */
    union {
        uint64_t u;
        int64_t i;
        double f;
    } v; /* scalars */
} gkv;

typedef struct gten {
    uint64_t name; /* arena offset */
    uint32_t type, n_dims;
    uint64_t dims[4];
    uint64_t n_elems, offset, size;
} gten;

struct eng_gguf {
    uint32_t version;
    size_t alignment;
    uint64_t data_offset, file_size;
    char *arena;
    size_t arena_len, arena_cap;
    gkv *kv;
    size_t n_kv, kv_cap;
    gten *t;
    size_t n_t, t_cap;
    uint32_t *kv_sorted; /* kv indices sorted by key, for lookup */
    uint32_t *t_sorted;  /* tensor indices sorted by name */
};

/* ------------------------------------------------------------- the reader ---- */

typedef struct rd {
    const unsigned char *mem; /* memory mode */
    int fd;                   /* file mode, else -1 */
    uint64_t size, pos;
    unsigned char *win; /* file mode: bytes [win_off, win_off + win_len) */
    size_t win_cap, win_len;
    uint64_t win_off;
    char ctx[200]; /* what is being read, for messages */
} rd;

typedef struct parser {
    rd r;
    eng_gguf *g;
} parser;

static int perr(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->r.ctx[0]) return core_err_set(MLV_EINVAL, "gguf: %s: %s", p->r.ctx, msg);
    return core_err_set(MLV_EINVAL, "gguf: %s", msg);
}

static uint64_t remaining(const parser *p)
{
    return p->r.size - p->r.pos;
}

/* Borrows the next n bytes (valid until the next take) and advances. */
static int take(parser *p, size_t n, const unsigned char **out)
{
    rd *r = &p->r;
    if (n > r->size - r->pos)
        return perr(p, "truncated: needs %zu bytes at offset %" PRIu64 ", file has %" PRIu64, n,
                    r->pos, r->size);
    if (r->fd < 0) {
        *out = r->mem + r->pos;
        r->pos += n;
        return 0;
    }
    if (r->pos < r->win_off || r->pos + n > r->win_off + r->win_len) {
        size_t want = n > GGUF_WINDOW ? n : GGUF_WINDOW;
        if (want > r->size - r->pos) want = (size_t)(r->size - r->pos);
        if (want > r->win_cap) {
            unsigned char *w = realloc(r->win, want);
            if (!w) return core_err_set(MLV_ENOMEM, "gguf: out of memory");
            r->win = w;
            r->win_cap = want;
        }
        size_t got = 0;
        while (got < want) {
            ssize_t k = pread(r->fd, r->win + got, want - got, (off_t)(r->pos + got));
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) return core_err_set(MLV_EIO, "gguf: read: %s", strerror(errno));
            if (k == 0) return perr(p, "file shrank while being read");
            got += (size_t)k;
        }
        r->win_off = r->pos;
        r->win_len = want;
    }
    *out = r->win + (r->pos - r->win_off);
    r->pos += n;
    return 0;
}

static int skip(parser *p, uint64_t n)
{
    if (n > remaining(p))
        return perr(p,
                    "truncated: needs %" PRIu64 " bytes at offset %" PRIu64 ", file has %" PRIu64,
                    n, p->r.pos, p->r.size);
    p->r.pos += n;
    return 0;
}

static uint64_t le(const unsigned char *b, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;)
        v = v << 8 | b[i];
    return v;
}

static int rd_u32(parser *p, uint32_t *v)
{
    const unsigned char *b;
    int rc = take(p, 4, &b);
    if (rc == 0) *v = (uint32_t)le(b, 4);
    return rc;
}

static int rd_u64(parser *p, uint64_t *v)
{
    const unsigned char *b;
    int rc = take(p, 8, &b);
    if (rc == 0) *v = le(b, 8);
    return rc;
}

/* ----------------------------------------------------------------- arena ---- */

static int arena_reserve(eng_gguf *g, size_t n)
{
    if (n > GGUF_MAX_META - g->arena_len)
        return core_err_set(MLV_EINVAL, "gguf: metadata larger than %llu MiB", GGUF_MAX_META >> 20);
    if (g->arena_len + n <= g->arena_cap) return 0;
    size_t cap = g->arena_cap ? g->arena_cap : 4096;
    while (cap < g->arena_len + n)
        cap *= 2;
    char *a = realloc(g->arena, cap);
    if (!a) return core_err_set(MLV_ENOMEM, "gguf: out of memory");
    g->arena = a;
    g->arena_cap = cap;
    return 0;
}

static int arena_align8(eng_gguf *g)
{
    size_t pad = (8 - (g->arena_len & 7)) & 7;
    int rc = arena_reserve(g, pad);
    if (rc) return rc;
    memset(g->arena + g->arena_len, 0, pad);
    g->arena_len += pad;
    return 0;
}

static int arena_put(eng_gguf *g, const void *src, size_t n)
{
    if (n == 0) return 0; /* src may be NULL (an empty array) */
    int rc = arena_reserve(g, n);
    if (rc) return rc;
    memcpy(g->arena + g->arena_len, src, n);
    g->arena_len += n;
    return 0;
}

/* Reads a GGUF string (u64 length, bytes) into the arena, NUL-terminated. */
static int read_str(parser *p, uint64_t max, bool no_nul, const char *what, uint64_t *off,
                    uint64_t *len)
{
    uint64_t n;
    int rc = rd_u64(p, &n);
    if (rc) return rc;
    if (n > remaining(p))
        return perr(p, "%s length %" PRIu64 " is past the end of the file", what, n);
    if (n > max)
        return perr(p, "%s length %" PRIu64 " exceeds the limit of %" PRIu64, what, n, max);
    const unsigned char *b;
    if ((rc = take(p, (size_t)n, &b))) return rc;
    if (no_nul && memchr(b, 0, (size_t)n)) return perr(p, "%s contains a NUL byte", what);
    if ((rc = arena_reserve(p->g, (size_t)n + 1))) return rc;
    *off = p->g->arena_len;
    memcpy(p->g->arena + p->g->arena_len, b, (size_t)n);
    p->g->arena[p->g->arena_len + n] = 0;
    p->g->arena_len += (size_t)n + 1;
    if (len) *len = n;
    return 0;
}

/* ------------------------------------------------------------ KV values ---- */

/* Decodes one scalar into the kv's value union. */
static void scalar_set(gkv *kv, uint32_t t, const unsigned char *b)
{
    uint64_t u = le(b, eng_gguf_vtype_size(t));
    switch (t) {
    case ENG_GGUF_I8: kv->v.i = (int8_t)u; break;
    case ENG_GGUF_I16: kv->v.i = (int16_t)u; break;
    case ENG_GGUF_I32: kv->v.i = (int32_t)u; break;
    case ENG_GGUF_I64: kv->v.i = (int64_t)u; break;
    case ENG_GGUF_F32: {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        kv->v.f = f;
        break;
    }
    case ENG_GGUF_F64: memcpy(&kv->v.f, &u, 8); break;
    default: kv->v.u = u; break;
    }
}

/* Appends one scalar to the arena in host layout. */
static int scalar_put(eng_gguf *g, uint32_t t, const unsigned char *b)
{
    size_t sz = eng_gguf_vtype_size(t);
    uint64_t u = le(b, sz);
    unsigned char tmp[8];
    switch (sz) {
    case 1: tmp[0] = (unsigned char)u; break;
    case 2: {
        uint16_t x = (uint16_t)u;
        memcpy(tmp, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)u;
        memcpy(tmp, &x, 4);
        break;
    }
    default: memcpy(tmp, &u, 8); break;
    }
    return arena_put(g, tmp, sz);
}

/* Smallest encoding of one element of type t, for bounding counts by the bytes left. */
static uint64_t min_elem_size(uint32_t t)
{
    if (t == ENG_GGUF_STRING) return 8;
    if (t == ENG_GGUF_ARRAY) return 12;
    return eng_gguf_vtype_size(t);
}

/* An inner array of an array of arrays: validated and skipped (not exposed). */
static int skip_inner_array(parser *p)
{
    uint32_t et;
    uint64_t n;
    int rc;
    if ((rc = rd_u32(p, &et)) || (rc = rd_u64(p, &n))) return rc;
    if (et == ENG_GGUF_ARRAY) return perr(p, "arrays nested more than two deep");
    if (!vtype_known(et)) return perr(p, "unknown array element type %" PRIu32, et);
    if (n > remaining(p) / min_elem_size(et))
        return perr(p, "array of %" PRIu64 " elements is larger than the file", n);
    if (et != ENG_GGUF_STRING) return skip(p, n * eng_gguf_vtype_size(et));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if ((rc = rd_u64(p, &len))) return rc;
        if (len > remaining(p) || len > GGUF_MAX_STR)
            return perr(p, "string length %" PRIu64 " is past the end of the file or too long",
                        len);
        if ((rc = skip(p, len))) return rc;
    }
    return 0;
}

static int read_array(parser *p, gkv *kv)
{
    eng_gguf *g = p->g;
    uint32_t et;
    uint64_t n;
    int rc;
    if ((rc = rd_u32(p, &et)) || (rc = rd_u64(p, &n))) return rc;
    if (!vtype_known(et)) return perr(p, "unknown array element type %" PRIu32, et);
    if (n > remaining(p) / min_elem_size(et))
        return perr(p, "array of %" PRIu64 " elements is larger than the file", n);
    kv->elem_type = et;
    kv->n = n;
    if (et == ENG_GGUF_ARRAY) {
        for (uint64_t i = 0; i < n; i++)
            if ((rc = skip_inner_array(p))) return rc;
        return 0;
    }
    if (et != ENG_GGUF_STRING) {
        size_t sz = eng_gguf_vtype_size(et);
        if ((rc = arena_align8(g))) return rc;
        kv->off = g->arena_len;
        for (uint64_t i = 0; i < n;) {
            uint64_t chunk = n - i < 4096 ? n - i : 4096;
            const unsigned char *b;
            if ((rc = take(p, (size_t)(chunk * sz), &b))) return rc;
            for (uint64_t j = 0; j < chunk; j++)
                if ((rc = scalar_put(g, et, b + j * sz))) return rc;
            i += chunk;
        }
        return 0;
    }
    /* Strings go to the arena as they come; their offsets are gathered in a side
     * vector that grows with the strings read, then appended as one table. */
    uint64_t *offs = NULL;
    size_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (i == cap) {
            size_t nc = cap ? cap * 2 : 256;
            uint64_t *o = realloc(offs, nc * sizeof *o);
            if (!o) {
                free(offs);
                return core_err_set(MLV_ENOMEM, "gguf: out of memory");
            }
            offs = o;
            cap = nc;
        }
        if ((rc = read_str(p, GGUF_MAX_STR, false, "string", &offs[i], NULL))) {
            free(offs);
            return rc;
        }
    }
    if ((rc = arena_align8(g)) == 0) {
        kv->off = g->arena_len;
        rc = arena_put(g, offs, (size_t)n * sizeof *offs);
    }
    free(offs);
    return rc;
}

static int read_kv(parser *p, size_t idx)
{
    eng_gguf *g = p->g;
    int rc;
    if (g->n_kv == g->kv_cap) {
        size_t nc = g->kv_cap ? g->kv_cap * 2 : 32;
        gkv *k = realloc(g->kv, nc * sizeof *k);
        if (!k) return core_err_set(MLV_ENOMEM, "gguf: out of memory");
        g->kv = k;
        g->kv_cap = nc;
    }
    gkv *kv = &g->kv[g->n_kv];
    memset(kv, 0, sizeof *kv);
    snprintf(p->r.ctx, sizeof p->r.ctx, "kv %zu", idx);
    uint64_t klen;
    if ((rc = read_str(p, GGUF_MAX_KEY, true, "key", &kv->key, &klen))) return rc;
    if (klen == 0) return perr(p, "empty key");
    snprintf(p->r.ctx, sizeof p->r.ctx, "key '%.120s'", g->arena + kv->key);
    if ((rc = rd_u32(p, &kv->type))) return rc;
    if (!vtype_known(kv->type)) return perr(p, "unknown value type %" PRIu32, kv->type);
    if (kv->type == ENG_GGUF_STRING) {
        rc = read_str(p, GGUF_MAX_STR, false, "string", &kv->off, &kv->n);
    } else if (kv->type == ENG_GGUF_ARRAY) {
        rc = read_array(p, kv);
    } else {
        const unsigned char *b;
        if ((rc = take(p, eng_gguf_vtype_size(kv->type), &b)) == 0) scalar_set(kv, kv->type, b);
    }
    if (rc) return rc;
    g->n_kv++;
    return 0;
}

/* ---------------------------------------------------------- tensor infos ---- */

static int read_tensor(parser *p, size_t idx)
{
    eng_gguf *g = p->g;
    int rc;
    if (g->n_t == g->t_cap) {
        size_t nc = g->t_cap ? g->t_cap * 2 : 64;
        gten *t = realloc(g->t, nc * sizeof *t);
        if (!t) return core_err_set(MLV_ENOMEM, "gguf: out of memory");
        g->t = t;
        g->t_cap = nc;
    }
    gten *t = &g->t[g->n_t];
    memset(t, 0, sizeof *t);
    snprintf(p->r.ctx, sizeof p->r.ctx, "tensor %zu", idx);
    uint64_t nlen;
    if ((rc = read_str(p, GGUF_MAX_KEY, true, "name", &t->name, &nlen))) return rc;
    if (nlen == 0) return perr(p, "empty name");
    if (nlen > GGUF_MAX_NAME)
        return perr(p, "name of %" PRIu64 " bytes is longer than %d", nlen, GGUF_MAX_NAME);
    snprintf(p->r.ctx, sizeof p->r.ctx, "tensor '%s'", g->arena + t->name);
    if ((rc = rd_u32(p, &t->n_dims))) return rc;
    if (t->n_dims < 1 || t->n_dims > 4)
        return perr(p, "%" PRIu32 " dimensions (1 to 4 allowed)", t->n_dims);
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if ((rc = rd_u64(p, &t->dims[d]))) return rc;
        if (t->dims[d] == 0) return perr(p, "dimension %" PRIu32 " is 0", d);
        if (t->dims[d] > (uint64_t)INT64_MAX || n_elems > (uint64_t)INT64_MAX / t->dims[d])
            return perr(p, "element count overflows");
        n_elems *= t->dims[d];
    }
    for (uint32_t d = t->n_dims; d < 4; d++)
        t->dims[d] = 1;
    t->n_elems = n_elems;
    if ((rc = rd_u32(p, &t->type))) return rc;
    size_t blck, bytes;
    if (!eng_type_name((int)t->type)) return perr(p, "unknown tensor type %" PRIu32, t->type);
    eng_type_block((int)t->type, &blck, &bytes);
    if (t->dims[0] % blck)
        return perr(p, "first dimension %" PRIu64 " is not a multiple of the %s block size %zu",
                    t->dims[0], eng_type_name((int)t->type), blck);
    uint64_t nblocks = n_elems / blck;
    if (nblocks > UINT64_MAX / bytes) return perr(p, "byte size overflows");
    t->size = nblocks * bytes;
    if ((rc = rd_u64(p, &t->offset))) return rc;
    g->n_t++;
    return 0;
}

/* ------------------------------------------------------- whole-file checks ---- */

/* Sorting with glibc's qsort_r (the tree is built with _GNU_SOURCE). */
static int cmp_key(const void *a, const void *b, void *ctx)
{
    const eng_gguf *g = ctx;
    return strcmp(g->arena + g->kv[*(const uint32_t *)a].key,
                  g->arena + g->kv[*(const uint32_t *)b].key);
}
static int cmp_name(const void *a, const void *b, void *ctx)
{
    const eng_gguf *g = ctx;
    return strcmp(g->arena + g->t[*(const uint32_t *)a].name,
                  g->arena + g->t[*(const uint32_t *)b].name);
}
static int cmp_offset(const void *a, const void *b, void *ctx)
{
    const eng_gguf *g = ctx;
    const gten *x = &g->t[*(const uint32_t *)a], *y = &g->t[*(const uint32_t *)b];
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static uint32_t *sorted_index(eng_gguf *g, size_t n, int (*cmp)(const void *, const void *, void *))
{
    uint32_t *ix = malloc((n ? n : 1) * sizeof *ix);
    if (!ix) return NULL;
    for (size_t i = 0; i < n; i++)
        ix[i] = (uint32_t)i;
    qsort_r(ix, n, sizeof *ix, cmp, g);
    return ix;
}

static int check_all(parser *p)
{
    eng_gguf *g = p->g;
    p->r.ctx[0] = 0;
    int rc = 0;
    uint32_t *by_off = NULL;
    if (!(g->kv_sorted = sorted_index(g, g->n_kv, cmp_key)) ||
        !(g->t_sorted = sorted_index(g, g->n_t, cmp_name)) ||
        !(by_off = sorted_index(g, g->n_t, cmp_offset))) {
        rc = core_err_set(MLV_ENOMEM, "gguf: out of memory");
        goto done;
    }
    for (size_t i = 1; i < g->n_kv; i++) {
        const char *a = g->arena + g->kv[g->kv_sorted[i - 1]].key;
        if (!strcmp(a, g->arena + g->kv[g->kv_sorted[i]].key)) {
            rc = perr(p, "duplicate key '%.120s'", a);
            goto done;
        }
    }
    for (size_t i = 1; i < g->n_t; i++) {
        const char *a = g->arena + g->t[g->t_sorted[i - 1]].name;
        if (!strcmp(a, g->arena + g->t[g->t_sorted[i]].name)) {
            rc = perr(p, "duplicate tensor name '%s'", a);
            goto done;
        }
    }

    g->alignment = GGUF_DEFAULT_ALIGN;
    int64_t ai = eng_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const gkv *kv = &g->kv[ai];
        if (kv->type != ENG_GGUF_U32) {
            rc = perr(p, "general.alignment must be a u32");
            goto done;
        }
        if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1))) {
            rc = perr(p, "general.alignment %" PRIu64 " is not a power of two", kv->v.u);
            goto done;
        }
        g->alignment = (size_t)kv->v.u;
    }
    /* The data section starts at the first aligned offset after the tensor infos. */
    g->data_offset = (p->r.pos + g->alignment - 1) / g->alignment * g->alignment;
    uint64_t avail = g->file_size > g->data_offset ? g->file_size - g->data_offset : 0;

    for (size_t i = 0; i < g->n_t; i++) {
        const gten *t = &g->t[i];
        snprintf(p->r.ctx, sizeof p->r.ctx, "tensor '%s'", g->arena + t->name);
        if (t->offset % g->alignment) {
            rc = perr(p, "offset %" PRIu64 " is not a multiple of the alignment %zu", t->offset,
                      g->alignment);
            goto done;
        }
        if (t->offset > avail || t->size > avail - t->offset) {
            rc = perr(p, "data past end of file");
            goto done;
        }
    }
    for (size_t i = 1; i < g->n_t; i++) {
        const gten *a = &g->t[by_off[i - 1]], *b = &g->t[by_off[i]];
        if (a->offset + a->size > b->offset) {
            snprintf(p->r.ctx, sizeof p->r.ctx, "tensor '%s'", g->arena + b->name);
            rc = perr(p, "data overlaps tensor '%s'", g->arena + a->name);
            goto done;
        }
    }
    p->r.ctx[0] = 0;
done:
    free(by_off);
    return rc;
}

/* --------------------------------------------------------------- parsing ---- */

static int parse(parser *p)
{
    eng_gguf *g = p->g;
    const unsigned char *b;
    int rc;
    snprintf(p->r.ctx, sizeof p->r.ctx, "header");
    if ((rc = take(p, 4, &b))) return rc;
    if (memcmp(b, "GGUF", 4)) return perr(p, "not a GGUF file (bad magic)");
    if ((rc = rd_u32(p, &g->version))) return rc;
    if (g->version != 2 && g->version != 3) {
        uint32_t sw = __builtin_bswap32(g->version);
        if ((g->version & 0xffff) == 0 && (sw == 2 || sw == 3))
            return perr(p, "big-endian GGUF is not supported");
        return perr(p, "version %" PRIu32 " is not supported (2 and 3 are)", g->version);
    }
    uint64_t n_t, n_kv;
    if ((rc = rd_u64(p, &n_t)) || (rc = rd_u64(p, &n_kv))) return rc;
    /* Smallest possible KV: 8-byte length, 1-byte key, 4-byte type, 1-byte value.
     * Smallest tensor info: 8 + 1 name, 4 n_dims, 8 dim, 4 type, 8 offset. */
    if (n_t > GGUF_MAX_TENSORS) return perr(p, "tensor count %" PRIu64 " is too large", n_t);
    if (n_kv > GGUF_MAX_KV) return perr(p, "kv count %" PRIu64 " is too large", n_kv);
    if (n_kv * 14 + n_t * 33 > remaining(p))
        return perr(p,
                    "kv count %" PRIu64 " and tensor count %" PRIu64 " do not fit in the %" PRIu64
                    " bytes left",
                    n_kv, n_t, remaining(p));
    for (uint64_t i = 0; i < n_kv; i++)
        if ((rc = read_kv(p, (size_t)i))) return rc;
    for (uint64_t i = 0; i < n_t; i++)
        if ((rc = read_tensor(p, (size_t)i))) return rc;
    return check_all(p);
}

static int open_common(eng_gguf **out, parser *p)
{
    *out = NULL;
    eng_gguf *g = calloc(1, sizeof *g);
    if (!g) return core_err_set(MLV_ENOMEM, "gguf: out of memory");
    g->file_size = p->r.size;
    p->g = g;
    int rc = parse(p);
    free(p->r.win);
    p->r.win = NULL;
    if (rc) {
        eng_gguf_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int eng_gguf_open_mem(eng_gguf **out, const void *data, size_t len)
{
    parser p;
    memset(&p, 0, sizeof p);
    p.r.mem = data;
    p.r.fd = -1;
    p.r.size = len;
    if (!data && len) {
        *out = NULL;
        return core_err_set(MLV_EINVAL, "gguf: no buffer");
    }
    return open_common(out, &p);
}

int eng_gguf_open_file(eng_gguf **out, const char *path)
{
    *out = NULL;
    int fd;
    uint64_t size;
    int rc = core_open_regular(path, &fd, &size);
    if (rc) return rc;
    parser p;
    memset(&p, 0, sizeof p);
    p.r.fd = fd;
    p.r.size = size;
    if ((rc = open_common(out, &p))) core_err_wrap("%s: ", path);
    close(fd);
    return rc;
}

void eng_gguf_free(eng_gguf *g)
{
    if (!g) return;
    free(g->arena);
    free(g->kv);
    free(g->t);
    free(g->kv_sorted);
    free(g->t_sorted);
    free(g);
}

/* --------------------------------------------------------------- getters ---- */

uint32_t eng_gguf_version(const eng_gguf *g)
{
    return g->version;
}
size_t eng_gguf_alignment(const eng_gguf *g)
{
    return g->alignment;
}
uint64_t eng_gguf_data_offset(const eng_gguf *g)
{
    return g->data_offset;
}
size_t eng_gguf_n_kv(const eng_gguf *g)
{
    return g->n_kv;
}
size_t eng_gguf_n_tensors(const eng_gguf *g)
{
    return g->n_t;
}

int64_t eng_gguf_find_key(const eng_gguf *g, const char *key)
{
    if (!key || !g->kv_sorted) return -1;
    size_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, g->arena + g->kv[g->kv_sorted[mid]].key);
        if (c == 0) return g->kv_sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

int64_t eng_gguf_find_tensor(const eng_gguf *g, const char *name)
{
    if (!name || !g->t_sorted) return -1;
    size_t lo = 0, hi = g->n_t;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, g->arena + g->t[g->t_sorted[mid]].name);
        if (c == 0) return g->t_sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

const char *eng_gguf_key(const eng_gguf *g, size_t i)
{
    return i < g->n_kv ? g->arena + g->kv[i].key : NULL;
}

int eng_gguf_kv_type(const eng_gguf *g, size_t i)
{
    return i < g->n_kv ? (int)g->kv[i].type : -1;
}

static int lookup(const eng_gguf *g, const char *key, const gkv **out)
{
    int64_t i = eng_gguf_find_key(g, key);
    if (i < 0) return core_err_set(MLV_ENOTFOUND, "gguf: key '%s' not found", key ? key : "");
    *out = &g->kv[i];
    return 0;
}

int eng_gguf_get_str(const eng_gguf *g, const char *key, const char **out)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_STRING)
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not a string", key);
    *out = g->arena + kv->off;
    return 0;
}

int eng_gguf_get_int(const eng_gguf *g, const char *key, int64_t *out)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    switch (kv->type) {
    case ENG_GGUF_U8:
    case ENG_GGUF_U16:
    case ENG_GGUF_U32:
    case ENG_GGUF_U64:
        if (kv->v.u > (uint64_t)INT64_MAX)
            return core_err_set(MLV_EINVAL, "gguf: key '%s' does not fit in an int64", key);
        *out = (int64_t)kv->v.u;
        return 0;
    case ENG_GGUF_I8:
    case ENG_GGUF_I16:
    case ENG_GGUF_I32:
    case ENG_GGUF_I64: *out = kv->v.i; return 0;
    default: return core_err_set(MLV_EINVAL, "gguf: key '%s' is not an integer", key);
    }
}

int eng_gguf_get_f32(const eng_gguf *g, const char *key, float *out)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_F32 && kv->type != ENG_GGUF_F64)
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not a float", key);
    *out = (float)kv->v.f;
    return 0;
}

int eng_gguf_get_bool(const eng_gguf *g, const char *key, bool *out)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_BOOL)
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not a bool", key);
    *out = kv->v.u != 0;
    return 0;
}

int eng_gguf_arr_info(const eng_gguf *g, const char *key, int *elem_type, uint64_t *n)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_ARRAY)
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not an array", key);
    if (elem_type) *elem_type = (int)kv->elem_type;
    if (n) *n = kv->n;
    return 0;
}

int eng_gguf_arr_str(const eng_gguf *g, const char *key, uint64_t i, const char **out)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_ARRAY || kv->elem_type != ENG_GGUF_STRING)
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not an array of strings", key);
    if (i >= kv->n)
        return core_err_set(MLV_EINVAL, "gguf: key '%s': index %" PRIu64 " out of range", key, i);
    uint64_t off;
    memcpy(&off, g->arena + kv->off + i * sizeof off, sizeof off);
    *out = g->arena + off;
    return 0;
}

int eng_gguf_arr_data(const eng_gguf *g, const char *key, int *elem_type, uint64_t *n,
                      const void **data)
{
    const gkv *kv = NULL;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ENG_GGUF_ARRAY || !eng_gguf_vtype_size(kv->elem_type))
        return core_err_set(MLV_EINVAL, "gguf: key '%s' is not an array of numbers", key);
    if (elem_type) *elem_type = (int)kv->elem_type;
    if (n) *n = kv->n;
    *data = g->arena + kv->off;
    return 0;
}

int eng_gguf_tensor_info(const eng_gguf *g, size_t i, eng_gguf_tensor *out)
{
    if (i >= g->n_t)
        return core_err_set(MLV_EINVAL, "gguf: tensor index %zu out of range (%zu tensors)", i,
                            g->n_t);
    const gten *t = &g->t[i];
    out->name = g->arena + t->name;
    out->type = (int)t->type;
    out->n_dims = t->n_dims;
    memcpy(out->dims, t->dims, sizeof out->dims);
    out->n_elems = t->n_elems;
    out->offset = t->offset;
    out->size = t->size;
    return 0;
}
