/* Unit tests for registry/: references, the role matrix, tokens, the audit chain and
 * the ledger queue's crash recovery (an entry committed to SQLite but not yet to git
 * is committed at the next open). Real SQLite, real libgit2, in a temp home. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/reg_internal.h"

static char home[512];
static char admin_tok[REG_TOKEN_LEN + 1];

static int setup(void **s)
{
    (void)s;
    const char *base = getenv("MLV_TEST_TMP") ? getenv("MLV_TEST_TMP") : "/tmp";
    core_mkdir_p(base, 0700);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/reg-XXXXXX", base);
    if (!mkdtemp(dir)) return -1;
    snprintf(home, sizeof home, "%s/home", dir);
    return reg_home_init(home, admin_tok);
}

static int teardown(void **s)
{
    (void)s;
    char dir[512];
    snprintf(dir, sizeof dir, "%s", home);
    *strrchr(dir, '/') = 0;
    return core_rm_rf(dir);
}

static void t_refs(void **s)
{
    (void)s;
    reg_ref r;
    assert_int_equal(reg_ref_parse("smollm2", &r), 0);
    assert_string_equal(r.name, "smollm2");
    assert_int_equal(r.version, 0);
    assert_int_equal(reg_ref_parse("smollm2:7", &r), 0);
    assert_int_equal(r.version, 7);
    assert_int_equal(reg_ref_parse("smollm2@production", &r), 0);
    assert_string_equal(r.channel, "production");
    const char *bad[] = {"",   "Upper", "a:0", "a:-1",  "a:01", "a:1x",
                         "a:", "a@",    "a@B", "a:1@b", "../x", "a:99999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(reg_ref_parse(bad[i], &r), MLV_EINVAL);
}

static void t_roles(void **s)
{
    (void)s;
    /* rows: viewer engineer approver admin node; columns: read download push admin audit
     * job promote approve channel — deny by default (node reads through releases only) */
    static const int allowed[5][9] = {{1, 1, 0, 0, 0, 0, 0, 0, 0},
                                      {1, 1, 1, 0, 0, 1, 1, 0, 0},
                                      {1, 1, 0, 0, 1, 0, 0, 1, 0},
                                      {1, 1, 1, 1, 1, 1, 1, 0, 1},
                                      {0, 0, 0, 0, 0, 0, 0, 0, 0}};
    for (int role = 0; role < 5; role++)
        for (int a = 0; a < 9; a++) {
            reg_user u = {.role = (reg_role)role};
            snprintf(u.name, sizeof u.name, "u");
            int rc = reg_authorize(&u, (reg_action)a);
            assert_int_equal(rc, allowed[role][a] ? 0 : MLV_EFORBIDDEN);
            u.disabled = true;
            assert_int_equal(reg_authorize(&u, (reg_action)a), MLV_EAUTH);
        }
    reg_role r;
    assert_int_equal(reg_role_parse("approver", &r), 0);
    assert_int_equal(r, REG_ROLE_APPROVER);
    assert_int_equal(reg_role_parse("root", &r), MLV_EINVAL);
}

static void t_tokens(void **s)
{
    (void)s;
    reg_ctx *r;
    assert_int_equal(reg_open(&r, home), 0);
    reg_user admin, u;
    assert_int_equal(reg_authenticate(r, admin_tok, &admin), 0);
    assert_string_equal(admin.name, "admin");
    assert_int_equal(admin.role, REG_ROLE_ADMIN);
    char tok[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, "carol", REG_ROLE_ENGINEER, tok), 0);
    assert_int_equal(strlen(tok), REG_TOKEN_LEN);
    assert_int_equal(reg_authenticate(r, tok, &u), 0);
    assert_string_equal(u.name, "carol");
    /* the token itself is not stored anywhere in the catalog */
    sqlite3_stmt *st;
    sqlite3_prepare_v2(r->db, "SELECT COUNT(*) FROM users WHERE token_hash = ?", -1, &st, NULL);
    sqlite3_bind_text(st, 1, tok, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    char spare[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, "carol", REG_ROLE_VIEWER, spare), MLV_EEXISTS);
    assert_int_equal(reg_user_add(r, &u, "dave", REG_ROLE_VIEWER, spare), MLV_EFORBIDDEN);
    assert_int_equal(reg_user_add(r, &admin, "Bad Name", REG_ROLE_VIEWER, spare), MLV_EINVAL);
    /* one flipped character is a different token */
    char wrong[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, "erin", REG_ROLE_VIEWER, wrong), 0);
    wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
    assert_int_equal(reg_authenticate(r, wrong, &u), MLV_EAUTH);
    assert_int_equal(reg_authenticate(r, NULL, &u), MLV_EAUTH);
    assert_non_null(strstr(core_err_last(), "no token"));
    assert_int_equal(reg_user_disable(r, &admin, "carol"), 0);
    assert_int_equal(reg_authenticate(r, tok, &u), MLV_EAUTH);
    assert_non_null(strstr(core_err_last(), "disabled"));
    assert_int_equal(reg_user_disable(r, &admin, "carol"), MLV_ENOTFOUND);
    assert_int_equal(reg_user_disable(r, &admin, "admin"), MLV_EINVAL);
    reg_user *us;
    size_t n;
    assert_int_equal(reg_user_list(r, &admin, &us, &n), 0);
    assert_int_equal(n, 3);
    free(us);
    int64_t rows;
    assert_int_equal(reg_audit_verify(r, &admin, &rows), 0);
    assert_int_equal(rows, 4); /* admin, carol, erin added; carol disabled */
    reg_close(r);
}

/* A process that died after its SQLite commit and before its git commit. */
static void t_ledger_replay(void **s)
{
    (void)s;
    reg_ctx *r;
    assert_int_equal(reg_open(&r, home), 0);
    char *before = NULL;
    size_t len;
    assert_int_equal(repo_ledger_read(home, "audit/head.json", &before, &len), 0);
    assert_int_equal(reg_begin(r), 0);
    assert_int_equal(reg_audit_append(r, "admin", "test.crash", "x", "", NULL, 0), 0);
    assert_int_equal(reg_commit(r), 0);
    /* no flush: "crash" here */
    reg_user admin;
    assert_int_equal(reg_authenticate(r, admin_tok, &admin), 0);
    sqlite3 *db = r->db;
    r->db = NULL;
    sqlite3_close(db);
    reg_close(r);

    char *mid = NULL;
    assert_int_equal(repo_ledger_read(home, "audit/head.json", &mid, &len), 0);
    assert_string_equal(before, mid);        /* git does not have it yet */
    assert_int_equal(reg_open(&r, home), 0); /* replays the queue */
    char *after = NULL;
    assert_int_equal(repo_ledger_read(home, "audit/head.json", &after, &len), 0);
    assert_string_not_equal(before, after);
    int64_t rows;
    assert_int_equal(reg_audit_verify(r, &admin, &rows), 0);
    reg_close(r);
    /* opening again commits nothing twice */
    assert_int_equal(reg_open(&r, home), 0);
    char *again = NULL;
    assert_int_equal(repo_ledger_read(home, "audit/head.json", &again, &len), 0);
    assert_string_equal(after, again);
    reg_close(r);
    free(before);
    free(mid);
    free(after);
    free(again);
}

/* A push that died after moving its blob into objects/ and before its transaction
 * committed: the next open with the home to itself removes the orphan. */
static void t_orphan_blob_removed(void **s)
{
    (void)s;
    reg_ctx *r, *other;
    assert_int_equal(reg_open(&r, home), 0);
    assert_int_equal(reg_open(&other, home), 0); /* a second live process */
    char src[600];
    snprintf(src, sizeof src, "%s/../orphan.bin", home);
    FILE *f = fopen(src, "w");
    assert_non_null(f);
    fputs("bytes of a push that never committed\n", f);
    fclose(f);
    repo_staged_blob b, *bp = &b;
    assert_int_equal(repo_blob_stage_file(home, r->keys, src, &b), 0);
    assert_int_equal(reg_blob_intents_add(r, &bp, 1), 0);
    assert_int_equal(repo_blob_commit(home, &b), 0);
    assert_true(repo_blob_exists(home, b.sha256));
    reg_close(r); /* "crash": no transaction recorded the blob */

    reg_ctx *r2; /* `other` still uses the home: no recovery yet */
    assert_int_equal(reg_open(&r2, home), 0);
    reg_close(r2);
    assert_true(repo_blob_exists(home, b.sha256));
    reg_close(other);
    assert_int_equal(reg_open(&r2, home), 0); /* alone now: recovers */
    assert_false(repo_blob_exists(home, b.sha256));
    reg_close(r2);
}

static void t_home_refused_twice(void **s)
{
    (void)s;
    char tok[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_home_init(home, tok), MLV_EEXISTS);
    reg_ctx *r;
    assert_int_equal(reg_open(&r, "/nonexistent/mlvault-home"), MLV_ENOTFOUND);
    assert_null(r);
}

static void write_config(const char *text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/config.ini", home);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* config.ini: the defaults init writes, overrides, and errors that name the line. */
static void t_config(void **s)
{
    (void)s;
    reg_config c;
    assert_int_equal(reg_config_read(home, &c), 0); /* as init wrote it */
    assert_string_equal(c.listen, "127.0.0.1:8080");
    assert_int_equal(c.job_workers, 1);
    assert_int_equal(c.max_uploads, 8);
    assert_true(c.gate_threshold == 2.0);
    assert_string_equal(c.tls_cert, "");
    write_config("; site settings\n[server]\nlisten = 0.0.0.0:9000\ntls_cert = /etc/c.pem\n"
                 "tls_key = /etc/k.pem\nmax_uploads = 3\n[jobs]\nworkers = 4\n"
                 "[gate]\nthreshold = 1.5\n");
    assert_int_equal(reg_config_read(home, &c), 0);
    assert_string_equal(c.listen, "0.0.0.0:9000");
    assert_string_equal(c.tls_key, "/etc/k.pem");
    assert_int_equal(c.max_uploads, 3);
    assert_int_equal(c.job_workers, 4);
    assert_true(c.gate_threshold == 1.5);
    static const struct {
        const char *text, *expect;
    } bad[] = {
        {"[server]\nlisten = a:1\nport = 8\n", "line 3: unknown setting [server] port"},
        {"[jobs]\nworkers = 0\n", "line 2: [jobs] workers = 0: not a valid value"},
        {"[gate]\nthreshold = 2,5\n", "line 2: [gate] threshold = 2,5"},
        {"[gate]\nthreshold = 101\n", "not a valid value"},
        {"[jobs\nworkers = 2\n", "line 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_config(bad[i].text);
        assert_int_equal(reg_config_read(home, &c), MLV_EINVAL);
        assert_non_null(strstr(core_err_last(), bad[i].expect));
    }
    write_config("[gate]\nthreshold = 2.0\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_refs),
        cmocka_unit_test(t_roles),
        cmocka_unit_test(t_tokens),
        cmocka_unit_test(t_ledger_replay),
        cmocka_unit_test(t_orphan_blob_removed),
        cmocka_unit_test(t_home_refused_twice),
        cmocka_unit_test(t_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
