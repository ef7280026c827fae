/* engine/bytes.h (internal): little-endian loads and stores of unaligned bytes, one
 * byte at a time, so that block layouts (GGUF tensor data, ggml's quant blocks) need no
 * alignment and the code does not depend on the host's byte order. Not for whole-file
 * reading or writing (engine/gguf.c, engine/gguf_write.c). */
#ifndef MLV_ENGINE_BYTES_H
#define MLV_ENGINE_BYTES_H

#include <stdint.h>
#include <string.h>

#include "engine/engine.h"

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* An IEEE half, widened to float. */
static inline float rd_half(const uint8_t *p)
{
    return eng_fp16_to_fp32(rd16(p));
}

static inline float rd_f32(const uint8_t *p)
{
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

#endif
