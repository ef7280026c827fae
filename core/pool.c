/* core/pool.c: the thread pool behind the data-parallel kernels (core.h, "thread pool").
 * Persistent workers; core_pool_run publishes a job by bumping a generation counter,
 * runs share 0 on the calling thread and waits until every worker has finished its
 * share. A decode step runs a few hundred short jobs per token, so idle workers spin on
 * the counter for a while (pause, then sched_yield) before they sleep on a condition
 * variable, and the caller spins the same way for the stragglers. Not a task queue:
 * one job at a time, from one thread at a time.
 *
 * Sleeping without lost wake-ups: a worker about to sleep takes the mutex, announces
 * itself in `sleepers`, re-reads the generation and only then waits; the caller bumps
 * the generation and then reads `sleepers` (both sequentially consistent), so either
 * the worker sees the new job or the caller sees the sleeper and broadcasts under the
 * mutex. The caller's own sleep on `done` mirrors this with `caller_sleeping`. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

#define POOL_PAUSE_NS 50000LL  /* pause-spin this long, then ... */
#define POOL_YIELD_NS 300000LL /* ... sched_yield-spin until this long, then sleep */
#define POOL_MAX_THREADS 1024

typedef struct pool_worker {
    core_pool *pool;
    int ith;
    pthread_t thread;
} pool_worker;

struct core_pool {
    /* Written by the caller, read by workers: the job and its generation. */
    alignas(64) atomic_uint_fast64_t gen;
    void (*fn)(void *arg, int ith, int nth);
    void *arg;
    atomic_bool stop;
    /* Written by workers: how many have not yet finished the current job. */
    alignas(64) atomic_int pending;
    /* The slow path. */
    alignas(64) atomic_int sleepers;
    atomic_bool caller_sleeping;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* workers wait here for a job */
    pthread_cond_t done; /* the caller waits here for the last worker */
    int n;               /* threads, the caller included */
    int n_started;       /* workers created */
    pool_worker *workers;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spins until done(p, seen) or the spin budget is spent; returns whether done. */
static bool spin_until(core_pool *p, uint64_t seen, bool (*done)(core_pool *, uint64_t))
{
    int64_t start = 0;
    for (unsigned i = 0;; i++) {
        if (done(p, seen)) return true;
        if ((i & 15) != 15) {
            cpu_relax();
            continue;
        }
        int64_t t = now_ns();
        if (!start) start = t;
        int64_t spent = t - start;
        if (spent >= POOL_YIELD_NS) return done(p, seen);
        if (spent >= POOL_PAUSE_NS)
            sched_yield();
        else
            cpu_relax();
    }
}

static bool new_job(core_pool *p, uint64_t seen)
{
    return atomic_load_explicit(&p->gen, memory_order_acquire) != seen;
}

static bool all_done(core_pool *p, uint64_t unused)
{
    (void)unused;
    return atomic_load_explicit(&p->pending, memory_order_acquire) == 0;
}

static void *worker_main(void *arg)
{
    pool_worker *w = arg;
    core_pool *p = w->pool;
    uint64_t seen = 0;

    for (;;) {
        if (!spin_until(p, seen, new_job)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen)
                pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) break;

        p->fn(p->arg, w->ith, p->n);

        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* Publishes the current fn/arg (or stop) to the workers and wakes sleeping ones. */
static void publish(core_pool *p)
{
    atomic_fetch_add(&p->gen, 1); /* seq_cst: ordered before the read of sleepers */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
}

static void stop_workers(core_pool *p)
{
    atomic_store(&p->stop, true);
    publish(p);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->workers[i].thread, NULL);
    p->n_started = 0;
}

int core_pool_new(core_pool **out, int n_threads)
{
    if (!out) return core_err_set(MLV_EINVAL, "pool: NULL out");
    *out = NULL;
    if (n_threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = c > 0 ? (int)(c > POOL_MAX_THREADS ? POOL_MAX_THREADS : c) : 1;
    }
    if (n_threads > POOL_MAX_THREADS)
        return core_err_set(MLV_EINVAL, "pool: %d threads is more than %d", n_threads,
                            POOL_MAX_THREADS);

    size_t size = (sizeof(core_pool) + 63) & ~(size_t)63;
    core_pool *p = aligned_alloc(64, size);
    if (!p) return core_err_set(MLV_ENOMEM, "pool: out of memory");
    memset(p, 0, size);
    atomic_init(&p->gen, 0);
    atomic_init(&p->stop, false);
    atomic_init(&p->pending, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeping, false);
    p->n = n_threads;
    if (n_threads == 1) { /* everything runs inline on the caller */
        *out = p;
        return 0;
    }

    int rc = 0;
    bool mu_ok = false, wake_ok = false, done_ok = false;
    mu_ok = pthread_mutex_init(&p->mu, NULL) == 0;
    wake_ok = mu_ok && pthread_cond_init(&p->wake, NULL) == 0;
    done_ok = wake_ok && pthread_cond_init(&p->done, NULL) == 0;
    if (!done_ok) {
        rc = core_err_set(MLV_ENOMEM, "pool: cannot create its mutex or condition variables");
        goto done;
    }
    p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
    if (!p->workers) {
        rc = core_err_set(MLV_ENOMEM, "pool: out of memory");
        goto done;
    }
    for (int i = 1; i < n_threads; i++) {
        pool_worker *w = &p->workers[i - 1];
        w->pool = p;
        w->ith = i;
        int e = pthread_create(&w->thread, NULL, worker_main, w);
        if (e != 0) {
            rc = core_err_set(e == EAGAIN ? MLV_ENOMEM : MLV_EIO,
                              "pool: cannot start thread %d of %d: %s", i, n_threads, strerror(e));
            goto done;
        }
        p->n_started++;
    }
    *out = p;
    return 0;

done:
    stop_workers(p);
    free(p->workers);
    if (done_ok) pthread_cond_destroy(&p->done);
    if (wake_ok) pthread_cond_destroy(&p->wake);
    if (mu_ok) pthread_mutex_destroy(&p->mu);
    free(p);
    return rc;
}

void core_pool_free(core_pool *p)
{
    if (!p) return;
    if (p->n > 1) {
        stop_workers(p);
        free(p->workers);
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
    }
    free(p);
}

int core_pool_size(const core_pool *p)
{
    return p ? p->n : 1;
}

void core_pool_run(core_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    publish(p); /* the seq_cst bump releases fn, arg and pending to the workers */

    fn(arg, 0, p->n);

    if (spin_until(p, 0, all_done)) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_sleeping, true);
    while (atomic_load(&p->pending) != 0)
        pthread_cond_wait(&p->done, &p->mu);
    atomic_store(&p->caller_sleeping, false);
    pthread_mutex_unlock(&p->mu);
}
