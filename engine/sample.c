/* engine/sample.c: picking the next token from logits, in llama.cpp's sampler-chain
 * order: repetition penalty -> top-k -> top-p -> min-p -> temperature -> a draw from
 * the softmax with xoshiro256** (seeded through splitmix64, so a seed reproduces a run).
 * temp <= 0 is greedy. Every buffer is allocated once, in eng_sampler_new. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

typedef struct cand {
    int32_t id;
    float logit;
    float p;
} cand;

struct eng_sampler {
    eng_sampler_params p;
    uint32_t n_vocab;
    cand *c;
    cand *tmp;     /* radix sort's second buffer */
    uint8_t *seen; /* repetition penalty: tokens already penalised this step */
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

int eng_sampler_new(eng_sampler **out, const eng_sampler_params *p, uint32_t n_vocab)
{
    *out = NULL;
    if (!(p->temp == p->temp) || p->top_p < 0 || p->min_p < 0 || p->min_p > 1 ||
        !(p->repeat_penalty > 0) || p->repeat_last_n < 0)
        return core_err_set(MLV_EINVAL, "sampling: temperature, top-p, min-p or repeat penalty out "
                                        "of range");
    eng_sampler *s = calloc(1, sizeof *s);
    if (!s || !(s->c = malloc(sizeof *s->c * n_vocab)) ||
        !(s->tmp = malloc(sizeof *s->tmp * n_vocab)) || !(s->seen = calloc(n_vocab, 1))) {
        if (s) free(s->c);
        free(s);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->s[i] = splitmix64(&x);
    *out = s;
    return 0;
}

void eng_sampler_free(eng_sampler *s)
{
    if (!s) return;
    free(s->c);
    free(s->tmp);
    free(s->seen);
    free(s);
}

static int by_logit_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* A float's bits mapped so that unsigned order is descending float order (-0 as +0, so
 * that they tie, as by_logit_desc has them). */
static uint32_t desc_key(float f)
{
    uint32_t u;
    if (f == 0.0f) f = 0.0f;
    memcpy(&u, &f, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending */
    return ~u;
}

/* The order of by_logit_desc for candidates in ascending id order (as collected): a
 * stable LSD radix sort on the logit (4 passes of 8 bits), so ties keep id order. Much
 * faster than qsort for a whole vocabulary. The result is in c. */
static void sort_desc_by_id(cand *c, cand *tmp, size_t n)
{
    cand *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++)
            count[((desc_key(src[i].logit) >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (size_t i = 0; i < n; i++)
            dst[count[(desc_key(src[i].logit) >> shift) & 0xff]++] = src[i];
        cand *t = src;
        src = dst;
        dst = t;
    }
    /* four passes: the sorted run is back in c */
}

/* Moves the k largest candidates (by logit, lower id first on ties) to the front,
 * unordered: a min-heap of k over the n candidates. */
static bool worse(const cand *a, const cand *b)
{
    return a->logit < b->logit || (a->logit == b->logit && a->id > b->id);
}

static void sift_down(cand *h, size_t k, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && worse(&h[l], &h[m])) m = l;
        if (r < k && worse(&h[r], &h[m])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void select_top(cand *c, size_t n, size_t k)
{
    for (size_t i = k / 2; i-- > 0;)
        sift_down(c, k, i);
    for (size_t i = k; i < n; i++) {
        if (!worse(&c[0], &c[i])) continue;
        c[0] = c[i];
        sift_down(c, k, 0);
    }
}

static void softmax(cand *c, size_t n)
{
    double sum = 0;
    float mx = c[0].logit;
    for (size_t i = 1; i < n; i++)
        if (c[i].logit > mx) mx = c[i].logit;
    for (size_t i = 0; i < n; i++) {
        c[i].p = expf(c[i].logit - mx);
        sum += c[i].p;
    }
    for (size_t i = 0; i < n; i++)
        c[i].p = (float)(c[i].p / sum);
}

int32_t eng_sample(eng_sampler *s, float *logits, const int32_t *history, size_t n_history)
{
    const eng_sampler_params *p = &s->p;
    const uint32_t nv = s->n_vocab;
    if (p->repeat_penalty != 1.0f && p->repeat_last_n > 0) {
        size_t from = n_history > (size_t)p->repeat_last_n ? n_history - p->repeat_last_n : 0;
        for (size_t i = from; i < n_history; i++) { /* each distinct token once */
            int32_t t = history[i];
            if (t < 0 || (uint32_t)t >= nv || s->seen[t]) continue;
            s->seen[t] = 1;
            logits[t] =
                logits[t] > 0 ? logits[t] / p->repeat_penalty : logits[t] * p->repeat_penalty;
        }
        for (size_t i = from; i < n_history; i++)
            if (history[i] >= 0 && (uint32_t)history[i] < nv) s->seen[history[i]] = 0;
    }
    if (p->temp <= 0) {
        int32_t best = 0;
        for (uint32_t i = 1; i < nv; i++)
            if (logits[i] > logits[best]) best = (int32_t)i;
        return best;
    }
    size_t n = 0;
    float mx = -INFINITY;
    for (uint32_t i = 0; i < nv; i++)
        if (logits[i] > mx) mx = logits[i];
    /* Tokens more than 40 nats below the best have probability < 4e-18 each: dropping
     * them changes no pick and saves sorting the whole vocabulary. */
    for (uint32_t i = 0; i < nv; i++)
        if (logits[i] >= mx - 40.0f) s->c[n++] = (cand){(int32_t)i, logits[i], 0};
    if (p->top_k > 0 && (size_t)p->top_k < n) {
        select_top(s->c, n, (size_t)p->top_k);
        n = (size_t)p->top_k;
        qsort(s->c, n, sizeof *s->c, by_logit_desc);
    } else {
        sort_desc_by_id(s->c, s->tmp, n); /* still in id order: the same order, faster */
    }
    if (p->top_p < 1.0f) {
        softmax(s->c, n);
        double cum = 0;
        for (size_t i = 0; i < n; i++) {
            cum += s->c[i].p;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        softmax(s->c, n);
        const float floor_p = s->c[0].p * p->min_p;
        size_t keep = 1;
        while (keep < n && s->c[keep].p >= floor_p)
            keep++;
        n = keep;
    }
    for (size_t i = 0; i < n; i++)
        s->c[i].logit /= p->temp;
    softmax(s->c, n);
    double r = (double)(next_u64(s->s) >> 11) * 0x1.0p-53, cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += s->c[i].p;
        if (r < cum) return s->c[i].id;
    }
    return s->c[n - 1].id;
}
