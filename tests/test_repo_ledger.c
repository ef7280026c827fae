/* tests/test_repo_ledger.c: repo/ledger.c. Commits with nested paths, removals, an
 * unchanged-tree no-op, read and list; then the result is checked with the
 * independent `git` command line: log (authors and subjects in order), show
 * main:PATH, ls-tree, and fsck --strict. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
/* cmocka.h needs the three headers above first */
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/core.h"
#include "repo/repo.h"

static char home[4096];

static int setup(void **state)
{
    (void)state;
    const char *base = getenv("MLV_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    if (core_mkdir_p(base, 0700)) return -1;
    snprintf(home, sizeof home, "%s/ledger-XXXXXX", base);
    return mkdtemp(home) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    core_rm_rf(home);
    return 0;
}

/* Runs `git -C HOME/ledger.git ARGS` and returns its stdout (caller frees); *status
 * gets the exit status. stderr is folded into stdout when `merge_err`. */
static char *git(int *status, bool merge_err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static char *git(int *status, bool merge_err, const char *fmt, ...)
{
    char args[2048], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    /* A clean environment: no user or system git config changes what we read. */
    snprintf(cmd, sizeof cmd,
             "GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null git -C '%s/ledger.git' %s%s", home,
             args, merge_err ? " 2>&1" : "");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    core_buf out = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0)
        core_buf_append(&out, chunk, n);
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    char *s = core_buf_take(&out);
    assert_non_null(s);
    return s;
}

static void expect_git(const char *want, const char *args)
{
    int st;
    char *got = git(&st, false, "%s", args);
    if (st != 0 || strcmp(got, want)) {
        fprintf(stderr, "git %s: status %d\n--- got ---\n%s--- want ---\n%s", args, st, got, want);
        fail();
    }
    free(got);
}

static void expect_read(const char *path, const char *want)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = repo_ledger_read(home, path, &buf, &len);
    if (rc) fprintf(stderr, "read %s: %s\n", path, core_err_last());
    assert_int_equal(rc, 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(buf, want, len);
    assert_int_equal(buf[len], 0);
    free(buf);
}

typedef struct listing {
    char paths[32][256];
    size_t n;
    size_t stop_after; /* 0: never */
} listing;

static int collect(const char *path, void *ctx)
{
    listing *l = ctx;
    assert_true(l->n < 32);
    snprintf(l->paths[l->n++], 256, "%s", path);
    return l->stop_after && l->n == l->stop_after ? 42 : 0;
}

static void rev_parse_main(char out[41])
{
    int st;
    char *s = git(&st, false, "rev-parse main");
    assert_int_equal(st, 0);
    assert_true(strlen(s) >= 40);
    memcpy(out, s, 40);
    out[40] = 0;
    free(s);
}

#define CH(p, c)                                                                                   \
    {                                                                                              \
        (p), (c), strlen(c)                                                                        \
    }
#define RM(p)                                                                                      \
    {                                                                                              \
        (p), NULL, 0                                                                               \
    }

static void t_ledger(void **state)
{
    (void)state;
    char oid[41], oid2[41], head[41];
    listing l = {0};

    /* before init */
    repo_ledger_change c0[] = {CH("a", "x")};
    assert_int_equal(repo_ledger_commit(home, "alice", "m", c0, 1, oid), MLV_ENOTFOUND);

    assert_int_equal(repo_ledger_init(home), 0);
    assert_int_equal(repo_ledger_init(home), 0); /* idempotent */
    expect_git("refs/heads/main\n", "symbolic-ref HEAD");

    /* empty ledger: nothing to read or list */
    char *buf = NULL;
    size_t len;
    assert_int_equal(repo_ledger_read(home, "models/a/1/manifest.json", &buf, &len), MLV_ENOTFOUND);
    assert_int_equal(repo_ledger_list(home, "", collect, &l), 0);
    assert_int_equal(l.n, 0);
    /* a removal on an empty ledger changes nothing and makes no commit */
    repo_ledger_change rm0[] = {RM("models/x")};
    assert_int_equal(repo_ledger_commit(home, "alice", "noop", rm0, 1, oid), 0);
    assert_string_equal(oid, "");

    /* 1: a version with two files, nested */
    repo_ledger_change c1[] = {
        CH("models/llama-tiny/1/manifest.json", "{\"version\":1}"),
        CH("models/llama-tiny/1/signature", "sig-1"),
    };
    assert_int_equal(repo_ledger_commit(home, "alice", "push llama-tiny:1", c1, 2, oid), 0);
    assert_true(core_is_hex(oid, 40));
    rev_parse_main(head);
    assert_string_equal(oid, head);

    /* 2: more files in other directories, deeper nesting, a message with a body */
    repo_ledger_change c2[] = {
        CH("models/llama-tiny/1/evaluations/e1.json", "{\"acc\":0.5}"),
        CH("channels/llama-tiny/production.json", "{\"version\":1}"),
        CH("promotions/p1.json", "{\"id\":1}"),
        CH("models/llama-tiny/2/manifest.json", "{\"version\":2}"),
    };
    assert_int_equal(repo_ledger_commit(home, "bob",
                                        "promote llama-tiny:1 to production\n\n"
                                        "approved by carol",
                                        c2, 4, oid2),
                     0);
    assert_string_not_equal(oid, oid2);

    /* 3: a modification and a removal */
    repo_ledger_change c3[] = {
        CH("models/llama-tiny/1/manifest.json", "{\"version\":1,\"note\":\"x\"}"),
        RM("models/llama-tiny/1/signature"),
    };
    assert_int_equal(repo_ledger_commit(home, "carol", "amend llama-tiny:1", c3, 2, oid), 0);
    rev_parse_main(head);
    assert_string_equal(oid, head);

    /* 4: the same contents again: no commit; the head is returned */
    repo_ledger_change c4[] = {
        CH("models/llama-tiny/1/manifest.json", "{\"version\":1,\"note\":\"x\"}"),
        RM("models/llama-tiny/1/signature"),     /* already gone */
        RM("models/llama-tiny/9/manifest.json"), /* never there */
    };
    assert_int_equal(repo_ledger_commit(home, "dave", "nothing", c4, 3, oid2), 0);
    assert_string_equal(oid2, head);
    assert_int_equal(repo_ledger_commit(home, "dave", "nothing at all", NULL, 0, oid2), 0);
    assert_string_equal(oid2, head);

    /* 5: removing the last file of a directory drops the directory */
    repo_ledger_change c5[] = {RM("channels/llama-tiny/production.json")};
    assert_int_equal(repo_ledger_commit(home, "erin", "clear channel", c5, 1, NULL), 0);

    /* refused: unsafe paths, conflicts, bad authors — and none makes a commit */
    rev_parse_main(head);
    const char *bad_paths[] = {"",   "/etc/passwd", "../x",         "a/../b", "a//b", "a/./b",
                               "a/", ".git/config", "x/.GIT/hooks", "a\\b",   "a\nb"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof bad_paths[0]; i++) {
        repo_ledger_change b[] = {CH(bad_paths[i], "x")};
        assert_int_equal(repo_ledger_commit(home, "mallory", "bad", b, 1, oid), MLV_EINVAL);
        assert_int_equal(repo_ledger_read(home, bad_paths[i], &buf, &len), MLV_EINVAL);
    }
    repo_ledger_change dup[] = {CH("a/b", "1"), CH("a/b", "2")};
    assert_int_equal(repo_ledger_commit(home, "mallory", "dup", dup, 2, oid), MLV_EINVAL);
    repo_ledger_change df[] = {CH("q", "1"), CH("q/r", "2")};
    assert_int_equal(repo_ledger_commit(home, "mallory", "d/f", df, 2, oid), MLV_EINVAL);
    repo_ledger_change under_file[] = {CH("promotions/p1.json/x", "1")};
    assert_int_equal(repo_ledger_commit(home, "mallory", "under a file", under_file, 1, oid),
                     MLV_EINVAL);
    repo_ledger_change over_dir[] = {CH("models/llama-tiny", "1")};
    assert_int_equal(repo_ledger_commit(home, "mallory", "over a dir", over_dir, 1, oid),
                     MLV_EINVAL);
    repo_ledger_change okc[] = {CH("z", "1")};
    assert_int_equal(repo_ledger_commit(home, "a b", "m", okc, 1, oid), MLV_EINVAL);
    assert_int_equal(repo_ledger_commit(home, "a<b>", "m", okc, 1, oid), MLV_EINVAL);
    assert_int_equal(repo_ledger_commit(home, "", "m", okc, 1, oid), MLV_EINVAL);
    assert_int_equal(repo_ledger_commit(home, "alice", "", okc, 1, oid), MLV_EINVAL);
    rev_parse_main(oid);
    assert_string_equal(oid, head);

    /* read */
    expect_read("models/llama-tiny/1/manifest.json", "{\"version\":1,\"note\":\"x\"}");
    expect_read("models/llama-tiny/1/evaluations/e1.json", "{\"acc\":0.5}");
    expect_read("promotions/p1.json", "{\"id\":1}");
    assert_int_equal(repo_ledger_read(home, "models/llama-tiny/1/signature", &buf, &len),
                     MLV_ENOTFOUND);
    assert_null(buf);
    assert_int_equal(repo_ledger_read(home, "channels/llama-tiny/production.json", &buf, &len),
                     MLV_ENOTFOUND);
    assert_int_equal(repo_ledger_read(home, "models/llama-tiny", &buf, &len), MLV_EINVAL);

    /* list */
    memset(&l, 0, sizeof l);
    assert_int_equal(repo_ledger_list(home, "models/", collect, &l), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.paths[0], "models/llama-tiny/1/evaluations/e1.json");
    assert_string_equal(l.paths[1], "models/llama-tiny/1/manifest.json");
    assert_string_equal(l.paths[2], "models/llama-tiny/2/manifest.json");
    memset(&l, 0, sizeof l);
    assert_int_equal(repo_ledger_list(home, NULL, collect, &l), 0);
    assert_int_equal(l.n, 4);
    memset(&l, 0, sizeof l);
    assert_int_equal(repo_ledger_list(home, "models/llama-tiny/1/m", collect, &l), 0);
    assert_int_equal(l.n, 1);
    memset(&l, 0, sizeof l);
    assert_int_equal(repo_ledger_list(home, "channels/", collect, &l), 0);
    assert_int_equal(l.n, 0);
    memset(&l, 0, sizeof l);
    l.stop_after = 2; /* the callback's nonzero result stops the walk and is returned */
    assert_int_equal(repo_ledger_list(home, "", collect, &l), 42);
    assert_int_equal(l.n, 2);

    /* ---- the independent view: git itself ---- */
    expect_git("erin|erin@mlvault|clear channel\n"
               "carol|carol@mlvault|amend llama-tiny:1\n"
               "bob|bob@mlvault|promote llama-tiny:1 to production\n"
               "alice|alice@mlvault|push llama-tiny:1\n",
               "log --format='%an|%ae|%s' main");
    expect_git("erin|erin@mlvault\ncarol|carol@mlvault\nbob|bob@mlvault\nalice|alice@mlvault\n",
               "log --format='%cn|%ce' main");
    /* the raw message: as given, with git's trailing newline added */
    expect_git("promote llama-tiny:1 to production\n\napproved by carol\n",
               "cat-file commit main~2 | sed '1,/^$/d'");
    expect_git("{\"version\":1,\"note\":\"x\"}", "show main:models/llama-tiny/1/manifest.json");
    expect_git("{\"acc\":0.5}", "show main:models/llama-tiny/1/evaluations/e1.json");
    expect_git("{\"version\":2}", "show main:models/llama-tiny/2/manifest.json");
    expect_git("sig-1", "show main~2:models/llama-tiny/1/signature");
    expect_git("{\"version\":1}", "show main~1:channels/llama-tiny/production.json");
    expect_git("models/llama-tiny/1/evaluations/e1.json\n"
               "models/llama-tiny/1/manifest.json\n"
               "models/llama-tiny/2/manifest.json\n"
               "promotions/p1.json\n",
               "ls-tree -r --name-only main");
    expect_git("models\npromotions\n", "ls-tree --name-only main"); /* channels/ is gone */
    expect_git("4\n", "rev-list --count main");
    expect_git("1\n", "rev-list --max-parents=0 --count main"); /* one root */
    int st;
    char *fsck = git(&st, true, "fsck --strict --no-dangling --no-progress");
    if (st != 0 || fsck[0]) fprintf(stderr, "git fsck: status %d\n%s", st, fsck);
    assert_int_equal(st, 0);
    assert_string_equal(fsck, "");
    free(fsck);
}

/* main moved by someone else between commits (here: git itself): the next commit
 * builds on the new head, so nothing is lost. */
static void t_ledger_external_move(void **state)
{
    (void)state;
    int st;
    char *out;
    /* a commit made with the git CLI on top of main */
    out = git(&st, true,
              "-c user.name=ext -c user.email=ext@x commit-tree -p main "
              "-m external $(git -C '%s/ledger.git' mktree </dev/null) "
              "| xargs git -C '%s/ledger.git' update-ref refs/heads/main",
              home, home);
    assert_int_equal(st, 0);
    free(out);
    expect_git("", "ls-tree main");
    repo_ledger_change c[] = {CH("models/b/1/manifest.json", "{}")};
    char oid[41];
    assert_int_equal(repo_ledger_commit(home, "frank", "after external", c, 1, oid), 0);
    expect_git("frank|after external\next|external\n", "log -2 --format='%an|%s' main");
    expect_git("models/b/1/manifest.json\n", "ls-tree -r --name-only main");
    out = git(&st, true, "fsck --strict --no-dangling --no-progress");
    assert_int_equal(st, 0);
    assert_string_equal(out, "");
    free(out);
}

/* Writers that are not serialised (several threads, each with its own repository
 * handle): each commit either lands or fails with MLV_EBUSY — never silently lost,
 * thanks to the compare-and-swap on main. */
#define WRITERS 4
#define COMMITS 12
typedef struct writer {
    int id;
    int ok[COMMITS];
} writer;

static void *write_loop(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < COMMITS; i++) {
        char path[64], content[64], author[32];
        snprintf(path, sizeof path, "race/w%d/%d", w->id, i);
        snprintf(content, sizeof content, "writer %d commit %d", w->id, i);
        snprintf(author, sizeof author, "w%d", w->id);
        repo_ledger_change c[] = {CH(path, content)};
        int rc = repo_ledger_commit(home, author, content, c, 1, NULL);
        w->ok[i] = rc == 0 ? 1 : rc == MLV_EBUSY ? 0 : -1;
    }
    return NULL;
}

static void t_ledger_racing_writers(void **state)
{
    (void)state;
    int st;
    char *out = git(&st, false, "rev-list --count main");
    assert_int_equal(st, 0);
    int before = atoi(out);
    free(out);
    writer w[WRITERS];
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, write_loop, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_join(th[i], NULL);
    int landed = 0, busy = 0;
    for (int i = 0; i < WRITERS; i++) {
        for (int j = 0; j < COMMITS; j++) {
            char path[64], want[64];
            snprintf(path, sizeof path, "race/w%d/%d", i, j);
            snprintf(want, sizeof want, "writer %d commit %d", i, j);
            assert_int_not_equal(w[i].ok[j], -1);
            char *buf = NULL;
            size_t len;
            int rc = repo_ledger_read(home, path, &buf, &len);
            if (w[i].ok[j]) {
                landed++;
                assert_int_equal(rc, 0);
                assert_string_equal(buf, want);
            } else {
                busy++;
                assert_int_equal(rc, MLV_ENOTFOUND);
            }
            free(buf);
        }
    }
    out = git(&st, false, "rev-list --count main");
    assert_int_equal(atoi(out), before + landed);
    free(out);
    fprintf(stderr, "racing writers: %d commits landed, %d refused as busy\n", landed, busy);
    out = git(&st, true, "fsck --strict --no-dangling --no-progress");
    assert_int_equal(st, 0);
    assert_string_equal(out, "");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_ledger),
        cmocka_unit_test(t_ledger_external_move),
        cmocka_unit_test(t_ledger_racing_writers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
