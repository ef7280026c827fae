/* cli internals: the parsed command line, shared helpers, and one entry point per
 * command group (cli/cmd_*.c). Only cli/ decides exit codes (cli/main.c). */
#ifndef MLV_CLI_H
#define MLV_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "engine/engine.h"
#include "registry/registry.h"

#define CLI_MAX_POS 8
#define CLI_MAX_REPEAT 32

typedef struct cli_opt_spec {
    const char *name; /* long name without dashes, e.g. "parent" */
    char short_name;  /* e.g. 'o', or 0 */
    bool takes_value;
    bool repeat;
} cli_opt_spec;

typedef struct cli_args {
    const char *pos[CLI_MAX_POS];
    int npos;
    /* values by spec index; repeated options collect into vals[i][0..nvals[i]) */
    const char *vals[32][CLI_MAX_REPEAT];
    int nvals[32];
    const cli_opt_spec *spec;
    int nspec;
    /* common */
    const char *home;
    const char *token;
    const char *registry; /* --registry URL */
    bool json;
} cli_args;

/* Parses argv against `spec` plus the common options (--home, --token, --registry,
 * --json, --help). Returns 0, or MLV_EINVAL with a message. */
int cli_parse(cli_args *a, int argc, char **argv, const cli_opt_spec *spec, int nspec);
const char *cli_opt(const cli_args *a, const char *name); /* last value or NULL */
bool cli_flag(const cli_args *a, const char *name);       /* given at all */
int cli_opt_all(const cli_args *a, const char *name, const char ***vals);
/* A number option into *out (left as it is when the option is absent): MLV_EINVAL
 * naming the option unless it is a number in [lo, hi] (and whole, when `integer`). */
int cli_opt_num(const cli_args *a, const char *name, double lo, double hi, bool integer,
                double *out);

/* Home: --home, $MLVAULT_HOME, ~/.mlvault. Borrowed or static. */
const char *cli_home(const cli_args *a);
/* Opens the home and authenticates the token (--token, $MLVAULT_TOKEN). */
int cli_open_auth(const cli_args *a, reg_ctx **r, reg_user *u);
/* Prints JSON to stdout (indent 2) and decrefs it. */
void cli_print_json(json_t *j);

/* A model or dataset named on the command line (cli/model_src.c): a path that exists is
 * a file (a .gguf, or a Hugging Face folder converted in memory), anything else a REF
 * into the vault, verified and decrypted into memory — or, when a registry server is
 * set (cli_remote_url), fetched from it into memory and verified (not `stored`: r stays
 * NULL and no result is recorded). */
typedef struct cli_source {
    reg_ctx *r; /* opened when a local REF needed it */
    reg_user user;
    eng_model *model; /* models */
    char *data;       /* datasets: the bytes */
    size_t len;
    bool stored; /* a stored version of the local home (results may be recorded) */
    int64_t version_id;
    char label[160];         /* "name:version" or the path ("file:NAME" for data) */
    char digest[65];         /* manifest digest of a stored version */
    char content_digest[65]; /* datasets: SHA-256 of the bytes */
} cli_source;
int cli_open_model(const cli_args *a, const char *what, const eng_load_opts *lo, cli_source *s);
int cli_open_data(const cli_args *a, const char *what, cli_source *s);
void cli_source_clear(cli_source *s);
/* --threads and --backend (cpu|ref) into engine load options. */
int cli_load_opts(const cli_args *a, eng_load_opts *lo);
/* --batch (sequences decoded together), --queue (requests waiting) and --ctx (context per
 * sequence) into batcher options; absent ones stay 0 (the engine's defaults). */
int cli_batch_opts(const cli_args *a, eng_batcher_opts *bo);

/* Evaluation shared by eval and quantize (cli/cmd_eval.c): fills e's dataset, metric,
 * context and engine fields for model m; cli_eval_model also runs the evaluation (a
 * progress bar on a terminal) and fills the numbers. The model ref/digest are the
 * caller's. */
void cli_eval_describe(reg_eval *e, const eng_model *m, int metric, const cli_source *ds,
                       uint32_t ctx);
int cli_eval_model(eng_model *m, int metric, const cli_source *ds, uint32_t ctx,
                   eng_model *baseline, reg_eval *e);
/* A progress bar on stderr: arg is the label (const char *), f in [0, 1]. */
void cli_progress_bar(void *arg, double f);

/* ------------------------------------------------ remote registry (cli/remote.c) --- */
/* The registry server's URL: --registry, else $MLVAULT_URL; NULL means the local home.
 * Every command that touches the registry checks this first and, when set, talks to the
 * server instead — with the same output and the same exit codes. */
const char *cli_remote_url(const cli_args *a);
/* One JSON call to that server with the CLI's token (--token, $MLVAULT_TOKEN); TLS
 * trusts $MLVAULT_CACERT when set. *out owned by the caller (may be NULL: discarded). */
int cli_api(const cli_args *a, const char *method, const char *path, const json_t *body,
            json_t **out);
/* An open client for streaming calls (push, export); free with reg_client_free. */
int cli_client(const cli_args *a, reg_client **out);
/* A REF's API path plus `suffix` ("/lineage", or NULL): "/api/v1/models/NAME/versions/V". */
int cli_remote_version_path(const cli_args *a, const char *ref, const char *suffix, char *out,
                            size_t n);
/* For commands that run only where the data home is (bundle, init, ...):
 * MLV_EUNSUPPORTED "WHAT runs on the registry host: unset MLVAULT_URL" when a server is
 * set, else 0. */
int cli_remote_refuse(const cli_args *a, const char *what);

/* ------------------------------------------------------ jobs (cli/cmd_job.c) --- */
/* Follows a job until it ends (a progress bar on a terminal): 0 and *job (owned by the
 * caller) when it succeeded, else the job's error as its code (MLV_EGATE, ...). Local
 * (a running server on the same home runs it) or remote. */
int cli_job_wait(const cli_args *a, int64_t id, json_t **job);
/* Checks a job's parameters against the command's options (the server's validator). */
int cli_job_validate(void *ctx, const char *kind, const json_t *params);
/* The remote path of quantize and eval: submits the command's parsed options in `a` as a
 * job of `kind`, follows it (cli_job_wait) and gives the job (owned by the caller, also
 * on failure when there is one; NULL otherwise). */
int cli_job_submit_wait(const cli_args *a, const char *kind, json_t **job);
/* Inside a job's child (`mlvault job run`): cli_progress_bar also reports to the job's
 * row (reg_job_progress) while r is set; NULL stops it. */
void cli_job_reporter_set(reg_ctx *r, int64_t id);
/* Whether progress is worth reporting: on a terminal, or inside a job. */
bool cli_progress_wanted(void);
/* quantize and eval (cli/cmd_quantize.c, cli/cmd_eval.c) for jobs: their option specs
 * (count returned), a check of a command line (argv[0] the command) as the command makes
 * it before any work, and the printer of a result (the command's --json document) as
 * text or, with --json, JSON — one printer for local and remote runs. */
int cli_quantize_spec(const cli_opt_spec **spec);
int cli_quantize_check(int argc, char **argv);
void cli_quantize_print(const cli_args *a, const json_t *result);
int cli_eval_spec(const cli_opt_spec **spec);
int cli_eval_check(int argc, char **argv);
void cli_eval_print(const cli_args *a, const json_t *result);

/* ---------------------------------------- promotions (cli/cmd_promote.c) --- */
/* Runs the gate of promotion request `id` in this process: missing evaluations on the
 * engine (recorded), then the verdict (reg_promote_gate). The job kind "gate". */
int cli_promote_gate(const cli_args *a, int64_t id);

int cmd_init(int argc, char **argv);
int cmd_user(int argc, char **argv);
int cmd_push(int argc, char **argv);
int cmd_dataset(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_lineage(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_bundle(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_fsck(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_job(int argc, char **argv);
int cmd_channel(int argc, char **argv);
int cmd_promote(int argc, char **argv);
int cmd_approve(int argc, char **argv);
int cmd_reject(int argc, char **argv);
int cmd_requests(int argc, char **argv);
int cmd_node(int argc, char **argv);     /* cli/cmd_node.c: init, enroll, list, run */
int cmd_node_run(int argc, char **argv); /* cli/cmd_node_run.c: `node run` (argv[0] "run") */

#endif
