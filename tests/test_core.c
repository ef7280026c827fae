/* Unit tests for core/: names, relative paths, hex, atomic writes, the error slot,
 * the string buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

static void t_names(void **s)
{
    (void)s;
    assert_true(core_name_valid("smollm2"));
    assert_true(core_name_valid("a"));
    assert_true(core_name_valid("tiny-llama_1.1b"));
    assert_true(core_name_valid("0abc"));
    char n64[65], n65[66];
    memset(n64, 'a', 64);
    n64[64] = 0;
    memset(n65, 'a', 65);
    n65[65] = 0;
    assert_true(core_name_valid(n64));
    assert_false(core_name_valid(n65));
    assert_false(core_name_valid(""));
    assert_false(core_name_valid(NULL));
    assert_false(core_name_valid("../x"));
    assert_false(core_name_valid("Upper"));
    assert_false(core_name_valid("-lead"));
    assert_false(core_name_valid(".hidden"));
    assert_false(core_name_valid("a/b"));
    assert_false(core_name_valid("a b"));
    assert_false(core_name_valid("a:1"));
}

static void t_relpath(void **s)
{
    (void)s;
    assert_true(core_relpath_safe("model.safetensors"));
    assert_true(core_relpath_safe("sub/dir/file.json"));
    assert_true(core_relpath_safe("..foo"));
    assert_false(core_relpath_safe(""));
    assert_false(core_relpath_safe("/etc/passwd"));
    assert_false(core_relpath_safe("../x"));
    assert_false(core_relpath_safe("a/../../x"));
    assert_false(core_relpath_safe("a/./b"));
    assert_false(core_relpath_safe("a//b"));
    assert_false(core_relpath_safe("a/"));
    assert_false(core_relpath_safe("a\\b"));
    assert_false(core_relpath_safe("a\nb"));
}

static void t_hex(void **s)
{
    (void)s;
    unsigned char in[4] = {0x00, 0xab, 0x10, 0xff}, back[4];
    char h[9];
    core_hex(h, in, 4);
    assert_string_equal(h, "00ab10ff");
    assert_int_equal(core_unhex(back, 4, h), 0);
    assert_memory_equal(in, back, 4);
    assert_int_equal(core_unhex(back, 4, "00AB10FF"), MLV_EINVAL); /* lowercase only */
    assert_int_equal(core_unhex(back, 4, "00ab10f"), MLV_EINVAL);
    assert_int_equal(core_unhex(back, 4, "00ab10fg"), MLV_EINVAL);
}

static void t_atomic_write(void **s)
{
    (void)s;
    const char *base = getenv("MLV_TEST_TMP") ? getenv("MLV_TEST_TMP") : "/tmp";
    char dir[512];
    snprintf(dir, sizeof dir, "%s/core-XXXXXX", base);
    core_mkdir_p(base, 0700);
    assert_non_null(mkdtemp(dir));
    char *path = core_path_join(dir, "f.txt");
    assert_int_equal(core_write_atomic(path, dir, "hello", 5, 0600), 0);
    char *data;
    size_t len;
    assert_int_equal(core_read_file(path, 100, &data, &len), 0);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* over the size limit: refused */
    assert_int_equal(core_read_file(path, 4, &data, &len), MLV_EINVAL);
    assert_null(data);
    /* replacing keeps the old content until the new one is whole */
    assert_int_equal(core_write_atomic(path, dir, "world!", 6, 0600), 0);
    assert_int_equal(core_read_file(path, 100, &data, &len), 0);
    assert_string_equal(data, "world!");
    free(data);
    /* no temp files left behind */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
    assert_int_equal(system(cmd), 0);
    /* a missing directory is an error with the path in the message */
    char *bad = core_path_join(dir, "nope/f.txt");
    assert_int_equal(core_write_atomic(bad, dir, "x", 1, 0600), MLV_EIO);
    assert_int_equal(core_read_file(bad, 10, &data, &len), MLV_ENOTFOUND);
    assert_non_null(strstr(core_err_last(), "nope"));
    free(bad);
    assert_int_equal(core_rm_rf(dir), 0);
    assert_int_not_equal(stat(dir, &st), 0);
    free(path);
}

static void t_errors(void **s)
{
    (void)s;
    core_err_clear();
    assert_int_equal(core_err_set(MLV_EINTEGRITY, "blob %s: bad", "ab"), MLV_EINTEGRITY);
    assert_int_equal(core_err_code(), MLV_EINTEGRITY);
    assert_string_equal(core_err_last(), "blob ab: bad");
    core_err_wrap("push %s: ", "m");
    assert_string_equal(core_err_last(), "push m: blob ab: bad");
    assert_string_equal(core_err_name(MLV_EAUTH), "EAUTH");
}

static void t_buf(void **s)
{
    (void)s;
    core_buf b = {0};
    for (int i = 0; i < 1000; i++)
        core_buf_appendf(&b, "%d,", i);
    char *out = core_buf_take(&b);
    assert_non_null(out);
    assert_int_equal(strncmp(out, "0,1,2,", 6), 0);
    assert_non_null(strstr(out, ",999,"));
    free(out);
    char hb[32];
    core_human_bytes(hb, sizeof hb, 98362432);
    assert_string_equal(hb, "98.4 MB");
}

/* Invalid UTF-8 becomes U+FFFD, one per bad byte; valid text is kept as it is. */
static void t_utf8(void **state)
{
    (void)state;
    const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"caf\xc3\xa9 \xf0\x9f\x98\x80", 10, "caf\xc3\xa9 \xf0\x9f\x98\x80"},
        {"ab\xc3", 3, "ab\xef\xbf\xbd"},                             /* cut in the middle */
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong '/' */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
        {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"a\0b", 3, "a\0b"},
        {"", 0, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *o = core_utf8_valid_copy(cases[i].in, cases[i].n);
        assert_non_null(o);
        size_t want = strlen(cases[i].out);
        if (i == 5) want = 3;
        assert_memory_equal(o, cases[i].out, want);
        if (i != 5) assert_int_equal(strlen(o), want);
        free(o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_names),        cmocka_unit_test(t_relpath), cmocka_unit_test(t_hex),
        cmocka_unit_test(t_atomic_write), cmocka_unit_test(t_errors),  cmocka_unit_test(t_buf),
        cmocka_unit_test(t_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
