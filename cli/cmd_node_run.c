/* cli/cmd_node_run.c: `mlvault node run` — a serving node (registry/node.c) following a
 * channel of the registry and serving it with the engine's OpenAI server. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "cli/cli.h"

int cli_batch_opts(const cli_args *a, eng_batcher_opts *bo)
{
    memset(bo, 0, sizeof *bo);
    double seqs = 0, queue = 0, ctx = 0;
    int rc = cli_opt_num(a, "batch", 1, 256, true, &seqs);
    if (!rc) rc = cli_opt_num(a, "queue", 1, 100000, true, &queue);
    if (!rc) rc = cli_opt_num(a, "ctx", 16, 1 << 20, true, &ctx);
    bo->max_seqs = (int)seqs;
    bo->max_queue = (int)queue;
    bo->n_ctx = (uint32_t)ctx;
    return rc;
}

static const cli_opt_spec SPEC[] = {
    {"model", 0, true, false},   {"channel", 0, true, false},      {"trust", 0, true, false},
    {"listen", 0, true, false},  {"poll", 0, true, false},         {"threads", 0, true, false},
    {"backend", 0, true, false}, {"batch", 0, true, false},        {"queue", 0, true, false},
    {"ctx", 0, true, false},     {"api-key-file", 0, true, false},
};

/* --api-key-file: the key clients of the node's OpenAI API must send (one line of 16 to
 * 256 printable characters, no spaces; a trailing newline is fine), into key[257]. */
static int read_api_key(const char *path, char key[257])
{
    char *text = NULL;
    size_t n = 0;
    int rc = core_read_file(path, 4096, &text, &n);
    if (rc) {
        core_err_wrap("--api-key-file: ");
        return rc;
    }
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    bool ok = n >= 16 && n <= 256;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)text[i] > 0x20 && (unsigned char)text[i] < 0x7f;
    if (ok) memcpy(key, text, n), key[n] = '\0';
    OPENSSL_cleanse(text, n);
    free(text);
    if (!ok)
        return core_err_set(MLV_EINVAL,
                            "--api-key-file %s: want one line of 16 to 256 printable "
                            "characters without spaces",
                            path);
    return 0;
}

int cmd_node_run(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, (int)(sizeof SPEC / sizeof *SPEC));
    if (rc) return rc;
    if (a.npos != 0)
        return core_err_set(MLV_EINVAL, "usage: mlvault node run --home DIR --registry URL "
                                        "--model NAME --channel CHANNEL --trust REGISTRY_PUB "
                                        "[--listen ADDR:PORT] [--poll SECONDS] "
                                        "[--api-key-file FILE]");
    reg_node_opts o = {0};
    o.home = a.home;
    o.registry = cli_remote_url(&a);
    o.model = cli_opt(&a, "model");
    o.channel = cli_opt(&a, "channel");
    o.listen = cli_opt(&a, "listen") ? cli_opt(&a, "listen") : "127.0.0.1:8000";
    o.token = a.token ? a.token : getenv("MLVAULT_TOKEN");
    o.cafile = getenv("MLVAULT_CACERT");
    o.poll_s = 10;
    const char *trust = cli_opt(&a, "trust");
    if (!o.home || !o.registry || !o.model || !o.channel || !trust)
        return core_err_set(MLV_EINVAL, "node run: --home, --registry (or MLVAULT_URL), --model, "
                                        "--channel and --trust are needed");
    if (!o.token || !*o.token)
        return core_err_set(MLV_EAUTH, "node run: the node's token (from `node enroll`) is "
                                       "needed: --token or MLVAULT_TOKEN");
    if ((rc = cli_opt_num(&a, "poll", 0.1, 86400, false, &o.poll_s)) != 0 ||
        (rc = cli_load_opts(&a, &o.load)) != 0 || (rc = cli_batch_opts(&a, &o.batch)) != 0)
        return rc;
    char *pem = NULL;
    size_t len = 0;
    if ((rc = core_read_file(trust, 64 << 10, &pem, &len)) != 0) {
        core_err_wrap("--trust: ");
        return rc;
    }
    char key[257] = "";
    if (cli_opt(&a, "api-key-file") && (rc = read_api_key(cli_opt(&a, "api-key-file"), key)) != 0) {
        free(pem);
        return rc;
    }
    o.api_key = key[0] ? key : NULL;
    o.trust_pem = pem;
    rc = reg_node_run(&o);
    OPENSSL_cleanse(key, sizeof key);
    free(pem);
    return rc;
}
