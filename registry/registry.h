/* registry: the catalog (SQLite), identity and roles, the audit chain, and the flows
 * that change state — push, export, verify — joining repo/ (blobs, keys, signatures,
 * ledger) with engine/ (what a model file is). The CLI and, later, the HTTP API call
 * these; they never touch SQLite or blobs themselves.
 *
 * Every mutation: validate → stage blobs durably → one SQLite transaction that records
 * the change, its audit row and its queued ledger entry → commit the queued entry to
 * git. reg_open re-commits entries left queued by a process that died in between. */
#ifndef MLV_REGISTRY_H
#define MLV_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "core/core_json.h"
#include "engine/engine.h"

typedef struct reg_ctx reg_ctx;

/* ============================================================= home & context ==== */
/* Creates the data home (DESIGN.md: mlvault.db, objects/, ledger.git/, keys/, jobs/,
 * tmp/, config.ini), the first admin user `admin`, and writes its token (shown once)
 * into token_out. Refuses an existing home (MLV_EEXISTS). */
#define REG_TOKEN_LEN 68 /* "mlv_" + 64 hex */
int reg_home_init(const char *home, char token_out[REG_TOKEN_LEN + 1]);
/* Opens a home: keys (refusing loose permissions), catalog, pending ledger entries
 * replayed, temp files of interrupted operations swept. *out owned by the caller. */
int reg_open(reg_ctx **out, const char *home);
void reg_close(reg_ctx *r);
const char *reg_home(const reg_ctx *r);

/* HOME/config.ini (registry/config.c): defaults for what command-line options do not
 * say. A missing file gives the defaults; an unknown key or bad value is MLV_EINVAL
 * naming its line. */
typedef struct reg_config {
    char listen[128];      /* [server] listen (127.0.0.1:8080) */
    char tls_cert[4096];   /* [server] tls_cert ("") */
    char tls_key[4096];    /* [server] tls_key ("") */
    int max_uploads;       /* [server] max_uploads (8) */
    int job_workers;       /* [jobs] workers (1) */
    double gate_threshold; /* [gate] threshold (2.0): a new channel's, unless given */
} reg_config;
int reg_config_read(const char *home, reg_config *out);

/* ===================================================================== users ==== */
typedef enum reg_role {
    REG_ROLE_VIEWER,
    REG_ROLE_ENGINEER,
    REG_ROLE_APPROVER,
    REG_ROLE_ADMIN,
    REG_ROLE_NODE,
} reg_role;
const char *reg_role_name(reg_role r);
int reg_role_parse(const char *s, reg_role *out); /* MLV_EINVAL when unknown */

typedef struct reg_user {
    int64_t id;
    char name[65];
    reg_role role;
    bool disabled;
    char created_at[21];
} reg_user;

/* Token → user. MLV_EAUTH: no token, an unknown token, or a disabled user (distinct
 * messages). */
int reg_authenticate(reg_ctx *r, const char *token, reg_user *out);

typedef enum reg_action {
    REG_ACT_READ,     /* list, show, lineage, verify */
    REG_ACT_DOWNLOAD, /* export */
    REG_ACT_PUSH,     /* push models and datasets */
    REG_ACT_ADMIN,    /* users, keys */
    REG_ACT_AUDIT,    /* read the audit log */
    REG_ACT_JOB,      /* submit and cancel jobs (engineer, admin) */
    REG_ACT_PROMOTE,  /* request a promotion (engineer, admin) */
    REG_ACT_APPROVE,  /* approve or reject a promotion request (approver) */
    REG_ACT_CHANNEL,  /* set a channel's policy (admin) */
    REG_ACT_PULL,     /* read a model's channels and versions: persons, and nodes (scoped) */
    REG_ACT_NODE,     /* node-only: wrapped keys, encrypted blobs, state reports (scoped) */
} reg_action;
/* 0 when the user's role allows the action, else MLV_EFORBIDDEN with a message. */
int reg_authorize(const reg_user *u, reg_action a);

int reg_user_add(reg_ctx *r, const reg_user *actor, const char *name, reg_role role,
                 char token_out[REG_TOKEN_LEN + 1]);
int reg_user_disable(reg_ctx *r, const reg_user *actor, const char *name);
/* *out owned by the caller (free()). */
int reg_user_list(reg_ctx *r, const reg_user *actor, reg_user **out, size_t *n);
/* A new token for a user (admin); the old one stops working. Audited "user.token". */
int reg_user_rotate_token(reg_ctx *r, const reg_user *actor, const char *name,
                          char token_out[REG_TOKEN_LEN + 1]);

/* ================================================================= artifacts ==== */
/* A parsed reference: NAME, NAME:VERSION, NAME@CHANNEL. */
typedef struct reg_ref {
    char name[65];
    int version;      /* 0 = latest */
    char channel[65]; /* "" unless NAME@CHANNEL */
} reg_ref;
int reg_ref_parse(const char *s, reg_ref *out);

typedef struct reg_push_opts {
    const char *name;
    const char *path;
    bool dataset;         /* dataset push: any regular file */
    const char **parents; /* refs */
    size_t n_parents;
    const char *note; /* may be NULL */
    /* lineage of a derived version (NULL/0: a plain push): the job kind ("quantize"),
     * its parameters (a JSON object's text) and the refs of the datasets it used */
    const char *job_kind;
    const char *job_params;
    const char **datasets;
    size_t n_datasets;
} reg_push_opts;

typedef struct reg_pushed {
    char name[65];
    int version;
    char digest[65]; /* manifest SHA-256 */
    uint64_t size;   /* plaintext bytes over all files */
    size_t n_files;
    size_t n_new_blobs; /* blobs that were not already stored */
} reg_pushed;

int reg_push(reg_ctx *r, const reg_user *actor, const reg_push_opts *o, reg_pushed *out);

/* Verifies the version (manifest digest, ledger copy, signature, every blob decrypts
 * and hashes right) and writes its files, `mlvault-manifest.json` and `model.sig` into
 * `outdir`, which must not exist or be empty. On any failure nothing is left in outdir. */
int reg_export(reg_ctx *r, const reg_user *actor, const char *ref, const char *outdir);
/* The same checks without writing plaintext anywhere. `report` (may be NULL) receives
 * one line per file checked. */
int reg_verify(reg_ctx *r, const reg_user *actor, const char *ref,
               void (*report)(const char *line, void *ctx), void *ctx);

/* A version verified as reg_verify does and decrypted into memory (no plaintext on
 * disk), for the engine. Audited ("load"). Clear with reg_loaded_clear. */
typedef struct reg_file_mem {
    char *path; /* as in the manifest */
    void *data; /* malloc'd; a caller may take it (set to NULL) */
    uint64_t size;
} reg_file_mem;
typedef struct reg_loaded {
    char name[65], kind[16], digest[65], format[16];
    int version;
    int64_t version_id;
    reg_file_mem *files;
    size_t n_files;
} reg_loaded;
int reg_load(reg_ctx *r, const reg_user *actor, const char *ref, reg_loaded *out);
void reg_loaded_clear(reg_loaded *l);
/* The engine model of a loaded model version: its .gguf file (taken from l, no copy), or
 * a Hugging Face folder's files converted to GGUF in memory. MLV_EINVAL for a dataset or
 * a version without a model file, naming "name:version". */
int reg_loaded_open_model(reg_loaded *l, const eng_load_opts *lo, eng_model **out);

/* ================================================================= evaluations ==== */
/* registry/evals.c: evaluation results of stored versions on stored datasets, cached by
 * (model digest, dataset digest, metric, context, baseline digest). */
typedef struct reg_eval {
    char model_ref[160]; /* "name:version" (or the file for results not stored) */
    char model_digest[65];
    char dataset_ref[160];   /* "name:version", or "file:NAME" for a file not in the vault */
    char dataset_digest[65]; /* SHA-256 of the dataset's bytes */
    char metric[32];
    double value, ci_low, ci_high;
    uint64_t n_samples;
    uint32_t n_ctx;
    char baseline_digest[65]; /* kld only, else "" */
    double accuracy, perplexity, same_top;
    double seconds;
    char engine[64]; /* "mlvault 0.1.0 cpu-avx512" */
    char created_by[65], created_at[21];
} reg_eval;
/* Records a result for a stored model version (audited). */
int reg_eval_record(reg_ctx *r, const reg_user *actor, const reg_eval *e);
/* The latest cached result with the same model, dataset, metric, context and baseline:
 * 0 and *out filled, or MLV_ENOTFOUND. */
int reg_eval_find(reg_ctx *r, const reg_user *actor, const char *model_digest,
                  const char *dataset_digest, const char *metric, uint32_t n_ctx,
                  const char *baseline_digest, reg_eval *out);
/* [{dataset, dataset_digest, metric, value, ci_low, ci_high, n_samples, ctx, ...}] of
 * one version (by catalog id), newest first; owned by the caller. */
json_t *reg_eval_list_json(reg_ctx *r, int64_t version_id);

/* ===================================================================== queries ==== */
/* JSON views shared by the CLI (--json and text) and the HTTP API. All returned json_t
 * are owned by the caller (json_decref). */
/* [{name, kind, versions, latest, latest_digest, size, format, created_at}] or, with a
 * name, [{version, digest, size, format, architecture, parameters, tensor_types,
 * created_by, created_at, note}] */
int reg_list(reg_ctx *r, const reg_user *actor, const char *name, json_t **out);
/* {name, version, digest, kind, manifest:{...}, files:[{path,size,sha256}],
 *  signature:{state:"valid"|"invalid", detail, key_hint}, parents:[ref], children:[ref],
 *  created_by, created_at} */
int reg_show(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out);
/* {root:"name:v", nodes:[{id:"name:v", name, version, kind, digest, format, size, job}],
 *  edges:[{from:"parent", to:"child"}]} over all ancestors and descendants. */
int reg_lineage(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out);

/* ======================================================================= fsck ==== */
/* Checks catalog, ledger, blobs and audit chain agree (admin). *out owned by the caller:
 * {ok, problems:["..."], removed:[paths], checked:{versions, blobs, audit_rows}}. With
 * prune, stray files in objects/ are removed (and audited) instead of reported. Returns
 * 0 when the check ran, whatever it found. */
int reg_fsck(reg_ctx *r, const reg_user *actor, bool prune, json_t **out);

/* ======================================================================= keys ==== */
/* Trusts another site's signing public key (PEM, ECDSA P-256) so that its bundles
 * import; admin only; audited. hint_out: hex SHA-256 of the PEM. Trusting a key twice
 * is MLV_EEXISTS. */
int reg_key_trust(reg_ctx *r, const reg_user *actor, const char *pem, const char *name,
                  char hint_out[65]);
/* [{hint, name, added_by, added_at, self}] */
int reg_key_list(reg_ctx *r, const reg_user *actor, json_t **out);

/* ====================================================================== audit ==== */
/* Filters of reg_audit_list; NULL/0 fields do not filter. `action` matches exactly or,
 * ending in '.', as a prefix ("promote."); times are RFC 3339 UTC, inclusive. */
typedef struct reg_audit_filter {
    const char *actor, *action, *target, *since, *until;
    int64_t after_seq;  /* rows with seq > after_seq */
    int64_t before_seq; /* rows with seq < before_seq; 0: no bound */
    int64_t limit;      /* 0: all */
    bool newest_first;  /* descending seq (the limit keeps the newest) */
} reg_audit_filter;
/* Appends one audit row as its own transaction (and ledger commit): for reads that must
 * leave a trace (blob downloads over the API). */
int reg_audit_record(reg_ctx *r, const reg_user *actor, const char *action, const char *target,
                     const char *detail);
/* [{seq, at, actor, action, target, detail, hash}] oldest first, or newest first with
 * f->newest_first. f may be NULL. */
int reg_audit_list(reg_ctx *r, const reg_user *actor, const reg_audit_filter *f, json_t **out);
/* Checks the hash chain and that its head matches the ledger's audit/head.json.
 * MLV_EINTEGRITY naming the first bad row. rows_out may be NULL. */
int reg_audit_verify(reg_ctx *r, const reg_user *actor, int64_t *rows_out);

/* ==================================================================== bundles ==== */
/* Air-gap bundles between sites (DESIGN.md, Bundles; the format is in repo/repo.h).
 * Export and import both need the engineer or admin role (REG_ACT_PUSH): a bundle
 * carries whole models off-site, and an import adds versions. */
typedef struct reg_bundle_export_opts {
    const char *const *refs; /* the versions to send */
    size_t n_refs;
    bool with_ancestors;       /* and every ancestor of each (lineage) */
    const char *recipient_pem; /* the receiving site's import key (keys export-import-key) */
    const char *path;          /* FILE.tar.zst; must not exist */
} reg_bundle_export_opts;
/* Verifies every version it sends as `verify` does, adds the datasets their lineage
 * names when stored here, wraps each blob's data key for the recipient, and writes the
 * bundle to a temp file beside `path`, renamed into place at the end (nothing at path on
 * failure). Audited as "bundle.export". *out (caller's, json_decref): {file, sha256,
 * bytes, recipient, versions:[{ref, kind, digest}], blobs}. */
int reg_bundle_export(reg_ctx *r, const reg_user *actor, const reg_bundle_export_opts *o,
                      json_t **out);
/* Checks everything before it changes anything — bundle.sig by a trusted key, the
 * entries, each blob (decrypted with this site's import key), each manifest and its
 * model signature by its signer's trusted key, the lineage (every parent in the bundle
 * or stored here with the same digest), no conflicting name:version — then imports the
 * new versions in one transaction, audited as "bundle.import", or nothing. Versions
 * already here with the same digest are skipped; when all are, nothing changes (no
 * audit row). *out (caller's): {file, sha256, sender, changed, versions:[{ref, kind,
 * digest, status:"imported"|"present"}], imported, present, new_blobs}. */
int reg_bundle_import(reg_ctx *r, const reg_user *actor, const char *path, json_t **out);
/* This site's import public key (PEM) and its hint; *pem owned by the caller. */
int reg_import_key(reg_ctx *r, const reg_user *actor, char **pem, char hint[65]);

/* ======================================================================= jobs ==== */
/* registry/jobs.c (DESIGN.md, Jobs). A job is a kind ("quantize", "eval" or "gate"),
 * parameters (a JSON object: "ref" is the positional argument, every other key a long
 * option of the same local command; true = a flag, an array = a repeated option), the
 * submitting user, a state (queued → running → succeeded | failed | cancelled),
 * progress (fraction, message, ETA) and a log under HOME/jobs/ID/.
 *
 * Runners: the server's scheduler (reg_jobs_scheduler_*) starts each queued job as a
 * child process `mlvault job run ID` with a job token (MLVAULT_JOB_TOKEN, valid only
 * while that job runs) that authenticates as the submitter; the child reports progress
 * with reg_job_progress and ends with reg_job_finish. */
typedef struct reg_job_validate {
    /* Checks a kind's parameters before the job is queued (the CLI parses them against
     * the command's options): 0 or MLV_EINVAL with a message. */
    int (*fn)(void *ctx, const char *kind, const json_t *params);
    void *ctx;
} reg_job_validate;
/* Queues a job (REG_ACT_JOB; audited "job.submit"). The id is written to *id. */
int reg_job_submit(reg_ctx *r, const reg_user *actor, const reg_job_validate *v, const char *kind,
                   const json_t *params, int64_t *id);
/* {id, kind, state, params, created_by, created_at, started_at, finished_at, progress,
 *  message, eta_s, error, result} (result: the command's --json output once it
 *  succeeded, else null). *out owned by the caller. */
int reg_job_get(reg_ctx *r, const reg_user *actor, int64_t id, json_t **out);
/* Newest first; state may be NULL (all) or one state name. */
int reg_job_list(reg_ctx *r, const reg_user *actor, const char *state, json_t **out);
/* The log from byte `offset` (at most 1 MiB); *out owned by the caller. */
int reg_job_log(reg_ctx *r, const reg_user *actor, int64_t id, uint64_t offset, char **out,
                size_t *len);
/* Cancels a queued job at once, a running one by signalling its process (SIGTERM, then
 * SIGKILL). The submitter or an admin. Audited "job.cancel". */
int reg_job_cancel(reg_ctx *r, const reg_user *actor, int64_t id);
/* The running child: progress (fraction in [0,1], message) into the job's row, at most a
 * few times a second (cheap to call often); also appended to the log as a line. */
int reg_job_progress(reg_ctx *r, int64_t id, double fraction, const char *message);
/* Job tokens ("mlvj_" + 64 hex) → the submitting user, while the job runs. */
int reg_job_authenticate(reg_ctx *r, const char *token, reg_user *out);
/* The child's job: kind and parameters (owned by the caller). */
int reg_job_load(reg_ctx *r, int64_t id, char kind[16], json_t **params);

typedef struct reg_jobs_scheduler reg_jobs_scheduler;
typedef struct reg_jobs_scheduler_opts {
    const char *home;
    const char *exe; /* the mlvault binary to run `job run ID` with */
    int workers;     /* jobs at once (>= 1) */
} reg_jobs_scheduler_opts;
/* Marks jobs left running by a previous server failed ("the server stopped while the
 * job ran"), then starts a thread that launches queued jobs, reaps children, records
 * their end (exit 0: succeeded with the child's stdout as result; a signal or another
 * status: failed with the reason and the log's last error line) and applies cancels. */
int reg_jobs_scheduler_start(reg_jobs_scheduler **out, const reg_jobs_scheduler_opts *o);
/* Stops launching, kills running children (their jobs fail: "server shutting down"). */
void reg_jobs_scheduler_stop(reg_jobs_scheduler *s);
/* {"queued": n, "running": n, "succeeded": n, "failed": n, "cancelled": n} */
int reg_jobs_counts(reg_ctx *r, json_t **out);

/* ============================================================ channels & promotions ==== */
/* registry/promote.c (DESIGN.md, Evaluation and the gate; Promotion and approvals). */
typedef struct reg_channel_policy {
    char gate_dataset[160]; /* a dataset ref, resolved to name:version when set */
    char gate_metric[32];   /* next_token_accuracy | mc_accuracy */
    double threshold;       /* points; drop >= threshold fails; NAN: config.ini's default */
    int approvals;          /* distinct approvers needed (0: none) */
    int expiry_days;        /* a release record's lifetime */
    uint32_t ctx;           /* evaluation context (0: the engine's default) */
} reg_channel_policy;
/* Creates or changes a channel's policy (REG_ACT_CHANNEL; audited, ledger). */
int reg_channel_set(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                    const reg_channel_policy *p);
/* [{channel, policy:{...}, current: release record or null}] */
int reg_channel_list(reg_ctx *r, const reg_user *actor, const char *model, json_t **out);
/* {record:{schema, model, version, digest, channel, sequence, issued_at, expires_at,
 *  approvers:[...], gate:{...}, promotion}, record_json: the exact signed bytes,
 *  signature: base64 DER ECDSA P-256 over SHA-256(record_json), key_hint}
 * MLV_ENOTFOUND when the channel has no release yet. */
int reg_channel_release(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                        json_t **out);

/* What the gate needs evaluated (missing from the cache), one at a time. */
typedef struct reg_gate_need {
    char model_ref[160];   /* name:version */
    char dataset_ref[160]; /* name:version */
    char metric[32];
    uint32_t ctx;
} reg_gate_need;
/* Runs one evaluation and records it (reg_eval_record) — the CLI's engine. */
typedef int (*reg_gate_eval_fn)(void *ctx, const reg_gate_need *need);

/* Opens a promotion request of `ref` to `channel` (REG_ACT_PROMOTE; audited; ledger
 * promotions/ID.json) in state "gating". *id written. */
int reg_promote_request(reg_ctx *r, const reg_user *actor, const char *ref, const char *channel,
                        const char *reason, int64_t *id);
/* Runs the gate of a request in state "gating": every missing evaluation through
 * eval_fn, then baseline vs candidate. A failed gate rejects the request (MLV_EGATE with
 * both numbers, the drop and the threshold); a passed one leaves it "pending", or
 * releases at once when the channel needs no approvals. */
int reg_promote_gate(reg_ctx *r, const reg_user *actor, int64_t id, reg_gate_eval_fn eval_fn,
                     void *eval_ctx);
/* An approval (REG_ACT_APPROVE; never the requester; once per user). `digest` is the
 * candidate manifest digest the approver saw (NULL: the request's); a different one is
 * refused. The last approval needed releases: signed record, channel moved, ledger. */
int reg_promote_approve(reg_ctx *r, const reg_user *actor, int64_t id, const char *digest,
                        const char *comment);
/* One rejection ends the request (REG_ACT_APPROVE; a reason is required). */
int reg_promote_reject(reg_ctx *r, const reg_user *actor, int64_t id, const char *reason);
/* {id, model, version, ref, digest, channel, state: gating|pending|released|rejected,
 *  reason, requested_by, requested_at, gate:{verdict: pass|fail|"no baseline",
 *  baseline:{ref, value}, candidate:{ref, value}, drop, threshold, metric, dataset},
 *  approvals:[{user, digest, comment, at}], approvals_needed, rejection:{user, reason,
 *  at}, release: record or null, job: id of its gate job or null} */
int reg_promote_get(reg_ctx *r, const reg_user *actor, int64_t id, json_t **out);
/* Newest first; pending_only: state gating or pending. */
int reg_promote_list(reg_ctx *r, const reg_user *actor, bool pending_only, json_t **out);
/* Links a request to the job that runs its gate (the server). */
int reg_promote_set_job(reg_ctx *r, int64_t id, int64_t job_id);
/* {"pending": n, "released": n, "rejected": n} and, per channel, the current version's
 * gate value: [{model, channel, version, metric, value}] — for /metrics. */
int reg_promote_stats(reg_ctx *r, json_t **counts, json_t **accuracy);

/* A new release record for the channel's current version: the next sequence number, a
 * fresh issued_at and expires_at (the policy's expiry_days), the same approvers and
 * gate, "renewal_of": the previous sequence. Admin (REG_ACT_CHANNEL); audited
 * "promote.renew"; ledger channels/MODEL/CHANNEL.json. *out: as reg_channel_release.
 * MLV_ENOTFOUND when the channel has no release. */
int reg_channel_renew(reg_ctx *r, const reg_user *actor, const char *model, const char *channel,
                      json_t **out);

/* ====================================================================== nodes ==== */
/* registry/nodes.c (DESIGN.md, Serving nodes): serving nodes are users with the node
 * role, enrolled for one model with their X25519 public key. A node may read only its
 * model's channels, versions, manifests and signatures (REG_ACT_PULL), fetch its
 * versions' encrypted blobs and the data keys wrapped for its own key (REG_ACT_NODE),
 * and report its state. */
/* Enrolls a node (admin; audited "node.enroll"): a user `name` with the node role, its
 * public key (PEM X25519, as `node init` writes) and the model it may pull (must
 * exist). token_out: the node's API token, shown once. MLV_EEXISTS for a taken name. */
int reg_node_enroll(reg_ctx *r, const reg_user *actor, const char *name, const char *pubkey_pem,
                    const char *model, char token_out[REG_TOKEN_LEN + 1]);
/* [{name, model, key_hint, enrolled_by, enrolled_at, disabled, last_seen, state}]
 * ordered by name; state: the node's last report (below) or null. REG_ACT_READ. */
int reg_node_list(reg_ctx *r, const reg_user *actor, json_t **out);
/* A node's report of itself (node role; the actor is the node): {channel, version (0:
 * none), digest, sequence, healthy (bool), last_error (string), rps (number), serving
 * ("name:version" or "")}. Validated; stored with last_seen = now. Audited "node.state"
 * only when version, healthy or last_error changed. */
int reg_node_report(reg_ctx *r, const reg_user *actor, const json_t *state);
/* 0 when u may read model `model`: every person, and a node enrolled for it; else
 * MLV_EFORBIDDEN ("node N is enrolled for model M, not X"). */
int reg_node_scope(reg_ctx *r, const reg_user *u, const char *model);
/* For the calling node (node role, in scope): each file of version `ref` with its blob
 * and its DEK wrapped for the node's key (repo_keys_rewrap_for_node):
 * {ref, digest, eph_pub: hex, files:[{path, blob, size, cipher_size, wrapped: hex}]}.
 * Audited "node.keys". */
int reg_node_keys(reg_ctx *r, const reg_user *actor, const char *ref, json_t **out);

/* A serving node (registry/node.c; `mlvault node run`): follows a channel's signed
 * release record and serves its version with the engine's OpenAI server. */
typedef struct reg_node_opts {
    const char *home;      /* the node's home (node init): node.key, cache/, state.json */
    const char *registry;  /* the registry's URL */
    const char *token;     /* the node's token (node enroll) */
    const char *cafile;    /* TLS trust for the registry; may be NULL */
    const char *model;     /* NAME */
    const char *channel;   /* CHANNEL */
    const char *trust_pem; /* the registry's signing public key (PEM text), pinned */
    const char *listen;    /* the OpenAI server's address ("127.0.0.1:8000") */
    const char *api_key;   /* NULL, or the key /v1/... wants as a Bearer token */
    double poll_s;         /* seconds between polls of the release record */
    eng_load_opts load;
    eng_batcher_opts batch;
} reg_node_opts;
/* Runs until SIGINT/SIGTERM (0) — serving the cached version at once when there is one,
 * then following the channel. Fails only for bad options or an unusable home. */
int reg_node_run(const reg_node_opts *o);
/* `node init`: creates the node's home (node.key 0600, node.pub, cache/). */
int reg_node_home_init(const char *home);

/* ===================================================================== server ==== */
/* registry/server.c: `mlvault serve` — CivetWeb, the JSON REST API under /api/v1
 * (docs/api.md), /metrics, /healthz, the job scheduler. */
typedef struct reg_server reg_server;
typedef struct reg_server_opts {
    const char *home;
    const char *listen; /* "127.0.0.1:8080" */
    const char *tls_cert, *tls_key;
    int job_workers;
    const char *exe; /* this binary, for job children */
    reg_job_validate validate;
    uint64_t max_body;   /* JSON request bodies (default 1 MiB) */
    uint64_t max_upload; /* bytes per upload session (default 64 GiB) */
    int max_uploads;     /* open upload sessions at once (default 8) */
    /* The web UI's files from this folder, read on each request (developing the pages);
     * NULL: the copy of web/ compiled into the binary. */
    const char *web_dir;
    /* NAME@CHANNEL, or NULL: also serve that channel's current version with the engine's
     * OpenAI server at /v1/... (any valid token) and /health, its metrics added to
     * /metrics; a new release of the channel is loaded and swapped in while serving. */
    const char *serve_model;
    eng_load_opts load;
    eng_batcher_opts batch;
} reg_server_opts;
int reg_server_start(reg_server **out, const reg_server_opts *o);
/* The bound port (useful with port 0) and the base URL ("http://127.0.0.1:PORT"). */
int reg_server_port(const reg_server *s);
void reg_server_stop(reg_server *s);

/* ===================================================================== client ==== */
/* registry/client.c: libcurl client of the API for the remote CLI (and, later, nodes).
 * Errors come back as the server's code and message, so a remote command exits as the
 * local one would. */
typedef struct reg_client reg_client;
/* url: "http(s)://host:port"; token may be NULL; cafile (TLS) may be NULL. */
int reg_client_new(reg_client **out, const char *url, const char *token, const char *cafile);
void reg_client_free(reg_client *c);
/* method GET|POST|PUT|DELETE, path "/api/v1/...", body may be NULL. *out: the response
 * JSON (owned by the caller) on 2xx; else the server's error as code + message. */
int reg_client_json(reg_client *c, const char *method, const char *path, const json_t *body,
                    json_t **out);
/* Uploads a file or folder as a new version through an upload session, resuming parts
 * after a broken connection. meta: {name, kind, parents, note, ...} as POST /uploads;
 * kind "bundle" sends one file (as bundle.tar.zst) and *out is the import's JSON.
 * An open session of the caller's for the same push (GET /uploads: same name, kind,
 * parents, note and files), left by a run that died, is continued instead of a new one.
 * On an error the session is deleted; a killed process leaves it for the next run. */
int reg_client_push(reg_client *c, const json_t *meta, const char *path, json_t **out);
/* reg_bundle_export against the server (POST /bundles, then GET /bundles/ID into
 * o->path + ".part", resumed and checked against the bundle's SHA-256, renamed into
 * place; DELETE /bundles/ID either way). o->path is refused as reg_bundle_export refuses
 * it, before the server builds anything. *out as reg_bundle_export's (file: o->path). */
int reg_client_bundle_export(reg_client *c, const reg_bundle_export_opts *o, json_t **out);
/* reg_bundle_import against the server: the file goes up through an upload session of
 * kind "bundle" (as reg_client_push sends a dataset, resumable), whose commit imports it.
 * *out as reg_bundle_import's (file: path). */
int reg_client_bundle_import(reg_client *c, const char *path, json_t **out);
/* Seconds a transfer may stall (under 1 byte/s) before it fails; 0 keeps each call's
 * default (up to 900 s for calls that work on a whole version). Nodes use a short one so
 * a hung registry never holds up their loop. */
void reg_client_set_stall(reg_client *c, long seconds);
/* A small GET answer (a manifest, a signature) into memory, at most max bytes, asked again
 * after a broken connection: *out NUL-terminated, owned by the caller. */
int reg_client_get_text(reg_client *c, const char *path, size_t max, char **out, size_t *len);
/* Downloads url path into `dest` (a file), resuming with Range requests; verifies the
 * SHA-256 when sha256 is given. */
int reg_client_download(reg_client *c, const char *path, const char *dest, const char *sha256);
/* The API path of a version, "/api/v1/models/NAME/versions/V" (V: a number or latest);
 * NAME@CHANNEL asks the server which version the channel's release names. */
int reg_client_version_path(reg_client *c, const char *ref, char *out, size_t n);
/* reg_export against the server: outdir must not exist or be empty; the version's files,
 * mlvault-manifest.json and model.sig land in a staging folder beside it (named by the
 * digest, so a second run after a broken connection resumes), each file checked against
 * the manifest's SHA-256, the manifest against the version's digest and the signature
 * with the registry's public key (GET /registry/key; another site's signature: the
 * server's verify); then the folder is renamed into place. */
int reg_client_export(reg_client *c, const char *ref, const char *outdir);
/* reg_load against the server: the version's manifest (its SHA-256 must be the version's
 * digest) and signature, checked as reg_client_export checks them, then every file
 * fetched into memory (never onto disk; resumed with Range requests after a broken
 * connection) and checked against the manifest's size and SHA-256. Fills *out as reg_load
 * does, except version_id (0: no catalog here); clear it with reg_loaded_clear. The
 * server audits each file's download. */
int reg_client_load(reg_client *c, const char *ref, reg_loaded *out);

#endif
