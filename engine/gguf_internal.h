/* engine/gguf_internal.h (internal): what the GGUF reader (engine/gguf.c) and writer
 * (engine/gguf_write.c) must agree on beyond engine.h — the reader's limits, which the
 * writer enforces so that whatever it writes reads back, and the size of a scalar KV
 * value (GGUF v3, ggml/docs/gguf.md). Not for other modules. */
#ifndef MLV_ENGINE_GGUF_INTERNAL_H
#define MLV_ENGINE_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

#define GGUF_MAX_TENSORS 1000000u
#define GGUF_MAX_KV 1000000u
#define GGUF_MAX_STR (64u << 20) /* bytes in one string value */
#define GGUF_MAX_NAME 63         /* ggml's GGML_MAX_NAME (64) with its NUL */
#define GGUF_DEFAULT_ALIGN 32

/* Size in the file of one scalar value of a KV type (enum eng_gguf_vtype); 0 for string,
 * array and unknown types. */
static inline size_t eng_gguf_vtype_size(uint32_t t)
{
    switch (t) {
    case ENG_GGUF_U8:
    case ENG_GGUF_I8:
    case ENG_GGUF_BOOL: return 1;
    case ENG_GGUF_U16:
    case ENG_GGUF_I16: return 2;
    case ENG_GGUF_U32:
    case ENG_GGUF_I32:
    case ENG_GGUF_F32: return 4;
    case ENG_GGUF_U64:
    case ENG_GGUF_I64:
    case ENG_GGUF_F64: return 8;
    default: return 0;
    }
}

#endif
