/* engine/safetensors.c: parses and validates a safetensors header (huggingface/safetensors'
 * format: 8-byte little-endian header length, JSON header, a data area indexed entirely
 * and without holes) into a typed list of tensors, for engine/describe.c and
 * engine/convert.c. Not a loader: tensor data is never read here, and what a caller
 * accepts beyond the format (dtypes, dimensions) comes in its eng_st_rules. */
#include "engine/safetensors.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#define ST_MAX_HEADER (100ull << 20) /* safetensors' own limit on the JSON header */

/* Indexed by enum eng_st_dtype; the order is the one messages list accepted dtypes in. */
static const struct {
    const char *name;
    unsigned size;
} st_dtypes[ENG_ST_NDTYPES] = {
    [ENG_ST_F32] = {"F32", 4},         [ENG_ST_F16] = {"F16", 2},
    [ENG_ST_BF16] = {"BF16", 2},       [ENG_ST_F64] = {"F64", 8},
    [ENG_ST_BOOL] = {"BOOL", 1},       [ENG_ST_U8] = {"U8", 1},
    [ENG_ST_I8] = {"I8", 1},           [ENG_ST_F8_E5M2] = {"F8_E5M2", 1},
    [ENG_ST_F8_E4M3] = {"F8_E4M3", 1}, [ENG_ST_F8_E8M0] = {"F8_E8M0", 1},
    [ENG_ST_I16] = {"I16", 2},         [ENG_ST_U16] = {"U16", 2},
    [ENG_ST_I32] = {"I32", 4},         [ENG_ST_U32] = {"U32", 4},
    [ENG_ST_I64] = {"I64", 8},         [ENG_ST_U64] = {"U64", 8},
};

const char *eng_st_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < ENG_ST_NDTYPES ? st_dtypes[dtype].name : "?";
}

unsigned eng_st_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < ENG_ST_NDTYPES ? st_dtypes[dtype].size : 0;
}

static int dtype_find(const char *name)
{
    for (int i = 0; i < ENG_ST_NDTYPES; i++)
        if (!strcmp(st_dtypes[i].name, name)) return i;
    return -1;
}

/* The accepted dtypes, for a message: "F32, F16 and BF16". */
static void dtype_list(uint32_t mask, char *buf, size_t cap)
{
    size_t n = 0, len = 0;
    buf[0] = 0;
    for (int i = 0; i < ENG_ST_NDTYPES; i++)
        if (mask & (1u << i)) n++;
    for (int i = 0, k = 0; i < ENG_ST_NDTYPES && len < cap; i++) {
        if (!(mask & (1u << i))) continue;
        const char *sep = k == 0 ? "" : (size_t)k + 1 == n ? " and " : ", ";
        int w = snprintf(buf + len, cap - len, "%s%s", sep, st_dtypes[i].name);
        if (w < 0) break;
        len += (size_t)w;
        k++;
    }
}

static int st_fail(const eng_st_rules *r, const char *label, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int st_fail(const eng_st_rules *r, const char *label, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return core_err_set(MLV_EINVAL, "%ssafetensors %s: %s", r->prefix ? r->prefix : "", label, msg);
}

static int st_oom(const eng_st_rules *r)
{
    return core_err_set(MLV_ENOMEM, "%sout of memory", r->prefix ? r->prefix : "");
}

int eng_st_header_length(uint64_t *out, const unsigned char *p, uint64_t file_len,
                         const char *label, const eng_st_rules *rules)
{
    *out = 0;
    if (file_len < 8) return st_fail(rules, label, "shorter than its 8-byte header length");
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | p[i];
    if (hlen > ST_MAX_HEADER || hlen > file_len - 8)
        return st_fail(rules, label,
                       "header length %" PRIu64 " exceeds the file (%" PRIu64 " bytes) or 100 MiB",
                       hlen, file_len);
    *out = hlen;
    return 0;
}

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

/* One entry name -> {dtype, shape, data_offsets} into *t (whose name is set), its
 * dimensions into dims. */
static int parse_tensor(eng_st_tensor *t, uint64_t *dims, const json_t *v, uint64_t data_len,
                        const char *label, const eng_st_rules *r)
{
    const char *name = t->name;
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_object(v) || !json_is_string(dt) || !json_is_array(shape) ||
        !json_is_array(offs) || json_array_size(offs) != 2)
        return st_fail(r, label,
                       "tensor '%.120s': needs dtype, shape and data_offsets [begin, end]", name);
    const char *dname = json_string_value(dt);
    int dtype = dtype_find(dname);
    if (dtype < 0 || (r->dtypes && !(r->dtypes & (1u << dtype)))) {
        if (!r->dtypes)
            return st_fail(r, label, "tensor '%.120s': unknown dtype '%.40s'", name, dname);
        char list[200];
        dtype_list(r->dtypes, list, sizeof list);
        return st_fail(r, label, "tensor '%.120s': dtype '%.40s' is not supported (%s are)", name,
                       dname, list);
    }
    unsigned esize = st_dtypes[dtype].size;
    size_t nd = json_array_size(shape);
    if (nd < r->min_dims || (r->max_dims && nd > r->max_dims)) {
        if (r->max_dims)
            return st_fail(r, label, "tensor '%.120s': %zu dimensions (%u to %u are supported)",
                           name, nd, r->min_dims, r->max_dims);
        return st_fail(r, label, "tensor '%.120s': %zu dimensions (at least %u are supported)",
                       name, nd, r->min_dims);
    }
    /* The element count, stopped where it overflows. Without zeros the running product
     * only grows, so it can stop as soon as the bytes pass INT64_MAX (no file holds
     * more); with zeros a later 0 empties the tensor, so only the product itself
     * overflowing stops it (safetensors' checked_mul), and a byte count past INT64_MAX
     * is refused with the offsets below. */
    const uint64_t max_elems = r->positive_dims ? (uint64_t)INT64_MAX / esize : UINT64_MAX;
    uint64_t elems = 1;
    for (size_t d = 0; d < nd; d++) {
        uint64_t dim;
        if (!json_u64(json_array_get(shape, d), &dim) || (r->positive_dims && dim == 0))
            return st_fail(r, label, "tensor '%.120s': shape is not a list of %s integers", name,
                           r->positive_dims ? "positive" : "non-negative");
        if (dim && elems > max_elems / dim)
            return st_fail(r, label, "tensor '%.120s': shape overflows", name);
        dims[d] = dim;
        elems *= dim;
    }
    uint64_t begin, end;
    if (!json_u64(json_array_get(offs, 0), &begin) || !json_u64(json_array_get(offs, 1), &end) ||
        end < begin)
        return st_fail(r, label, "tensor '%.120s': bad data_offsets", name);
    if (end > data_len)
        return st_fail(r, label,
                       "tensor '%.120s': data past end of file (data_offsets [%" PRIu64 ", %" PRIu64
                       "] are past the %" PRIu64 " data bytes)",
                       name, begin, end, data_len);
    if (elems > (uint64_t)INT64_MAX / esize || end - begin != elems * esize)
        return st_fail(r, label,
                       "tensor '%.120s': %" PRIu64 " bytes for a %s tensor of %" PRIu64 " elements",
                       name, end - begin, dname, elems);
    t->dtype = dtype;
    t->n_dims = (uint32_t)nd;
    t->n_elems = elems;
    t->offset = begin;
    t->size = end - begin;
    return 0;
}

/* The format's rule: the data area is indexed entirely, with neither overlaps nor holes. */
static int check_ranges(st_range *ranges, size_t n, uint64_t data_len, const char *label,
                        const eng_st_rules *r)
{
    qsort(ranges, n, sizeof *ranges, cmp_range);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (ranges[i].begin < at)
            return st_fail(r, label, "tensor '%.120s' overlaps tensor '%.120s'", ranges[i].name,
                           ranges[i - 1].name);
        if (ranges[i].begin > at)
            return st_fail(r, label, "unindexed bytes before tensor '%.120s'", ranges[i].name);
        at = ranges[i].end;
    }
    if (at != data_len)
        return st_fail(r, label, "%" PRIu64 " data bytes but the tensors cover %" PRIu64, data_len,
                       at);
    return 0;
}

int eng_st_parse(eng_st_header *out, const void *p, size_t avail, uint64_t file_len,
                 const char *label, const eng_st_rules *rules)
{
    const unsigned char *b = p;
    json_t *root = NULL;
    st_range *ranges = NULL;
    uint64_t hlen;
    int rc;
    memset(out, 0, sizeof *out);
    if (file_len >= 8 && avail < 8) return st_fail(rules, label, "header is truncated");
    if ((rc = eng_st_header_length(&hlen, b, file_len, label, rules))) return rc;
    if (avail - 8 < hlen) return st_fail(rules, label, "header is truncated");
    json_error_t jerr;
    root = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return st_fail(rules, label, "header is not valid JSON: %s", jerr.text);
    if (!json_is_object(root)) {
        rc = st_fail(rules, label, "header is not a JSON object");
        goto done;
    }
    uint64_t data_len = file_len - 8 - hlen;

    /* Sizes first, so that names and shapes live in one block each. */
    size_t n = 0, name_bytes = 0, n_dims = 0;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v)
    {
        if (!strcmp(name, "__metadata__")) continue;
        n++;
        name_bytes += strlen(name) + 1;
        json_t *shape = json_object_get(v, "shape");
        if (json_is_array(shape)) n_dims += json_array_size(shape);
    }
    out->t = calloc(n ? n : 1, sizeof *out->t);
    out->name_pool = malloc(name_bytes ? name_bytes : 1);
    out->dim_pool = calloc(n_dims ? n_dims : 1, sizeof *out->dim_pool);
    ranges = calloc(n ? n : 1, sizeof *ranges);
    if (!out->t || !out->name_pool || !out->dim_pool || !ranges) {
        rc = st_oom(rules);
        goto done;
    }
    char *name_at = out->name_pool;
    uint64_t *dims_at = out->dim_pool;
    json_object_foreach(root, name, v)
    {
        if (!strcmp(name, "__metadata__")) {
            if (rules->strict_metadata && !json_is_object(v)) {
                rc = st_fail(rules, label, "__metadata__ is not an object");
                goto done;
            }
            continue;
        }
        eng_st_tensor *t = &out->t[out->n];
        size_t nl = strlen(name) + 1;
        memcpy(name_at, name, nl);
        t->name = name_at;
        t->shape = dims_at;
        name_at += nl;
        if ((rc = parse_tensor(t, dims_at, v, data_len, label, rules))) goto done;
        dims_at += t->n_dims;
        ranges[out->n] = (st_range){t->offset, t->offset + t->size, t->name};
        out->n++;
    }
    if ((rc = check_ranges(ranges, out->n, data_len, label, rules))) goto done;
    out->data_offset = 8 + hlen;
    out->data_len = data_len;
done:
    free(ranges);
    json_decref(root);
    if (rc) eng_st_header_clear(out);
    return rc;
}

void eng_st_header_clear(eng_st_header *h)
{
    if (!h) return;
    free(h->t);
    free(h->name_pool);
    free(h->dim_pool);
    memset(h, 0, sizeof *h);
}
