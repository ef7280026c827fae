/* registry/jobs.c: jobs (DESIGN.md, Jobs) — the jobs table (submit, get, list, log,
 * cancel, progress, job tokens) and the scheduler that runs each queued job as a child
 * process `EXE job run ID --home HOME`. What a job does is the CLI's (cli/cmd_job.c);
 * this file only queues, launches, watches and records.
 *
 * A job's files live in HOME/jobs/ID/: `log` (the child's stderr plus progress lines),
 * `result.json` (the child's stdout: the command's --json output) and `work/` (its
 * empty working directory, so that no name on the command line resolves to a file).
 *
 * The `result` column holds the result JSON of a succeeded job; for a job that ended
 * otherwise it holds {"exit_code", "error_code", "output"} (what the scheduler saw),
 * which reg_job_get spreads into the job's fields. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "registry/reg_internal.h"

extern char **environ;

#define JOB_LOG_MAX (1u << 20)           /* one reg_job_log read */
#define JOB_RESULT_MAX (16u << 20)       /* result.json */
#define JOB_KILL_AFTER_S 3.0             /* SIGTERM, then SIGKILL */
#define JOB_POLL_NS (150 * 1000 * 1000L) /* scheduler tick */

static const char *STATES[] = {"queued", "running", "succeeded", "failed", "cancelled"};

static bool state_valid(const char *s)
{
    for (size_t i = 0; i < sizeof STATES / sizeof *STATES; i++)
        if (!strcmp(s, STATES[i])) return true;
    return false;
}

static char *job_path(const char *home, int64_t id, const char *leaf)
{
    char rel[96];
    snprintf(rel, sizeof rel, "jobs/%lld%s%s", (long long)id, leaf ? "/" : "", leaf ? leaf : "");
    return core_path_join(home, rel);
}

static const char *col_text(sqlite3_stmt *st, int col)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    return s ? s : "";
}

/* -------------------------------------------------------------------- submit ---- */

/* Parameters are flat: "ref" and option names map to strings, numbers, true, or arrays
 * of strings and numbers (a repeated option). Anything else cannot be a command line. */
static int params_shape(const char *kind, const json_t *params)
{
    if (!json_is_object(params))
        return core_err_set(MLV_EINVAL, "job parameters must be a JSON object");
    if (!strcmp(kind, "gate")) {
        json_t *p = json_object_get(params, "promotion");
        if (!json_is_integer(p) || json_integer_value(p) <= 0 || json_object_size(params) != 1)
            return core_err_set(MLV_EINVAL,
                                "gate job parameters: {\"promotion\": ID}, nothing else");
        return 0;
    }
    if (!json_is_string(json_object_get(params, "ref")))
        return core_err_set(MLV_EINVAL, "%s job parameters need \"ref\" (the model)", kind);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)params, k, v)
    {
        if (!*k || strlen(k) > 63)
            return core_err_set(MLV_EINVAL, "job parameter names must be 1 to 63 characters");
        if (json_is_string(v) || json_is_number(v) || json_is_true(v)) continue;
        if (json_is_array(v) && json_array_size(v) > 0 && json_array_size(v) <= 32) {
            size_t i;
            json_t *e;
            json_array_foreach(
                v, i, e) if (!json_is_string(e) &&
                             !json_is_number(
                                 e)) return core_err_set(MLV_EINVAL,
                                                         "job parameter %s: an array of strings",
                                                         k);
            continue;
        }
        return core_err_set(
            MLV_EINVAL, "job parameter %s: a string, a number, true, or an array of strings", k);
    }
    return 0;
}

int reg_job_submit(reg_ctx *r, const reg_user *actor, const reg_job_validate *v, const char *kind,
                   const json_t *params, int64_t *id)
{
    *id = 0;
    int rc = reg_authorize(actor, REG_ACT_JOB);
    if (rc) return rc;
    if (!kind || (strcmp(kind, "quantize") && strcmp(kind, "eval") && strcmp(kind, "gate")))
        return core_err_set(MLV_EINVAL, "unknown job kind '%s' (quantize, eval)", kind ? kind : "");
    if ((rc = params_shape(kind, params)) != 0) return rc;
    if (v && v->fn && (rc = v->fn(v->ctx, kind, params)) != 0) return rc;
    char *text = core_json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) return core_err_set(MLV_ENOMEM, "out of memory");
    char at[21];
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) goto done;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO jobs(kind, params, state, created_by, created_at)"
                           " VALUES(?,?,'queued',?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "submit job");
        goto done;
    }
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, actor->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, at, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "submit job");
        goto done;
    }
    *id = sqlite3_last_insert_rowid(r->db);
    char target[32], detail[512];
    snprintf(target, sizeof target, "job/%lld", (long long)*id);
    snprintf(detail, sizeof detail, "%s %.480s", kind, text);
    if ((rc = reg_audit_append(r, actor->name, "job.submit", target, detail, NULL, 0)) == 0)
        rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    free(text);
    if (rc) {
        reg_rollback(r);
        *id = 0;
        return rc;
    }
    return reg_ledger_settle(r);
}

/* ----------------------------------------------------------------- queries ---- */

#define JOB_COLUMNS                                                                                \
    "id, kind, params, state, created_by, created_at, started_at, finished_at, progress,"          \
    " message, started_mono, error, result, cancel_requested"

static json_t *text_or_null(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? json_null()
                                                       : json_string(col_text(st, col));
}

static json_t *row_to_job(sqlite3_stmt *st)
{
    const char *state = col_text(st, 3);
    double progress = sqlite3_column_double(st, 8);
    json_t *params = json_loads(col_text(st, 2), 0, NULL);
    json_t *stored =
        sqlite3_column_type(st, 12) == SQLITE_NULL ? NULL : json_loads(col_text(st, 12), 0, NULL);
    json_t *eta = json_null();
    if (!strcmp(state, "running") && progress > 0 && sqlite3_column_type(st, 10) != SQLITE_NULL) {
        double elapsed = core_now_s() - sqlite3_column_double(st, 10);
        if (elapsed < 0) elapsed = 0;
        eta = json_integer((json_int_t)(elapsed * (1 - progress) / progress + 0.5));
    }
    json_t *j = json_pack("{s:I,s:s,s:o,s:s,s:s,s:s,s:o,s:o,s:f,s:s,s:o,s:o,s:b}", "id",
                          (json_int_t)sqlite3_column_int64(st, 0), "kind", col_text(st, 1),
                          "params", params ? params : json_object(), "state", state, "created_by",
                          col_text(st, 4), "created_at", col_text(st, 5), "started_at",
                          text_or_null(st, 6), "finished_at", text_or_null(st, 7), "progress",
                          progress, "message", col_text(st, 9), "eta_s", eta, "error",
                          sqlite3_column_type(st, 11) == SQLITE_NULL || !*col_text(st, 11)
                              ? json_null()
                              : json_string(col_text(st, 11)),
                          "cancel_requested", sqlite3_column_int(st, 13) != 0);
    if (!j) {
        json_decref(stored);
        return NULL;
    }
    if (!strcmp(state, "succeeded")) {
        json_object_set_new(j, "result", stored ? stored : json_null());
        json_object_set_new(j, "exit_code", json_integer(0));
        json_object_set_new(j, "error_code", json_null());
        return j;
    }
    json_object_set_new(j, "result", json_null());
    json_t *ec = stored ? json_object_get(stored, "exit_code") : NULL;
    json_t *en = stored ? json_object_get(stored, "error_code") : NULL;
    json_t *out = stored ? json_object_get(stored, "output") : NULL;
    json_object_set(j, "exit_code", ec ? ec : json_null());
    json_object_set(j, "error_code", en ? en : json_null());
    if (out && !json_is_null(out)) json_object_set(j, "output", out);
    json_decref(stored);
    return j;
}

int reg_job_get(reg_ctx *r, const reg_user *actor, int64_t id, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "job");
    sqlite3_bind_int64(st, 1, id);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        if (!(*out = row_to_job(st))) rc = core_err_set(MLV_ENOMEM, "out of memory");
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no job %lld", (long long)id);
    } else {
        rc = reg_db_err(r, "job");
    }
    sqlite3_finalize(st);
    return rc;
}

int reg_job_list(reg_ctx *r, const reg_user *actor, const char *state, json_t **out)
{
    *out = NULL;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    if (state && !state_valid(state))
        return core_err_set(MLV_EINVAL,
                            "unknown job state '%s' (queued, running, succeeded, failed, "
                            "cancelled)",
                            state);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT " JOB_COLUMNS " FROM jobs WHERE ?1 IS NULL OR state = ?1"
                           " ORDER BY id DESC",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "jobs");
    if (state) sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
    json_t *arr = json_array();
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *j = row_to_job(st);
        if (!j || json_array_append_new(arr, j) != 0) {
            rc = core_err_set(MLV_ENOMEM, "out of memory");
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE) rc = reg_db_err(r, "jobs");
    sqlite3_finalize(st);
    if (rc) {
        json_decref(arr);
        return rc;
    }
    *out = arr;
    return 0;
}

static int job_exists(reg_ctx *r, int64_t id, char state[16], char created_by[65])
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT state, created_by FROM jobs WHERE id = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return reg_db_err(r, "job");
    sqlite3_bind_int64(st, 1, id);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        if (state) snprintf(state, 16, "%s", col_text(st, 0));
        if (created_by) snprintf(created_by, 65, "%s", col_text(st, 1));
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no job %lld", (long long)id);
    } else {
        rc = reg_db_err(r, "job");
    }
    sqlite3_finalize(st);
    return rc;
}

int reg_job_log(reg_ctx *r, const reg_user *actor, int64_t id, uint64_t offset, char **out,
                size_t *len)
{
    *out = NULL;
    *len = 0;
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc || (rc = job_exists(r, id, NULL, NULL)) != 0) return rc;
    char *path = job_path(r->home, id, "log");
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    char *buf = NULL;
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        rc = core_err_set(MLV_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (!(buf = malloc(JOB_LOG_MAX + 1))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    /* A queued job has no log yet: that is an empty log, not an error. */
    while (fd >= 0 && n < JOB_LOG_MAX) {
        ssize_t got = pread(fd, buf + n, JOB_LOG_MAX - n, (off_t)(offset + n));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = core_err_set(MLV_EIO, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    buf = NULL;
done:
    if (fd >= 0) close(fd);
    free(buf);
    free(path);
    return rc;
}

int reg_job_cancel(reg_ctx *r, const reg_user *actor, int64_t id)
{
    int rc = reg_authorize(actor, REG_ACT_READ);
    if (rc) return rc;
    char state[16], by[65], at[21];
    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) return rc;
    if ((rc = job_exists(r, id, state, by)) != 0) goto done;
    if (strcmp(actor->name, by) != 0 && actor->role != REG_ROLE_ADMIN) {
        rc = core_err_set(MLV_EFORBIDDEN,
                          "forbidden: job %lld was submitted by %s; only they or an admin may "
                          "cancel it",
                          (long long)id, by);
        goto done;
    }
    if (strcmp(state, "queued") && strcmp(state, "running")) {
        rc = core_err_set(MLV_EINVAL, "job %lld has already ended (%s)", (long long)id, state);
        goto done;
    }
    core_time_iso(at);
    /* A queued job ends here; a running one is ended by the scheduler, which signals its
     * process and records the end when it has reaped it. */
    const char *sql = !strcmp(state, "queued")
                          ? "UPDATE jobs SET state = 'cancelled', finished_at = ?2,"
                            " cancel_requested = 1, error = 'cancelled by ' || ?3 WHERE id = ?1"
                          : "UPDATE jobs SET cancel_requested = 1,"
                            " error = 'cancelled by ' || ?3 WHERE id = ?1";
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "cancel job");
        goto done;
    }
    sqlite3_bind_int64(st, 1, id);
    if (!strcmp(state, "queued")) sqlite3_bind_text(st, 2, at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, actor->name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "cancel job");
        goto done;
    }
    char target[32];
    snprintf(target, sizeof target, "job/%lld", (long long)id);
    if ((rc = reg_audit_append(r, actor->name, "job.cancel", target, state, NULL, 0)) == 0)
        rc = reg_commit(r);
done:
    sqlite3_finalize(st);
    if (rc) {
        reg_rollback(r);
        return rc;
    }
    return reg_ledger_settle(r);
}

/* ------------------------------------------------------------ the child's side ---- */

static void log_append(const char *home, int64_t id, const char *line)
{
    char *path = job_path(home, id, "log");
    if (!path) return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (fd < 0) return;
    core_write_all(fd, line, strlen(line));
    close(fd);
}

int reg_job_progress(reg_ctx *r, int64_t id, double fraction, const char *message)
{
    /* Throttled per thread (one child reports one job): the row at most 4 times a second
     * unless the phase changes or it finishes; the log only when the whole percentage or
     * the phase changes, so a long job's log stays readable. */
    static _Thread_local double last_row = -1;
    static _Thread_local int last_pct = -1;
    static _Thread_local int64_t last_id = -1;
    static _Thread_local char last_msg[128];
    if (!(fraction >= 0)) fraction = 0;
    if (fraction > 1) fraction = 1;
    if (!message) message = "";
    double now = core_now_s();
    bool same_msg = id == last_id && !strncmp(message, last_msg, sizeof last_msg - 1);
    int pct = (int)(fraction * 100);
    if (!same_msg || pct != last_pct) {
        char line[192];
        snprintf(line, sizeof line, "progress %3d%% %.150s\n", pct, message);
        log_append(r->home, id, line);
        last_pct = pct;
    }
    if (same_msg && fraction < 1 && now - last_row < 0.25) return 0;
    last_row = now;
    last_id = id;
    snprintf(last_msg, sizeof last_msg, "%s", message);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND"
                           " state = 'running'",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "job progress");
    sqlite3_bind_double(st, 1, fraction);
    sqlite3_bind_text(st, 2, message, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, id);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : reg_db_err(r, "job progress");
    sqlite3_finalize(st);
    return rc;
}

static void token_hash(char out[65], const char *token)
{
    repo_sha256_hex(out, token, strlen(token));
}

int reg_job_authenticate(reg_ctx *r, const char *token, reg_user *out)
{
    memset(out, 0, sizeof *out);
    if (!token || strncmp(token, "mlvj_", 5) != 0 || !core_is_hex(token + 5, 64))
        return core_err_set(MLV_EAUTH, "invalid token: not an mlvault job token");
    char h[65];
    token_hash(h, token);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT u.id, u.name, u.role, u.disabled, u.created_at, j.state"
                           " FROM jobs j JOIN users u ON u.name = j.created_by"
                           " WHERE j.token_hash = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "authenticate job");
    sqlite3_bind_text(st, 1, h, -1, SQLITE_STATIC);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        snprintf(out->name, sizeof out->name, "%s", col_text(st, 1));
        out->disabled = sqlite3_column_int(st, 3) != 0;
        snprintf(out->created_at, sizeof out->created_at, "%s", col_text(st, 4));
        if (reg_role_parse(col_text(st, 2), &out->role) != 0)
            rc = core_err_set(MLV_EINTEGRITY, "user %s has an unknown role", out->name);
        else if (strcmp(col_text(st, 5), "running") != 0)
            rc = core_err_set(MLV_EAUTH, "invalid token: the job is not running");
        else if (out->disabled)
            rc = core_err_set(MLV_EAUTH, "user %s is disabled", out->name);
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_EAUTH, "invalid token: no running job has this token");
    } else {
        rc = reg_db_err(r, "authenticate job");
    }
    sqlite3_finalize(st);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

int reg_job_load(reg_ctx *r, int64_t id, char kind[16], json_t **params)
{
    *params = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT kind, params FROM jobs WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "job");
    sqlite3_bind_int64(st, 1, id);
    int rc = 0, step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        snprintf(kind, 16, "%s", col_text(st, 0));
        json_error_t je;
        if (!(*params = json_loads(col_text(st, 1), 0, &je)))
            rc = core_err_set(MLV_EINTEGRITY, "job %lld: parameters are not JSON", (long long)id);
    } else if (step == SQLITE_DONE) {
        rc = core_err_set(MLV_ENOTFOUND, "no job %lld", (long long)id);
    } else {
        rc = reg_db_err(r, "job");
    }
    sqlite3_finalize(st);
    return rc;
}

int reg_jobs_counts(reg_ctx *r, json_t **out)
{
    *out = NULL;
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof STATES / sizeof *STATES; i++)
        json_object_set_new(o, STATES[i], json_integer(0));
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT state, count(*) FROM jobs GROUP BY state", -1, &st,
                           NULL) != SQLITE_OK) {
        json_decref(o);
        return reg_db_err(r, "job counts");
    }
    while (sqlite3_step(st) == SQLITE_ROW)
        json_object_set_new(o, col_text(st, 0), json_integer(sqlite3_column_int64(st, 1)));
    sqlite3_finalize(st);
    *out = o;
    return 0;
}

/* --------------------------------------------------------------- scheduler ---- */

typedef struct child {
    int64_t id;
    pid_t pid;
    double term_at; /* when SIGTERM was sent for a cancel, 0: not yet */
} child;

struct reg_jobs_scheduler {
    char *home, *exe;
    int workers;
    reg_ctx *r; /* the thread's own connection */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    child *kids; /* `workers` slots; pid 0 = free */
};

/* Marks a job ended: its state, error, stored result (NULL: none) and no token. */
static int job_end(reg_ctx *r, int64_t id, const char *state, const char *error, const char *result)
{
    char at[21];
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE jobs SET state = ?2, finished_at = ?3,"
                           " error = CASE WHEN ?2 = 'cancelled' AND error != '' THEN error"
                           " ELSE ?4 END, result = ?5, token_hash = NULL,"
                           " progress = CASE WHEN ?2 = 'succeeded' THEN 1 ELSE progress END"
                           " WHERE id = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "end job");
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, at, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, error ? error : "", -1, SQLITE_STATIC);
    if (result)
        sqlite3_bind_text(st, 5, result, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : reg_db_err(r, "end job");
    sqlite3_finalize(st);
    /* a promotion whose gate was this job must not wait for it for ever */
    if (rc == 0 && strcmp(state, "succeeded") != 0 && reg_promote_sweep_failed_gates(r) != 0)
        core_log(CORE_LOG_WARN, "promotions of a failed gate job: %s", core_err_last());
    return rc;
}

/* The last line of the log that starts with `prefix` (its rest, without the newline). */
static void log_last_line(const char *home, int64_t id, const char *prefix, char *out, size_t cap)
{
    out[0] = 0;
    char *path = job_path(home, id, "log");
    if (!path) return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0) return;
    struct stat sb;
    enum { TAIL = 64 * 1024 };
    char *buf = malloc(TAIL + 1);
    if (buf && fstat(fd, &sb) == 0) {
        off_t from = sb.st_size > TAIL ? sb.st_size - TAIL : 0;
        ssize_t n = pread(fd, buf, TAIL, from);
        if (n > 0) {
            buf[n] = 0;
            size_t pl = strlen(prefix);
            for (char *line = buf; line && *line;) {
                char *nl = strchr(line, '\n');
                if (nl) *nl = 0;
                if (!strncmp(line, prefix, pl)) snprintf(out, cap, "%s", line + pl);
                line = nl ? nl + 1 : NULL;
            }
        }
    }
    free(buf);
    close(fd);
}

/* Records how a reaped child ended. */
static void reap_one(reg_jobs_scheduler *s, const child *k, int status)
{
    reg_ctx *r = s->r;
    char *rpath = job_path(s->home, k->id, "result.json");
    char *text = NULL;
    size_t len = 0;
    json_t *output = NULL;
    if (rpath && core_read_file(rpath, JOB_RESULT_MAX, &text, &len) == 0 && len > 0)
        output = json_loadb(text, len, 0, NULL);
    core_err_clear();
    free(rpath);
    free(text);

    sqlite3_stmt *st = NULL;
    bool cancelled = false;
    if (sqlite3_prepare_v2(r->db, "SELECT cancel_requested FROM jobs WHERE id = ?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, k->id);
        cancelled = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);

    char line[1024], code[32], error[1200];
    int rc;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !cancelled) {
        char *res = output ? core_json_dumps(output, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        rc = job_end(r, k->id, "succeeded", "", res ? res : "null");
        free(res);
    } else {
        json_t *info = json_object();
        if (WIFEXITED(status)) {
            log_last_line(s->home, k->id, "mlvault: error: ", line, sizeof line);
            log_last_line(s->home, k->id, "mlvault: error code: ", code, sizeof code);
            json_object_set_new(info, "exit_code", json_integer(WEXITSTATUS(status)));
            json_object_set_new(info, "error_code", code[0] ? json_string(code) : json_null());
            if (line[0])
                snprintf(error, sizeof error, "%s", line);
            else
                snprintf(error, sizeof error, "exited with status %d", WEXITSTATUS(status));
        } else {
            int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
            const char *name = sigabbrev_np(sig);
            snprintf(error, sizeof error, "killed by signal %d (SIG%s)", sig, name ? name : "?");
            json_object_set_new(info, "exit_code", json_null());
            json_object_set_new(info, "signal", json_integer(sig));
            char note[1300];
            snprintf(note, sizeof note, "mlvault: job %s\n", error);
            log_append(s->home, k->id, note);
        }
        if (output) json_object_set(info, "output", output);
        char *res = core_json_dumps(info, JSON_COMPACT);
        json_decref(info);
        rc = job_end(r, k->id, cancelled ? "cancelled" : "failed", error, res);
        free(res);
    }
    json_decref(output);
    if (rc) core_log(CORE_LOG_ERROR, "job %lld: %s", (long long)k->id, core_err_last());
}

/* An environment for the child: ours, less the variables that would send it elsewhere
 * (MLVAULT_URL: it must run here, not submit another job) or act as someone else,
 * plus its job id and token. The strings are the caller's to free (NULL-terminated). */
static char **child_env(int64_t id, const char *token)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (!strncmp(e, "MLVAULT_URL=", 12) || !strncmp(e, "MLVAULT_TOKEN=", 14) ||
            !strncmp(e, "MLVAULT_JOB_", 12))
            continue;
        if (!(env[k++] = strdup(e))) goto fail;
    }
    if (asprintf(&env[k++], "MLVAULT_JOB_ID=%lld", (long long)id) < 0) {
        env[k - 1] = NULL;
        goto fail;
    }
    if (asprintf(&env[k++], "MLVAULT_JOB_TOKEN=%s", token) < 0) {
        env[k - 1] = NULL;
        goto fail;
    }
    return env;
fail:
    for (size_t i = 0; env[i]; i++)
        free(env[i]);
    free(env);
    return NULL;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

/* Forks and execs `EXE job run ID --home HOME` for a job already marked running. */
static int spawn(reg_jobs_scheduler *s, int64_t id, const char *token, pid_t *pid_out)
{
    int rc = 0, out_fd = -1, err_fd = -1, null_fd = -1;
    char **env = NULL;
    char *dir = job_path(s->home, id, NULL), *work = job_path(s->home, id, "work");
    char *log = job_path(s->home, id, "log"), *res = job_path(s->home, id, "result.json");
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%lld", (long long)id);
    if (!dir || !work || !log || !res) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = core_mkdir_p(work, 0700)) != 0) goto done;
    /* Opened here, before the fork, with O_CLOEXEC so that no other child inherits them;
     * dup2 in the child clears the flag on the copies it keeps. */
    err_fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    out_fd = open(res, O_WRONLY | O_TRUNC | O_CREAT | O_CLOEXEC, 0600);
    null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (err_fd < 0 || out_fd < 0 || null_fd < 0) {
        rc = core_err_set(MLV_EIO, "job %lld: %s", (long long)id, strerror(errno));
        goto done;
    }
    if (!(env = child_env(id, token))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    char *argv[] = {s->exe, "job", "run", idtxt, "--home", s->home, NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = core_err_set(MLV_EIO, "job %lld: fork: %s", (long long)id, strerror(errno));
        goto done;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls from here on: the server has other threads. Its own
         * process group, so that a cancel reaches whatever it starts; killed with the
         * server, so no job outlives it unrecorded. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        if (dup2(null_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0 || chdir(work) != 0)
            _exit(127);
        execve(s->exe, argv, env);
        static const char msg[] = "mlvault: error: cannot start the job's process\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        _exit(127);
    }
    setpgid(pid, pid); /* also here: a cancel may come before the child ran setpgid */
    *pid_out = pid;
done:
    if (err_fd >= 0) close(err_fd);
    if (out_fd >= 0) close(out_fd);
    if (null_fd >= 0) close(null_fd);
    free_env(env);
    free(dir);
    free(work);
    free(log);
    free(res);
    return rc;
}

/* Takes the oldest queued job, if any, and starts it: the row becomes running with a
 * fresh token (committed before the child starts, since the child authenticates with
 * it), then the process is started and its pid recorded. */
static int launch_next(reg_jobs_scheduler *s, child *slot)
{
    reg_ctx *r = s->r;
    unsigned char raw[32];
    char token[70], h[65], at[21];
    int rc = core_random(raw, sizeof raw);
    if (rc) return rc;
    memcpy(token, "mlvj_", 5);
    core_hex(token + 5, raw, sizeof raw);
    token_hash(h, token);
    core_time_iso(at);
    int64_t id = 0;
    sqlite3_stmt *st = NULL;
    if ((rc = reg_begin(r)) != 0) return rc;
    if (sqlite3_prepare_v2(r->db, "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "queued jobs");
        goto fail;
    }
    if (sqlite3_step(st) == SQLITE_ROW) id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (id == 0) {
        reg_rollback(r);
        return 0;
    }
    if (sqlite3_prepare_v2(r->db,
                           "UPDATE jobs SET state = 'running', started_at = ?, started_mono = ?,"
                           " token_hash = ?, progress = 0, message = 'starting' WHERE id = ?",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "start job");
        goto fail;
    }
    sqlite3_bind_text(st, 1, at, -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 2, core_now_s());
    sqlite3_bind_text(st, 3, h, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = reg_db_err(r, "start job");
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((rc = reg_commit(r)) != 0) goto fail;
    pid_t pid = 0;
    if ((rc = spawn(s, id, token, &pid)) != 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "could not start: %s", core_err_last());
        job_end(r, id, "failed", msg, NULL);
        return rc;
    }
    memset(token, 0, sizeof token);
    slot->id = id;
    slot->pid = pid;
    slot->term_at = 0;
    if (sqlite3_prepare_v2(r->db, "UPDATE jobs SET pid = ? WHERE id = ?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, pid);
        sqlite3_bind_int64(st, 2, id);
        if (sqlite3_step(st) != SQLITE_DONE) reg_db_err(r, "job pid");
    }
    sqlite3_finalize(st);
    return 1;
fail:
    sqlite3_finalize(st);
    reg_rollback(r);
    return rc;
}

/* Cancels asked for (in any process) reach the running children: SIGTERM to the group,
 * then SIGKILL when it has not ended JOB_KILL_AFTER_S later. */
static void apply_cancels(reg_jobs_scheduler *s)
{
    for (int i = 0; i < s->workers; i++) {
        child *k = &s->kids[i];
        if (!k->pid) continue;
        if (k->term_at > 0) {
            if (core_now_s() - k->term_at >= JOB_KILL_AFTER_S) kill(-k->pid, SIGKILL);
            continue;
        }
        sqlite3_stmt *st = NULL;
        bool want = false;
        if (sqlite3_prepare_v2(s->r->db, "SELECT cancel_requested FROM jobs WHERE id = ?", -1, &st,
                               NULL) == SQLITE_OK) {
            sqlite3_bind_int64(st, 1, k->id);
            want = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
        }
        sqlite3_finalize(st);
        if (want) {
            kill(-k->pid, SIGTERM);
            k->term_at = core_now_s();
        }
    }
}

static void reap(reg_jobs_scheduler *s, bool block)
{
    for (int i = 0; i < s->workers; i++) {
        child *k = &s->kids[i];
        if (!k->pid) continue;
        int status;
        pid_t got;
        do
            got = waitpid(k->pid, &status, block ? 0 : WNOHANG);
        while (got < 0 && errno == EINTR);
        if (got == k->pid) {
            reap_one(s, k, status);
            k->pid = 0;
        } else if (got < 0) { /* not ours any more (someone reaped it): say so */
            job_end(s->r, k->id, "failed", "the job's process was lost", NULL);
            k->pid = 0;
        }
    }
}

static void *scheduler_main(void *arg)
{
    reg_jobs_scheduler *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (!s->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += JOB_POLL_NS;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop) break;
        reap(s, false);
        apply_cancels(s);
        for (int i = 0; i < s->workers; i++) {
            if (s->kids[i].pid) continue;
            int got = launch_next(s, &s->kids[i]);
            if (got < 0) core_log(CORE_LOG_ERROR, "jobs: %s", core_err_last());
            if (got <= 0) break;
        }
    }
    /* Shutting down: children die with us anyway (PDEATHSIG); end them now so that
     * their jobs say why. */
    for (int i = 0; i < s->workers; i++)
        if (s->kids[i].pid) kill(-s->kids[i].pid, SIGKILL);
    for (int i = 0; i < s->workers; i++) {
        child *k = &s->kids[i];
        if (!k->pid) continue;
        int status;
        while (waitpid(k->pid, &status, 0) < 0 && errno == EINTR)
            ;
        job_end(s->r, k->id, "failed", "server shutting down", NULL);
        k->pid = 0;
    }
    return NULL;
}

int reg_jobs_scheduler_start(reg_jobs_scheduler **out, const reg_jobs_scheduler_opts *o)
{
    *out = NULL;
    if (!o || !o->home || !o->exe || o->workers < 1)
        return core_err_set(MLV_EINVAL, "job scheduler: a home, an executable and workers >= 1");
    reg_jobs_scheduler *s = calloc(1, sizeof *s);
    if (!s) return core_err_set(MLV_ENOMEM, "out of memory");
    s->workers = o->workers;
    s->home = strdup(o->home);
    s->exe = strdup(o->exe);
    s->kids = calloc((size_t)o->workers, sizeof *s->kids);
    int rc = 0;
    if (!s->home || !s->exe || !s->kids) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = reg_open(&s->r, o->home)) != 0) goto fail;
    /* A job still "running" here was running under a server that died: its process died
     * with it (PDEATHSIG), and nothing will ever record its end. */
    char at[21];
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->r->db,
                           "UPDATE jobs SET state = 'failed', finished_at = ?,"
                           " error = 'the server stopped while the job ran', token_hash = NULL"
                           " WHERE state = 'running'",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(s->r, "orphaned jobs");
        goto fail;
    }
    sqlite3_bind_text(st, 1, at, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = reg_db_err(s->r, "orphaned jobs");
    sqlite3_finalize(st);
    if (rc == 0 && reg_promote_sweep_failed_gates(s->r) != 0)
        core_log(CORE_LOG_WARN, "promotions of orphaned gate jobs: %s", core_err_last());
    if (rc) goto fail;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, scheduler_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        rc = core_err_set(MLV_EIO, "job scheduler: cannot start its thread");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    reg_close(s->r);
    free(s->home);
    free(s->exe);
    free(s->kids);
    free(s);
    return rc;
}

void reg_jobs_scheduler_stop(reg_jobs_scheduler *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    reg_close(s->r);
    free(s->home);
    free(s->exe);
    free(s->kids);
    free(s);
}
