/* core/util.c: names, hex, time, random bytes and a growable string buffer. */
#include "core.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool core_name_valid(const char *name)
{
    if (!name) return false;
    size_t n = strlen(name);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (i > 0) ok = ok || c == '.' || c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

void core_hex(char *out, const unsigned char *in, size_t n)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

bool core_is_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0) return false;
    return true;
}

int core_unhex(unsigned char *out, size_t n, const char *hex)
{
    if (!core_is_hex(hex, 2 * n)) return core_err_set(MLV_EINVAL, "not %zu hex bytes", n);
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
    return 0;
}

double core_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void core_time_iso(char out[21])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int core_random(void *out, size_t n)
{
    if (RAND_bytes(out, (int)n) != 1) return core_err_set(MLV_ECRYPTO, "RAND_bytes failed");
    return 0;
}

void core_human_bytes(char *out, size_t outsz, uint64_t n)
{
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    int i = 0;
    while (v >= 1000.0 && i < 4) {
        v /= 1000.0;
        i++;
    }
    if (i == 0)
        snprintf(out, outsz, "%llu B", (unsigned long long)n);
    else
        snprintf(out, outsz, "%.1f %s", v, u[i]);
}

void core_buf_append(core_buf *b, const void *p, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void core_buf_appendf(core_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof small) {
        core_buf_append(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    core_buf_append(b, big, (size_t)n);
    free(big);
}

char *core_buf_take(core_buf *b)
{
    char *d = NULL;
    if (!b->failed) {
        if (!b->data) core_buf_append(b, "", 0);
        d = b->failed ? NULL : b->data;
        b->data = NULL;
    }
    core_buf_free(b);
    return d;
}

void core_buf_free(core_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

char *core_utf8_valid_copy(const char *s, size_t n)
{
    core_buf b = {0};
    size_t i = 0;
    while (i < n) {
        const unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        for (size_t k = 1; ok && k < len; k++) {
            const unsigned char cc = (unsigned char)s[i + k];
            ok = (cc >> 6) == 2;
            cp = (cp << 6) | (cc & 0x3f);
        }
        /* no overlong forms, surrogates or code points past U+10FFFF */
        if (ok && ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
                   (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)))
            ok = false;
        if (ok) {
            core_buf_append(&b, s + i, len);
            i += len;
        } else {
            core_buf_append(&b, "\xef\xbf\xbd", 3); /* U+FFFD */
            i++;
        }
    }
    core_buf_append(&b, "", 0);
    return core_buf_take(&b);
}

void core_prom_label(core_buf *b, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '\\' || *s == '"')
            core_buf_appendf(b, "\\%c", *s);
        else if (*s == '\n')
            core_buf_append(b, "\\n", 2);
        else
            core_buf_append(b, s, 1);
    }
}

void core_prom_head(core_buf *b, const char *name, const char *type, const char *help)
{
    core_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int core_run_on_stack(size_t stack, void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t t;
    bool spawned = false;
    if (pthread_attr_init(&attr) == 0) {
        spawned = pthread_attr_setstacksize(&attr, stack) == 0 &&
                  pthread_create(&t, &attr, fn, arg) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!spawned) return core_err_set(MLV_ENOMEM, "cannot start a thread");
    pthread_join(t, NULL);
    return 0;
}
