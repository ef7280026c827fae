/* engine/gguf_write.c: the GGUF v3 writer — builds a file byte for byte as llama.cpp's
 * gguf.c and gguf-py's GGUFWriter do (little-endian; magic, version 3, tensor count and
 * KV count as u64; KV pairs in the order they were set; tensor infos in the order they
 * were added; zero padding to general.alignment (32 unless set) before the data section
 * and after every tensor, the last one included). Not a reader (gguf.c) and not a
 * converter (convert.c): it lays out bytes it is given or asks a fill callback for.
 *
 * Everything a caller passes is validated when it is added (names, types, dimensions,
 * sizes), so a write can only fail on I/O or a failing fill callback, and what it
 * writes is a file engine/gguf.c accepts. Tensor data is borrowed and streamed to the
 * file descriptor; nothing but the header is assembled in memory. */
#include "engine.h"
#include "engine/gguf_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define W_MAX_KEY (64u << 10) /* bytes in a key */
#define W_CHUNK (4u << 20)    /* bytes a fill callback produces at a time */

typedef struct wkv {
    char *key;
    uint32_t type;
    /* The value as it appears in the file after the type field: the scalar's bytes, a
     * string's u64 length and bytes, an array's element type, count and elements. */
    unsigned char *val;
    size_t val_len;
} wkv;

typedef struct wten {
    char *name;
    int type;
    uint32_t n_dims;
    uint64_t dims[4];
    uint64_t size, offset, rows, row_bytes;
    const void *data; /* borrowed, or NULL with fill */
    eng_gguf_fill_fn fill;
    void *arg;
} wten;

/* Open addressing over indices + 1 (0 = empty slot), for keys and tensor names. */
typedef struct windex {
    uint32_t *slot;
    size_t cap; /* power of two */
} windex;

struct eng_gguf_writer {
    wkv *kv;
    size_t n_kv, kv_cap;
    wten *t;
    size_t n_t, t_cap;
    windex kv_ix, t_ix;
};

/* ------------------------------------------------------------------ index ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Finds `name` among n entries (get(i) gives entry i's name); returns its index or -1,
 * and in *slot_out the slot where it is or would go. */
static int64_t ix_find(const windex *ix, const char *name, const char *(*get)(const void *, size_t),
                       const void *ctx, size_t *slot_out)
{
    if (slot_out) *slot_out = 0;
    if (!ix->cap) return -1;
    size_t mask = ix->cap - 1, s = (size_t)hash_str(name) & mask;
    while (ix->slot[s]) {
        size_t i = ix->slot[s] - 1;
        if (!strcmp(get(ctx, i), name)) {
            if (slot_out) *slot_out = s;
            return (int64_t)i;
        }
        s = (s + 1) & mask;
    }
    if (slot_out) *slot_out = s;
    return -1;
}

/* Records entry i (not yet present; the index has room). */
static void ix_insert(windex *ix, const char *name, size_t i,
                      const char *(*get)(const void *, size_t), const void *ctx)
{
    size_t s;
    ix_find(ix, name, get, ctx, &s);
    ix->slot[s] = (uint32_t)(i + 1);
}

/* Makes room for one more of n entries (load at most one half). */
static int ix_grow(windex *ix, size_t n, const char *(*get)(const void *, size_t), const void *ctx)
{
    if ((n + 1) * 2 <= ix->cap) return 0;
    size_t cap = ix->cap ? ix->cap * 2 : 64;
    uint32_t *slot = calloc(cap, sizeof *slot);
    if (!slot) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    free(ix->slot);
    ix->slot = slot;
    ix->cap = cap;
    for (size_t i = 0; i < n; i++)
        ix_insert(ix, get(ctx, i), i, get, ctx);
    return 0;
}

static const char *kv_name(const void *ctx, size_t i)
{
    return ((const eng_gguf_writer *)ctx)->kv[i].key;
}

static const char *t_name(const void *ctx, size_t i)
{
    return ((const eng_gguf_writer *)ctx)->t[i].name;
}

/* ------------------------------------------------------------ the handle ---- */

int eng_gguf_writer_new(eng_gguf_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : core_err_set(MLV_ENOMEM, "gguf write: out of memory");
}

void eng_gguf_writer_free(eng_gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w->kv_ix.slot);
    free(w->t_ix.slot);
    free(w);
}

/* -------------------------------------------------------------- KV pairs ---- */

static void put_le(unsigned char *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static int check_key(const char *key)
{
    if (!key || !*key) return core_err_set(MLV_EINVAL, "gguf write: empty key");
    size_t n = strnlen(key, W_MAX_KEY + 1);
    if (n > W_MAX_KEY)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.60s...' is longer than %u bytes", key,
                            W_MAX_KEY);
    return 0;
}

/* Sets key to (type, val) — val is taken over (freed on failure) — replacing an
 * existing value in place. */
static int put_kv(eng_gguf_writer *w, const char *key, uint32_t type, unsigned char *val,
                  size_t val_len)
{
    int rc = check_key(key);
    if (rc) {
        free(val);
        return rc;
    }
    if (!strcmp(key, "general.alignment")) {
        uint32_t a = 0;
        if (type == ENG_GGUF_U32)
            for (int i = 3; i >= 0; i--)
                a = a << 8 | val[i];
        if (type != ENG_GGUF_U32 || a == 0 || (a & (a - 1))) {
            free(val);
            return core_err_set(MLV_EINVAL,
                                "gguf write: general.alignment must be a u32 power of two");
        }
    }
    int64_t at = ix_find(&w->kv_ix, key, kv_name, w, NULL);
    if (at >= 0) {
        free(w->kv[at].val);
        w->kv[at].type = type;
        w->kv[at].val = val;
        w->kv[at].val_len = val_len;
        return 0;
    }
    if (w->n_kv >= GGUF_MAX_KV) {
        free(val);
        return core_err_set(MLV_EINVAL, "gguf write: more than %u KV pairs", GGUF_MAX_KV);
    }
    if (w->n_kv == w->kv_cap) {
        size_t nc = w->kv_cap ? w->kv_cap * 2 : 32;
        wkv *k = realloc(w->kv, nc * sizeof *k);
        if (!k) {
            free(val);
            return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
        }
        w->kv = k;
        w->kv_cap = nc;
    }
    char *kc = strdup(key);
    if (!kc || (rc = ix_grow(&w->kv_ix, w->n_kv, kv_name, w))) {
        free(kc);
        free(val);
        return rc ? rc : core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    }
    w->kv[w->n_kv] = (wkv){kc, type, val, val_len};
    ix_insert(&w->kv_ix, key, w->n_kv, kv_name, w);
    w->n_kv++;
    return 0;
}

static int put_scalar(eng_gguf_writer *w, const char *key, int type, uint64_t bits)
{
    size_t n = eng_gguf_vtype_size(type);
    unsigned char *v = malloc(n);
    if (!v) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    put_le(v, bits, n);
    return put_kv(w, key, (uint32_t)type, v, n);
}

int eng_gguf_set_str(eng_gguf_writer *w, const char *key, const char *val)
{
    if (!val)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': no string", key ? key : "");
    size_t n = strlen(val);
    if (n > GGUF_MAX_STR)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': string longer than %u bytes",
                            key ? key : "", GGUF_MAX_STR);
    unsigned char *v = malloc(8 + n);
    if (!v) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    put_le(v, n, 8);
    memcpy(v + 8, val, n);
    return put_kv(w, key, ENG_GGUF_STRING, v, 8 + n);
}

int eng_gguf_set_u32(eng_gguf_writer *w, const char *key, uint32_t val)
{
    return put_scalar(w, key, ENG_GGUF_U32, val);
}

int eng_gguf_set_i32(eng_gguf_writer *w, const char *key, int32_t val)
{
    return put_scalar(w, key, ENG_GGUF_I32, (uint32_t)val);
}

int eng_gguf_set_u64(eng_gguf_writer *w, const char *key, uint64_t val)
{
    return put_scalar(w, key, ENG_GGUF_U64, val);
}

int eng_gguf_set_f32(eng_gguf_writer *w, const char *key, float val)
{
    uint32_t u;
    memcpy(&u, &val, 4);
    return put_scalar(w, key, ENG_GGUF_F32, u);
}

int eng_gguf_set_bool(eng_gguf_writer *w, const char *key, bool val)
{
    return put_scalar(w, key, ENG_GGUF_BOOL, val ? 1 : 0);
}

int eng_gguf_set_arr_str(eng_gguf_writer *w, const char *key, const char *const *vals, size_t n)
{
    if (n && !vals)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': no strings", key ? key : "");
    size_t total = 12;
    for (size_t i = 0; i < n; i++) {
        if (!vals[i])
            return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': string %zu is NULL",
                                key ? key : "", i);
        size_t l = strlen(vals[i]);
        if (l > GGUF_MAX_STR || total > SIZE_MAX - 8 - l)
            return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': string %zu is too long",
                                key ? key : "", i);
        total += 8 + l;
    }
    unsigned char *v = malloc(total), *p = v;
    if (!v) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    put_le(p, ENG_GGUF_STRING, 4);
    put_le(p + 4, n, 8);
    p += 12;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(vals[i]);
        put_le(p, l, 8);
        memcpy(p + 8, vals[i], l);
        p += 8 + l;
    }
    return put_kv(w, key, ENG_GGUF_ARRAY, v, total);
}

int eng_gguf_set_arr_data(eng_gguf_writer *w, const char *key, int elem_type, const void *data,
                          size_t n)
{
    size_t es = eng_gguf_vtype_size(elem_type);
    if (!es)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': array element type %d",
                            key ? key : "", elem_type);
    if (n && !data)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': no data", key ? key : "");
    if (n > (SIZE_MAX - 12) / es)
        return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': array too large",
                            key ? key : "");
    unsigned char *v = malloc(12 + n * es);
    if (!v) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    put_le(v, (uint32_t)elem_type, 4);
    put_le(v + 4, n, 8);
    const unsigned char *src = data;
    for (size_t i = 0; i < n; i++) {
        uint64_t bits = 0;
        switch (es) { /* host layout -> little-endian */
        case 1: bits = src[i]; break;
        case 2: {
            uint16_t x;
            memcpy(&x, src + 2 * i, 2);
            bits = x;
            break;
        }
        case 4: {
            uint32_t x;
            memcpy(&x, src + 4 * i, 4);
            bits = x;
            break;
        }
        default: memcpy(&bits, src + 8 * i, 8); break;
        }
        if (elem_type == ENG_GGUF_BOOL) bits = bits != 0;
        put_le(v + 12 + i * es, bits, es);
    }
    return put_kv(w, key, ENG_GGUF_ARRAY, v, 12 + n * es);
}

/* The reader's public getters are the only way in, so three corner cases cannot be
 * copied exactly: a u64 above INT64_MAX (refused), an f64 (read back through a float,
 * so only values a float holds survive) and a string with a NUL byte (cut at the NUL).
 * Arrays of arrays are not exposed by the reader at all (refused). */
int eng_gguf_copy_kv(eng_gguf_writer *w, const eng_gguf *src, size_t i)
{
    const char *key = eng_gguf_key(src, i);
    if (!key) return core_err_set(MLV_EINVAL, "gguf write: no KV pair %zu to copy", i);
    int type = eng_gguf_kv_type(src, i), rc;
    switch (type) {
    case ENG_GGUF_STRING: {
        const char *s;
        if ((rc = eng_gguf_get_str(src, key, &s))) return rc;
        return eng_gguf_set_str(w, key, s);
    }
    case ENG_GGUF_BOOL: {
        bool b;
        if ((rc = eng_gguf_get_bool(src, key, &b))) return rc;
        return eng_gguf_set_bool(w, key, b);
    }
    case ENG_GGUF_F32:
    case ENG_GGUF_F64: {
        float f;
        if ((rc = eng_gguf_get_f32(src, key, &f))) return rc;
        if (type == ENG_GGUF_F32) return eng_gguf_set_f32(w, key, f);
        double d = f;
        uint64_t bits;
        memcpy(&bits, &d, 8);
        return put_scalar(w, key, ENG_GGUF_F64, bits);
    }
    case ENG_GGUF_ARRAY: {
        int et;
        uint64_t n;
        if ((rc = eng_gguf_arr_info(src, key, &et, &n))) return rc;
        if (et == ENG_GGUF_ARRAY)
            return core_err_set(MLV_EUNSUPPORTED,
                                "gguf write: key '%.120s': arrays of arrays cannot be copied", key);
        if (n > SIZE_MAX / sizeof(char *))
            return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': array too large", key);
        if (et != ENG_GGUF_STRING) {
            const void *data;
            if ((rc = eng_gguf_arr_data(src, key, &et, &n, &data))) return rc;
            return eng_gguf_set_arr_data(w, key, et, data, (size_t)n);
        }
        const char **strs = malloc((n ? n : 1) * sizeof *strs);
        if (!strs) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
        for (uint64_t j = 0; j < n; j++)
            if ((rc = eng_gguf_arr_str(src, key, j, &strs[j]))) {
                free(strs);
                return rc;
            }
        rc = eng_gguf_set_arr_str(w, key, strs, (size_t)n);
        free(strs);
        return rc;
    }
    default: {
        if (!eng_gguf_vtype_size(type))
            return core_err_set(MLV_EINVAL, "gguf write: key '%.120s': value type %d", key, type);
        int64_t v;
        if ((rc = eng_gguf_get_int(src, key, &v))) return rc;
        return put_scalar(w, key, type, (uint64_t)v);
    }
    }
}

/* ---------------------------------------------------------------- tensors ---- */

static int add_common(eng_gguf_writer *w, const char *name, int type, uint32_t n_dims,
                      const uint64_t *dims, wten *t)
{
    memset(t, 0, sizeof *t);
    if (!name || !*name) return core_err_set(MLV_EINVAL, "gguf write: empty tensor name");
    size_t nl = strnlen(name, GGUF_MAX_NAME + 1);
    if (nl > GGUF_MAX_NAME)
        return core_err_set(MLV_EINVAL, "gguf write: tensor name '%.80s' is longer than %d bytes",
                            name, GGUF_MAX_NAME);
    size_t blck, bytes;
    if (!eng_type_name(type) || eng_type_block(type, &blck, &bytes))
        return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': unknown type %d", name, type);
    if (n_dims < 1 || n_dims > 4 || !dims)
        return core_err_set(MLV_EINVAL,
                            "gguf write: tensor '%s': %" PRIu32 " dimensions (1 to 4 allowed)",
                            name, n_dims);
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (dims[d] == 0)
            return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': dimension %" PRIu32 " is 0",
                                name, d);
        if (dims[d] > (uint64_t)INT64_MAX || n > (uint64_t)INT64_MAX / dims[d])
            return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': element count overflows",
                                name);
        n *= dims[d];
    }
    if (dims[0] % blck)
        return core_err_set(MLV_EINVAL,
                            "gguf write: tensor '%s': first dimension %" PRIu64
                            " is not a multiple of the %s block size %zu",
                            name, dims[0], eng_type_name(type), blck);
    if (n / blck > UINT64_MAX / bytes || n / blck * bytes > (uint64_t)INT64_MAX)
        return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': byte size overflows", name);
    if (ix_find(&w->t_ix, name, t_name, w, NULL) >= 0)
        return core_err_set(MLV_EINVAL, "gguf write: duplicate tensor name '%s'", name);
    if (w->n_t >= GGUF_MAX_TENSORS)
        return core_err_set(MLV_EINVAL, "gguf write: more than %u tensors", GGUF_MAX_TENSORS);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++)
        t->dims[d] = d < n_dims ? dims[d] : 1;
    t->size = n / blck * bytes;
    t->row_bytes = dims[0] / blck * bytes;
    t->rows = n / dims[0];
    return 0;
}

static int push_tensor(eng_gguf_writer *w, const char *name, wten *t)
{
    if (w->n_t == w->t_cap) {
        size_t nc = w->t_cap ? w->t_cap * 2 : 64;
        wten *x = realloc(w->t, nc * sizeof *x);
        if (!x) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
        w->t = x;
        w->t_cap = nc;
    }
    int rc = ix_grow(&w->t_ix, w->n_t, t_name, w);
    if (rc) return rc;
    if (!(t->name = strdup(name))) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    w->t[w->n_t] = *t;
    ix_insert(&w->t_ix, name, w->n_t, t_name, w);
    w->n_t++;
    return 0;
}

int eng_gguf_add_tensor(eng_gguf_writer *w, const char *name, int type, uint32_t n_dims,
                        const uint64_t *dims, const void *data, size_t size)
{
    wten t;
    int rc = add_common(w, name, type, n_dims, dims, &t);
    if (rc) return rc;
    if (size != t.size)
        return core_err_set(MLV_EINVAL,
                            "gguf write: tensor '%s': %zu bytes given, its type and dimensions "
                            "need %" PRIu64,
                            name, size, t.size);
    if (!data) return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': no data", name);
    t.data = data;
    return push_tensor(w, name, &t);
}

int eng_gguf_add_tensor_fill(eng_gguf_writer *w, const char *name, int type, uint32_t n_dims,
                             const uint64_t *dims, eng_gguf_fill_fn fill, void *arg)
{
    wten t;
    int rc = add_common(w, name, type, n_dims, dims, &t);
    if (rc) return rc;
    if (!fill) return core_err_set(MLV_EINVAL, "gguf write: tensor '%s': no fill function", name);
    t.fill = fill;
    t.arg = arg;
    return push_tensor(w, name, &t);
}

/* ----------------------------------------------------------------- layout ---- */

static uint64_t pad_to(uint64_t n, uint64_t align)
{
    return (n + align - 1) / align * align;
}

static size_t alignment_of(const eng_gguf_writer *w)
{
    int64_t i = ix_find(&w->kv_ix, "general.alignment", kv_name, w, NULL);
    if (i < 0) return GGUF_DEFAULT_ALIGN;
    const unsigned char *v = w->kv[i].val; /* validated by put_kv */
    return (size_t)v[0] | (size_t)v[1] << 8 | (size_t)v[2] << 16 | (size_t)v[3] << 24;
}

/* The header (through the padding before the data section) into *hdr, tensor offsets
 * into w->t, and the total file size. */
static int layout(eng_gguf_writer *w, core_buf *hdr, uint64_t *total)
{
    size_t align = alignment_of(w);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        uint64_t padded = pad_to(w->t[i].size, align);
        if (padded < w->t[i].size || off > UINT64_MAX / 2 - padded)
            return core_err_set(MLV_EINVAL, "gguf write: tensor data too large");
        off += padded;
    }
    unsigned char b[8];
    core_buf_append(hdr, "GGUF", 4);
    put_le(b, 3, 4);
    core_buf_append(hdr, b, 4);
    put_le(b, w->n_t, 8);
    core_buf_append(hdr, b, 8);
    put_le(b, w->n_kv, 8);
    core_buf_append(hdr, b, 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kv[i];
        size_t kl = strlen(kv->key);
        put_le(b, kl, 8);
        core_buf_append(hdr, b, 8);
        core_buf_append(hdr, kv->key, kl);
        put_le(b, kv->type, 4);
        core_buf_append(hdr, b, 4);
        core_buf_append(hdr, kv->val, kv->val_len);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const wten *t = &w->t[i];
        size_t nl = strlen(t->name);
        put_le(b, nl, 8);
        core_buf_append(hdr, b, 8);
        core_buf_append(hdr, t->name, nl);
        put_le(b, t->n_dims, 4);
        core_buf_append(hdr, b, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) {
            put_le(b, t->dims[d], 8);
            core_buf_append(hdr, b, 8);
        }
        put_le(b, (uint32_t)t->type, 4);
        core_buf_append(hdr, b, 4);
        put_le(b, t->offset, 8);
        core_buf_append(hdr, b, 8);
    }
    static const unsigned char zeros[256];
    while (!hdr->failed && hdr->len % align)
        core_buf_append(hdr, zeros,
                        align - hdr->len % align < sizeof zeros ? align - hdr->len % align
                                                                : sizeof zeros);
    if (hdr->failed) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
    if (off > UINT64_MAX - hdr->len) return core_err_set(MLV_EINVAL, "gguf write: too large");
    *total = hdr->len + off;
    return 0;
}

/* ------------------------------------------------------------------ output ---- */

/* Where bytes go: a file descriptor or a memory buffer. */
typedef struct sink {
    int fd;             /* >= 0: file */
    unsigned char *mem; /* else memory */
    uint64_t pos;
} sink;

static int sink_put(sink *s, const void *p, size_t n)
{
    if (s->fd >= 0) {
        int rc = core_write_all(s->fd, p, n);
        if (rc) return rc;
    } else if (n) {
        memcpy(s->mem + s->pos, p, n);
    }
    s->pos += n;
    return 0;
}

static int sink_zeros(sink *s, size_t n)
{
    static const unsigned char zeros[4096];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        int rc = sink_put(s, zeros, k);
        if (rc) return rc;
        n -= k;
    }
    return 0;
}

/* A fill tensor, a chunk of whole rows at a time: straight into memory, or through a
 * bounce buffer to the file. */
static int emit_fill(const wten *t, sink *s, unsigned char **buf, size_t *buf_cap)
{
    uint64_t per = W_CHUNK / t->row_bytes;
    if (per == 0) per = 1;
    if (per > t->rows) per = t->rows;
    if (s->fd >= 0 && per * t->row_bytes > *buf_cap) {
        unsigned char *b = realloc(*buf, (size_t)(per * t->row_bytes));
        if (!b) return core_err_set(MLV_ENOMEM, "gguf write: out of memory");
        *buf = b;
        *buf_cap = (size_t)(per * t->row_bytes);
    }
    for (uint64_t r = 0; r < t->rows; r += per) {
        uint64_t n = t->rows - r < per ? t->rows - r : per;
        unsigned char *dst = s->fd >= 0 ? *buf : s->mem + s->pos;
        int rc = t->fill(t->arg, r, n, dst);
        if (rc) return core_err_wrap("tensor '%s': ", t->name);
        if (s->fd >= 0) {
            if ((rc = sink_put(s, dst, (size_t)(n * t->row_bytes)))) return rc;
        } else {
            s->pos += n * t->row_bytes;
        }
    }
    return 0;
}

static int emit(eng_gguf_writer *w, const core_buf *hdr, sink *s)
{
    int rc = sink_put(s, hdr->data, hdr->len);
    unsigned char *buf = NULL;
    size_t buf_cap = 0;
    size_t align = alignment_of(w);
    for (size_t i = 0; rc == 0 && i < w->n_t; i++) {
        const wten *t = &w->t[i];
        if (t->fill)
            rc = emit_fill(t, s, &buf, &buf_cap);
        else
            rc = sink_put(s, t->data, (size_t)t->size);
        if (rc == 0) rc = sink_zeros(s, (size_t)(pad_to(t->size, align) - t->size));
    }
    free(buf);
    return rc;
}

int eng_gguf_write_mem(eng_gguf_writer *w, void **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    core_buf hdr = {0};
    uint64_t total;
    int rc = layout(w, &hdr, &total);
    if (rc) goto done;
    if (total > SIZE_MAX) {
        rc = core_err_set(MLV_EINVAL, "gguf write: %" PRIu64 " bytes do not fit in memory", total);
        goto done;
    }
    sink s = {-1, malloc(total ? (size_t)total : 1), 0};
    if (!s.mem) {
        rc = core_err_set(MLV_ENOMEM, "gguf write: out of memory for %" PRIu64 " bytes", total);
        goto done;
    }
    if ((rc = emit(w, &hdr, &s))) {
        free(s.mem);
        goto done;
    }
    *out = s.mem;
    *len = (size_t)total;
done:
    core_buf_free(&hdr);
    return rc;
}

int eng_gguf_write_file(eng_gguf_writer *w, const char *path)
{
    if (!path || !*path) return core_err_set(MLV_EINVAL, "gguf write: no output path");
    core_buf hdr = {0};
    uint64_t total;
    int rc = layout(w, &hdr, &total), fd = -1;
    char tmp[4096] = "", dir[4096], base[4096];
    if (rc) goto done;
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(base, sizeof base, "%s", path);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmp-XXXXXX", dirname(dir), basename(base)) >=
        (int)sizeof tmp) {
        tmp[0] = 0;
        rc = core_err_set(MLV_EINVAL, "gguf write: path too long: %s", path);
        goto done;
    }
    if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
        rc = core_err_set(MLV_EIO, "create temp file for %s: %s", path, strerror(errno));
        tmp[0] = 0;
        goto done;
    }
    if (fchmod(fd, 0644) != 0) {
        rc = core_err_set(MLV_EIO, "chmod %s: %s", tmp, strerror(errno));
        goto done;
    }
    sink s = {fd, NULL, 0};
    if ((rc = emit(w, &hdr, &s))) {
        core_err_wrap("write %s: ", path);
        goto done;
    }
    if (fsync(fd) != 0) {
        rc = core_err_set(MLV_EIO, "fsync %s: %s", tmp, strerror(errno));
        goto done;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = core_err_set(MLV_EIO, "close %s: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = core_err_set(MLV_EIO, "rename to %s: %s", path, strerror(errno));
        goto done;
    }
    tmp[0] = 0;
    snprintf(dir, sizeof dir, "%s", path);
    rc = core_fsync_dir(dirname(dir));
done:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    core_buf_free(&hdr);
    return rc;
}
