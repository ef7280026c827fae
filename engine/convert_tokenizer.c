/* engine/convert_tokenizer.c: the tokenizer half of HF -> GGUF conversion —
 * tokenizer.json (byte-level BPE), tokenizer_config.json and config.json's special token
 * ids to llama.cpp's tokenizer.ggml.* metadata and chat template, as
 * convert_hf_to_gguf.py and gguf-py's SpecialVocab write them. engine/convert.c calls it
 * (engine/convert_internal.h) and owns the weights and the file; not a tokenizer
 * (engine/tokenizer.c runs the vocabulary this writes).
 *
 * Where we follow llama.cpp: model.vocab + added_tokens, [PAD<i>] (UNUSED) filling holes
 * up to config vocab_size; added tokens CONTROL when special or looking special
 * (<|...|>), else USER_DEFINED; merges in the "a b" form (["a","b"] pairs joined, spaces
 * inside a part written as U+0120); special ids from tokenizer_config.json (string or
 * {content} matched against added_tokens), then config.json's *_token_id; add_bos/eos/sep
 * from tokenizer_config.json, else a TemplateProcessing post-processor; chat_template
 * (string or named list).
 * Where we differ: tokenizer.ggml.pre is named from the model and tokenizer.json's
 * pre-tokenizer rather than by hashing a tokenization: qwen2 -> "qwen2"; llama with the
 * Llama-3 Split regex -> "llama-bpe", with Digits(individual) + ByteLevel -> "smollm",
 * with ByteLevel alone -> "gpt2"; anything else is refused, as llama.cpp refuses an
 * unknown hash. */
#include "engine/convert_internal.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOK_NORMAL = 1, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5 };

typedef struct tok_ctx {
    json_t *tok, *tcfg, *cfg; /* tokenizer.json, tokenizer_config.json (or NULL), config.json */
    const char *arch;         /* "llama" or "qwen2" */
    uint32_t n_vocab;         /* config.json's vocab_size, 0 when not given */
    char **owned;             /* strings we made (pad tokens, joined merges) */
    size_t n_owned, owned_cap;
} tok_ctx;

/* Keeps s until eng_convert_tokenizer returns (the writer has copied it by then); NULL
 * for NULL, or out of memory (s freed). */
static char *tok_own(tok_ctx *c, char *s)
{
    if (!s) return NULL;
    if (c->n_owned == c->owned_cap) {
        size_t nc = c->owned_cap ? c->owned_cap * 2 : 64;
        char **o = realloc(c->owned, nc * sizeof *o);
        if (!o) {
            free(s);
            return NULL;
        }
        c->owned = o;
        c->owned_cap = nc;
    }
    return c->owned[c->n_owned++] = s;
}

/* gguf-py's SpecialVocab types; cls has no GGUF key, unk's is "unknown". */
static const struct {
    const char *typ, *id_key, *add_key;
} specials[] = {
    {"bos", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token"},
    {"eos", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_eos_token"},
    {"unk", "tokenizer.ggml.unknown_token_id", NULL},
    {"sep", "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.add_sep_token"},
    {"pad", "tokenizer.ggml.padding_token_id", NULL},
    {"cls", NULL, NULL},
    {"mask", "tokenizer.ggml.mask_token_id", NULL},
};
#define N_SPECIAL (sizeof specials / sizeof specials[0])

/* Insertion-ordered (as the Python dicts are) special ids and add_* flags. */
typedef struct special_set {
    int id_order[N_SPECIAL], n_ids;
    int64_t id[N_SPECIAL];
    int add_order[N_SPECIAL], n_add;
    bool add[N_SPECIAL];
    bool add_set[N_SPECIAL], id_set[N_SPECIAL];
} special_set;

static void special_id(special_set *s, size_t typ, int64_t id)
{
    if (s->id_set[typ]) return; /* the first source wins */
    s->id_set[typ] = true;
    s->id[typ] = id;
    s->id_order[s->n_ids++] = (int)typ;
}

static void special_add(special_set *s, size_t typ, bool v)
{
    if (!s->add_set[typ]) s->add_order[s->n_add++] = (int)typ;
    s->add_set[typ] = true;
    s->add[typ] = v;
}

/* tokenizer_config.json's "<typ>_token": a string or {"content": ...}; NULL if none. */
static const char *tcfg_token(const tok_ctx *c, const char *typ)
{
    char key[32];
    snprintf(key, sizeof key, "%s_token", typ);
    json_t *e = c->tcfg ? json_object_get(c->tcfg, key) : NULL;
    if (json_is_object(e)) e = json_object_get(e, "content");
    return json_is_string(e) ? json_string_value(e) : NULL;
}

static const char *special_content(const json_t *proc_item)
{
    json_t *st = json_object_get(proc_item, "SpecialToken");
    return json_is_string(json_object_get(st, "id")) ? json_string_value(json_object_get(st, "id"))
                                                     : NULL;
}

/* SpecialVocab._try_load_from_tokenizer_json: the post-processor's say on add_bos /
 * add_eos (RobertaProcessing, or a TemplateProcessing whose single template starts or
 * ends with a special token), then tokenizer_config.json's tokens and add_* flags,
 * then config.json's *_token_id. (The EOT/EOM fallback for a template ending in
 * another token than eos is not reproduced.) */
static int special_tokens(tok_ctx *c, json_t *added, size_t n_vocab, special_set *s)
{
    memset(s, 0, sizeof *s);
    const char *bos = tcfg_token(c, "bos"), *eos = tcfg_token(c, "eos");
    const char *cls = tcfg_token(c, "cls"), *sep = tcfg_token(c, "sep");
    if (!bos && cls && c->tcfg) bos = cls;
    if (!eos && sep && c->tcfg) eos = sep;
    json_t *pp = json_object_get(c->tok, "post_processor");
    if (json_is_object(pp)) {
        json_t *procs = json_object_get(pp, "processors");
        size_t np = json_is_array(procs) ? json_array_size(procs) : 1;
        for (size_t i = 0; i < np; i++) {
            json_t *pr = json_is_array(procs) ? json_array_get(procs, i) : pp;
            const char *ty = json_string_value(json_object_get(pr, "type"));
            if (!ty) continue;
            if (!strcmp(ty, "RobertaProcessing")) {
                special_add(s, 0, true);
                special_add(s, 1, true);
                special_add(s, 3, true);
            } else if (!strcmp(ty, "TemplateProcessing")) {
                json_t *single = json_object_get(pr, "single");
                size_t ns = json_is_array(single) ? json_array_size(single) : 0;
                if (ns > 1) {
                    const char *first = special_content(json_array_get(single, 0));
                    const char *last = special_content(json_array_get(single, ns - 1));
                    if (first) {
                        if (!c->tcfg) bos = first;
                        special_add(s, 0,
                                    (bos && !strcmp(first, bos)) || (cls && !strcmp(first, cls)));
                    }
                    if (last) {
                        if (!c->tcfg) eos = last;
                        special_add(s, 1, eos && !strcmp(last, eos));
                    }
                }
            }
        }
    }
    for (size_t k = 0; c->tcfg && k < N_SPECIAL; k++) {
        char key[32];
        snprintf(key, sizeof key, "add_%s_token", specials[k].typ);
        json_t *a = json_object_get(c->tcfg, key);
        if (json_is_boolean(a)) special_add(s, k, json_is_true(a));
        const char *content = k == 0 ? bos : k == 1 ? eos : tcfg_token(c, specials[k].typ);
        if (!content) continue;
        size_t i;
        json_t *at;
        json_array_foreach(added, i, at)
        {
            const char *ac = json_string_value(json_object_get(at, "content"));
            json_t *id = json_object_get(at, "id");
            if (ac && !strcmp(ac, content)) {
                if (json_is_integer(id)) special_id(s, k, json_integer_value(id));
                break;
            }
        }
    }
    for (size_t k = 0; k < N_SPECIAL; k++) {
        char key[32];
        snprintf(key, sizeof key, "%s_token_id", specials[k].typ);
        json_t *id = json_object_get(c->cfg, key);
        if (json_is_integer(id)) special_id(s, k, json_integer_value(id));
    }
    for (int i = 0; i < s->n_ids; i++) {
        int k = s->id_order[i];
        if (!specials[k].id_key) continue; /* cls: not written */
        if (s->id[k] < 0 || (uint64_t)s->id[k] >= n_vocab)
            return core_err_set(MLV_EINVAL,
                                "convert: %s token id %" PRId64 " is outside the "
                                "vocabulary of %zu",
                                specials[k].typ, s->id[k], n_vocab);
    }
    return 0;
}

static bool looks_special(const char *t)
{
    size_t n = strlen(t);
    if (!strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") ||
        !strcmp(t, "[@BOS@]"))
        return true;
    if (n >= 4 && !strncmp(t, "<|", 2) && !strcmp(t + n - 2, "|>")) return true;
    /* "<｜" ... "｜>" (fullwidth bar, deepseek) */
    if (n >= 8 && !strncmp(t, "<\xef\xbd\x9c", 4) && !strcmp(t + n - 4, "\xef\xbd\x9c>"))
        return true;
    return n >= 8 && !strncmp(t, "<unused", 7) && t[n - 1] == '>';
}

/* A user-defined token with "▁" (U+2581) written as a space, as llama.cpp does. */
static char *lower_blocks_to_spaces(const char *t)
{
    size_t n = strlen(t), o = 0;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(t + i, "\xe2\x96\x81", 3)) {
            r[o++] = ' ';
            i += 3;
        } else {
            r[o++] = t[i++];
        }
    }
    r[o] = 0;
    return r;
}

/* Which pre-tokenizer llama.cpp's hash would name (see the file comment). */
static int detect_pre(const tok_ctx *c, const char **out)
{
    static const char *llama3_re[] = {
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
        "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    };
    if (!strcmp(c->arch, "qwen2")) {
        *out = "qwen2";
        return 0;
    }
    json_t *pt = json_object_get(c->tok, "pre_tokenizer");
    json_t *seq = json_object_get(pt, "pretokenizers");
    size_t n = json_is_array(seq) ? json_array_size(seq) : pt && !json_is_null(pt) ? 1 : 0;
    bool digits = false, bytelevel = false, bl_regex = false, llama3 = false;
    int other = 0, splits = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_is_array(seq) ? json_array_get(seq, i) : pt;
        const char *ty = json_string_value(json_object_get(p, "type"));
        if (!ty) {
            other++;
        } else if (!strcmp(ty, "Digits") && json_is_true(json_object_get(p, "individual_digits"))) {
            digits = true;
        } else if (!strcmp(ty, "ByteLevel")) {
            json_t *ur = json_object_get(p, "use_regex");
            bytelevel = true;
            bl_regex = !ur || json_is_true(ur);
        } else if (!strcmp(ty, "Split")) {
            const char *re =
                json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
            splits++;
            for (size_t k = 0; re && k < 2; k++)
                llama3 = llama3 || !strcmp(re, llama3_re[k]);
        } else {
            other++;
        }
    }
    if (!other && bytelevel) {
        if (splits == 1 && llama3 && !digits && !bl_regex)
            *out = "llama-bpe";
        else if (!splits && digits && bl_regex)
            *out = "smollm";
        else if (!splits && !digits && bl_regex)
            *out = "gpt2";
        else
            *out = NULL;
        if (*out) return 0;
    }
    return core_err_set(MLV_EUNSUPPORTED,
                        "convert: tokenizer.json: pre-tokenizer not recognised (Llama-3 Split + "
                        "ByteLevel, Digits + ByteLevel and ByteLevel are)");
}

/* tokenizer.json (byte-level BPE) -> tokenizer.ggml.* and the chat template. */
static int add_tokenizer(tok_ctx *c, eng_gguf_writer *w)
{
    const char **tokens = NULL, **merges = NULL;
    int32_t *types = NULL;
    int rc;
    json_t *model = json_object_get(c->tok, "model");
    json_t *vocab = json_object_get(model, "vocab"), *mj = json_object_get(model, "merges");
    json_t *added = json_object_get(c->tok, "added_tokens");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype || strcmp(mtype, "BPE") || !json_is_object(vocab))
        return core_err_set(MLV_EUNSUPPORTED, "convert: tokenizer.json: only a BPE model with a "
                                              "vocab object is supported");
    if (added && !json_is_array(added))
        return core_err_set(MLV_EINVAL, "convert: tokenizer.json: added_tokens is not a list");
    if (!added)
        added = json_array(); /* an empty list for the loops below */
    else
        json_incref(added);
    if (!added) return eng_convert_oom();

    /* the vocabulary size: config's vocab_size, else the largest id + 1 */
    uint64_t n_vocab = c->n_vocab, max_id = 0;
    bool any = false;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (json_int_t)INT32_MAX) {
            rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: token '%.80s' has a bad id", k);
            goto done;
        }
        if ((uint64_t)json_integer_value(v) > max_id) max_id = (uint64_t)json_integer_value(v);
        any = true;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        json_t *id = json_object_get(v, "id"), *ct = json_object_get(v, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)INT32_MAX || !json_is_string(ct)) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: added token %zu needs an id "
                              "and a content",
                              i);
            goto done;
        }
        if ((uint64_t)json_integer_value(id) > max_id) max_id = (uint64_t)json_integer_value(id);
        any = true;
    }
    if (!any) {
        rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: empty vocabulary");
        goto done;
    }
    if (!n_vocab) n_vocab = max_id + 1;
    if (max_id >= n_vocab) {
        rc = core_err_set(MLV_EINVAL,
                          "convert: tokenizer.json: token id %" PRIu64 " is not below "
                          "vocab_size %" PRIu64,
                          max_id, n_vocab);
        goto done;
    }
    if (!(tokens = calloc(n_vocab, sizeof *tokens)) || !(types = calloc(n_vocab, sizeof *types))) {
        rc = eng_convert_oom();
        goto done;
    }
    json_object_foreach(vocab, k, v)
    {
        tokens[json_integer_value(v)] = k; /* a later duplicate id wins, as in Python */
        types[json_integer_value(v)] = TOK_NORMAL;
    }
    json_array_foreach(added, i, v)
    {
        json_t *ct = json_object_get(v, "content");
        size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
        const char *t = eng_json_cstr(ct);
        if (!t) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: added token %zu contains a "
                              "NUL byte",
                              id);
            goto done;
        }
        if (json_is_true(json_object_get(v, "special")) || looks_special(t)) {
            tokens[id] = t;
            types[id] = TOK_CONTROL;
        } else {
            if (!(tokens[id] = tok_own(c, lower_blocks_to_spaces(t)))) {
                rc = eng_convert_oom();
                goto done;
            }
            types[id] = TOK_USER_DEFINED;
        }
    }
    for (uint64_t id = 0; id < n_vocab; id++) {
        if (tokens[id]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%" PRIu64 "]", id);
        if (!(tokens[id] = tok_own(c, strdup(pad)))) {
            rc = eng_convert_oom();
            goto done;
        }
        types[id] = TOK_UNUSED;
    }

    /* merges: "a b" strings, or ["a", "b"] pairs (transformers >= 4.45) */
    size_t n_merges = json_is_array(mj) ? json_array_size(mj) : 0;
    if (mj && !json_is_array(mj)) {
        rc = core_err_set(MLV_EINVAL, "convert: tokenizer.json: model.merges is not a list");
        goto done;
    }
    if (!(merges = calloc(n_merges ? n_merges : 1, sizeof *merges))) {
        rc = eng_convert_oom();
        goto done;
    }
    json_array_foreach(mj, i, v)
    {
        if (json_is_string(v) && (merges[i] = eng_json_cstr(v))) continue;
        const char *a = eng_json_cstr(json_array_get(v, 0));
        const char *b = eng_json_cstr(json_array_get(v, 1));
        if (!json_is_array(v) || json_array_size(v) != 2 || !a || !b) {
            rc = core_err_set(MLV_EINVAL,
                              "convert: tokenizer.json: merge %zu is neither \"a b\" "
                              "nor [\"a\", \"b\"]",
                              i);
            goto done;
        }
        core_buf m = {0};
        for (const char *part = a;; part = b) {
            for (const char *q = part; *q; q++) {
                if (*q == ' ')
                    core_buf_append(&m, "\xc4\xa0", 2); /* chr(ord(' ') + 256) */
                else
                    core_buf_append(&m, q, 1);
            }
            if (part == b) break;
            core_buf_append(&m, " ", 1);
        }
        if (!(merges[i] = tok_own(c, core_buf_take(&m)))) {
            rc = eng_convert_oom();
            goto done;
        }
    }

    const char *pre;
    if ((rc = detect_pre(c, &pre))) goto done;
    special_set ss;
    if ((rc = special_tokens(c, added, (size_t)n_vocab, &ss))) goto done;

    if ((rc = eng_gguf_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = eng_gguf_set_str(w, "tokenizer.ggml.pre", pre)) ||
        (rc = eng_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (size_t)n_vocab)) ||
        (rc = eng_gguf_set_arr_data(w, "tokenizer.ggml.token_type", ENG_GGUF_I32, types,
                                    (size_t)n_vocab)))
        goto done;
    if (n_merges && (rc = eng_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, n_merges)))
        goto done;
    for (int s = 0; s < ss.n_ids; s++) {
        int t = ss.id_order[s];
        if (specials[t].id_key &&
            (rc = eng_gguf_set_u32(w, specials[t].id_key, (uint32_t)ss.id[t])))
            goto done;
    }
    for (int s = 0; s < ss.n_add; s++) {
        int t = ss.add_order[s];
        if (specials[t].add_key && (rc = eng_gguf_set_bool(w, specials[t].add_key, ss.add[t])))
            goto done;
    }
    json_t *ct = c->tcfg ? json_object_get(c->tcfg, "chat_template") : NULL;
    if (json_is_string(ct)) {
        if (!eng_json_cstr(ct)) {
            rc = core_err_set(MLV_EINVAL, "convert: tokenizer_config.json: chat_template "
                                          "contains a NUL byte");
            goto done;
        }
        rc = eng_gguf_set_str(w, "tokenizer.chat_template", json_string_value(ct));
    } else if (json_is_array(ct)) {
        /* named templates: tokenizer.chat_template.NAME, the names in
         * tokenizer.chat_templates, "default" as tokenizer.chat_template */
        const char *names[64], *def = NULL;
        size_t nn = 0;
        json_array_foreach(ct, i, v)
        {
            const char *nm = eng_json_cstr(json_object_get(v, "name"));
            const char *tp = eng_json_cstr(json_object_get(v, "template"));
            if (!nm || !*nm || !tp) continue;
            char key[160], clean[100];
            size_t l = 0;
            for (const char *q = nm; *q && l < sizeof clean - 1; q++)
                clean[l++] =
                    (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9')
                        ? *q
                        : '_';
            clean[l] = 0;
            if (!strcmp(clean, "default")) {
                def = tp;
                continue;
            }
            snprintf(key, sizeof key, "tokenizer.chat_template.%s", clean);
            if ((rc = eng_gguf_set_str(w, key, tp))) goto done;
            if (nn < 64 && !(names[nn] = tok_own(c, strdup(clean)))) {
                rc = eng_convert_oom();
                goto done;
            }
            if (nn < 64) nn++;
        }
        if (nn && (rc = eng_gguf_set_arr_str(w, "tokenizer.chat_templates", names, nn))) goto done;
        if (def) rc = eng_gguf_set_str(w, "tokenizer.chat_template", def);
    }
done:
    json_decref(added);
    free(tokens);
    free(types);
    free(merges);
    return rc;
}

int eng_convert_tokenizer(eng_gguf_writer *w, const eng_hf_tokenizer *src)
{
    tok_ctx c = {.tok = src->tok,
                 .tcfg = src->tcfg,
                 .cfg = src->cfg,
                 .arch = src->arch,
                 .n_vocab = src->n_vocab};
    int rc = add_tokenizer(&c, w);
    for (size_t i = 0; i < c.n_owned; i++)
        free(c.owned[i]);
    free(c.owned);
    return rc;
}
