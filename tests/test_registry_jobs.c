/* Unit tests for registry/jobs.c: the jobs table (submit, list, get, cancel, roles,
 * audit), job tokens, progress and ETA, and the scheduler with real child processes —
 * a shell script stands in for `mlvault job run` and succeeds, fails with an error
 * line, kills itself, or sleeps (ignoring SIGTERM) until it is cancelled. Real SQLite
 * in a temp home under MLV_TEST_TMP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "registry/reg_internal.h"

static char base[512], home[600], script[600];
static char admin_tok[REG_TOKEN_LEN + 1];
static reg_ctx *r;
static reg_user admin, eng, eng2, viewer;

/* `EXE job run ID --home HOME`: what it does is in $MLV_JOBS_TEST_DIR/mode.ID */
static const char *SCRIPT =
    "#!/bin/sh\n"
    "d=\"$MLV_JOBS_TEST_DIR\"\n"
    "[ \"$1 $2 $4 $5\" = \"job run --home $MLV_JOBS_TEST_HOME\" ] || exit 64\n"
    "[ \"$MLVAULT_JOB_ID\" = \"$3\" ] || exit 65\n"
    "echo \"$MLVAULT_JOB_TOKEN\" > \"$d/token.$3\"\n"
    "echo \"run $3\" >&2\n"
    "case \"$(cat \"$d/mode.$3\")\" in\n"
    "ok) echo '{\"answer\": 42}'; exit 0;;\n"
    "fail) echo 'mlvault: error code: EGATE' >&2;"
    " echo 'mlvault: error: the gate said no' >&2; exit 9;;\n"
    "crash) kill -9 $$;;\n"
    "sleep) trap '' TERM; touch \"$d/started.$3\"; sleep 60; exit 0;;\n"
    "esac\n"
    "exit 70\n";

static void user(const char *name, reg_role role, reg_user *u)
{
    char tok[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, name, role, tok), 0);
    assert_int_equal(reg_authenticate(r, tok, u), 0);
}

static int setup(void **s)
{
    (void)s;
    const char *tmp = getenv("MLV_TEST_TMP") ? getenv("MLV_TEST_TMP") : "/tmp";
    core_mkdir_p(tmp, 0700);
    snprintf(base, sizeof base, "%s/jobs-XXXXXX", tmp);
    if (!mkdtemp(base)) return -1;
    snprintf(home, sizeof home, "%s/home", base);
    snprintf(script, sizeof script, "%s/fake-mlvault", base);
    if (reg_home_init(home, admin_tok) != 0) return -1;
    FILE *f = fopen(script, "w");
    if (!f) return -1;
    fputs(SCRIPT, f);
    fclose(f);
    chmod(script, 0700);
    setenv("MLV_JOBS_TEST_DIR", base, 1);
    setenv("MLV_JOBS_TEST_HOME", home, 1);
    if (reg_open(&r, home) != 0 || reg_authenticate(r, admin_tok, &admin) != 0) return -1;
    user("eng", REG_ROLE_ENGINEER, &eng);
    user("eng2", REG_ROLE_ENGINEER, &eng2);
    user("viewer", REG_ROLE_VIEWER, &viewer);
    return 0;
}

static int teardown(void **s)
{
    (void)s;
    reg_close(r);
    return core_rm_rf(base);
}

static int64_t submit_mode(const reg_user *u, const char *mode)
{
    json_t *p = json_pack("{s:s,s:s}", "ref", "m", "type", "Q4_0");
    int64_t id = 0;
    assert_int_equal(reg_job_submit(r, u, NULL, "quantize", p, &id), 0);
    json_decref(p);
    char path[700];
    snprintf(path, sizeof path, "%s/mode.%lld", base, (long long)id);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(mode, f);
    fclose(f);
    return id;
}

/* How long a wait may last, in 10 ms steps: 2 minutes — generous, since a child process
 * starts slowly on a machine busy with other work (a 20 s limit once ran out in CI while
 * another job quantized a model). Never a measure of speed. */
#define WAIT_STEPS 12000

static json_t *get(int64_t id)
{
    json_t *j = NULL;
    assert_int_equal(reg_job_get(r, &admin, id, &j), 0);
    return j;
}

static const char *state_of(json_t *j)
{
    return json_string_value(json_object_get(j, "state"));
}

/* Polls until the job is in `state` (10 ms steps, WAIT_STEPS at most); returns the job. */
static json_t *wait_state(int64_t id, const char *state)
{
    for (int i = 0; i < WAIT_STEPS; i++) {
        json_t *j = get(id);
        if (!strcmp(state_of(j), state)) return j;
        json_decref(j);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    json_t *j = get(id);
    fail_msg("job %lld is %s, not %s", (long long)id, state_of(j), state);
    return NULL;
}

static void wait_file(const char *what, int64_t id)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s.%lld", base, what, (long long)id);
    for (int i = 0; i < WAIT_STEPS && access(path, F_OK) != 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(access(path, F_OK), 0);
}

static void read_token(int64_t id, char tok[80])
{
    char path[700];
    snprintf(path, sizeof path, "%s/token.%lld", base, (long long)id);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(tok, 80, f));
    fclose(f);
    tok[strcspn(tok, "\n")] = 0;
}

static void t_submit_list_cancel(void **s)
{
    (void)s;
    json_t *p = json_pack("{s:s,s:s,s:[s,s],s:b}", "ref", "m:1", "type", "Q4_K_M", "tensor-type",
                          "a=Q8_0", "b=F16", "no-cache", 1);
    int64_t id = 0;
    /* a viewer may not run jobs */
    assert_int_equal(reg_job_submit(r, &viewer, NULL, "quantize", p, &id), MLV_EFORBIDDEN);
    /* bad kinds and shapes */
    assert_int_equal(reg_job_submit(r, &eng, NULL, "sparsify", p, &id), MLV_EINVAL);
    json_t *bad = json_pack("{s:s,s:{}}", "ref", "m", "type", "x");
    assert_int_equal(reg_job_submit(r, &eng, NULL, "quantize", bad, &id), MLV_EINVAL);
    json_decref(bad);
    bad = json_pack("{s:s}", "type", "Q4_0");
    assert_int_equal(reg_job_submit(r, &eng, NULL, "quantize", bad, &id), MLV_EINVAL);
    json_decref(bad);
    bad = json_pack("{s:s}", "promotion", "x");
    assert_int_equal(reg_job_submit(r, &eng, NULL, "gate", bad, &id), MLV_EINVAL);
    json_decref(bad);

    assert_int_equal(reg_job_submit(r, &eng, NULL, "quantize", p, &id), 0);
    assert_true(id > 0);
    json_t *j = get(id);
    assert_string_equal(state_of(j), "queued");
    assert_string_equal(json_string_value(json_object_get(j, "created_by")), "eng");
    assert_true(json_equal(json_object_get(j, "params"), p));
    assert_true(json_is_null(json_object_get(j, "result")));
    assert_true(json_is_null(json_object_get(j, "eta_s")));
    assert_true(json_is_null(json_object_get(j, "started_at")));
    json_decref(j);
    json_decref(p);
    /* the viewer reads */
    assert_int_equal(reg_job_get(r, &viewer, id, &j), 0);
    json_decref(j);
    assert_int_equal(reg_job_get(r, &viewer, 99999, &j), MLV_ENOTFOUND);

    /* a queued log is empty, not missing */
    char *log;
    size_t len;
    assert_int_equal(reg_job_log(r, &viewer, id, 0, &log, &len), 0);
    assert_int_equal(len, 0);
    free(log);

    /* only the submitter or an admin cancels */
    assert_int_equal(reg_job_cancel(r, &eng2, id), MLV_EFORBIDDEN);
    assert_int_equal(reg_job_cancel(r, &viewer, id), MLV_EFORBIDDEN);
    assert_int_equal(reg_job_cancel(r, &eng, id), 0);
    j = get(id);
    assert_string_equal(state_of(j), "cancelled");
    assert_string_equal(json_string_value(json_object_get(j, "error")), "cancelled by eng");
    assert_non_null(json_string_value(json_object_get(j, "finished_at")));
    json_decref(j);
    assert_int_equal(reg_job_cancel(r, &admin, id), MLV_EINVAL); /* already ended */

    int64_t id2 = submit_mode(&eng, "ok");
    assert_int_equal(reg_job_cancel(r, &admin, id2), 0);

    json_t *arr;
    assert_int_equal(reg_job_list(r, &viewer, NULL, &arr), 0);
    assert_true(json_array_size(arr) >= 2);
    /* newest first */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, 0), "id")), id2);
    json_decref(arr);
    assert_int_equal(reg_job_list(r, &viewer, "cancelled", &arr), 0);
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e) assert_string_equal(state_of(e), "cancelled");
    json_decref(arr);
    assert_int_equal(reg_job_list(r, &viewer, "bogus", &arr), MLV_EINVAL);

    /* audited */
    reg_audit_filter f = {.action = "job."};
    assert_int_equal(reg_audit_list(r, &admin, &f, &arr), 0);
    int submits = 0, cancels = 0;
    json_array_foreach(arr, i, e)
    {
        const char *a = json_string_value(json_object_get(e, "action"));
        submits += !strcmp(a, "job.submit");
        cancels += !strcmp(a, "job.cancel");
    }
    assert_true(submits >= 2);
    assert_true(cancels >= 2);
    json_decref(arr);
    assert_int_equal(reg_audit_verify(r, &admin, NULL), 0);
}

/* The validator runs before anything is queued. */
static int refuse_all(void *ctx, const char *kind, const json_t *params)
{
    (void)params;
    *(int *)ctx += 1;
    return core_err_set(MLV_EINVAL, "%s: no", kind);
}

static void t_validator(void **s)
{
    (void)s;
    int calls = 0;
    reg_job_validate v = {refuse_all, &calls};
    json_t *p = json_pack("{s:s}", "ref", "m");
    int64_t id = 0;
    json_t *before, *after;
    assert_int_equal(reg_jobs_counts(r, &before), 0);
    assert_int_equal(reg_job_submit(r, &eng, &v, "eval", p, &id), MLV_EINVAL);
    assert_int_equal(calls, 1);
    assert_int_equal(reg_jobs_counts(r, &after), 0);
    assert_true(json_equal(before, after));
    json_decref(before);
    json_decref(after);
    json_decref(p);
}

static void t_scheduler(void **s)
{
    (void)s;
    reg_jobs_scheduler_opts o = {.home = home, .exe = script, .workers = 1};
    int64_t ok = submit_mode(&eng, "ok"), bad = submit_mode(&eng, "fail"),
            crash = submit_mode(&eng, "crash"), sleeper = submit_mode(&eng, "sleep"),
            waiter = submit_mode(&eng2, "ok");
    reg_jobs_scheduler *sch = NULL;
    assert_int_equal(reg_jobs_scheduler_start(&sch, &o), 0);

    json_t *j = wait_state(ok, "succeeded");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "result"), "answer")),
                     42);
    assert_int_equal(json_integer_value(json_object_get(j, "exit_code")), 0);
    assert_true(json_is_null(json_object_get(j, "error")));
    assert_true(json_number_value(json_object_get(j, "progress")) == 1.0);
    json_decref(j);

    j = wait_state(bad, "failed");
    assert_string_equal(json_string_value(json_object_get(j, "error")), "the gate said no");
    assert_int_equal(json_integer_value(json_object_get(j, "exit_code")), 9);
    assert_string_equal(json_string_value(json_object_get(j, "error_code")), "EGATE");
    assert_true(json_is_null(json_object_get(j, "result")));
    json_decref(j);
    char *log;
    size_t len;
    assert_int_equal(reg_job_log(r, &viewer, bad, 0, &log, &len), 0);
    assert_non_null(strstr(log, "mlvault: error: the gate said no\n"));
    size_t full = len;
    free(log);
    assert_int_equal(reg_job_log(r, &viewer, bad, 4, &log, &len), 0);
    assert_int_equal(len, full - 4);
    free(log);

    j = wait_state(crash, "failed");
    assert_string_equal(json_string_value(json_object_get(j, "error")),
                        "killed by signal 9 (SIGKILL)");
    json_decref(j);

    /* one worker: while the sleeper runs, the next job waits its turn */
    wait_file("started", sleeper);
    j = wait_state(sleeper, "running");
    json_decref(j);
    j = get(waiter);
    assert_string_equal(state_of(j), "queued");
    json_decref(j);

    /* the job token is the submitter, while the job runs */
    char tok[80];
    read_token(sleeper, tok);
    assert_int_equal(strncmp(tok, "mlvj_", 5), 0);
    assert_int_equal(strlen(tok), 69);
    reg_user who;
    assert_int_equal(reg_authenticate(r, tok, &who), 0);
    assert_string_equal(who.name, "eng");
    assert_int_equal(who.role, REG_ROLE_ENGINEER);
    tok[10] ^= 1;
    assert_int_equal(reg_authenticate(r, tok, &who), MLV_EAUTH);
    tok[10] ^= 1;

    /* progress and ETA (the child would call this) */
    assert_int_equal(reg_job_progress(r, sleeper, 0.5, "quantize"), 0);
    j = get(sleeper);
    assert_true(json_number_value(json_object_get(j, "progress")) == 0.5);
    assert_string_equal(json_string_value(json_object_get(j, "message")), "quantize");
    assert_true(json_is_integer(json_object_get(j, "eta_s")));
    assert_true(json_integer_value(json_object_get(j, "eta_s")) >= 0);
    assert_true(json_integer_value(json_object_get(j, "eta_s")) < 60);
    json_decref(j);
    assert_int_equal(reg_job_log(r, &viewer, sleeper, 0, &log, &len), 0);
    assert_non_null(strstr(log, "progress  50% quantize\n"));
    free(log);

    /* cancel: SIGTERM is ignored by the script, so SIGKILL follows */
    assert_int_equal(reg_job_cancel(r, &admin, sleeper), 0);
    j = wait_state(sleeper, "cancelled");
    assert_string_equal(json_string_value(json_object_get(j, "error")), "cancelled by admin");
    json_decref(j);
    assert_int_equal(reg_authenticate(r, tok, &who), MLV_EAUTH); /* no longer running */

    j = wait_state(waiter, "succeeded");
    json_decref(j);

    json_t *counts;
    assert_int_equal(reg_jobs_counts(r, &counts), 0);
    assert_true(json_integer_value(json_object_get(counts, "succeeded")) >= 2);
    assert_true(json_integer_value(json_object_get(counts, "failed")) >= 2);
    assert_int_equal(json_integer_value(json_object_get(counts, "running")), 0);
    json_decref(counts);

    /* stopping the server ends a running job */
    int64_t last = submit_mode(&eng, "sleep");
    wait_file("started", last);
    reg_jobs_scheduler_stop(sch);
    j = get(last);
    assert_string_equal(state_of(j), "failed");
    assert_string_equal(json_string_value(json_object_get(j, "error")), "server shutting down");
    json_decref(j);
}

/* A job left "running" by a server that died is failed at the next start. */
static void t_orphans(void **s)
{
    (void)s;
    int64_t id = submit_mode(&eng, "ok");
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE jobs SET state = 'running', token_hash = 'x' WHERE id = %lld",
             (long long)id);
    assert_int_equal(reg_exec(r, sql), 0);
    reg_jobs_scheduler_opts o = {.home = home, .exe = script, .workers = 2};
    reg_jobs_scheduler *sch = NULL;
    assert_int_equal(reg_jobs_scheduler_start(&sch, &o), 0);
    json_t *j = get(id);
    assert_string_equal(state_of(j), "failed");
    assert_string_equal(json_string_value(json_object_get(j, "error")),
                        "the server stopped while the job ran");
    json_decref(j);
    reg_jobs_scheduler_stop(sch);
    reg_jobs_scheduler_opts none = {.home = home, .exe = script, .workers = 0};
    assert_int_equal(reg_jobs_scheduler_start(&sch, &none), MLV_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_submit_list_cancel),
        cmocka_unit_test(t_validator),
        cmocka_unit_test(t_scheduler),
        cmocka_unit_test(t_orphans),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
