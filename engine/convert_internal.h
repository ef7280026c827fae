/* engine/convert_internal.h (internal): what the two halves of HF -> GGUF conversion
 * share — engine/convert.c (weights, hyper-parameters, the file) hands the parsed
 * tokenizer files to engine/convert_tokenizer.c (tokenizer.ggml.* and the chat
 * template). Not for other modules: engine.h has the public conversion calls. */
#ifndef MLV_ENGINE_CONVERT_INTERNAL_H
#define MLV_ENGINE_CONVERT_INTERNAL_H

#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "engine/engine.h"

/* The tokenizer's sources, all borrowed for the call. */
typedef struct eng_hf_tokenizer {
    json_t *tok;      /* tokenizer.json */
    json_t *tcfg;     /* tokenizer_config.json; NULL when the folder has none */
    json_t *cfg;      /* config.json (its *_token_id) */
    const char *arch; /* general.architecture: "llama" or "qwen2" */
    uint32_t n_vocab; /* config.json's vocab_size; 0: the tokenizer's own size */
} eng_hf_tokenizer;

/* tokenizer.json (byte-level BPE) -> tokenizer.ggml.* and tokenizer.chat_template* KV
 * pairs on w (which copies what it is given). 0, or MLV_EINVAL / MLV_EUNSUPPORTED /
 * MLV_ENOMEM with a "convert: ..." message. */
int eng_convert_tokenizer(eng_gguf_writer *w, const eng_hf_tokenizer *src);

static inline int eng_convert_oom(void)
{
    return core_err_set(MLV_ENOMEM, "convert: out of memory");
}

/* A JSON string as a C string, or NULL when it is not a string or holds a NUL byte
 * (GGUF strings could, but the writer takes C strings). */
static inline const char *eng_json_cstr(const json_t *v)
{
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

#endif
