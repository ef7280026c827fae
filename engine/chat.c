/* engine/chat.c: chat templates — which one a model's tokenizer.chat_template is (ChatML
 * or Llama 3, recognised by their markers, not interpreted: there is no Jinja engine
 * here), the default system prompt a ChatML template hard-codes (SmolLM2's, Qwen2's), and
 * the rendering, byte for byte what the Jinja templates produce (with transformers'
 * settings) less a leading BOS, which the tokenizer adds as llama.cpp's chat code
 * arranges. Tokenizing the result is engine/tokenizer.c's business. */
#include <string.h>

#include "engine/engine.h"
#include "engine/unicode.h"

#define IM_START "<|im_start|>"
#define IM_END "<|im_end|>"

/* The literal that follows "<|im_start|>system" + newline (at p) in a template, up to
 * "<|im_end|>", with Jinja's string escapes undone; false when the string literal (quoted
 * by `quote`) ends before, as in '<|im_start|>system\n' + messages[0]['content']. */
static bool literal_system(const char *p, char quote, char *out, size_t cap)
{
    if (*p == '\n')
        p++;
    else if (p[0] == '\\' && p[1] == 'n')
        p += 2;
    else
        return false;
    const char *end = strstr(p, IM_END);
    if (!end || end == p) return false;
    size_t n = 0;
    for (; p < end; p++) {
        char c = *p;
        if (c == quote) return false;
        if (c == '\\' && p + 1 < end) {
            c = *++p;
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
        }
        if (n + 1 >= cap) {
            core_log(CORE_LOG_WARN, "chat template: default system prompt over %zu bytes ignored",
                     cap - 1);
            return false;
        }
        out[n++] = c;
    }
    out[n] = '\0';
    return true;
}

int eng_chat_template_of(const eng_gguf *g, char default_system[512])
{
    if (!g || !default_system) return core_err_set(MLV_EINVAL, "chat template: NULL argument");
    default_system[0] = '\0';
    if (eng_gguf_find_key(g, "tokenizer.chat_template") < 0) return ENG_CHAT_CHATML;
    const char *tmpl;
    if (eng_gguf_get_str(g, "tokenizer.chat_template", &tmpl))
        return core_err_wrap("chat template");
    if (strstr(tmpl, "<|start_header_id|>")) return ENG_CHAT_LLAMA3;
    if (!strstr(tmpl, IM_START))
        return core_err_set(MLV_EUNSUPPORTED,
                            "chat template: not one this engine knows (ChatML or Llama 3)");
    for (const char *p = tmpl; (p = strstr(p, IM_START "system")) != NULL;) {
        const char *q = p; /* the quote that opened the literal holding the marker */
        while (q > tmpl && q[-1] != '\'' && q[-1] != '"')
            q--;
        p += strlen(IM_START "system");
        char tmp[512];
        if (q > tmpl && literal_system(p, q[-1], tmp, sizeof tmp)) {
            memcpy(default_system, tmp, strlen(tmp) + 1);
            break;
        }
    }
    return ENG_CHAT_CHATML;
}

/* Python's str.isspace(), which Jinja's trim uses: White_Space and U+001C..U+001F. */
static bool py_space(uint32_t c)
{
    return (c >= 0x1C && c <= 0x1F) || (uni_flags(c) & UNI_WHITESPACE);
}

/* Appends s without the leading and trailing white space (Jinja's `trim`). */
static void append_trimmed(core_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    uint32_t c;
    int l;
    while (p < end && (l = uni_utf8_next(p, (size_t)(end - p), &c)) > 0 && py_space(c))
        p += l;
    while (end > p) {
        const unsigned char *q = end - 1;
        while (q > p && end - q < 4 && (*q & 0xC0) == 0x80)
            q--; /* the last character */
        l = uni_utf8_next(q, (size_t)(end - q), &c);
        if (l != end - q || !py_space(c)) break;
        end = q;
    }
    core_buf_append(b, p, (size_t)(end - p));
}

static void put(core_buf *b, const char *s)
{
    core_buf_append(b, s, strlen(s));
}

int eng_chat_apply(int tmpl, const char *default_system, const eng_chat_msg *msgs, size_t n,
                   bool add_generation_prompt, char **out)
{
    if (!out || (!msgs && n)) return core_err_set(MLV_EINVAL, "chat: NULL argument");
    *out = NULL;
    if (tmpl != ENG_CHAT_CHATML && tmpl != ENG_CHAT_LLAMA3)
        return core_err_set(MLV_EINVAL, "chat: unknown template %d", tmpl);
    for (size_t i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            return core_err_set(MLV_EINVAL,
                                "chat: message %zu has role '%s' (system, user or "
                                "assistant expected)",
                                i, r ? r : "(null)");
        if (!msgs[i].content)
            return core_err_set(MLV_EINVAL, "chat: message %zu has no content", i);
    }
    bool add_default =
        default_system && *default_system && n > 0 && strcmp(msgs[0].role, "system") != 0;

    core_buf b = {0};
    if (tmpl == ENG_CHAT_CHATML) {
        /* <|im_start|>ROLE\nCONTENT<|im_end|>\n per message */
        if (add_default) {
            put(&b, IM_START "system\n");
            put(&b, default_system);
            put(&b, IM_END "\n");
        }
        for (size_t i = 0; i < n; i++) {
            put(&b, IM_START);
            put(&b, msgs[i].role);
            put(&b, "\n");
            put(&b, msgs[i].content);
            put(&b, IM_END "\n");
        }
        if (add_generation_prompt) put(&b, IM_START "assistant\n");
    } else {
        /* <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT|trim<|eot_id|> per message */
        if (add_default) {
            put(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
            append_trimmed(&b, default_system);
            put(&b, "<|eot_id|>");
        }
        for (size_t i = 0; i < n; i++) {
            put(&b, "<|start_header_id|>");
            put(&b, msgs[i].role);
            put(&b, "<|end_header_id|>\n\n");
            append_trimmed(&b, msgs[i].content);
            put(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) put(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    char *s = core_buf_take(&b);
    if (!s) return core_err_set(MLV_ENOMEM, "chat: out of memory");
    *out = s;
    return 0;
}
