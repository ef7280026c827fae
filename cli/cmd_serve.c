/* cli/cmd_serve.c: `mlvault serve` — runs the registry server (registry/server.c) on a
 * home, with HOME/config.ini's settings under the command line's, until SIGINT or SIGTERM, then
 * stops it cleanly (requests finish, job children are stopped, the catalog is closed).
 * --serve-model NAME@CHANNEL also serves that channel's current release with the engine's
 * OpenAI server (registry/serve_model.c), sized by --threads, --batch, --queue and --ctx.
 * --web-dir DIR serves the web UI from DIR instead of the copy built in (for working on
 * the pages: an edit shows on reload). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

static const cli_opt_spec SPEC[] = {
    {"listen", 0, true, false},      {"tls-cert", 0, true, false},    {"tls-key", 0, true, false},
    {"job-workers", 0, true, false}, {"serve-model", 0, true, false}, {"threads", 't', true, false},
    {"batch", 0, true, false},       {"queue", 0, true, false},       {"ctx", 0, true, false},
    {"web-dir", 0, true, false}};
#define USAGE                                                                                      \
    "usage: mlvault serve [--home DIR] [--listen ADDR:PORT] [--tls-cert FILE --tls-key FILE] "     \
    "[--job-workers N] [--serve-model NAME@CHANNEL [--threads N] [--batch N] [--queue N] "         \
    "[--ctx N]] [--web-dir DIR]"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int cmd_serve(int argc, char **argv)
{
    cli_args a;
    int rc = cli_parse(&a, argc, argv, SPEC, sizeof SPEC / sizeof SPEC[0]);
    if (rc) return rc;
    if (a.npos != 0) return core_err_set(MLV_EINVAL, USAGE);
    const char *serve_model = cli_opt(&a, "serve-model");
    eng_load_opts lo;
    eng_batcher_opts bo;
    if ((rc = cli_load_opts(&a, &lo)) != 0 || (rc = cli_batch_opts(&a, &bo)) != 0) return rc;
    if (!serve_model && (cli_flag(&a, "threads") || cli_flag(&a, "batch") ||
                         cli_flag(&a, "queue") || cli_flag(&a, "ctx")))
        return core_err_set(MLV_EINVAL,
                            "--threads, --batch, --queue and --ctx size the served model: they "
                            "need --serve-model NAME@CHANNEL");
    /* HOME/config.ini first; the command line overrides it */
    static reg_config cfg;
    if ((rc = reg_config_read(cli_home(&a), &cfg)) != 0) return rc;
    double workers = cfg.job_workers;
    if ((rc = cli_opt_num(&a, "job-workers", 1, 256, true, &workers)) != 0) return rc;
    static char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return core_err_set(MLV_EIO, "/proc/self/exe: %s", strerror(errno));
    exe[n] = 0;
    const char *listen = cli_opt(&a, "listen") ? cli_opt(&a, "listen") : cfg.listen;
    const char *cert = cli_opt(&a, "tls-cert"), *key = cli_opt(&a, "tls-key");
    if (!cert && !key && cfg.tls_cert[0]) cert = cfg.tls_cert, key = cfg.tls_key;
    reg_server_opts o = {.home = cli_home(&a),
                         .listen = listen,
                         .tls_cert = cert,
                         .tls_key = key && key[0] ? key : NULL,
                         .max_uploads = cfg.max_uploads,
                         .web_dir = cli_opt(&a, "web-dir"),
                         .job_workers = (int)workers,
                         .exe = exe,
                         .validate = {cli_job_validate, NULL},
                         .serve_model = serve_model,
                         .load = lo,
                         .batch = bo};

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    reg_server *s;
    if ((rc = reg_server_start(&s, &o)) != 0) return rc;
    char host[256];
    snprintf(host, sizeof host, "%s", listen);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    printf("mlvault: serving %s on %s://%s:%d\n", o.home, o.tls_cert ? "https" : "http", host,
           reg_server_port(s));
    if (serve_model)
        printf("mlvault: serving the model of %s at %s://%s:%d/v1 (OpenAI API)\n", serve_model,
               o.tls_cert ? "https" : "http", host, reg_server_port(s));
    fflush(stdout);
    while (!stop_requested) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "mlvault: stopping\n");
    reg_server_stop(s);
    return 0;
}
