/* engine/tokenizer.c: tokenizers from GGUF metadata (tokenizer.ggml.*), behaving as
 * llama.cpp's src/llama-vocab.cpp: byte-level BPE ("gpt2": merges ranked by their order,
 * the pre-tokenizer tokenizer.ggml.pre names, GPT-2's byte alphabet) and SentencePiece
 * ("llama": merges by token score, <0xNN> byte fallback, "▁" for spaces, a space prefix).
 * Special tokens are cut out of the text first (llama.cpp's tokenizer_st_partition);
 * end-of-generation tokens are found as llama.cpp finds them. Unicode matters live in
 * engine/unicode.c; chat templates in engine/chat.c. The tokenizer copies what it needs,
 * so it does not borrow from the eng_gguf it was loaded from.
 *
 * Deliberate differences from llama.cpp: metadata it would warn about or silently mend is
 * refused here (MLV_EINVAL): special token ids out of range, scores or token types whose
 * count is not the token count, merges naming strings that are not tokens; and invalid
 * UTF-8 text is refused rather than read as U+FFFD. The tokenizer models WPM, UGM, RWKV
 * and the pre-tokenizers not listed in pre_defs are MLV_EUNSUPPORTED. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/unicode.h"

enum { MODEL_SPM = 1, MODEL_BPE = 2 };

/* llama.cpp's llama_token_type (the values in tokenizer.ggml.token_type) ... */
enum {
    TYPE_UNDEFINED = 0,
    TYPE_NORMAL = 1,
    TYPE_UNKNOWN = 2,
    TYPE_CONTROL = 3,
    TYPE_USER_DEFINED = 4,
    TYPE_UNUSED = 5,
    TYPE_BYTE = 6,
};
/* ... and llama_token_attr, what the tokenizer works with; EOG is ours. */
enum {
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
    ATTR_EOG = 1 << 15,
};

#define TOKEN_NULL (-1)
#define SPACE_ESC "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space */

/* ------------------------------------------------------------- string map ---- */
/* Open addressing over keys borrowed from the tokenizer's own copies. A key may be a
 * pair "first second" split at `split` (the merges), looked up without building it. */

typedef struct smap_ent {
    const char *key;
    uint32_t len, split, hash;
    int32_t val;
} smap_ent;

typedef struct smap {
    smap_ent *ent;
    size_t n, cap;
    uint32_t *slot; /* entry index + 1; 0 = empty */
    size_t mask;
} smap;

static uint32_t fnv1a(uint32_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}
#define FNV_INIT 2166136261u

static int smap_init(smap *m, size_t cap)
{
    size_t slots = 16;
    while (slots < 2 * cap)
        slots *= 2;
    m->ent = calloc(cap ? cap : 1, sizeof *m->ent);
    m->slot = calloc(slots, sizeof *m->slot);
    if (!m->ent || !m->slot) return core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
    m->cap = cap;
    m->n = 0;
    m->mask = slots - 1;
    return 0;
}

static void smap_free(smap *m)
{
    free(m->ent);
    free(m->slot);
    memset(m, 0, sizeof *m);
}

static bool ent_is_pair(const smap_ent *e, const char *a, size_t al, const char *b, size_t bl)
{
    return e->split == al && e->len == al + 1 + bl && memcmp(e->key, a, al) == 0 &&
           e->key[al] == ' ' && memcmp(e->key + al + 1, b, bl) == 0;
}

/* Finds the pair (a, b) (b == NULL: the plain key a); the value or -1. */
static int32_t smap_find(const smap *m, const char *a, size_t al, const char *b, size_t bl)
{
    uint32_t h = fnv1a(FNV_INIT, a, al);
    if (b) h = fnv1a(fnv1a(h, " ", 1), b, bl);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t s = m->slot[i];
        if (!s) return -1;
        const smap_ent *e = &m->ent[s - 1];
        if (e->hash != h) continue;
        if (b ? ent_is_pair(e, a, al, b, bl)
              : (e->len == al && e->split == al && memcmp(e->key, a, al) == 0))
            return e->val;
    }
}

/* Adds key (pair when split < len, the space at key[split]) unless present; returns the
 * value already there, or -1 when it was added. cap entries must not be exceeded. */
static int32_t smap_add(smap *m, const char *key, uint32_t len, uint32_t split, int32_t val)
{
    uint32_t h = fnv1a(FNV_INIT, key, split);
    if (split < len) h = fnv1a(fnv1a(h, " ", 1), key + split + 1, len - split - 1);
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t s = m->slot[i];
        if (!s) break;
        const smap_ent *e = &m->ent[s - 1];
        if (e->hash == h && e->len == len && e->split == split && memcmp(e->key, key, len) == 0)
            return e->val;
    }
    m->ent[m->n] = (smap_ent){.key = key, .len = len, .split = split, .hash = h, .val = val};
    m->slot[i] = (uint32_t)++m->n;
    return -1;
}

/* -------------------------------------------------------------- the model ---- */

typedef struct tok_info {
    const char *text; /* NUL-terminated copy */
    uint32_t len;
    float score;
    uint16_t attr;
} tok_info;

struct eng_tokenizer {
    int model; /* MODEL_* */
    int pre;   /* UNI_PRE_* (BPE) */
    bool add_bos, add_eos, add_space_prefix, clean_spaces, ignore_merges;
    int32_t bos, eos, eot, eom, unk, sep, pad, mask;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;

    size_t n_vocab;
    tok_info *tok;
    char *text;  /* every token's text, NUL after each */
    smap tokens; /* text -> id */

    char *merge_text; /* every merge, NUL after each */
    smap merges;      /* "first second" -> rank */

    int32_t *special; /* control, user-defined and unknown tokens, longest first */
    size_t n_special;
    int32_t byte_tok[256]; /* SentencePiece: the token of each byte, or -1 */
};

/* tokenizer.ggml.pre values llama.cpp knows, with what each implies there. */
typedef struct pre_def {
    const char *name;
    int kind;
    bool clean_spaces, ignore_merges, add_bos;
} pre_def;

static const pre_def pre_defs[] = {
    {"default", UNI_PRE_DEFAULT, true, false, false},
    {"llama3", UNI_PRE_LLAMA3, true, true, true},
    {"llama-v3", UNI_PRE_LLAMA3, true, true, true},
    {"llama-bpe", UNI_PRE_LLAMA3, true, true, true},
    {"falcon3", UNI_PRE_LLAMA3, true, true, true},
    {"falcon-h1", UNI_PRE_LLAMA3, true, true, true},
    {"pixtral", UNI_PRE_LLAMA3, true, true, true},
    {"midm-2.0", UNI_PRE_LLAMA3, true, true, true},
    {"lfm2", UNI_PRE_LLAMA3, true, true, true},
    {"dbrx", UNI_PRE_LLAMA3, true, false, false},
    {"smaug-bpe", UNI_PRE_LLAMA3, true, false, false},
    {"gpt-2", UNI_PRE_GPT2, true, false, false},
    {"gpt2", UNI_PRE_GPT2, true, false, false}, /* not in llama.cpp: an alias of gpt-2 */
    {"phi-2", UNI_PRE_GPT2, true, false, false},
    {"jina-es", UNI_PRE_GPT2, true, false, false},
    {"jina-de", UNI_PRE_GPT2, true, false, false},
    {"jina-v2-es", UNI_PRE_GPT2, true, false, false},
    {"jina-v2-de", UNI_PRE_GPT2, true, false, false},
    {"gigachat", UNI_PRE_GPT2, true, false, false},
    {"a.x-4.0", UNI_PRE_GPT2, true, false, false},
    {"mellum", UNI_PRE_GPT2, true, false, false},
    {"modern-bert", UNI_PRE_GPT2, true, false, false},
    {"exaone4", UNI_PRE_GPT2, true, false, false},
    {"mpt", UNI_PRE_GPT2, true, false, false},
    {"olmo", UNI_PRE_GPT2, true, false, false},
    {"jais", UNI_PRE_GPT2, true, false, false},
    {"trillion", UNI_PRE_GPT2, false, false, false},
    {"granite-docling", UNI_PRE_GPT2, false, false, false},
    {"qwen2", UNI_PRE_QWEN2, false, false, false},
    {"deepseek-r1-qwen", UNI_PRE_QWEN2, false, false, false},
    {"kormo", UNI_PRE_QWEN2, false, false, false},
    {"f2llmv2", UNI_PRE_QWEN2, false, false, false},
    {"hunyuan", UNI_PRE_QWEN2, false, false, false},
    {"solar-open", UNI_PRE_QWEN2, false, false, false},
    {"stablelm2", UNI_PRE_QWEN2, true, false, false},
    {"megrez", UNI_PRE_QWEN2, true, false, false},
    {"smollm", UNI_PRE_SMOLLM, false, false, false},
    {"command-r", UNI_PRE_SMOLLM, false, false, false},
    {"starcoder", UNI_PRE_SMOLLM, true, false, false},
    {"refact", UNI_PRE_SMOLLM, true, false, false},
    {"codeshell", UNI_PRE_SMOLLM, true, false, false},
    {"exaone", UNI_PRE_SMOLLM, true, false, false},
    {"minerva-7b", UNI_PRE_SMOLLM, true, false, false},
    {"mellum2", UNI_PRE_SMOLLM, true, false, false},
};

/* Texts llama.cpp recognises special tokens by (when the metadata does not name them);
 * each found token also becomes a control token. FWB: U+FF5C, in DeepSeek's markers. */
#define FWB "\xef\xbd\x9c"
/* clang-format off */
static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<" FWB "end" SPACE_ESC "of" SPACE_ESC "sentence" FWB ">",
    "<end_of_utterance>", NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
static const char *const fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<" FWB "fim" SPACE_ESC "begin" FWB ">",
    "<PRE>", SPACE_ESC "<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<" FWB "fim" SPACE_ESC "hole" FWB ">",
    "<SUF>", SPACE_ESC "<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<" FWB "fim" SPACE_ESC "end" FWB ">",
    "<MID>", SPACE_ESC "<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const fim_pad_texts[] = {
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const fim_rep_texts[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};
/* End of generation, by text: llama.cpp's list. Its two model-specific exceptions (<|end|>
 * is no EOG next to <|return|> and <|call|>, gpt-oss; </s> none next to <|tool_response>,
 * Gemma 4) are not applied: those tokenizers are not supported here. */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<" FWB "end" SPACE_ESC "of" SPACE_ESC "sentence" FWB ">", "[e~[", NULL};
/* clang-format on */

void eng_tokenizer_free(eng_tokenizer *t)
{
    if (!t) return;
    free(t->tok);
    free(t->text);
    smap_free(&t->tokens);
    free(t->merge_text);
    smap_free(&t->merges);
    free(t->special);
    free(t);
}

size_t eng_tokenizer_n_vocab(const eng_tokenizer *t)
{
    return t ? t->n_vocab : 0;
}
int32_t eng_token_bos(const eng_tokenizer *t)
{
    return t ? t->bos : TOKEN_NULL;
}
int32_t eng_token_eos(const eng_tokenizer *t)
{
    return t ? t->eos : TOKEN_NULL;
}

bool eng_token_is_eog(const eng_tokenizer *t, int32_t id)
{
    return t && id >= 0 && (size_t)id < t->n_vocab && (t->tok[id].attr & ATTR_EOG);
}

/* ---------------------------------------------------------------- loading ---- */

#define KEY(k) "tokenizer.ggml." k

static bool has_key(const eng_gguf *g, const char *key)
{
    return eng_gguf_find_key(g, key) >= 0;
}

/* An optional bool key: left as it is when absent, MLV_EINVAL when not a bool. */
static int opt_bool(const eng_gguf *g, const char *key, bool *v)
{
    if (!has_key(g, key)) return 0;
    int rc = eng_gguf_get_bool(g, key, v);
    return rc ? core_err_wrap("tokenizer") : 0;
}

/* An optional token id: must name a token. */
static int opt_id(const eng_gguf *g, const char *key, size_t n_vocab, int32_t *id)
{
    if (!has_key(g, key)) return 0;
    int64_t v;
    if (eng_gguf_get_int(g, key, &v)) return core_err_wrap("tokenizer");
    if (v < 0 || (uint64_t)v >= n_vocab)
        return core_err_set(MLV_EINVAL,
                            "tokenizer: %s = %" PRId64 " is not a token id (%zu tokens)", key, v,
                            n_vocab);
    *id = (int32_t)v;
    return 0;
}

static uint16_t attr_of_type(int32_t type)
{
    switch (type) {
    case TYPE_UNKNOWN: return ATTR_UNKNOWN;
    case TYPE_UNUSED: return ATTR_UNUSED;
    case TYPE_NORMAL: return ATTR_NORMAL;
    case TYPE_CONTROL: return ATTR_CONTROL;
    case TYPE_USER_DEFINED: return ATTR_USER_DEFINED;
    case TYPE_BYTE: return ATTR_BYTE;
    default: return 0; /* undefined, as llama.cpp reads unknown values */
    }
}

static int load_tokens(eng_tokenizer *t, const eng_gguf *g)
{
    int et = -1;
    uint64_t n = 0;
    if (!has_key(g, KEY("tokens")))
        return core_err_set(MLV_EINVAL, "tokenizer: no tokenizer.ggml.tokens in the model");
    if (eng_gguf_arr_info(g, KEY("tokens"), &et, &n)) return core_err_wrap("tokenizer");
    if (et != ENG_GGUF_STRING)
        return core_err_set(MLV_EINVAL,
                            "tokenizer: tokenizer.ggml.tokens is not an array of strings");
    if (n == 0 || n >= INT32_MAX)
        return core_err_set(MLV_EINVAL, "tokenizer: tokenizer.ggml.tokens holds %" PRIu64 " tokens",
                            n);
    t->n_vocab = (size_t)n;

    const float *fscores = NULL;
    const int32_t *iscores = NULL, *types = NULL;
    if (has_key(g, KEY("scores"))) {
        const void *d;
        uint64_t ns;
        if (eng_gguf_arr_data(g, KEY("scores"), &et, &ns, &d)) return core_err_wrap("tokenizer");
        if (et != ENG_GGUF_F32 && et != ENG_GGUF_I32)
            return core_err_set(MLV_EINVAL, "tokenizer: tokenizer.ggml.scores is not f32 or i32");
        if (ns != n)
            return core_err_set(MLV_EINVAL, "tokenizer: %" PRIu64 " scores for %" PRIu64 " tokens",
                                ns, n);
        if (et == ENG_GGUF_F32)
            fscores = d;
        else
            iscores = d;
    }
    if (has_key(g, KEY("token_type"))) {
        const void *d;
        uint64_t nt;
        if (eng_gguf_arr_data(g, KEY("token_type"), &et, &nt, &d))
            return core_err_wrap("tokenizer");
        if (et != ENG_GGUF_I32)
            return core_err_set(MLV_EINVAL, "tokenizer: tokenizer.ggml.token_type is not i32");
        if (nt != n)
            return core_err_set(MLV_EINVAL,
                                "tokenizer: %" PRIu64 " token types for %" PRIu64 " tokens", nt, n);
        types = d;
    }

    /* First pass: sizes (an empty token becomes "[EMPTY_<id>]", as in llama.cpp). */
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        if (eng_gguf_arr_str(g, KEY("tokens"), i, &s)) return core_err_wrap("tokenizer");
        size_t l = strlen(s);
        if (l > UINT32_MAX / 2)
            return core_err_set(MLV_EINVAL, "tokenizer: token %" PRIu64 " is too long", i);
        total += (l ? l : 32) + 1;
    }
    t->tok = calloc((size_t)n, sizeof *t->tok);
    t->text = malloc(total);
    if (!t->tok || !t->text) return core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
    int rc = smap_init(&t->tokens, (size_t)n);
    if (rc) return rc;

    char *p = t->text;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        if (eng_gguf_arr_str(g, KEY("tokens"), i, &s)) return core_err_wrap("tokenizer");
        size_t l = strlen(s);
        if (l == 0) {
            l = (size_t)snprintf(p, 32, "[EMPTY_%" PRIu64 "]", i);
        } else {
            memcpy(p, s, l + 1);
        }
        tok_info *tk = &t->tok[i];
        tk->text = p;
        tk->len = (uint32_t)l;
        tk->score = fscores ? fscores[i] : iscores ? (float)iscores[i] : 0.0f;
        tk->attr = types ? attr_of_type(types[i]) : ATTR_NORMAL;
        int32_t prev = smap_add(&t->tokens, p, (uint32_t)l, (uint32_t)l, (int32_t)i);
        if (prev >= 0)
            return core_err_set(MLV_EINVAL,
                                "tokenizer: duplicate token '%s' (ids %" PRId32 " and %" PRIu64 ")",
                                p, prev, i);
        p += l + 1;
    }
    return 0;
}

static int32_t find_token(const eng_tokenizer *t, const char *s, size_t n)
{
    return smap_find(&t->tokens, s, n, NULL, 0);
}

/* The token whose text is a followed by b, or -1. */
static int32_t find_concat(const eng_tokenizer *t, const char *a, size_t al, const char *b,
                           size_t bl)
{
    const smap *m = &t->tokens;
    uint32_t h = fnv1a(fnv1a(FNV_INIT, a, al), b, bl);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t s = m->slot[i];
        if (!s) return -1;
        const smap_ent *e = &m->ent[s - 1];
        if (e->hash == h && e->len == al + bl && memcmp(e->key, a, al) == 0 &&
            memcmp(e->key + al, b, bl) == 0)
            return e->val;
    }
}

static int load_merges(eng_tokenizer *t, const eng_gguf *g)
{
    int et = -1;
    uint64_t n = 0;
    if (!has_key(g, KEY("merges")))
        return core_err_set(MLV_EINVAL, "tokenizer: a BPE model needs tokenizer.ggml.merges");
    if (eng_gguf_arr_info(g, KEY("merges"), &et, &n)) return core_err_wrap("tokenizer");
    if (et != ENG_GGUF_STRING)
        return core_err_set(MLV_EINVAL,
                            "tokenizer: tokenizer.ggml.merges is not an array of strings");
    if (n >= INT32_MAX) return core_err_set(MLV_EINVAL, "tokenizer: %" PRIu64 " merges", n);

    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        if (eng_gguf_arr_str(g, KEY("merges"), i, &s)) return core_err_wrap("tokenizer");
        total += strlen(s) + 1;
    }
    t->merge_text = malloc(total ? total : 1);
    if (!t->merge_text) return core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
    int rc = smap_init(&t->merges, (size_t)n);
    if (rc) return rc;

    char *p = t->merge_text;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        if (eng_gguf_arr_str(g, KEY("merges"), i, &s)) return core_err_wrap("tokenizer");
        size_t l = strlen(s);
        /* "first second", split at the first space after the first byte (llama.cpp) */
        const char *sp = l > 1 ? memchr(s + 1, ' ', l - 1) : NULL;
        if (!sp)
            return core_err_set(MLV_EINVAL, "tokenizer: merge %" PRIu64 " '%s' is not two tokens",
                                i, s);
        size_t al = (size_t)(sp - s), bl = l - al - 1;
        if (find_token(t, s, al) < 0 || find_token(t, sp + 1, bl) < 0)
            return core_err_set(MLV_EINVAL,
                                "tokenizer: merge %" PRIu64 " '%s' names an unknown token", i, s);
        if (find_concat(t, s, al, sp + 1, bl) < 0)
            return core_err_set(
                MLV_EINVAL, "tokenizer: merge %" PRIu64 " '%s' makes a piece that is not a token",
                i, s);
        memcpy(p, s, l + 1);
        smap_add(&t->merges, p, (uint32_t)l, (uint32_t)al, (int32_t)i); /* first rank wins */
        p += l + 1;
    }
    return 0;
}

/* The lowest id among the tokens spelled as one of texts (llama.cpp takes the first its
 * hash map yields); it becomes a control token. Only when *id is not set yet. */
static void detect_by_text(eng_tokenizer *t, int32_t *id, const char *const *texts)
{
    if (*id != TOKEN_NULL) return;
    for (; *texts; texts++) {
        int32_t i = find_token(t, *texts, strlen(*texts));
        if (i >= 0 && (*id == TOKEN_NULL || i < *id)) *id = i;
    }
    if (*id != TOKEN_NULL) t->tok[*id].attr |= ATTR_CONTROL;
}

typedef struct len_id {
    uint32_t len;
    int32_t id;
} len_id;

/* Longest first; ties by id (llama.cpp's std::sort leaves their order open). */
static int cmp_len_id(const void *a, const void *b)
{
    const len_id *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* llama.cpp's auto-detection of special tokens by their text, then the end-of-generation
 * set, then the list special-token matching walks (longest first). */
static int finish_specials(eng_tokenizer *t)
{
    detect_by_text(t, &t->eot, eot_texts);
    detect_by_text(t, &t->eom, eom_texts);
    detect_by_text(t, &t->fim_pre, fim_pre_texts);
    detect_by_text(t, &t->fim_suf, fim_suf_texts);
    detect_by_text(t, &t->fim_mid, fim_mid_texts);
    detect_by_text(t, &t->fim_pad, fim_pad_texts);
    detect_by_text(t, &t->fim_rep, fim_rep_texts);
    detect_by_text(t, &t->fim_sep, fim_sep_texts);

    int32_t eog_ids[] = {t->fim_pad, t->fim_rep, t->fim_sep, t->eos, t->eot, t->eom};
    for (size_t i = 0; i < sizeof eog_ids / sizeof eog_ids[0]; i++)
        if (eog_ids[i] != TOKEN_NULL) t->tok[eog_ids[i]].attr |= ATTR_EOG;
    for (const char *const *e = eog_texts; *e; e++) {
        int32_t i = find_token(t, *e, strlen(*e));
        if (i >= 0) t->tok[i].attr |= ATTR_EOG | ATTR_CONTROL;
    }

    size_t n = 0;
    for (size_t i = 0; i < t->n_vocab; i++)
        if (t->tok[i].attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) n++;
    len_id *order = malloc((n ? n : 1) * sizeof *order);
    t->special = malloc((n ? n : 1) * sizeof *t->special);
    if (!order || !t->special) {
        free(order);
        return core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
    }
    for (size_t i = 0; i < t->n_vocab; i++)
        if (t->tok[i].attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            order[t->n_special++] = (len_id){t->tok[i].len, (int32_t)i};
    qsort(order, t->n_special, sizeof *order, cmp_len_id);
    for (size_t i = 0; i < t->n_special; i++)
        t->special[i] = order[i].id;
    free(order);
    return 0;
}

int eng_tokenizer_load(eng_tokenizer **out, const eng_gguf *g)
{
    if (!out || !g) return core_err_set(MLV_EINVAL, "tokenizer: NULL argument");
    *out = NULL;
    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
    int rc = 0;
    const char *model = NULL, *pre = "";

    if (!has_key(g, KEY("model"))) {
        rc = core_err_set(MLV_EINVAL, "tokenizer: no tokenizer.ggml.model in the model");
        goto done;
    }
    if ((rc = eng_gguf_get_str(g, KEY("model"), &model)) != 0) {
        rc = core_err_wrap("tokenizer");
        goto done;
    }
    t->eot = t->eom = t->sep = t->pad = t->mask = TOKEN_NULL;
    t->fim_pre = t->fim_suf = t->fim_mid = t->fim_pad = t->fim_rep = t->fim_sep = TOKEN_NULL;
    if (strcmp(model, "llama") == 0) {
        t->model = MODEL_SPM;
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_space_prefix = true;
        t->add_bos = true;
    } else if (strcmp(model, "gpt2") == 0) {
        t->model = MODEL_BPE;
        t->bos = 11, t->eos = 11, t->unk = TOKEN_NULL; /* llama.cpp's defaults */
        if (has_key(g, KEY("pre")) && (rc = eng_gguf_get_str(g, KEY("pre"), &pre)) != 0) {
            rc = core_err_wrap("tokenizer");
            goto done;
        }
        const pre_def *d = NULL;
        for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++)
            if (strcmp(pre, pre_defs[i].name) == 0) d = &pre_defs[i];
        if (!*pre) d = &pre_defs[0]; /* none named: "default", as llama.cpp (with a warning) */
        if (!d) {
            rc = core_err_set(MLV_EUNSUPPORTED, "tokenizer: pre-tokenizer '%s' is not supported",
                              pre);
            goto done;
        }
        t->pre = d->kind;
        t->clean_spaces = d->clean_spaces;
        t->ignore_merges = d->ignore_merges;
        t->add_bos = d->add_bos;
    } else {
        rc = core_err_set(MLV_EUNSUPPORTED,
                          "tokenizer: tokenizer model '%s' is not supported (gpt2 and llama are)",
                          model);
        goto done;
    }
    if ((rc = opt_bool(g, KEY("add_space_prefix"), &t->add_space_prefix)) != 0) goto done;
    if ((rc = load_tokens(t, g)) != 0) goto done;
    if (t->model == MODEL_BPE && (rc = load_merges(t, g)) != 0) goto done;

    int32_t *defaults[] = {&t->bos, &t->eos, &t->unk};
    for (size_t i = 0; i < 3; i++)
        if (*defaults[i] >= 0 && (size_t)*defaults[i] >= t->n_vocab) *defaults[i] = TOKEN_NULL;
    struct {
        const char *key;
        int32_t *id;
    } ids[] = {
        {KEY("bos_token_id"), &t->bos},         {KEY("eos_token_id"), &t->eos},
        {KEY("eot_token_id"), &t->eot},         {KEY("eom_token_id"), &t->eom},
        {KEY("unknown_token_id"), &t->unk},     {KEY("seperator_token_id"), &t->sep},
        {KEY("padding_token_id"), &t->pad},     {KEY("mask_token_id"), &t->mask},
        {KEY("fim_pre_token_id"), &t->fim_pre}, {KEY("fim_suf_token_id"), &t->fim_suf},
        {KEY("fim_mid_token_id"), &t->fim_mid}, {KEY("fim_pad_token_id"), &t->fim_pad},
        {KEY("fim_rep_token_id"), &t->fim_rep}, {KEY("fim_sep_token_id"), &t->fim_sep},
        {KEY("prefix_token_id"), &t->fim_pre},  {KEY("suffix_token_id"), &t->fim_suf},
        {KEY("middle_token_id"), &t->fim_mid},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if ((rc = opt_id(g, ids[i].key, t->n_vocab, ids[i].id)) != 0) goto done;
    if ((rc = opt_bool(g, KEY("add_bos_token"), &t->add_bos)) != 0) goto done;
    if ((rc = opt_bool(g, KEY("add_eos_token"), &t->add_eos)) != 0) goto done;
    if (t->add_bos && t->bos == TOKEN_NULL) {
        rc = core_err_set(MLV_EINVAL, "tokenizer: add_bos_token is set but there is no BOS token");
        goto done;
    }
    if (t->add_eos && t->eos == TOKEN_NULL) {
        rc = core_err_set(MLV_EINVAL, "tokenizer: add_eos_token is set but there is no EOS token");
        goto done;
    }

    for (size_t i = 0; i < t->n_vocab; i++) {
        if ((t->tok[i].attr & ATTR_BYTE) && t->tok[i].len < 3) {
            rc = core_err_set(MLV_EINVAL, "tokenizer: byte token %zu '%s' is not <0xNN>", i,
                              t->tok[i].text);
            goto done;
        }
    }
    for (int b = 0; b < 256; b++) {
        char hex[8], raw = (char)b;
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        t->byte_tok[b] = find_token(t, hex, 6);
        if (t->byte_tok[b] < 0) t->byte_tok[b] = find_token(t, &raw, 1);
    }
    rc = finish_specials(t);

done:
    if (rc) {
        eng_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* --------------------------------------------------------------- encoding ---- */

typedef struct frag {
    int32_t tok; /* a special token, or -1 for raw text [off, off + len) */
    size_t off, len;
} frag;

typedef struct sym {
    int32_t prev, next;
    uint32_t off, n; /* bytes of the session buffer; n == 0 once merged away */
} sym;

/* A candidate merge of symbols left and right. Higher prio first (BPE: -rank,
 * SentencePiece: the score), then the leftmost; ln/rn are the symbols' lengths when it
 * was queued, so a stale candidate can be told apart. */
typedef struct bigram {
    double prio;
    int32_t left, right;
    uint32_t ln, rn;
} bigram;

/* Scratch space of one eng_tokenize call. */
typedef struct session {
    const eng_tokenizer *t;
    frag *fr, *fr2;
    size_t nfr, nfr2, cap_fr, cap_fr2;
    uint32_t *cpts;
    size_t cap_cpts;
    uni_words words;
    char *buf;
    size_t nbuf, cap_buf;
    sym *sy;
    size_t nsy, cap_sy;
    bigram *heap;
    size_t nheap, cap_heap;
    int32_t *ids;
    size_t nids, cap_ids;
    int err;
} session;

/* Room for `need` elements of `size` bytes at p (capacity *cap): the (maybe moved) block.
 * On failure the block stays as it was and s->err is set. */
static void *grow_to(session *s, void *p, size_t *cap, size_t need, size_t size)
{
    if (s->err || need <= *cap) return p;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * size);
    if (!q) {
        s->err = core_err_set(MLV_ENOMEM, "tokenizer: out of memory");
        return p;
    }
    *cap = c;
    return q;
}
/* true when arr has room for need elements */
#define GROW(s, arr, cap, need)                                                                    \
    ((arr) = grow_to((s), (arr), &(cap), (need), sizeof *(arr)), !(s)->err)

static void emit(session *s, int32_t id)
{
    if (GROW(s, s->ids, s->cap_ids, s->nids + 1)) s->ids[s->nids++] = id;
}

static void put_frag(session *s, int32_t tok, size_t off, size_t len)
{
    if (GROW(s, s->fr2, s->cap_fr2, s->nfr2 + 1)) s->fr2[s->nfr2++] = (frag){tok, off, len};
}

/* Cuts the special tokens out of the text, longest first, each everywhere it occurs in
 * what is still text (llama.cpp's tokenizer_st_partition). Control and unknown tokens
 * only when parse_special; user-defined ones always. */
static void partition(session *s, const char *text, size_t len, bool parse_special)
{
    const eng_tokenizer *t = s->t;
    s->nfr = 0;
    if (len == 0) return;
    if (!GROW(s, s->fr, s->cap_fr, 1)) return;
    s->fr[s->nfr++] = (frag){-1, 0, len};
    for (size_t k = 0; k < t->n_special && !s->err; k++) {
        const tok_info *tk = &t->tok[t->special[k]];
        if (!parse_special && (tk->attr & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
        if (!memmem(text, len, tk->text, tk->len)) continue; /* the common case, quickly */
        s->nfr2 = 0;
        for (size_t i = 0; i < s->nfr; i++) {
            frag f = s->fr[i];
            if (f.tok >= 0) {
                put_frag(s, f.tok, 0, 0);
                continue;
            }
            size_t off = f.off, end = f.off + f.len;
            while (off < end) {
                const char *m = memmem(text + off, end - off, tk->text, tk->len);
                if (!m) break;
                size_t at = (size_t)(m - text);
                if (at > off) put_frag(s, -1, off, at - off);
                put_frag(s, t->special[k], 0, 0);
                off = at + tk->len;
            }
            if (off < end) put_frag(s, -1, off, end - off);
        }
        frag *tmp = s->fr;
        size_t tcap = s->cap_fr;
        s->fr = s->fr2, s->nfr = s->nfr2, s->cap_fr = s->cap_fr2;
        s->fr2 = tmp, s->cap_fr2 = tcap;
    }
}

static size_t utf8_len_lead(unsigned char c)
{
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* One symbol per UTF-8 character of the session buffer. */
static void split_symbols(session *s)
{
    s->nsy = 0;
    size_t off = 0;
    while (off < s->nbuf && !s->err) {
        size_t l = utf8_len_lead((unsigned char)s->buf[off]);
        if (l > s->nbuf - off) l = s->nbuf - off;
        if (!GROW(s, s->sy, s->cap_sy, s->nsy + 1)) return;
        int32_t i = (int32_t)s->nsy;
        off += l;
        s->sy[s->nsy++] =
            (sym){i - 1, off == s->nbuf ? -1 : i + 1, (uint32_t)(off - l), (uint32_t)l};
    }
}

static bool bigram_before(const bigram *a, const bigram *b)
{
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static void heap_push(session *s, bigram b)
{
    if (!GROW(s, s->heap, s->cap_heap, s->nheap + 1)) return;
    size_t i = s->nheap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!bigram_before(&b, &s->heap[up])) break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = b;
}

static bigram heap_pop(session *s)
{
    bigram top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!bigram_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Queues the merge of symbols l and r when the vocabulary has one. */
static void queue_bigram(session *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    const eng_tokenizer *t = s->t;
    const sym *L = &s->sy[l], *R = &s->sy[r];
    double prio;
    if (t->model == MODEL_BPE) {
        int32_t rank = smap_find(&t->merges, s->buf + L->off, L->n, s->buf + R->off, R->n);
        if (rank < 0) return;
        prio = -(double)rank;
    } else {
        int32_t id = find_token(t, s->buf + L->off, L->n + R->n); /* adjacent: contiguous */
        if (id < 0) return;
        prio = t->tok[id].score;
    }
    heap_push(s, (bigram){prio, l, r, L->n, R->n});
}

/* Merges the queued pairs, best first, until none is left (llm_tokenizer_bpe_session /
 * llm_tokenizer_spm_session). */
static void merge_all(session *s)
{
    s->nheap = 0;
    for (size_t i = 1; i < s->nsy; i++)
        queue_bigram(s, (int32_t)i - 1, (int32_t)i);
    while (s->nheap > 0 && !s->err) {
        bigram b = heap_pop(s);
        sym *L = &s->sy[b.left], *R = &s->sy[b.right];
        if (L->n == 0 || R->n == 0 || L->n != b.ln || R->n != b.rn) continue; /* stale */
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s->sy[R->next].prev = b.left;
        queue_bigram(s, L->prev, b.left);
        queue_bigram(s, b.left, L->next);
    }
}

static void buf_put(session *s, const void *p, size_t n)
{
    if (GROW(s, s->buf, s->cap_buf, s->nbuf + n)) {
        memcpy(s->buf + s->nbuf, p, n);
        s->nbuf += n;
    }
}

/* Byte-level BPE over one word (code points), already pre-tokenized. */
static void bpe_word(session *s, const uint32_t *cpts, size_t n)
{
    const eng_tokenizer *t = s->t;
    s->nbuf = 0;
    for (size_t i = 0; i < n; i++) { /* UTF-8, then every byte as GPT-2's code point */
        char u[4], e[4];
        int ul = uni_utf8_put(cpts[i], u);
        for (int k = 0; k < ul; k++)
            buf_put(s, e, (size_t)uni_utf8_put(uni_byte_to_cpt((uint8_t)u[k]), e));
    }
    if (s->err) return;
    if (t->ignore_merges) {
        int32_t id = find_token(t, s->buf, s->nbuf);
        if (id >= 0) {
            emit(s, id);
            return;
        }
    }
    split_symbols(s);
    merge_all(s);
    for (int32_t i = s->nsy ? 0 : -1; i != -1 && !s->err; i = s->sy[i].next) {
        const sym *y = &s->sy[i];
        if (y->n == 0) continue;
        int32_t id = find_token(t, s->buf + y->off, y->n);
        if (id >= 0) {
            emit(s, id);
            continue;
        }
        /* not a token: llama.cpp looks each byte of the piece up as a one-byte token and
         * drops those it does not find */
        for (uint32_t k = 0; k < y->n; k++) {
            int32_t b = find_token(t, s->buf + y->off + k, 1);
            if (b >= 0) emit(s, b);
        }
    }
}

static void bpe_text(session *s, const char *text, size_t len)
{
    if (!GROW(s, s->cpts, s->cap_cpts, len)) return;
    size_t n = 0, off = 0;
    while (off < len) {
        int l = uni_utf8_next((const unsigned char *)text + off, len - off, &s->cpts[n]);
        if (l == 0) {
            s->err = core_err_set(MLV_EINVAL, "tokenizer: a special token splits a character");
            return;
        }
        off += (size_t)l;
        n++;
    }
    int rc = uni_pretokenize(s->t->pre, s->cpts, n, &s->words);
    if (rc) {
        s->err = rc;
        return;
    }
    size_t start = 0;
    for (size_t w = 0; w < s->words.n && !s->err; w++) {
        bpe_word(s, s->cpts + start, s->words.len[w]);
        start += s->words.len[w];
    }
}

/* SentencePiece over one stretch of text: the space prefix, spaces as U+2581, merges by
 * score, then every symbol that is not a token as byte tokens. */
static void spm_text(session *s, const char *text, size_t len, bool prefix)
{
    const eng_tokenizer *t = s->t;
    s->nbuf = 0;
    if (prefix) buf_put(s, SPACE_ESC, 3);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            buf_put(s, SPACE_ESC, 3);
        else
            buf_put(s, text + i, 1);
    }
    split_symbols(s);
    merge_all(s);
    for (int32_t i = s->nsy ? 0 : -1; i != -1 && !s->err; i = s->sy[i].next) {
        const sym *y = &s->sy[i];
        int32_t id = find_token(t, s->buf + y->off, y->n);
        if (id >= 0) { /* every merged symbol is a token; single characters may not be */
            emit(s, id);
            continue;
        }
        for (uint32_t k = 0; k < y->n; k++) {
            uint8_t b = (uint8_t)s->buf[y->off + k];
            if (t->byte_tok[b] < 0) {
                s->err = core_err_set(MLV_EINVAL, "tokenizer: no token for byte 0x%02X", b);
                return;
            }
            emit(s, t->byte_tok[b]);
        }
    }
}

static void session_free(session *s)
{
    free(s->fr);
    free(s->fr2);
    free(s->cpts);
    uni_words_free(&s->words);
    free(s->buf);
    free(s->sy);
    free(s->heap);
    free(s->ids);
}

int eng_tokenize(const eng_tokenizer *t, const char *text, size_t len, bool add_special,
                 bool parse_special, int32_t **ids, size_t *n)
{
    if (!t || !ids || !n || (!text && len))
        return core_err_set(MLV_EINVAL, "tokenize: NULL argument");
    *ids = NULL;
    *n = 0;
    if (len > ((size_t)1 << 30)) /* symbol offsets are 32-bit, SentencePiece triples spaces */
        return core_err_set(MLV_EINVAL, "tokenize: %zu bytes of text is over the 1 GiB limit", len);
    size_t bad = uni_utf8_check(text, len);
    if (bad != len)
        return core_err_set(MLV_EINVAL,
                            "tokenize: the text is not valid UTF-8 (byte 0x%02X at offset %zu)",
                            (unsigned char)text[bad], bad);

    session s = {.t = t};
    partition(&s, text, len, parse_special);
    if (add_special && t->add_bos) emit(&s, t->bos);
    bool prev_special = true; /* SentencePiece: a space prefix at the start and after specials */
    for (size_t i = 0; i < s.nfr && !s.err; i++) {
        const frag *f = &s.fr[i];
        if (f->tok >= 0) {
            emit(&s, f->tok);
            prev_special = true;
            continue;
        }
        if (t->model == MODEL_SPM) {
            spm_text(&s, text + f->off, f->len, t->add_space_prefix && prev_special);
            prev_special = false;
        } else {
            bpe_text(&s, text + f->off, f->len);
        }
    }
    if (add_special && t->add_eos) emit(&s, t->eos);
    if (!s.ids) (void)GROW(&s, s.ids, s.cap_ids, 1); /* never NULL on success */

    int rc = s.err;
    if (rc == 0) {
        *ids = s.ids;
        *n = s.nids;
        s.ids = NULL;
    }
    session_free(&s);
    return rc;
}

/* --------------------------------------------------------------- decoding ---- */

static uint8_t byte_of_token(const tok_info *tk)
{
    /* strtol(text.substr(3, 2), 16), as llama.cpp reads "<0xNN>" */
    unsigned v = 0;
    for (uint32_t i = 3; i < 5 && i < tk->len; i++) {
        char c = tk->text[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            break;
        v = v * 16 + d;
    }
    return (uint8_t)v;
}

/* Appends token id's piece (llama.cpp's token_to_piece with lstrip 0). */
static void append_piece(const eng_tokenizer *t, int32_t id, bool special, core_buf *out)
{
    const tok_info *tk = &t->tok[id];
    if (!special && (tk->attr & (ATTR_UNKNOWN | ATTR_CONTROL))) return;
    if (tk->attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        core_buf_append(out, tk->text, tk->len);
    } else if (tk->attr & ATTR_NORMAL) {
        if (t->model == MODEL_SPM) { /* U+2581 -> space */
            const char *p = tk->text, *end = tk->text + tk->len;
            while (p < end) {
                const char *q = strstr(p, SPACE_ESC);
                if (!q || q >= end) q = end;
                core_buf_append(out, p, (size_t)(q - p));
                if (q == end) break;
                core_buf_append(out, " ", 1);
                p = q + 3;
            }
        } else { /* GPT-2 alphabet -> bytes */
            const unsigned char *p = (const unsigned char *)tk->text;
            size_t off = 0;
            while (off < tk->len) {
                uint32_t c;
                int l = uni_utf8_next(p + off, tk->len - off, &c);
                if (l == 0) c = 0xFFFD, l = 1;
                off += (size_t)l;
                int b = uni_cpt_to_byte(c);
                if (b >= 0) {
                    unsigned char by = (unsigned char)b;
                    core_buf_append(out, &by, 1);
                } else { /* what llama.cpp writes for a character outside the alphabet */
                    char u[4];
                    int ul = uni_utf8_put(c, u);
                    core_buf_append(out, "[UNK_BYTE_0x", 12);
                    for (int k = 0; k < ul; k++)
                        core_buf_appendf(out, "%02x", (unsigned char)u[k]);
                    core_buf_append(out, tk->text, tk->len);
                    core_buf_append(out, "]", 1);
                }
            }
        }
    } else if (tk->attr & ATTR_BYTE) {
        uint8_t b = byte_of_token(tk);
        core_buf_append(out, &b, 1);
    }
}

int eng_token_piece(const eng_tokenizer *t, int32_t id, bool render_special, core_buf *out)
{
    if (!t || !out) return core_err_set(MLV_EINVAL, "token piece: NULL argument");
    if (id < 0 || (size_t)id >= t->n_vocab)
        return core_err_set(MLV_EINVAL, "token piece: id %" PRId32 " out of range (%zu tokens)", id,
                            t->n_vocab);
    append_piece(t, id, render_special, out);
    return out->failed ? core_err_set(MLV_ENOMEM, "token piece: out of memory") : 0;
}

/* llama.cpp's clean_up_tokenization_spaces passes, in order: " ?" " !" " ." " ," lose
 * the space; a lone apostrophe between spaces loses both; " 's" " 'm" " 're" " 've"
 * lose the space. Returns the new length. */
static size_t clean_spaces(char *x, size_t n)
{
    if (n == 0) return 0;
    size_t w = 1;
    for (size_t i = 1; i < n; i++) {
        char c = x[i];
        if (x[i - 1] == ' ' && (c == '?' || c == '!' || c == '.' || c == ',')) w--;
        x[w++] = c;
    }
    /* x[i - 1] above always read what the loop had not yet overwritten: w <= i */
    n = w, w = 1;
    for (size_t i = 1; i < n; i++) {
        char c = x[i];
        if (c == '\'' && i + 1 < n && x[i - 1] == ' ' && x[i + 1] == ' ') {
            w--;
            x[++i] = '\0'; /* the space after is dropped (and seen as NUL by the next step) */
        }
        x[w++] = c;
    }
    n = w, w = 1;
    for (size_t i = 1; i < n; i++) {
        char c = x[i];
        if (x[i - 1] == ' ' && c == '\'' && i + 1 < n) {
            char c1 = x[i + 1];
            if (c1 == 's' || c1 == 'm') {
                w--;
            } else if (c1 != 't' && c1 != 'd' && i + 2 < n) {
                char c2 = x[i + 2];
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e')) w--;
            }
        }
        x[w++] = c;
    }
    return w;
}

int eng_detokenize(const eng_tokenizer *t, const int32_t *ids, size_t n, bool render_special,
                   core_buf *out)
{
    if (!t || !out || (!ids && n)) return core_err_set(MLV_EINVAL, "detokenize: NULL argument");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_vocab)
            return core_err_set(
                MLV_EINVAL, "detokenize: token %zu is id %" PRId32 ", out of range (%zu tokens)", i,
                ids[i], t->n_vocab);
    core_buf b = {0};
    bool strip_space = t->add_space_prefix; /* the first piece's leading space, once */
    for (size_t i = 0; i < n; i++) {
        size_t before = b.len;
        append_piece(t, ids[i], render_special, &b);
        if (strip_space && b.len > before && b.data[before] == ' ') {
            memmove(b.data + before, b.data + before + 1, b.len - before - 1);
            b.len--;
        }
        strip_space = false;
    }
    if (b.failed) {
        core_buf_free(&b);
        return core_err_set(MLV_ENOMEM, "detokenize: out of memory");
    }
    if (t->clean_spaces && b.len) b.len = clean_spaces(b.data, b.len);
    if (b.len) core_buf_append(out, b.data, b.len);
    core_buf_free(&b);
    return out->failed ? core_err_set(MLV_ENOMEM, "detokenize: out of memory") : 0;
}
