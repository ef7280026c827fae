/* registry/catalog.c: the data home and the SQLite catalog — creating a home, opening
 * it (WAL, synchronous=FULL, busy timeout, foreign keys), the schema, transactions and
 * the ledger queue that makes "SQLite first, then git" crash-safe. */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <sys/file.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/reg_internal.h"

#define SCHEMA_VERSION "5"

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS users("
    "  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, role TEXT NOT NULL,"
    "  token_hash TEXT UNIQUE NOT NULL, disabled INTEGER NOT NULL DEFAULT 0,"
    "  created_at TEXT NOT NULL, created_by TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS artifacts("
    "  id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
    "  kind TEXT NOT NULL CHECK(kind IN ('model','dataset')), created_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS blobs("
    "  sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, wrapped_dek TEXT NOT NULL,"
    "  wrap TEXT NOT NULL DEFAULT 'aes-256-kw', created_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS versions("
    "  id INTEGER PRIMARY KEY, artifact_id INTEGER NOT NULL REFERENCES artifacts(id),"
    "  version INTEGER NOT NULL, manifest_digest TEXT UNIQUE NOT NULL,"
    "  manifest TEXT NOT NULL, signature TEXT NOT NULL, size INTEGER NOT NULL,"
    "  created_by TEXT NOT NULL, created_at TEXT NOT NULL, signer TEXT NOT NULL,"
    "  origin TEXT NOT NULL DEFAULT '', UNIQUE(artifact_id, version));"
    "CREATE TABLE IF NOT EXISTS version_files("
    "  version_id INTEGER NOT NULL REFERENCES versions(id), path TEXT NOT NULL,"
    "  blob TEXT NOT NULL REFERENCES blobs(sha256), size INTEGER NOT NULL,"
    "  PRIMARY KEY(version_id, path));"
    "CREATE TABLE IF NOT EXISTS lineage("
    "  child_id INTEGER NOT NULL REFERENCES versions(id),"
    "  parent_id INTEGER NOT NULL REFERENCES versions(id), PRIMARY KEY(child_id, parent_id));"
    "CREATE INDEX IF NOT EXISTS lineage_parent ON lineage(parent_id);"
    "CREATE TABLE IF NOT EXISTS audit("
    "  seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
    "  target TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);"
    "CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit BEGIN"
    "  SELECT RAISE(ABORT, 'audit rows are append-only'); END;"
    "CREATE TRIGGER IF NOT EXISTS audit_keep_180_days BEFORE DELETE ON audit"
    "  WHEN old.at > strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-180 days') BEGIN"
    "  SELECT RAISE(ABORT, 'audit rows younger than 180 days cannot be deleted'); END;"
    "CREATE TABLE IF NOT EXISTS blob_intents(sha256 TEXT PRIMARY KEY, created_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS trusted_keys("
    "  hint TEXT PRIMARY KEY, pem TEXT NOT NULL, name TEXT NOT NULL, self INTEGER NOT NULL,"
    "  added_by TEXT NOT NULL, added_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS ledger_queue("
    "  id INTEGER PRIMARY KEY, author TEXT NOT NULL, message TEXT NOT NULL,"
    "  changes TEXT NOT NULL, created_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS evaluations("
    "  id INTEGER PRIMARY KEY, version_id INTEGER NOT NULL REFERENCES versions(id),"
    "  model_digest TEXT NOT NULL, dataset_ref TEXT NOT NULL, dataset_digest TEXT NOT NULL,"
    "  metric TEXT NOT NULL, value REAL NOT NULL, ci_low REAL NOT NULL, ci_high REAL NOT NULL,"
    "  n_samples INTEGER NOT NULL, n_ctx INTEGER NOT NULL, baseline_digest TEXT NOT NULL,"
    "  accuracy REAL NOT NULL, perplexity REAL NOT NULL, same_top REAL NOT NULL,"
    "  seconds REAL NOT NULL, engine TEXT NOT NULL, created_by TEXT NOT NULL,"
    "  created_at TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS evaluations_key"
    "  ON evaluations(model_digest, dataset_digest, metric);"
    /* schema 4: jobs, channels, promotions, releases, upload sessions */
    "CREATE TABLE IF NOT EXISTS jobs("
    "  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK(state IN ('queued','running','succeeded','failed','cancelled')),"
    "  created_by TEXT NOT NULL, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
    "  progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',"
    "  started_mono REAL, pid INTEGER, token_hash TEXT, cancel_requested INTEGER NOT NULL DEFAULT "
    "0,"
    "  error TEXT NOT NULL DEFAULT '', result TEXT);"
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);"
    "CREATE TABLE IF NOT EXISTS channels("
    "  model TEXT NOT NULL, channel TEXT NOT NULL, gate_dataset TEXT NOT NULL,"
    "  gate_metric TEXT NOT NULL, threshold REAL NOT NULL, approvals INTEGER NOT NULL,"
    "  expiry_days INTEGER NOT NULL, ctx INTEGER NOT NULL, updated_by TEXT NOT NULL,"
    "  updated_at TEXT NOT NULL, PRIMARY KEY(model, channel));"
    "CREATE TABLE IF NOT EXISTS promotions("
    "  id INTEGER PRIMARY KEY, model TEXT NOT NULL, version_id INTEGER NOT NULL REFERENCES "
    "versions(id),"
    "  digest TEXT NOT NULL, channel TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK(state IN ('gating','pending','released','rejected')),"
    "  reason TEXT NOT NULL, requested_by TEXT NOT NULL, requested_at TEXT NOT NULL,"
    "  gate TEXT, job_id INTEGER, rejection TEXT, release_seq INTEGER, decided_at TEXT);"
    "CREATE INDEX IF NOT EXISTS promotions_state ON promotions(state);"
    "CREATE TABLE IF NOT EXISTS approvals("
    "  promotion_id INTEGER NOT NULL REFERENCES promotions(id), user TEXT NOT NULL,"
    "  digest TEXT NOT NULL, comment TEXT NOT NULL, at TEXT NOT NULL,"
    "  PRIMARY KEY(promotion_id, user));"
    "CREATE TABLE IF NOT EXISTS releases("
    "  model TEXT NOT NULL, channel TEXT NOT NULL, sequence INTEGER NOT NULL,"
    "  version_id INTEGER NOT NULL REFERENCES versions(id), promotion_id INTEGER NOT NULL,"
    "  record TEXT NOT NULL, signature TEXT NOT NULL, issued_at TEXT NOT NULL,"
    "  PRIMARY KEY(model, channel, sequence));"
    "CREATE TABLE IF NOT EXISTS uploads("
    "  id TEXT PRIMARY KEY, user TEXT NOT NULL, meta TEXT NOT NULL, created_at TEXT NOT NULL);"
    /* schema 5: serving nodes (nodes.c) — a node is a user with the node role, enrolled
     * for one model with its X25519 public key; state is its last report (JSON) */
    "CREATE TABLE IF NOT EXISTS nodes("
    "  name TEXT PRIMARY KEY REFERENCES users(name), model TEXT NOT NULL,"
    "  pubkey TEXT NOT NULL, key_hint TEXT NOT NULL, enrolled_by TEXT NOT NULL,"
    "  enrolled_at TEXT NOT NULL, state TEXT, last_seen TEXT);";

/* SQLite tells the failing system call and its errno only to its error log, at the
 * moment of failure: sqlite3_system_errno() reads errno later, after the rollback's own
 * calls (0 for a failed fsync here), and SQLITE_FULL keeps none at all. So keep the last
 * unix VFS line per thread ("os_unix.c:LINE: (ERRNO) CALL(PATH) - ...") and say it. */
static _Thread_local char db_last_os[256];

static void db_log(void *arg, int code, const char *msg)
{
    (void)arg;
    int line, err, off = 0;
    if ((code & 0xff) != SQLITE_IOERR && (code & 0xff) != SQLITE_CANTOPEN) return;
    if (sscanf(msg, "os_unix.c:%d: (%d) %n", &line, &err, &off) != 2 || !off) return;
    const char *call = msg + off, *end = strstr(call, ") - ");
    int n = end ? (int)(end - call + 1) : (int)strlen(call);
    snprintf(db_last_os, sizeof db_last_os, "%.*s: %s", n, call, strerror(err));
}

static pthread_once_t db_log_once = PTHREAD_ONCE_INIT;
static void db_log_install(void)
{
    sqlite3_config(SQLITE_CONFIG_LOG, db_log, NULL);
}

int reg_db_err(reg_ctx *r, const char *what)
{
    int ec = sqlite3_errcode(r->db), sys = sqlite3_system_errno(r->db);
    int code = (ec == SQLITE_BUSY || ec == SQLITE_LOCKED) ? MLV_EBUSY : MLV_EDB;
    if (ec == SQLITE_FULL || ec == SQLITE_IOERR) code = MLV_EIO;
    char os[300] = "";
    if (ec == SQLITE_FULL) /* always ENOSPC (os_unix.c's unixWrite) */
        snprintf(os, sizeof os, " (%s)", strerror(ENOSPC));
    else if ((ec == SQLITE_IOERR || ec == SQLITE_CANTOPEN) && db_last_os[0])
        snprintf(os, sizeof os, " (%s)", db_last_os);
    else if ((ec == SQLITE_IOERR || ec == SQLITE_CANTOPEN) && sys)
        snprintf(os, sizeof os, " (%s)", strerror(sys));
    db_last_os[0] = 0;
    return core_err_set(code, "catalog: %s: %s%s", what, sqlite3_errmsg(r->db), os);
}

int reg_exec(reg_ctx *r, const char *sql)
{
    if (sqlite3_exec(r->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        char what[64];
        snprintf(what, sizeof what, "%.40s%s", sql, strlen(sql) > 40 ? "…" : "");
        return reg_db_err(r, what);
    }
    return 0;
}

int reg_begin(reg_ctx *r)
{
    return reg_exec(r, "BEGIN IMMEDIATE");
}
int reg_commit(reg_ctx *r)
{
    return reg_exec(r, "COMMIT");
}
void reg_rollback(reg_ctx *r)
{
    if (!sqlite3_get_autocommit(r->db)) sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
}

static int db_open(reg_ctx *r, bool create)
{
    char *path = core_path_join(r->home, "mlvault.db");
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    pthread_once(&db_log_once, db_log_install);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &r->db, flags, NULL);
    free(path);
    if (rc != SQLITE_OK) {
        rc = core_err_set(MLV_EDB, "catalog %s/mlvault.db: %s", r->home,
                          r->db ? sqlite3_errmsg(r->db) : "cannot open");
        return rc;
    }
    sqlite3_busy_timeout(r->db, 15000);
    if ((rc = reg_exec(r, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                          " PRAGMA foreign_keys=ON;")) != 0)
        return rc;
    if (create) {
        if ((rc = reg_exec(r, SCHEMA)) != 0) return rc;
        return reg_exec(
            r, "INSERT OR IGNORE INTO meta(key, value) VALUES('schema', '" SCHEMA_VERSION "')");
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(r->db, "SELECT value FROM meta WHERE key = 'schema'", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "schema");
    const char *v = sqlite3_step(st) == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : "";
    if (!strcmp(v, "2") || !strcmp(v, "3") || !strcmp(v, "4")) {
        /* Schemas 3, 4 and 5 only add tables (evaluations; jobs, channels, promotions,
         * releases, uploads; nodes): nothing else changed. */
        sqlite3_finalize(st);
        if ((rc = reg_exec(r, "BEGIN IMMEDIATE")) != 0) return rc;
        if ((rc = reg_exec(r, SCHEMA)) != 0 ||
            (rc = reg_exec(r, "UPDATE meta SET value = '" SCHEMA_VERSION
                              "' WHERE key = 'schema'")) != 0 ||
            (rc = reg_exec(r, "COMMIT")) != 0) {
            reg_exec(r, "ROLLBACK");
            return rc;
        }
        return 0;
    }
    if (strcmp(v, SCHEMA_VERSION) != 0)
        rc = core_err_set(MLV_EUNSUPPORTED,
                          "%s/mlvault.db has catalog schema '%s'; this mlvault reads schema %s",
                          r->home, v, SCHEMA_VERSION);
    sqlite3_finalize(st);
    return rc;
}

/* ------------------------------------------------------------------ ledger queue --- */

int reg_ledger_queue(reg_ctx *r, const char *author, const char *message,
                     const repo_ledger_change *changes, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_pack("{s:s}", "path", changes[i].path);
        if (!c) break;
        json_object_set_new(c, "content",
                            changes[i].content ? json_stringn(changes[i].content, changes[i].len)
                                               : json_null());
        json_array_append_new(arr, c);
    }
    char *text = core_json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (!text) return core_err_set(MLV_ENOMEM, "ledger queue: out of memory");
    char at[21];
    core_time_iso(at);
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_prepare_v2(r->db,
                           "INSERT INTO ledger_queue(author, message, changes, created_at)"
                           " VALUES(?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = reg_db_err(r, "queue ledger entry");
        goto done;
    }
    sqlite3_bind_text(st, 1, author, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, message, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, at, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = reg_db_err(r, "queue ledger entry");
done:
    sqlite3_finalize(st);
    free(text);
    return rc;
}

static int commit_entry(reg_ctx *r, const char *author, const char *message,
                        const char *changes_json)
{
    json_error_t jerr;
    json_t *arr = json_loads(changes_json, 0, &jerr);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return core_err_set(MLV_EINTEGRITY, "ledger queue: entry is not valid JSON");
    }
    size_t n = json_array_size(arr);
    repo_ledger_change *ch = calloc(n ? n : 1, sizeof *ch);
    if (!ch) {
        json_decref(arr);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(arr, i);
        json_t *content = json_object_get(c, "content");
        ch[i].path = json_string_value(json_object_get(c, "path"));
        ch[i].content = json_is_string(content) ? json_string_value(content) : NULL;
        ch[i].len = json_is_string(content) ? json_string_length(content) : 0;
        if (!ch[i].path) {
            free(ch);
            json_decref(arr);
            return core_err_set(MLV_EINTEGRITY, "ledger queue: entry without a path");
        }
    }
    int rc = repo_ledger_commit(r->home, author, message, ch, n, NULL);
    free(ch);
    json_decref(arr);
    return rc;
}

static int flush_locked(reg_ctx *r);

/* Commits the queue under an exclusive lock on HOME/ledger.lock, so processes sharing
 * a home take turns instead of racing for git's main ref. */
int reg_ledger_flush(reg_ctx *r)
{
    char *path = core_path_join(r->home, "ledger.lock");
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (fd < 0) return core_err_set(MLV_EIO, "%s/ledger.lock: %s", r->home, strerror(errno));
    int rc;
    while ((rc = flock(fd, LOCK_EX)) != 0 && errno == EINTR) {
    }
    rc = rc != 0 ? core_err_set(MLV_EIO, "%s/ledger.lock: %s", r->home, strerror(errno))
                 : flush_locked(r);
    close(fd);
    return rc;
}

int reg_ledger_settle(reg_ctx *r)
{
    if (reg_ledger_flush(r) != 0)
        core_log(CORE_LOG_WARN,
                 "ledger commit pending (%s); saved changes are committed to "
                 "the ledger at the next start",
                 core_err_last());
    core_err_clear();
    return 0;
}

static int flush_locked(reg_ctx *r)
{
    /* We hold ledger.lock, so no mlvault process is inside a ledger commit: a git ref
     * lock there now was left by one that died mid-commit, and would fail every later
     * commit with GIT_ELOCKED (libgit2 never breaks a lock). */
    char *stale = core_path_join(r->home, "ledger.git/refs/heads/main.lock");
    if (!stale) return core_err_set(MLV_ENOMEM, "out of memory");
    if (unlink(stale) == 0)
        core_log(CORE_LOG_WARN, "removed %s, left by an interrupted ledger commit", stale);
    free(stale);
    for (;;) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(r->db,
                               "SELECT id, author, message, changes FROM ledger_queue"
                               " ORDER BY id LIMIT 1",
                               -1, &st, NULL) != SQLITE_OK)
            return reg_db_err(r, "read ledger queue");
        int step = sqlite3_step(st);
        if (step == SQLITE_DONE) {
            sqlite3_finalize(st);
            return 0;
        }
        if (step != SQLITE_ROW) {
            sqlite3_finalize(st);
            return reg_db_err(r, "read ledger queue");
        }
        int64_t id = sqlite3_column_int64(st, 0);
        int rc = commit_entry(r, (const char *)sqlite3_column_text(st, 1),
                              (const char *)sqlite3_column_text(st, 2),
                              (const char *)sqlite3_column_text(st, 3));
        sqlite3_finalize(st);
        if (rc != 0) return core_err_wrap("ledger: ");
        char sql[96];
        snprintf(sql, sizeof sql, "DELETE FROM ledger_queue WHERE id = %lld", (long long)id);
        if ((rc = reg_exec(r, sql)) != 0) return rc;
    }
}

/* --------------------------------------------------------------------- home/open --- */

static const char *CONFIG_INI = "; mlvault settings. Command-line flags override these.\n"
                                "[server]\n"
                                "listen = 127.0.0.1:8080\n"
                                "; tls_cert = /path/cert.pem\n"
                                "; tls_key = /path/key.pem\n"
                                "\n[jobs]\n"
                                "workers = 1\n"
                                "\n[gate]\n"
                                "threshold = 2.0\n";

static int make_dirs(const char *home)
{
    static const char *dirs[] = {"objects", "jobs", "tmp"};
    int rc = core_mkdir_p(home, 0700);
    for (size_t i = 0; rc == 0 && i < sizeof dirs / sizeof *dirs; i++) {
        char *p = core_path_join(home, dirs[i]);
        if (!p) return core_err_set(MLV_ENOMEM, "out of memory");
        rc = core_mkdir_p(p, 0700);
        free(p);
    }
    return rc;
}

int reg_trust_self_locked(reg_ctx *r, const char *pem);

int reg_home_init(const char *home, char token_out[REG_TOKEN_LEN + 1])
{
    struct stat st;
    char *db = core_path_join(home, "mlvault.db");
    char *keys = core_path_join(home, "keys");
    if (!db || !keys) {
        free(db);
        free(keys);
        return core_err_set(MLV_ENOMEM, "out of memory");
    }
    bool exists = stat(db, &st) == 0 || stat(keys, &st) == 0;
    free(db);
    free(keys);
    if (exists) return core_err_set(MLV_EEXISTS, "%s is already an mlvault home", home);
    if (stat(home, &st) == 0 && !S_ISDIR(st.st_mode))
        return core_err_set(MLV_EINVAL, "%s exists and is not a directory", home);

    int rc = make_dirs(home);
    if (rc == 0) rc = repo_keys_create(home);
    if (rc == 0) rc = repo_ledger_init(home);
    if (rc == 0) {
        char *cfg = core_path_join(home, "config.ini"), *tmp = core_path_join(home, "tmp");
        rc = (cfg && tmp) ? core_write_atomic(cfg, tmp, CONFIG_INI, strlen(CONFIG_INI), 0600)
                          : core_err_set(MLV_ENOMEM, "out of memory");
        free(cfg);
        free(tmp);
    }
    if (rc != 0) return core_err_wrap("init %s: ", home);

    reg_ctx r = {.home = (char *)home};
    if ((rc = db_open(&r, true)) != 0) goto done;
    if ((rc = reg_begin(&r)) != 0) goto done;
    repo_keys *own = NULL;
    rc = repo_keys_open(&own, home);
    if (rc == 0) rc = reg_user_create_locked(&r, "admin", "admin", REG_ROLE_ADMIN, token_out);
    if (rc == 0) rc = reg_trust_self_locked(&r, repo_keys_public_pem(own));
    repo_keys_free(own);
    if (rc == 0) rc = reg_commit(&r);
    if (rc != 0) {
        reg_rollback(&r);
        goto done;
    }
    rc = reg_ledger_flush(&r);
done:
    sqlite3_close(r.db);
    return rc;
}

/* Objects moved into objects/ by a transaction that never committed: their intent is
 * recorded, their blobs row is not. Only called with the home to ourselves. */
static int drop_orphan_blobs(reg_ctx *r)
{
    sqlite3_stmt *st = NULL;
    /* Nearly every open finds no intent, and then must not write: a write transaction
     * costs 5 syncs, and fails on a full disk, stopping even list and verify. */
    if (sqlite3_prepare_v2(r->db, "SELECT EXISTS(SELECT 1 FROM blob_intents)", -1, &st, NULL) !=
        SQLITE_OK)
        return reg_db_err(r, "blob intents");
    bool any = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (!any) return 0;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT i.sha256 FROM blob_intents i LEFT JOIN blobs b"
                           " ON b.sha256 = i.sha256 WHERE b.sha256 IS NULL",
                           -1, &st, NULL) != SQLITE_OK)
        return reg_db_err(r, "blob intents");
    int rc = 0;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
        char *path = repo_blob_path(r->home, (const char *)sqlite3_column_text(st, 0));
        if (!path) {
            rc = core_err_code();
            break;
        }
        if (unlink(path) != 0 && errno != ENOENT)
            rc = core_err_set(MLV_EIO, "remove orphan blob %s: %s", path, strerror(errno));
        else
            core_log(CORE_LOG_INFO, "removed %s, left by an interrupted operation", path);
        free(path);
    }
    sqlite3_finalize(st);
    if (rc == 0) rc = reg_exec(r, "DELETE FROM blob_intents");
    return rc;
}

/* Every open holds a shared lock on HOME/lock for its lifetime. Only a process that
 * can take it exclusively — no other mlvault process uses this home — sweeps the temp
 * files that interrupted operations left behind. */
static int lock_and_sweep(reg_ctx *r)
{
    char *path = core_path_join(r->home, "lock");
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (r->lock_fd < 0) return core_err_set(MLV_EIO, "%s/lock: %s", r->home, strerror(errno));
    int rc = 0;
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB) == 0) {
        rc = repo_tmp_sweep(r->home);
        if (rc == 0) rc = drop_orphan_blobs(r);
    }
    if (flock(r->lock_fd, LOCK_SH) != 0 && rc == 0)
        rc = core_err_set(MLV_EIO, "%s/lock: %s", r->home, strerror(errno));
    return rc;
}

int reg_open(reg_ctx **out, const char *home)
{
    *out = NULL;
    struct stat st;
    char *db = core_path_join(home, "mlvault.db");
    if (!db) return core_err_set(MLV_ENOMEM, "out of memory");
    int missing = stat(db, &st) != 0;
    free(db);
    if (missing)
        return core_err_set(MLV_ENOTFOUND,
                            "%s is not an mlvault home (run `mlvault init --home %s`)", home, home);
    reg_ctx *r = calloc(1, sizeof *r);
    if (!r) return core_err_set(MLV_ENOMEM, "out of memory");
    r->lock_fd = -1;
    r->home = strdup(home);
    r->tmpdir = core_path_join(home, "tmp");
    int rc = 0;
    if (!r->home || !r->tmpdir) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = repo_keys_open(&r->keys, home)) != 0) goto fail;
    if ((rc = db_open(r, false)) != 0) goto fail;
    if ((rc = lock_and_sweep(r)) != 0) goto fail;
    /* A ledger that cannot be written now must not lock people out of reading or of
     * fsck, which reports what is still queued. */
    reg_ledger_settle(r);
    *out = r;
    return 0;
fail:
    reg_close(r);
    return rc;
}

void reg_close(reg_ctx *r)
{
    if (!r) return;
    if (r->db) sqlite3_close(r->db);
    repo_keys_free(r->keys);
    if (r->lock_fd >= 0) close(r->lock_fd);
    free(r->home);
    free(r->tmpdir);
    free(r);
}

const char *reg_home(const reg_ctx *r)
{
    return r->home;
}
