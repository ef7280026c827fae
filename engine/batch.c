/* engine/batch.c: continuous batching for serving (engine.h, "batching"). One scheduler
 * thread owns max_seqs sequence contexts; callers of eng_batch_run queue a request and
 * wait. Each step the scheduler admits waiting requests into free slots, prefills their
 * prompts with eng_decode (long ones a chunk per step) and samples their first token,
 * then decodes one token for every running sequence with eng_decode_batch and samples
 * each with the request's own sampler (the step's sequences spread over a thread pool),
 * as eng_generate does: same chain, same history. A request alone on the batch gives
 * eng_generate's tokens exactly; with others, up to the rounding of batched products.
 *
 * Ownership: a request lives on its caller's stack; the caller allocates its sampler
 * and token history before queueing and waits until the scheduler (or
 * eng_batcher_free) marks it done, after which nothing else touches it. The scheduler
 * writes generated ids into the history and publishes their count under the mutex;
 * the caller turns them into pieces and calls on_token on its own thread, unlocked, so
 * a slow client never stalls the step. Not for HTTP or request parsing (openai.c). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"

#define MAX_SEQS 256 /* eng_decode_batch's limit */
/* Prompts are prefilled in chunks of eng_decode's own step (model.c's N_BATCH), so that
 * a prompt fed in pieces gives the numbers of one eng_decode call. A step starts chunks
 * (of the prompts in turn) while fewer than PREFILL_BUDGET prompt tokens went in, so a
 * long prompt stalls the running sequences by a chunk per step, not all of it at once. */
#define PREFILL_CHUNK 256
#define PREFILL_BUDGET 256

enum { REQ_WAITING, REQ_RUNNING, REQ_DONE };

typedef struct request {
    /* set by the caller before it is queued, then read-only */
    const eng_batch_req *q;
    eng_sampler *sampler;
    int32_t *hist;  /* the prompt, then the generated ids */
    size_t max_gen; /* room for generated ids in hist */
    double t_submit;
    pthread_cond_t cv; /* the caller waits on it */
    /* under the batcher's mutex */
    struct request *next; /* in the queue */
    int state;
    bool cancelled; /* the caller's on_token returned non-zero */
    size_t n_ready; /* generated ids handed over (hist[n_prompt ..]) */
    double t_admit; /* when a slot took it */
    const char *stop_reason;
    int rc; /* set with err when it failed */
    char err[256];
} request;

/* A sequence slot; every field but r is the scheduler thread's alone. */
typedef struct slot {
    eng_ctx *c;
    request *r;       /* NULL when free (read and written under the mutex) */
    size_t n_gen;     /* ids sampled so far */
    int32_t next;     /* the id the next step decodes */
    size_t prefilled; /* prompt tokens in the context; < n_prompt while prefilling */
    const char *fin;  /* why it ends, decided this step (NULL: it goes on) */
    int rc;           /* a failure this step (the message is in r->err) */
} slot;

struct eng_batcher {
    eng_model *m;
    const eng_tokenizer *tok;
    uint32_t n_vocab, n_ctx;
    int max_seqs, max_queue;
    slot *slots;
    float *logits; /* max_seqs rows of n_vocab */
    eng_ctx **step_c;
    int32_t *step_tok;
    int *step_slot;
    int prefill_next; /* the slot whose prompt goes first in the next step */
    core_pool *pool;  /* samples the step's sequences in parallel */
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t work; /* the scheduler waits for requests */
    pthread_cond_t idle; /* eng_batcher_free waits for callers to leave */
    bool mu_ok, work_ok, idle_ok;
    /* under mu */
    request *head, *tail;
    int waiting, running, callers;
    bool stopping;
    uint64_t tokens, steps, seq_sum;
};

/* ---------------------------------------------------------------- scheduler ---- */

/* Ends a slot's request (under the mutex): the caller is woken and the slot is free. */
static void finish_locked(eng_batcher *b, slot *s, int rc, const char *reason)
{
    request *r = s->r;
    r->rc = rc;
    r->stop_reason = reason;
    r->state = REQ_DONE;
    pthread_cond_signal(&r->cv);
    s->r = NULL;
    s->fin = NULL;
    s->rc = 0;
    b->running--;
}

static void fail_slot(slot *s, int rc)
{
    s->rc = rc ? rc : MLV_EIO;
    snprintf(s->r->err, sizeof s->r->err, "%s", core_err_last());
}

/* Samples the next id of slot s from its logits row, as eng_generate's loop does. */
static void take_token(eng_batcher *b, slot *s, float *row)
{
    request *r = s->r;
    const size_t np = r->q->n_prompt;
    int32_t id = eng_sample(r->sampler, row, r->hist, np + s->n_gen);
    if (eng_token_is_eog(b->tok, id)) {
        s->fin = "eog";
        return;
    }
    r->hist[np + s->n_gen++] = id;
    s->next = id;
    if (r->q->n_predict && s->n_gen == r->q->n_predict)
        s->fin = "length";
    else if (eng_ctx_pos(s->c) >= eng_ctx_n_ctx(s->c) || s->n_gen == r->max_gen)
        s->fin = "context";
}

/* Hands the ids sampled since the last time to the callers and ends the slots that
 * finished (under the mutex). */
static void publish_locked(eng_batcher *b)
{
    for (int i = 0; i < b->max_seqs; i++) {
        slot *s = &b->slots[i];
        request *r = s->r;
        if (!r) continue;
        if (s->n_gen > r->n_ready) {
            b->tokens += s->n_gen - r->n_ready;
            r->n_ready = s->n_gen;
            pthread_cond_signal(&r->cv);
        }
        if (s->rc)
            finish_locked(b, s, s->rc, NULL);
        else if (s->fin)
            finish_locked(b, s, 0, s->fin);
    }
}

static bool prefilling(const slot *s)
{
    return s->r && s->prefilled < s->r->q->n_prompt;
}

/* Prefills the next chunk of the prompts still being prefilled, within the step's
 * budget; a prompt done gets its first id sampled, handed over at once. */
static void prefill(eng_batcher *b)
{
    size_t budget = PREFILL_BUDGET;
    b->prefill_next = (b->prefill_next + 1) % b->max_seqs; /* who goes first, in turn */
    for (int k = 0; k < b->max_seqs && budget > 0; k++) {
        slot *s = &b->slots[(b->prefill_next + k) % b->max_seqs];
        if (!prefilling(s) || s->rc) continue;
        const eng_batch_req *q = s->r->q;
        if (s->prefilled == 0) eng_ctx_truncate(s->c, 0);
        size_t n = q->n_prompt - s->prefilled;
        if (n > PREFILL_CHUNK) n = PREFILL_CHUNK;
        const bool last = s->prefilled + n == q->n_prompt;
        int rc = eng_decode(s->c, q->prompt + s->prefilled, n, last ? b->logits : NULL, false);
        s->prefilled += n;
        budget = n < budget ? budget - n : 0;
        if (rc)
            fail_slot(s, rc);
        else if (last)
            take_token(b, s, b->logits);
        if (rc || last) { /* its first id (or its end) out before the step */
            pthread_mutex_lock(&b->mu);
            publish_locked(b);
            pthread_mutex_unlock(&b->mu);
        }
    }
}

/* The sampling of a step: each thread takes the next sequence not yet sampled (a
 * sampler with top-p sorts its candidates, so costs differ a lot between requests). */
typedef struct sample_job {
    eng_batcher *b;
    int n;
    atomic_int next;
} sample_job;

static void sample_rows(void *arg, int ith, int nth)
{
    (void)ith;
    (void)nth;
    sample_job *j = arg;
    for (int k; (k = atomic_fetch_add(&j->next, 1)) < j->n;)
        take_token(j->b, &j->b->slots[j->b->step_slot[k]],
                   j->b->logits + (size_t)k * j->b->n_vocab);
}

/* One batched step over every running sequence that goes on; returns how many. */
static int decode_step(eng_batcher *b)
{
    int n = 0;
    for (int i = 0; i < b->max_seqs; i++) {
        slot *s = &b->slots[i];
        if (!s->r || prefilling(s) || s->fin || s->rc) continue;
        b->step_c[n] = s->c;
        b->step_tok[n] = s->next;
        b->step_slot[n++] = i;
    }
    if (n == 0) return 0;
    int rc = eng_decode_batch(b->step_c, b->step_tok, (size_t)n, b->logits);
    if (rc) {
        for (int k = 0; k < n; k++)
            fail_slot(&b->slots[b->step_slot[k]], rc);
        return n;
    }
    sample_job j = {.b = b, .n = n};
    atomic_init(&j.next, 0);
    if (n > 1)
        core_pool_run(b->pool, sample_rows, &j);
    else
        sample_rows(&j, 0, 1);
    return n;
}

static void *scheduler(void *arg)
{
    eng_batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        for (int i = 0; i < b->max_seqs; i++) /* sequences their callers stopped */
            if (b->slots[i].r && b->slots[i].r->cancelled)
                finish_locked(b, &b->slots[i], 0, "callback");
        if (b->stopping) break;
        for (int i = 0; i < b->max_seqs && b->head; i++) {
            slot *s = &b->slots[i];
            if (s->r) continue;
            request *r = b->head;
            b->head = r->next;
            if (!b->head) b->tail = NULL;
            r->next = NULL;
            r->state = REQ_RUNNING;
            r->t_admit = core_now_s();
            *s = (slot){.c = s->c, .r = r};
            b->waiting--;
            b->running++;
        }
        if (b->running == 0) {
            pthread_cond_wait(&b->work, &b->mu);
            continue;
        }
        pthread_mutex_unlock(&b->mu);
        prefill(b);
        int n = decode_step(b);
        pthread_mutex_lock(&b->mu);
        if (n > 0) {
            b->steps++;
            b->seq_sum += (uint64_t)n;
        }
        publish_locked(b);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* ----------------------------------------------------------------- lifetime ---- */

static void fail_locked(request *r)
{
    r->rc = MLV_EBUSY;
    snprintf(r->err, sizeof r->err, "the model is being unloaded");
    r->state = REQ_DONE;
    pthread_cond_signal(&r->cv);
}

void eng_batcher_free(eng_batcher *b)
{
    if (!b) return;
    if (b->started) {
        pthread_mutex_lock(&b->mu);
        b->stopping = true;
        pthread_cond_signal(&b->work);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->thread, NULL);
        /* the scheduler is gone: what it held and what waited ends here */
        pthread_mutex_lock(&b->mu);
        for (request *r = b->head; r; r = r->next)
            fail_locked(r);
        b->head = b->tail = NULL;
        b->waiting = 0;
        for (int i = 0; i < b->max_seqs; i++)
            if (b->slots[i].r) {
                fail_locked(b->slots[i].r);
                b->slots[i].r = NULL;
            }
        b->running = 0;
        while (b->callers > 0)
            pthread_cond_wait(&b->idle, &b->mu);
        pthread_mutex_unlock(&b->mu);
    }
    if (b->slots)
        for (int i = 0; i < b->max_seqs; i++)
            eng_ctx_free(b->slots[i].c);
    core_pool_free(b->pool);
    free(b->slots);
    free(b->logits);
    free(b->step_c);
    free(b->step_tok);
    free(b->step_slot);
    if (b->idle_ok) pthread_cond_destroy(&b->idle);
    if (b->work_ok) pthread_cond_destroy(&b->work);
    if (b->mu_ok) pthread_mutex_destroy(&b->mu);
    free(b);
}

int eng_batcher_new(eng_batcher **out, eng_model *m, const eng_batcher_opts *o)
{
    *out = NULL;
    const eng_batcher_opts dflt = {0};
    if (!o) o = &dflt;
    if (!m) return core_err_set(MLV_EINVAL, "batch: no model");
    if (o->max_seqs < 0 || o->max_seqs > MAX_SEQS || o->max_queue < 0)
        return core_err_set(MLV_EINVAL, "batch: %d sequences (1 to %d), queue of %d", o->max_seqs,
                            MAX_SEQS, o->max_queue);
    const eng_hparams *hp = eng_model_hparams(m);
    eng_batcher *b = calloc(1, sizeof *b);
    if (!b) return core_err_set(MLV_ENOMEM, "out of memory");
    b->m = m;
    b->tok = eng_model_tokenizer(m);
    b->n_vocab = hp->n_vocab;
    b->n_ctx = o->n_ctx ? o->n_ctx : (hp->n_ctx_train < 2048 ? hp->n_ctx_train : 2048);
    b->max_seqs = o->max_seqs ? o->max_seqs : 8;
    b->max_queue = o->max_queue ? o->max_queue : 64;
    int rc = 0;
    const size_t ns = (size_t)b->max_seqs;
    b->slots = calloc(ns, sizeof *b->slots);
    b->logits = malloc(sizeof *b->logits * ns * b->n_vocab);
    b->step_c = malloc(sizeof *b->step_c * ns);
    b->step_tok = malloc(sizeof *b->step_tok * ns);
    b->step_slot = malloc(sizeof *b->step_slot * ns);
    if (!b->slots || !b->logits || !b->step_c || !b->step_tok || !b->step_slot) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < b->max_seqs; i++)
        if ((rc = eng_ctx_new(&b->slots[i].c, m, b->n_ctx))) goto done;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if ((rc = core_pool_new(&b->pool, (int)(ncpu < 1             ? 1
                                            : ncpu < b->max_seqs ? ncpu
                                                                 : b->max_seqs))))
        goto done;
    b->mu_ok = pthread_mutex_init(&b->mu, NULL) == 0;
    b->work_ok = b->mu_ok && pthread_cond_init(&b->work, NULL) == 0;
    b->idle_ok = b->work_ok && pthread_cond_init(&b->idle, NULL) == 0;
    if (!b->idle_ok) {
        rc = core_err_set(MLV_ENOMEM, "batch: cannot create a mutex");
        goto done;
    }
    if (pthread_create(&b->thread, NULL, scheduler, b) != 0) {
        rc = core_err_set(MLV_ENOMEM, "batch: cannot start the scheduler thread");
        goto done;
    }
    b->started = true;
done:
    if (rc) {
        eng_batcher_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

uint32_t eng_batcher_n_ctx(const eng_batcher *b)
{
    return b->n_ctx;
}

void eng_batcher_stats(eng_batcher *b, eng_batch_stats *out)
{
    pthread_mutex_lock(&b->mu);
    *out = (eng_batch_stats){.waiting = b->waiting,
                             .running = b->running,
                             .max_seqs = b->max_seqs,
                             .max_queue = b->max_queue,
                             .tokens = b->tokens,
                             .steps = b->steps,
                             .seq_sum = b->seq_sum};
    pthread_mutex_unlock(&b->mu);
}

/* ------------------------------------------------------------------ callers ---- */

/* Queues r (under the mutex): 0, MLV_EBUSY or MLV_ELIMIT. */
static int submit_locked(eng_batcher *b, request *r)
{
    if (b->stopping) return core_err_set(MLV_EBUSY, "the model is being unloaded");
    if (b->waiting >= b->max_queue)
        return core_err_set(MLV_ELIMIT, "the queue is full (%d waiting)", b->waiting);
    r->state = REQ_WAITING;
    r->t_submit = core_now_s();
    if (b->tail)
        b->tail->next = r;
    else
        b->head = r;
    b->tail = r;
    b->waiting++;
    b->callers++;
    pthread_cond_signal(&b->work);
    return 0;
}

/* Passes ids [from, to) to the caller's callback (unlocked); returns how many it saw.
 * *stop when the callback said stop (at the last one it saw) or a piece could not be
 * made (*rc). */
static size_t deliver(eng_batcher *b, const request *r, size_t from, size_t to, core_buf *piece,
                      bool *stop, int *rc)
{
    const eng_batch_req *q = r->q;
    if (!q->on_token) return to - from;
    for (size_t i = from; i < to; i++) {
        const int32_t id = r->hist[q->n_prompt + i];
        piece->len = 0;
        if ((*rc = eng_token_piece(b->tok, id, false, piece))) {
            *stop = true;
            return i - from;
        }
        if (q->on_token(q->arg, id, piece->data ? piece->data : "", piece->len)) {
            *stop = true;
            return i + 1 - from;
        }
    }
    return to - from;
}

int eng_batch_run(eng_batcher *b, const eng_batch_req *q, eng_batch_result *out)
{
    memset(out, 0, sizeof *out);
    if (!b || !q) return core_err_set(MLV_EINVAL, "batch: NULL argument");
    out->n_prompt = q->n_prompt;
    if (q->n_prompt == 0 || !q->prompt)
        return core_err_set(MLV_EINVAL, "batch: the prompt is empty");
    if (q->n_prompt >= b->n_ctx)
        return core_err_set(MLV_EINVAL,
                            "batch: a prompt of %zu tokens leaves no room in a context of %u",
                            q->n_prompt, b->n_ctx);
    for (size_t i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || (uint32_t)q->prompt[i] >= b->n_vocab)
            return core_err_set(MLV_EINVAL, "batch: token id %d is out of range (vocabulary %u)",
                                q->prompt[i], b->n_vocab);
    request r = {.q = q};
    /* at most one id per free position, plus the last one sampled when it is full */
    r.max_gen = b->n_ctx - q->n_prompt + 1;
    if (q->n_predict && q->n_predict < r.max_gen) r.max_gen = q->n_predict;
    core_buf piece = {0};
    bool cv_ok = false;
    int rc = eng_sampler_new(&r.sampler, &q->sp, b->n_vocab);
    if (rc) goto done;
    r.hist = malloc(sizeof *r.hist * (q->n_prompt + r.max_gen));
    if (!r.hist) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(r.hist, q->prompt, sizeof *r.hist * q->n_prompt);
    if (pthread_cond_init(&r.cv, NULL) != 0) {
        rc = core_err_set(MLV_ENOMEM, "batch: cannot create a condition variable");
        goto done;
    }
    cv_ok = true;

    pthread_mutex_lock(&b->mu);
    if ((rc = submit_locked(b, &r))) {
        pthread_mutex_unlock(&b->mu);
        goto done;
    }
    size_t delivered = 0;
    bool stopped = false; /* by the callback, or by a piece that could not be made (rc) */
    double t_first = 0;
    for (;;) {
        if (r.state == REQ_DONE && r.rc) break;
        if (delivered < r.n_ready && !stopped) {
            const size_t upto = r.n_ready;
            pthread_mutex_unlock(&b->mu);
            if (delivered == 0) t_first = core_now_s();
            delivered += deliver(b, &r, delivered, upto, &piece, &stopped, &rc);
            pthread_mutex_lock(&b->mu);
            if (stopped) r.cancelled = true; /* the scheduler drops it at its next step */
            continue;
        }
        if (r.state == REQ_DONE) break;
        pthread_cond_wait(&r.cv, &b->mu);
    }
    const double t_admit = r.t_admit;
    if (--b->callers == 0) pthread_cond_broadcast(&b->idle);
    pthread_mutex_unlock(&b->mu);
    /* r is ours alone again (done, or failed by the scheduler or eng_batcher_free) */
    if (!rc && !stopped && r.rc) rc = core_err_set(r.rc, "%s", r.err);
    if (rc) goto done;
    out->n_gen = delivered;
    out->stop_reason = stopped ? "callback" : r.stop_reason;
    const double now = core_now_s();
    out->queue_s = t_admit > 0 ? t_admit - r.t_submit : 0;
    out->ttft_s = t_first > 0 ? t_first - r.t_submit : now - r.t_submit;
    out->total_s = now - r.t_submit;
done:
    if (cv_ok) pthread_cond_destroy(&r.cv);
    eng_sampler_free(r.sampler);
    free(r.hist);
    core_buf_free(&piece);
    return rc;
}
