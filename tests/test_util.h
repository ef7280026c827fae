/* Helpers shared by the cmocka unit tests: temp folders under $MLV_TEST_TMP and whole-
 * file reads and writes that fail the test on any error. Include after <cmocka.h>. */
#ifndef MLV_TEST_UTIL_H
#define MLV_TEST_UTIL_H

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

/* splitmix64: deterministic test data, the same on every run and machine. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) */
static inline double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1p-53;
}

/* standard normal (Box-Muller) */
static inline double rng_gauss(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(rng_next(s) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* A fresh directory under $MLV_TEST_TMP (or /tmp), named after `what`. */
static inline void make_temp_dir(char *out, size_t cap, const char *what)
{
    const char *base = getenv("MLV_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    assert_int_equal(core_mkdir_p(base, 0700), 0);
    assert_true(snprintf(out, cap, "%s/%s-XXXXXX", base, what) < (int)cap);
    assert_non_null(mkdtemp(out));
}

static inline void write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(core_write_all(fd, p, n), 0);
    assert_int_equal(close(fd), 0);
}

/* The whole file; the caller frees. */
static inline unsigned char *read_all(const char *path, size_t *n)
{
    char *p = NULL;
    assert_int_equal(core_read_file(path, (size_t)1 << 32, &p, n), 0);
    return (unsigned char *)p;
}

static inline bool dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return true;
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = false;
    closedir(d);
    return empty;
}

#endif
