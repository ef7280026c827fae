/* engine/safetensors.h (internal): the safetensors header, parsed and validated once for
 * engine/describe.c (reads it from a file) and engine/convert.c (reads the file mapped).
 * The format (huggingface/safetensors): an 8-byte little-endian header length, a JSON
 * object of name -> {dtype, shape, data_offsets: [begin, end]} (plus an optional
 * __metadata__, not returned), then the data area, which the tensors must index
 * entirely, with neither overlaps nor holes (so a file cannot hide a second payload).
 * Not a loader: tensor data is never read here. */
#ifndef MLV_ENGINE_SAFETENSORS_H
#define MLV_ENGINE_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The dtypes the format names (its Dtype enum, but for the sub-byte ones). */
enum eng_st_dtype {
    ENG_ST_F32,
    ENG_ST_F16,
    ENG_ST_BF16,
    ENG_ST_F64,
    ENG_ST_BOOL,
    ENG_ST_U8,
    ENG_ST_I8,
    ENG_ST_F8_E5M2,
    ENG_ST_F8_E4M3,
    ENG_ST_F8_E8M0,
    ENG_ST_I16,
    ENG_ST_U16,
    ENG_ST_I32,
    ENG_ST_U32,
    ENG_ST_I64,
    ENG_ST_U64,
    ENG_ST_NDTYPES
};

/* The name as the header spells it ("F32", "BF16", ...), and bytes per element. */
const char *eng_st_dtype_name(int dtype);
unsigned eng_st_dtype_size(int dtype);

/* What a caller accepts beyond the format itself. Every error message reads
 * "<prefix>safetensors <label>: ...". */
typedef struct eng_st_rules {
    const char *prefix;   /* before every message, e.g. "convert: "; NULL for none */
    uint32_t dtypes;      /* accepted dtypes, a mask of 1u << ENG_ST_*; 0 for all */
    uint32_t min_dims;    /* fewest dimensions a shape may have */
    uint32_t max_dims;    /* most dimensions; 0 for no limit */
    bool positive_dims;   /* refuse a 0 in a shape (the format allows empty tensors) */
    bool strict_metadata; /* __metadata__, when there, must be an object (else ignored) */
} eng_st_rules;

typedef struct eng_st_tensor {
    const char *name; /* owned by the header */
    int dtype;        /* enum eng_st_dtype */
    uint32_t n_dims;
    const uint64_t *shape; /* n_dims of them, slowest axis first; owned by the header */
    uint64_t n_elems;      /* n_elems * dtype size = size */
    uint64_t offset, size; /* bytes, from the start of the data area */
} eng_st_tensor;

typedef struct eng_st_header {
    eng_st_tensor *t; /* in the header's order */
    size_t n;
    uint64_t data_offset; /* where the data area starts in the file: 8 + header length */
    uint64_t data_len;    /* the data area's size: exactly what the tensors cover */
    char *name_pool;      /* private: the storage behind t[i].name */
    uint64_t *dim_pool;   /* private: the storage behind t[i].shape */
} eng_st_header;

/* The header length from a file's first 8 bytes `p` (not read when the file is
 * shorter), checked against the file's size and the format's 100 MiB limit. 0 or
 * MLV_EINVAL. */
int eng_st_header_length(uint64_t *out, const unsigned char *p, uint64_t file_len,
                         const char *label, const eng_st_rules *rules);

/* Parses and validates the header of a file of file_len bytes whose first `avail` bytes
 * are at `p` (at least 8 + the header length of them; the data area need not be there).
 * On success *out holds the tensors, to be released with eng_st_header_clear; on
 * failure (MLV_EINVAL, MLV_ENOMEM) it is empty. */
int eng_st_parse(eng_st_header *out, const void *p, size_t avail, uint64_t file_len,
                 const char *label, const eng_st_rules *rules);

/* Frees what eng_st_parse allocated; a zeroed or cleared header is fine. */
void eng_st_header_clear(eng_st_header *h);

#endif
