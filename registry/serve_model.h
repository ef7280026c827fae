/* registry/serve_model.h: `mlvault serve --serve-model NAME@CHANNEL` — the registry
 * serving a channel's current release with the engine's OpenAI server (serve_model.c).
 * For server.c only. */
#ifndef MLV_SERVE_MODEL_H
#define MLV_SERVE_MODEL_H

#include "engine/engine.h"

typedef struct srv_serve srv_serve;

/* Parses spec (NAME@CHANNEL), creates the engine server (no listener: server.c hands it
 * the requests) and starts the thread that follows the channel: every 2 s it reads the
 * channel's current release; when its sequence changed it loads that version (reg_load
 * as the internal viewer "mlvault-serve", audited "load"), opens it in memory and swaps it
 * in as "NAME:VERSION". Failures are logged and retried at the next tick while the
 * previous model keeps serving. *out owned by the caller (srv_serve_stop). */
int srv_serve_start(srv_serve **out, const char *home, const char *spec, const eng_load_opts *lo,
                    const eng_batcher_opts *bo);
/* The engine server, borrowed until srv_serve_stop. */
eng_server *srv_serve_engine(srv_serve *w);
/* Stops the thread and frees the engine server (after the host stopped handing it
 * requests). NULL is a no-op. */
void srv_serve_stop(srv_serve *w);

#endif
