/* cli/main.c: mlvault's entry point — dispatches to the command groups, parses the
 * options they share, and maps error codes to exit codes (the only place that does). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *USAGE =
    "usage: mlvault COMMAND [ARGS] [--home DIR] [--token TOKEN] [--registry URL] [--json]\n"
    "\n"
    "  init [--home DIR]                          create a data home; prints the admin token\n"
    "  user add NAME --role ROLE                  add a user "
    "(viewer|engineer|approver|admin|node)\n"
    "  user list | user disable NAME | user token NAME   (token: a new one; the old stops)\n"
    "  push NAME PATH [--parent REF]... [--note TEXT]\n"
    "                                             store a .gguf file or a Hugging Face folder\n"
    "  dataset push NAME FILE [--note TEXT]       store a dataset version\n"
    "  list [NAME]                                models and datasets, or NAME's versions\n"
    "  show REF                                   manifest, files, signature, parents, children\n"
    "  lineage REF [--dot]                        ancestors and descendants\n"
    "  export REF -o DIR                          verify, decrypt and write files + model.sig\n"
    "  verify REF                                 the same checks, writing nothing\n"
    "  audit [--verify] [--actor U] [--action A] [--target T] [--since TIME] [--until TIME]\n"
    "      [--after SEQ] [--before SEQ] [--newest-first] [--limit N]\n"
    "                                             the hash-chained audit log\n"
    "  fsck [--prune]                             check catalog, ledger, blobs and audit agree\n"
    "  keys export-import-key [-o FILE]           this site's public key for incoming bundles\n"
    "  keys trust FILE.pub [--name NAME] | keys list\n"
    "                                             trust another site's signing key\n"
    "  bundle export REF... [--with-ancestors] --to IMPORTKEY.pub -o FILE.tar.zst\n"
    "  bundle import FILE.tar.zst                 move versions between air-gapped sites\n"
    "  run REF|FILE (--prompt TEXT | --chat) [-n N] [--temp T] [--top-k K] [--top-p P]\n"
    "      [--min-p P] [--repeat-penalty R] [--seed S] [--threads N] [--ctx N]\n"
    "                                             generate text with the built-in engine\n"
    "  eval REF|FILE --data DATASET_REF|FILE [--metric next_token_accuracy|perplexity|\n"
    "      mc_accuracy|kld] [--baseline REF|FILE] [--ctx N] [--no-cache]\n"
    "                                             evaluate; stored versions' results are kept\n"
    "  convert DIR|FILE.gguf -o OUT.gguf [--outtype auto|f32|f16|bf16|q8_0]  HF folder or GGUF\n"
    "  quantize REF|FILE --type Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q4_K|Q6_K|Q4_K_M|Q5_K_M\n"
    "      [--method rtn|imatrix|gptq] [--calib DATASET] [--tensor-type PATTERN=TYPE]...\n"
    "      [--max-drop POINTS --eval-data DATASET] [--max-rounds N] [--name NAME] [-o OUT]\n"
    "                                             a smaller version, its recipe as lineage\n"
    "\n"
    "  serve [--listen ADDR:PORT] [--tls-cert FILE --tls-key FILE] [--job-workers N]\n"
    "      [--serve-model NAME@CHANNEL [--threads N] [--batch N] [--queue N] [--ctx N]]\n"
    "                                             the registry server (REST API, jobs, metrics),\n"
    "                                             and a channel's model at /v1 (OpenAI API)\n"
    "  job submit quantize|eval REF [OPTIONS] [--wait] | job list [--state S]\n"
    "  job show ID | job log ID [--follow] | job cancel ID\n"
    "                                             jobs, run by the server in child processes\n"
    "  channel set NAME CHANNEL --gate-data DATASET [--gate-metric M] [--threshold 2.0]\n"
    "      [--approvals N] [--expiry-days D] | channel list NAME | channel show NAME CHANNEL\n"
    "  promote REF --to CHANNEL [--reason TEXT]   request a promotion; the gate runs first\n"
    "  approve ID [--comment TEXT] | reject ID --reason TEXT | requests [--pending]\n"
    "                                             the change-control board\n"
    "  channel renew NAME CHANNEL                 re-sign the current release, new expiry\n"
    "\n"
    "  node init --home DIR                       a serving node's home and key pair\n"
    "  node enroll NODE --pubkey FILE --model NAME   let a node pull a model (token once)\n"
    "  node list                                  serving nodes and their last reports\n"
    "\n"
    "REF is NAME (latest), NAME:VERSION or NAME@CHANNEL. The home is --home, else\n"
    "$MLVAULT_HOME, else ~/.mlvault; the token is --token, else $MLVAULT_TOKEN. With\n"
    "--registry URL (or $MLVAULT_URL) commands talk to a registry server instead.\n";

/* Exit codes, one per error class, so scripts can tell them apart. */
static int exit_code(int rc)
{
    switch (rc) {
    case MLV_OK: return 0;
    case MLV_EINVAL: return 2;
    case MLV_ENOTFOUND: return 3;
    case MLV_EEXISTS: return 4;
    case MLV_EAUTH: return 5;
    case MLV_EFORBIDDEN: return 6;
    case MLV_EINTEGRITY: return 7;
    case MLV_EIO: return 8;
    case MLV_EGATE: return 9;
    case MLV_EBUSY: return 10;
    case MLV_EUNSUPPORTED: return 11;
    case MLV_ELIMIT: return 12;
    default: return 1;
    }
}

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
} command;

static const command COMMANDS[] = {
    {"init", cmd_init},       {"user", cmd_user},         {"push", cmd_push},
    {"dataset", cmd_dataset}, {"list", cmd_list},         {"show", cmd_show},
    {"lineage", cmd_lineage}, {"export", cmd_export},     {"verify", cmd_verify},
    {"audit", cmd_audit},     {"bundle", cmd_bundle},     {"keys", cmd_keys},
    {"fsck", cmd_fsck},       {"convert", cmd_convert},   {"run", cmd_run},
    {"eval", cmd_eval},       {"quantize", cmd_quantize}, {"serve", cmd_serve},
    {"job", cmd_job},         {"channel", cmd_channel},   {"promote", cmd_promote},
    {"approve", cmd_approve}, {"reject", cmd_reject},     {"requests", cmd_requests},
    {"node", cmd_node},
};

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("mlvault %s\n", MLV_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++) {
        if (strcmp(argv[1], COMMANDS[i].name) != 0) continue;
        core_err_clear();
        int rc = COMMANDS[i].fn(argc - 1, argv + 1);
        if (rc != 0) fprintf(stderr, "mlvault: error: %s\n", core_err_last());
        return exit_code(rc);
    }
    fprintf(stderr, "mlvault: unknown command '%s'\n\n%s", argv[1], USAGE);
    return 2;
}

/* ------------------------------------------------------------- shared helpers --- */

static const cli_opt_spec COMMON[] = {{"home", 0, true, false},
                                      {"token", 0, true, false},
                                      {"registry", 0, true, false},
                                      {"json", 0, false, false}};

int cli_parse(cli_args *a, int argc, char **argv, const cli_opt_spec *spec, int nspec)
{
    memset(a, 0, sizeof *a);
    a->spec = spec;
    a->nspec = nspec;
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (only_pos || arg[0] != '-' || !strcmp(arg, "-")) {
            if (a->npos == CLI_MAX_POS) return core_err_set(MLV_EINVAL, "too many arguments");
            a->pos[a->npos++] = arg;
            continue;
        }
        if (!strcmp(arg, "--")) {
            only_pos = true;
            continue;
        }
        char name[64] = "";
        const char *inline_val = NULL;
        if (arg[1] == '-') {
            const char *eq = strchr(arg + 2, '=');
            size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            if (n >= sizeof name) return core_err_set(MLV_EINVAL, "unknown option %s", arg);
            memcpy(name, arg + 2, n);
            name[n] = 0;
            inline_val = eq ? eq + 1 : NULL;
        } else if (arg[2] == 0) {
            for (int s = 0; s < nspec; s++)
                if (spec[s].short_name == arg[1]) snprintf(name, sizeof name, "%s", spec[s].name);
            if (!name[0]) return core_err_set(MLV_EINVAL, "unknown option %s", arg);
        } else {
            return core_err_set(MLV_EINVAL, "unknown option %s", arg);
        }
        const cli_opt_spec *sp = NULL;
        int idx = -1;
        for (int s = 0; s < nspec; s++)
            if (!strcmp(spec[s].name, name)) sp = &spec[s], idx = s;
        const cli_opt_spec *common = NULL;
        for (size_t s = 0; !sp && s < sizeof COMMON / sizeof *COMMON; s++)
            if (!strcmp(COMMON[s].name, name)) common = &COMMON[s];
        if (!sp && !common) return core_err_set(MLV_EINVAL, "unknown option --%s", name);
        const cli_opt_spec *o = sp ? sp : common;
        const char *val = NULL;
        if (o->takes_value) {
            if (inline_val)
                val = inline_val;
            else if (i + 1 < argc)
                val = argv[++i];
            else
                return core_err_set(MLV_EINVAL, "option --%s needs a value", name);
        } else if (inline_val) {
            return core_err_set(MLV_EINVAL, "option --%s takes no value", name);
        }
        if (common) {
            if (!strcmp(name, "home"))
                a->home = val;
            else if (!strcmp(name, "token"))
                a->token = val;
            else if (!strcmp(name, "registry"))
                a->registry = val;
            else
                a->json = true;
            continue;
        }
        if (a->nvals[idx] > 0 && !sp->repeat)
            return core_err_set(MLV_EINVAL, "option --%s given twice", name);
        if (a->nvals[idx] == CLI_MAX_REPEAT)
            return core_err_set(MLV_EINVAL, "option --%s given too often", name);
        a->vals[idx][a->nvals[idx]++] = val ? val : "";
    }
    return 0;
}

static int spec_index(const cli_args *a, const char *name)
{
    for (int s = 0; s < a->nspec; s++)
        if (!strcmp(a->spec[s].name, name)) return s;
    return -1;
}

const char *cli_opt(const cli_args *a, const char *name)
{
    int i = spec_index(a, name);
    return i >= 0 && a->nvals[i] ? a->vals[i][a->nvals[i] - 1] : NULL;
}

bool cli_flag(const cli_args *a, const char *name)
{
    int i = spec_index(a, name);
    return i >= 0 && a->nvals[i] > 0;
}

int cli_opt_num(const cli_args *a, const char *name, double lo, double hi, bool integer,
                double *out)
{
    const char *v = cli_opt(a, name);
    if (!v) return 0;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= lo && d <= hi) || (integer && d != floor(d)))
        return core_err_set(MLV_EINVAL, "--%s %s: expected a %s from %.15g to %.15g", name, v,
                            integer ? "whole number" : "number", lo, hi);
    *out = d;
    return 0;
}

int cli_opt_all(const cli_args *a, const char *name, const char ***vals)
{
    int i = spec_index(a, name);
    if (i < 0) return 0;
    *vals = (const char **)a->vals[i];
    return a->nvals[i];
}

const char *cli_home(const cli_args *a)
{
    static char buf[4096];
    if (a->home && *a->home) return a->home;
    const char *e = getenv("MLVAULT_HOME");
    if (e && *e) return e;
    const char *h = getenv("HOME");
    snprintf(buf, sizeof buf, "%s/.mlvault", h && *h ? h : ".");
    return buf;
}

int cli_open_auth(const cli_args *a, reg_ctx **r, reg_user *u)
{
    int rc = reg_open(r, cli_home(a));
    if (rc) return rc;
    const char *tok = a->token ? a->token : getenv("MLVAULT_TOKEN");
    if ((rc = reg_authenticate(*r, tok, u)) != 0) {
        reg_close(*r);
        *r = NULL;
    }
    return rc;
}

void cli_print_json(json_t *j)
{
    char *s = core_json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) puts(s);
    free(s);
    json_decref(j);
}
