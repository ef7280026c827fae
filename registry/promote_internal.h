/* registry/promote_internal.h: what promote.c (channels, requests, the gate, approvals)
 * and release.c (signed release records) share. Not for other files. */
#ifndef MLV_PROMOTE_INTERNAL_H
#define MLV_PROMOTE_INTERNAL_H

#include "registry/reg_internal.h"

/* A promotions row. The JSON texts are owned (prom_row_clear). */
typedef struct prom_row {
    int64_t id, version_id, job_id; /* job_id 0: none */
    int64_t release_seq;            /* 0 until released */
    char model[65], channel[65], digest[65];
    int version;
    char state[16];
    char requested_by[65], requested_at[21], decided_at[21];
    char *reason;
    char *gate;      /* the gate's JSON object, NULL before the gate ran */
    char *rejection; /* {user, reason, at}, NULL unless rejected */
} prom_row;
/* MLV_ENOTFOUND for an unknown id. */
int prom_row_load(reg_ctx *r, int64_t id, prom_row *out);
void prom_row_clear(prom_row *p);

/* The request document of reg_promote_get, read from the catalog (inside or outside a
 * transaction). *out owned by the caller. */
int prom_request_json(reg_ctx *r, int64_t id, json_t **out);
/* The ledger copy of a request: promotions/ID.json, canonical JSON. *text owned. */
int prom_ledger_text(reg_ctx *r, int64_t id, char path[64], char **text);

/* Inside a transaction: releases request `id` (state pending, gate passed, approvals in):
 * the next sequence number of its model and channel, the signed record, the channel
 * moved, state "released", and one audit row "promote.release" whose ledger commit holds
 * channels/MODEL/CHANNEL.json and promotions/ID.json. */
int release_locked(reg_ctx *r, const char *actor, int64_t id);
/* The sequence number of a channel's current release (0: none yet). */
int release_sequence(reg_ctx *r, const char *model, const char *channel, int64_t *seq);
/* The sequence of the release (not a renewal) the channel's current record comes from
 * (0: none yet): what a gate's verdict was measured against, unchanged by renewals. */
int release_base_sequence(reg_ctx *r, const char *model, const char *channel, int64_t *seq);
/* The current (highest sequence) release of a channel: *version_id and, when out is not
 * NULL, {record, record_json, signature, key_hint} (owned). MLV_ENOTFOUND before the
 * first release. */
int release_current(reg_ctx *r, const char *model, const char *channel, int64_t *version_id,
                    json_t **out);
/* The record object of a stored release of request `id` (owned), or NULL. */
json_t *release_record_of(reg_ctx *r, int64_t promotion_id);

#endif
