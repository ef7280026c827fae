/* bench/membw: memory read bandwidth with N threads — the ceiling a bandwidth-bound
 * decode (every weight read once per token) can reach on this machine. Each thread sums
 * its own slice of a buffer (1 GiB by default, first touched by the thread that reads
 * it); the best of several repetitions (and the median, since shared machines are
 * noisy) is reported as one JSON line. Not a general
 * memory benchmark: reads only, no latency or write figures.
 *
 * usage: membw [THREADS] [--mib N] [--reps N]     (THREADS 0 or absent = online CPUs)
 * build: cc -O2 -pthread -o membw bench/membw.c */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* 16-byte integer vectors (GCC/Clang extension): plain SSE2 on x86-64, NEON on arm64,
 * so the loop keeps several loads in flight without -march flags. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));

typedef struct worker {
    pthread_t tid;
    const v2u64 *base;
    size_t n_vec; /* vectors in this worker's slice */
    pthread_barrier_t *start, *done;
    int reps;
    double *t_start, *t_end; /* per repetition, taken by the worker itself */
    uint64_t sum;
} worker;

static double now_s(void);

static void *work(void *arg)
{
    worker *w = arg;
    /* first touch from the reading thread: the pages land on its NUMA node */
    memset((void *)w->base, 0x5a, w->n_vec * sizeof(v2u64));
    for (int r = 0; r < w->reps; r++) {
        pthread_barrier_wait(w->start);
        w->t_start[r] = now_s();
        /* eight independent sums: one 128-byte stretch (two cache lines) per iteration */
        v2u64 a = {0, 0}, b = a, c = a, d = a, e = a, f = a, g = a, h = a;
        const v2u64 *p = w->base;
        size_t i = 0;
        for (; i + 8 <= w->n_vec; i += 8) {
            a += p[i];
            b += p[i + 1];
            c += p[i + 2];
            d += p[i + 3];
            e += p[i + 4];
            f += p[i + 5];
            g += p[i + 6];
            h += p[i + 7];
        }
        for (; i < w->n_vec; i++)
            a += p[i];
        v2u64 s = a + b + c + d + e + f + g + h;
        w->sum += s[0] + s[1];
        w->t_end[r] = now_s();
        pthread_barrier_wait(w->done);
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long threads = 0, mib = 1024, reps = 10;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc)
            mib = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = strtol(argv[++i], NULL, 10);
        else
            threads = strtol(argv[i], NULL, 10);
    }
    if (threads <= 0)
        threads = sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1 || threads > 1024 || mib < 1 || reps < 1 || reps > 1000) {
        fprintf(stderr, "usage: membw [THREADS] [--mib N] [--reps N]\n");
        return 2;
    }
    size_t bytes = (size_t)mib << 20;
    size_t n_vec = bytes / sizeof(v2u64);
    v2u64 *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, bytes) != 0) {
        fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    worker *ws = calloc((size_t)threads, sizeof(*ws));
    pthread_barrier_t start, done;
    if (!ws || pthread_barrier_init(&start, NULL, (unsigned)threads + 1) ||
        pthread_barrier_init(&done, NULL, (unsigned)threads + 1)) {
        fprintf(stderr, "membw: out of memory\n");
        return 1;
    }
    size_t per = n_vec / (size_t)threads;
    for (long t = 0; t < threads; t++) {
        ws[t].base = buf + (size_t)t * per;
        ws[t].n_vec = t == threads - 1 ? n_vec - (size_t)t * per : per;
        ws[t].start = &start;
        ws[t].done = &done;
        ws[t].reps = (int)reps;
        ws[t].t_start = calloc((size_t)reps, sizeof(double));
        ws[t].t_end = calloc((size_t)reps, sizeof(double));
        if (!ws[t].t_start || !ws[t].t_end) {
            fprintf(stderr, "membw: out of memory\n");
            return 1;
        }
        if (pthread_create(&ws[t].tid, NULL, work, &ws[t])) {
            fprintf(stderr, "membw: cannot start thread %ld\n", t);
            return 1;
        }
    }
    for (long r = 0; r < reps; r++) {
        pthread_barrier_wait(&start); /* every worker has touched its slice */
        pthread_barrier_wait(&done);
    }
    uint64_t sum = 0;
    for (long t = 0; t < threads; t++) {
        pthread_join(ws[t].tid, NULL);
        sum += ws[t].sum;
    }
    /* a repetition lasts from the first worker's start to the last worker's end */
    double times[1000];
    for (long r = 0; r < reps; r++) {
        double t0 = ws[0].t_start[r], t1 = ws[0].t_end[r];
        for (long t = 1; t < threads; t++) {
            if (ws[t].t_start[r] < t0) t0 = ws[t].t_start[r];
            if (ws[t].t_end[r] > t1) t1 = ws[t].t_end[r];
        }
        times[r] = t1 - t0;
    }
    qsort(times, (size_t)reps, sizeof *times, cmp_double);
    double best = times[0], median = times[reps / 2];
    printf("{\"bench\": \"membw\", \"threads\": %ld, \"bytes\": %zu, \"reps\": %ld, "
           "\"best_s\": %.6f, \"gb_per_s\": %.2f, \"median_gb_per_s\": %.2f, "
           "\"checksum\": %llu}\n",
           threads, bytes, reps, best, (double)bytes / best / 1e9,
           (double)bytes / median / 1e9, (unsigned long long)sum);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&done);
    for (long t = 0; t < threads; t++) {
        free(ws[t].t_start);
        free(ws[t].t_end);
    }
    free(ws);
    free(buf);
    return 0;
}
