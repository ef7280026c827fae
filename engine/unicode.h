/* engine/unicode.h: internal to engine/ — the Unicode pieces the tokenizers need, as
 * llama.cpp's src/unicode.cpp has them: strict UTF-8, code point classes (the generated
 * engine/unicode_tables.h), GPT-2's byte <-> code point mapping, and the byte-level BPE
 * pre-tokenizers (the regexes llama-vocab.cpp names per tokenizer.ggml.pre) written as
 * hand-made matchers over code points. No normalisation (NFC/NFD): the supported models
 * need none. */
#ifndef MLV_ENGINE_UNICODE_H
#define MLV_ENGINE_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Code point classes (llama.cpp's unicode_cpt_flags bits). Every code point has exactly
 * one of NUMBER..CONTROL (unassigned ones are CONTROL); WHITESPACE is the Unicode
 * White_Space property (\s). */
enum {
    UNI_NUMBER = 0x0002,      /* \p{N} */
    UNI_LETTER = 0x0004,      /* \p{L} */
    UNI_SEPARATOR = 0x0008,   /* \p{Z} */
    UNI_ACCENT_MARK = 0x0010, /* \p{M} */
    UNI_PUNCTUATION = 0x0020, /* \p{P} */
    UNI_SYMBOL = 0x0040,      /* \p{S} */
    UNI_CONTROL = 0x0080,     /* \p{C} */
    UNI_WHITESPACE = 0x0100,  /* \s */
};

/* The classes of a code point; 0 beyond U+10FFFF. */
uint16_t uni_flags(uint32_t cpt);
/* The Unicode version the class table was generated from ("14.0.0"). */
const char *uni_tables_version(void);

/* Decodes one code point of well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF) from s[0..len). Returns the bytes used (1..4),
 * or 0 when the bytes there are not well-formed. */
int uni_utf8_next(const unsigned char *s, size_t len, uint32_t *cpt);
/* Byte offset of the first ill-formed sequence, or len when all of s is well formed. */
size_t uni_utf8_check(const char *s, size_t len);
/* Encodes cpt (<= 0x10FFFF) into out; returns the length (1..4). */
int uni_utf8_put(uint32_t cpt, char out[4]);

/* GPT-2's byte-level alphabet: every byte as a printable code point (bytes_to_unicode
 * in OpenAI's encoder.py; llama.cpp's unicode_byte_to_utf8). */
uint32_t uni_byte_to_cpt(uint8_t b);
/* The inverse: the byte, or -1 for a code point outside the alphabet. */
int uni_cpt_to_byte(uint32_t cpt);

/* Pre-tokenizers of byte-level BPE: which regexes split the text into words before the
 * merges run (llama-vocab.cpp's llm_tokenizer_bpe, by pre type). */
enum uni_pretok {
    /* [\p{P}\$\+<=>\^~\|]+ , then GPT2, then \p{N}+ , then [0-9][0-9][0-9] */
    UNI_PRE_DEFAULT = 1,
    /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) (and \s+) */
    UNI_PRE_GPT2,
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
     *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    UNI_PRE_LLAMA3,
    /* as LLAMA3 with \p{N} (one digit) for \p{N}{1,3} */
    UNI_PRE_QWEN2,
    /* \p{N} (every digit alone), then GPT2 */
    UNI_PRE_SMOLLM,
};

/* A growable list of word lengths, in code points. */
typedef struct uni_words {
    size_t *len;
    size_t n, cap;
} uni_words;
void uni_words_free(uni_words *w);

/* Splits cpts[0..n) into words with pre-tokenizer `kind`; the lengths replace what `out`
 * held (its storage is reused). Every code point lands in exactly one word, in order.
 * MLV_ENOMEM or MLV_EINVAL (unknown kind). */
int uni_pretokenize(int kind, const uint32_t *cpts, size_t n, uni_words *out);

#endif
