/* Unit tests for registry/promote.c and registry/release.c: channel policies, the
 * accuracy gate's arithmetic at its boundaries (evaluations recorded with
 * reg_eval_record or by a fake evaluator), the baseline (channel, nearest evaluated
 * ancestor, none), approvals and rejections, release sequence numbers across a rollback,
 * and the release record's signature, checked with OpenSSL directly (not with
 * repo_verify_bytes). Real SQLite, real libgit2, in a temp home. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "registry/reg_internal.h"

static char home[512], dir[400];
static char admin_tok[REG_TOKEN_LEN + 1];
static reg_ctx *r;
static reg_user admin, eng, alice, bob, carol, viewer;
static char data_digest[65]; /* SHA-256 of the gate dataset's bytes */

static void add_user(const char *name, reg_role role, reg_user *u)
{
    char tok[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, name, role, tok), 0);
    assert_int_equal(reg_authenticate(r, tok, u), 0);
}

/* A tiny valid GGUF; `tag` makes each file (so each manifest) different. */
static void write_gguf(const char *path, const char *tag)
{
    eng_gguf_writer *w;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.name", tag), 0);
    float x[4] = {1, 2, 3, 4};
    uint64_t dims[1] = {4};
    assert_int_equal(eng_gguf_add_tensor(w, "w", ENG_F32, 1, dims, x, sizeof x), 0);
    assert_int_equal(eng_gguf_write_file(w, path), 0);
    eng_gguf_writer_free(w);
}

/* Pushes NAME (next version) with an optional parent ref; digest_out may be NULL. */
static void push_model(const char *name, const char *parent, char digest_out[65])
{
    static int n;
    char path[600], tag[64];
    snprintf(tag, sizeof tag, "%s-%d", name, ++n);
    snprintf(path, sizeof path, "%s/%s.gguf", dir, tag);
    write_gguf(path, tag);
    const char *parents[1] = {parent};
    reg_push_opts o = {.name = name, .path = path, .parents = parents, .n_parents = parent ? 1 : 0};
    reg_pushed p;
    assert_int_equal(reg_push(r, &admin, &o, &p), 0);
    if (digest_out) memcpy(digest_out, p.digest, 65);
}

static void version_digest(const char *ref, char out[65])
{
    int64_t vid;
    assert_int_equal(reg_resolve(r, ref, &vid, NULL, NULL), 0);
    reg_version_row v;
    assert_int_equal(reg_version_load(r, vid, &v), 0);
    memcpy(out, v.digest, 65);
    reg_version_row_clear(&v);
}

static void record_eval(const char *ref, double value, uint32_t ctx)
{
    reg_eval e;
    memset(&e, 0, sizeof e);
    snprintf(e.model_ref, sizeof e.model_ref, "%s", ref);
    version_digest(ref, e.model_digest);
    snprintf(e.dataset_ref, sizeof e.dataset_ref, "wiki:1");
    memcpy(e.dataset_digest, data_digest, 65);
    snprintf(e.metric, sizeof e.metric, "next_token_accuracy");
    e.value = e.accuracy = value;
    e.n_samples = 1000;
    e.n_ctx = ctx;
    snprintf(e.engine, sizeof e.engine, "test");
    assert_int_equal(reg_eval_record(r, &admin, &e), 0);
}

/* The fake engine: the value for each model ref it is asked about. */
typedef struct fake_eval {
    const char *refs[8];
    double values[8];
    int calls;
    char last[160];
} fake_eval;

static int fake_eval_fn(void *ctx, const reg_gate_need *need)
{
    fake_eval *f = ctx;
    f->calls++;
    snprintf(f->last, sizeof f->last, "%s", need->model_ref);
    assert_string_equal(need->dataset_ref, "wiki:1");
    assert_string_equal(need->metric, "next_token_accuracy");
    assert_int_equal(need->ctx, 512);
    for (int i = 0; i < 8 && f->refs[i]; i++)
        if (!strcmp(f->refs[i], need->model_ref)) {
            record_eval(need->model_ref, f->values[i], need->ctx);
            return 0;
        }
    return core_err_set(MLV_EIO, "fake engine: no value for %s", need->model_ref);
}

static void set_channel(const char *model, const char *channel, double threshold, int approvals)
{
    reg_channel_policy p = {.threshold = threshold, .approvals = approvals, .expiry_days = 90};
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "wiki");
    snprintf(p.gate_metric, sizeof p.gate_metric, "next_token_accuracy");
    assert_int_equal(reg_channel_set(r, &admin, model, channel, &p), 0);
}

static json_t *get(int64_t id)
{
    json_t *j = NULL;
    assert_int_equal(reg_promote_get(r, &viewer, id, &j), 0);
    return j;
}

static const char *state_of(int64_t id)
{
    static char s[16];
    json_t *j = get(id);
    snprintf(s, sizeof s, "%s", json_string_value(json_object_get(j, "state")));
    json_decref(j);
    return s;
}

/* Requests `ref` to `channel` as eng and runs its gate: the gate's return code. */
static int promote(const char *ref, const char *channel, fake_eval *f, int64_t *id)
{
    assert_int_equal(reg_promote_request(r, &eng, ref, channel, "test", id), 0);
    assert_string_equal(state_of(*id), "gating");
    return reg_promote_gate(r, &eng, *id, f ? fake_eval_fn : NULL, f);
}

static int64_t current_sequence(const char *model, const char *channel, int *version)
{
    json_t *rel = NULL;
    assert_int_equal(reg_channel_release(r, &viewer, model, channel, &rel), 0);
    json_t *rec = json_object_get(rel, "record");
    int64_t seq = json_integer_value(json_object_get(rec, "sequence"));
    if (version) *version = (int)json_integer_value(json_object_get(rec, "version"));
    json_decref(rel);
    return seq;
}

static int setup(void **s)
{
    (void)s;
    const char *base = getenv("MLV_TEST_TMP") ? getenv("MLV_TEST_TMP") : "/tmp";
    core_mkdir_p(base, 0700);
    snprintf(dir, sizeof dir, "%s/promote-XXXXXX", base);
    if (!mkdtemp(dir)) return -1;
    snprintf(home, sizeof home, "%s/home", dir);
    if (reg_home_init(home, admin_tok) || reg_open(&r, home) ||
        reg_authenticate(r, admin_tok, &admin))
        return -1;
    add_user("eng", REG_ROLE_ENGINEER, &eng);
    add_user("alice", REG_ROLE_APPROVER, &alice);
    add_user("bob", REG_ROLE_APPROVER, &bob);
    add_user("carol", REG_ROLE_APPROVER, &carol);
    add_user("vic", REG_ROLE_VIEWER, &viewer);
    char path[600];
    snprintf(path, sizeof path, "%s/wiki.txt", dir);
    static const char text[] = "The quick brown fox jumps over the lazy dog.\n";
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    fclose(f);
    repo_sha256_hex(data_digest, text, strlen(text));
    reg_push_opts o = {.name = "wiki", .path = path, .dataset = true};
    reg_pushed p;
    return reg_push(r, &admin, &o, &p);
}

static int teardown(void **s)
{
    (void)s;
    reg_close(r);
    return core_rm_rf(dir);
}

/* ------------------------------------------------------------------ tests --- */

static void t_policy(void **s)
{
    (void)s;
    push_model("pol", NULL, NULL);
    reg_channel_policy p = {.threshold = 2.0, .approvals = 1, .expiry_days = 90};
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "wiki");
    snprintf(p.gate_metric, sizeof p.gate_metric, "perplexity");
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "perplexity"));
    snprintf(p.gate_metric, sizeof p.gate_metric, "next_token_accuracy");
    p.threshold = -0.5;
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_EINVAL);
    p.threshold = 2.0;
    p.approvals = -1;
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_EINVAL);
    p.approvals = 1;
    p.expiry_days = 0;
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_EINVAL);
    p.expiry_days = 90;
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "nosuchdata");
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_ENOTFOUND);
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "pol"); /* a model, not a dataset */
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), MLV_EINVAL);
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "wiki");
    assert_int_equal(reg_channel_set(r, &eng, "pol", "prod", &p), MLV_EFORBIDDEN);
    assert_int_equal(reg_channel_set(r, &admin, "nosuchmodel", "prod", &p), MLV_ENOTFOUND);
    assert_int_equal(reg_channel_set(r, &admin, "wiki", "prod", &p), MLV_EINVAL);
    assert_int_equal(reg_channel_set(r, &admin, "pol", "Prod", &p), MLV_EINVAL);
    assert_int_equal(reg_channel_set(r, &admin, "pol", "prod", &p), 0);
    /* a request to a channel without a policy */
    int64_t id;
    assert_int_equal(reg_promote_request(r, &eng, "pol", "staging", "", &id), MLV_ENOTFOUND);
    assert_int_equal(reg_promote_request(r, &viewer, "pol", "prod", "", &id), MLV_EFORBIDDEN);

    json_t *list = NULL;
    assert_int_equal(reg_channel_list(r, &viewer, "pol", &list), 0);
    assert_int_equal(json_array_size(list), 1);
    json_t *c = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(c, "channel")), "prod");
    json_t *pol = json_object_get(c, "policy");
    assert_string_equal(json_string_value(json_object_get(pol, "gate_data")), "wiki:1");
    assert_int_equal(json_integer_value(json_object_get(pol, "ctx")), 512); /* eval's default */
    assert_int_equal(json_integer_value(json_object_get(pol, "approvals")), 1);
    assert_true(json_is_null(json_object_get(c, "current")));
    json_decref(list);
    json_t *rel;
    assert_int_equal(reg_channel_release(r, &viewer, "pol", "prod", &rel), MLV_ENOTFOUND);
    char *ledger = NULL;
    size_t len;
    assert_int_equal(repo_ledger_read(home, "policies/pol/prod.json", &ledger, &len), 0);
    assert_non_null(strstr(ledger, "\"gate_data\":\"wiki:1\""));
    free(ledger);
}

/* Drops of exactly 2.00 and 2.50 points fail a threshold of 2.0, 1.99 passes, whichever
 * way the binary rounding of (baseline - candidate) * 100 went. */
static void t_gate_boundaries(void **s)
{
    (void)s;
    push_model("g", NULL, NULL);  /* g:1, the first release: no baseline */
    push_model("g", "g:1", NULL); /* g:2: 0.97, drop 2.00 */
    push_model("g", "g:1", NULL); /* g:3: 0.965, drop 2.50 */
    push_model("g", "g:1", NULL); /* g:4: 0.9701, drop 1.99 */
    set_channel("g", "prod", 2.0, 0);
    record_eval("g:1", 0.99, 512);
    int64_t id;
    assert_int_equal(promote("g:1", "prod", NULL, &id), 0);
    json_t *j = get(id);
    json_t *gate = json_object_get(j, "gate");
    assert_string_equal(json_string_value(json_object_get(gate, "verdict")), "no baseline");
    assert_string_equal(json_string_value(json_object_get(j, "state")), "released");
    json_decref(j);
    assert_int_equal(current_sequence("g", "prod", NULL), 1);

    /* missing evaluations are run: the fake engine supplies the candidates' numbers */
    fake_eval f = {{"g:2", "g:3", "g:4"}, {0.97, 0.965, 0.9701}, 0, ""};
    assert_int_equal(promote("g:2", "prod", &f, &id), MLV_EGATE);
    assert_int_equal(f.calls, 1);
    assert_string_equal(f.last, "g:2");
    const char *msg = core_err_last();
    assert_non_null(strstr(msg, "2.00 points"));
    assert_non_null(strstr(msg, "threshold of 2.00"));
    assert_non_null(strstr(msg, "99.00%"));
    assert_non_null(strstr(msg, "97.00%"));
    j = get(id);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "rejected");
    gate = json_object_get(j, "gate");
    assert_string_equal(json_string_value(json_object_get(gate, "verdict")), "fail");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(gate, "baseline"), "ref")), "g:1");
    assert_float_equal(json_real_value(json_object_get(gate, "drop")), 2.0, 1e-9);
    assert_float_equal(json_real_value(json_object_get(gate, "threshold")), 2.0, 0);
    assert_non_null(strstr(
        json_string_value(json_object_get(json_object_get(j, "rejection"), "reason")), "2.00"));
    json_decref(j);
    /* a decided request's gate does not run again */
    assert_int_equal(reg_promote_gate(r, &eng, id, NULL, NULL), MLV_EINVAL);

    assert_int_equal(promote("g:3", "prod", &f, &id), MLV_EGATE);
    assert_non_null(strstr(core_err_last(), "2.50 points"));
    assert_int_equal(promote("g:4", "prod", &f, &id), 0);
    assert_int_equal(f.calls, 3);
    j = get(id);
    gate = json_object_get(j, "gate");
    assert_string_equal(json_string_value(json_object_get(gate, "verdict")), "pass");
    assert_float_equal(json_real_value(json_object_get(gate, "drop")), 1.99, 1e-9);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "released");
    json_decref(j);
    int v;
    assert_int_equal(current_sequence("g", "prod", &v), 2);
    assert_int_equal(v, 4);
    /* the cached evaluation is used: a second request of g:4 runs nothing */
    assert_int_equal(promote("g:4", "prod", &f, &id), 0);
    assert_int_equal(f.calls, 3);

    /* the other rounding direction: (0.98 - 0.96) * 100 = 1.9999999999999996 */
    push_model("h", NULL, NULL);
    push_model("h", "h:1", NULL);
    set_channel("h", "prod", 2.0, 0);
    record_eval("h:1", 0.98, 512);
    record_eval("h:2", 0.96, 512);
    assert_int_equal(promote("h:1", "prod", NULL, &id), 0);
    assert_int_equal(promote("h:2", "prod", NULL, &id), MLV_EGATE);
    /* an evaluation at another context is not the gate's */
    push_model("h", "h:1", NULL);
    record_eval("h:3", 0.50, 1024);
    assert_int_equal(promote("h:3", "prod", NULL, &id), MLV_ENOTFOUND); /* no evaluator */
    assert_non_null(strstr(core_err_last(), "no next_token_accuracy evaluation"));
    /* a gate that cannot run ends the request, with the reason, rather than leave it open */
    assert_string_equal(state_of(id), "rejected");
}

static void t_baseline_ancestor(void **s)
{
    (void)s;
    /* a:1 -> a:2 -> a:3 -> a:4; a:1 and a:2 evaluated; the channel is empty */
    push_model("a", NULL, NULL);
    push_model("a", "a:1", NULL);
    push_model("a", "a:2", NULL);
    push_model("a", "a:3", NULL);
    set_channel("a", "prod", 2.0, 1);
    record_eval("a:1", 0.90, 512);
    record_eval("a:2", 0.95, 512);
    record_eval("a:2", 0.10, 1024); /* other terms: ignored */
    fake_eval f = {{"a:4"}, {0.94}, 0, ""};
    int64_t id;
    assert_int_equal(promote("a:4", "prod", &f, &id), 0);
    assert_int_equal(f.calls, 1); /* the candidate only: ancestors are not evaluated */
    json_t *j = get(id);
    json_t *gate = json_object_get(j, "gate");
    assert_string_equal(json_string_value(json_object_get(gate, "verdict")), "pass");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(gate, "baseline"), "ref")), "a:2");
    assert_float_equal(json_real_value(json_object_get(gate, "drop")), 1.0, 1e-9);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "pending");
    assert_int_equal(json_integer_value(json_object_get(j, "approvals_needed")), 1);
    json_decref(j);

    /* no evaluated ancestor at all: passes, saying so */
    push_model("n", NULL, NULL);
    push_model("n", "n:1", NULL);
    set_channel("n", "prod", 2.0, 0);
    fake_eval f2 = {{"n:2"}, {0.10}, 0, ""};
    assert_int_equal(promote("n:2", "prod", &f2, &id), 0);
    j = get(id);
    gate = json_object_get(j, "gate");
    assert_string_equal(json_string_value(json_object_get(gate, "verdict")), "no baseline");
    assert_true(json_is_null(json_object_get(gate, "baseline")));
    assert_true(json_is_null(json_object_get(gate, "drop")));
    json_decref(j);
}

/* Verifies base64(DER ECDSA) over SHA-256 of data with OpenSSL alone. */
static int openssl_verify(const char *pem, const char *data, const char *sig_b64)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    size_t n = strlen(sig_b64);
    unsigned char *der = malloc(n);
    int len = EVP_DecodeBlock(der, (const unsigned char *)sig_b64, (int)n);
    if (n >= 1 && sig_b64[n - 1] == '=') len--;
    if (n >= 2 && sig_b64[n - 2] == '=') len--;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok =
        key && len > 0 && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestVerify(ctx, der, (size_t)len, (const unsigned char *)data, strlen(data)) == 1;
    EVP_MD_CTX_free(ctx);
    free(der);
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

static void t_approvals(void **s)
{
    (void)s;
    char d1[65], d2[65];
    push_model("p", NULL, d1);
    push_model("p", "p:1", d2);
    set_channel("p", "production", 2.0, 2);
    record_eval("p:1", 0.5, 512);
    record_eval("p:2", 0.5, 512);
    int64_t id;
    assert_int_equal(promote("p:1", "production", NULL, &id), 0);
    assert_string_equal(state_of(id), "pending");
    assert_int_equal(reg_promote_approve(r, &eng, id, d1, ""), MLV_EFORBIDDEN);
    assert_int_equal(reg_promote_approve(r, &viewer, id, d1, ""), MLV_EFORBIDDEN);
    assert_int_equal(reg_promote_approve(r, &admin, id, d1, ""), MLV_EFORBIDDEN);
    assert_int_equal(reg_promote_approve(r, &alice, id, d2, "looks fine"), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), d1));
    assert_int_equal(reg_promote_approve(r, &alice, id, "xyz", ""), MLV_EINVAL);
    assert_int_equal(reg_promote_approve(r, &alice, id, d1, "looks fine"), 0);
    assert_string_equal(state_of(id), "pending");
    assert_int_equal(reg_promote_approve(r, &alice, id, d1, "again"), MLV_EEXISTS);
    json_t *rel = NULL;
    assert_int_equal(reg_channel_release(r, &viewer, "p", "production", &rel), MLV_ENOTFOUND);
    assert_int_equal(reg_promote_approve(r, &bob, id, NULL, ""), 0); /* the second: released */
    assert_string_equal(state_of(id), "released");
    assert_int_equal(reg_promote_approve(r, &carol, id, d1, ""), MLV_EINVAL);
    assert_int_equal(reg_promote_reject(r, &carol, id, "too late"), MLV_EINVAL);

    assert_int_equal(reg_channel_release(r, &viewer, "p", "production", &rel), 0);
    json_t *rec = json_object_get(rel, "record");
    const char *record_json = json_string_value(json_object_get(rel, "record_json"));
    const char *sig = json_string_value(json_object_get(rel, "signature"));
    assert_string_equal(json_string_value(json_object_get(rec, "schema")), "mlvault.release/v1");
    assert_string_equal(json_string_value(json_object_get(rec, "model")), "p");
    assert_int_equal(json_integer_value(json_object_get(rec, "version")), 1);
    assert_string_equal(json_string_value(json_object_get(rec, "digest")), d1);
    assert_string_equal(json_string_value(json_object_get(rec, "channel")), "production");
    assert_int_equal(json_integer_value(json_object_get(rec, "sequence")), 1);
    assert_int_equal(json_integer_value(json_object_get(rec, "promotion")), id);
    json_t *apv = json_object_get(rec, "approvers");
    assert_int_equal(json_array_size(apv), 2);
    assert_string_equal(json_string_value(json_array_get(apv, 0)), "alice");
    assert_string_equal(json_string_value(json_array_get(apv, 1)), "bob");
    assert_non_null(json_object_get(json_object_get(rec, "gate"), "verdict"));
    /* issued + 90 days: same time of day, and later */
    const char *issued = json_string_value(json_object_get(rec, "issued_at"));
    const char *expires = json_string_value(json_object_get(rec, "expires_at"));
    assert_int_equal(strlen(expires), 20);
    assert_string_equal(issued + 10, expires + 10);
    assert_true(strcmp(expires, issued) > 0);
    /* canonical: the record re-dumped sorted and compact is byte for byte the same */
    json_t *re = json_loads(record_json, 0, NULL);
    char *again = core_json_dumps(re, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(again, record_json);
    free(again);
    json_decref(re);
    /* the signature, with OpenSSL alone and the registry's public key */
    const char *pem = repo_keys_public_pem(r->keys);
    assert_true(openssl_verify(pem, record_json, sig));
    char *tampered = strdup(record_json);
    char *p = strstr(tampered, "\"sequence\":1");
    assert_non_null(p);
    p[11] = '2';
    assert_false(openssl_verify(pem, tampered, sig));
    assert_int_equal(repo_verify_bytes(pem, record_json, strlen(record_json), sig), 0);
    assert_int_equal(repo_verify_bytes(pem, tampered, strlen(tampered), sig), MLV_EINTEGRITY);
    free(tampered);
    char hint[65];
    reg_key_hint(hint, pem);
    assert_string_equal(json_string_value(json_object_get(rel, "key_hint")), hint);
    /* the ledger holds the record and the request's final state */
    char *text = NULL, path[64];
    size_t len;
    assert_int_equal(repo_ledger_read(home, "channels/p/production.json", &text, &len), 0);
    json_t *doc = json_loadb(text, len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "record_json")), record_json);
    assert_true(
        openssl_verify(pem, record_json, json_string_value(json_object_get(doc, "signature"))));
    json_decref(doc);
    json_decref(rel);
    free(text);
    snprintf(path, sizeof path, "promotions/%lld.json", (long long)id);
    assert_int_equal(repo_ledger_read(home, path, &text, &len), 0);
    assert_non_null(strstr(text, "\"state\":\"released\""));
    free(text);

    /* the requester never approves, even when they hold the approver role */
    int64_t id2;
    assert_int_equal(promote("p:2", "production", NULL, &id2), 0);
    assert_int_equal(reg_exec(r, "UPDATE users SET role = 'approver' WHERE name = 'eng'"), 0);
    reg_user eng_approver = eng;
    eng_approver.role = REG_ROLE_APPROVER;
    assert_int_equal(reg_promote_approve(r, &eng_approver, id2, d2, ""), MLV_EFORBIDDEN);
    assert_non_null(strstr(core_err_last(), "requested"));
    assert_int_equal(reg_exec(r, "UPDATE users SET role = 'engineer' WHERE name = 'eng'"), 0);
    /* one rejection ends it */
    assert_int_equal(reg_promote_approve(r, &alice, id2, d2, ""), 0);
    assert_int_equal(reg_promote_reject(r, &carol, id2, ""), MLV_EINVAL);
    assert_int_equal(reg_promote_reject(r, &eng, id2, "no"), MLV_EFORBIDDEN);
    assert_int_equal(reg_promote_reject(r, &carol, id2, "not this quarter"), 0);
    json_t *j = get(id2);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "rejected");
    json_t *rej = json_object_get(j, "rejection");
    assert_string_equal(json_string_value(json_object_get(rej, "user")), "carol");
    assert_string_equal(json_string_value(json_object_get(rej, "reason")), "not this quarter");
    assert_int_equal(json_array_size(json_object_get(j, "approvals")), 1);
    json_decref(j);
    assert_int_equal(reg_promote_approve(r, &bob, id2, d2, ""), MLV_EINVAL);
    int v;
    assert_int_equal(current_sequence("p", "production", &v), 1);
    assert_int_equal(v, 1);

    /* lists: pending only, newest first */
    json_t *all = NULL, *pending = NULL;
    assert_int_equal(reg_promote_list(r, &viewer, false, &all), 0);
    assert_int_equal(reg_promote_list(r, &viewer, true, &pending), 0);
    assert_true(json_array_size(all) >= 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(all, 0), "id")), id2);
    for (size_t i = 0; i < json_array_size(pending); i++) {
        const char *st = json_string_value(json_object_get(json_array_get(pending, i), "state"));
        assert_true(!strcmp(st, "pending") || !strcmp(st, "gating"));
    }
    json_decref(all);
    json_decref(pending);
}

static void t_sequence_rollback(void **s)
{
    (void)s;
    push_model("q", NULL, NULL);
    push_model("q", "q:1", NULL);
    set_channel("q", "stable", 2.0, 0);
    record_eval("q:1", 0.50, 512);
    record_eval("q:2", 0.51, 512);
    int64_t id;
    assert_int_equal(promote("q:1", "stable", NULL, &id), 0);
    assert_int_equal(promote("q:2", "stable", NULL, &id), 0);
    int v;
    assert_int_equal(current_sequence("q", "stable", &v), 2);
    assert_int_equal(v, 2);
    /* rollback: the same checks against the current version (drop 1.00 passes) */
    assert_int_equal(promote("q:1", "stable", NULL, &id), 0);
    assert_int_equal(current_sequence("q", "stable", &v), 3);
    assert_int_equal(v, 1);
    json_t *j = get(id);
    json_t *gate = json_object_get(j, "gate");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(gate, "baseline"), "ref")), "q:2");
    json_decref(j);
    /* NAME@CHANNEL as the reference of a request: what the channel points at */
    set_channel("q", "canary", 2.0, 0);
    assert_int_equal(promote("q@stable", "canary", NULL, &id), 0);
    assert_int_equal(current_sequence("q", "canary", &v), 1);
    assert_int_equal(v, 1);
    json_t *list = NULL;
    assert_int_equal(reg_channel_list(r, &viewer, "q", &list), 0);
    assert_int_equal(json_array_size(list), 2);
    json_t *cur = json_object_get(json_array_get(list, 1), "current"); /* stable */
    assert_int_equal(json_integer_value(json_object_get(cur, "sequence")), 3);
    json_decref(list);
    json_t *counts = NULL, *acc = NULL;
    assert_int_equal(reg_promote_stats(r, &counts, &acc), 0);
    assert_true(json_integer_value(json_object_get(counts, "released")) >= 4);
    assert_true(json_array_size(acc) >= 2);
    json_decref(counts);
    json_decref(acc);
}

/* A request gated against the channel as it was cannot be released once the channel has
 * moved: its verdict compared against another baseline. */
static void t_stale_gate(void **s)
{
    (void)s;
    /* a policy without a threshold takes config.ini's [gate] threshold */
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/config.ini", home);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs("[gate]\nthreshold = 1.25\n", f);
    fclose(f);
    push_model("cf", NULL, NULL);
    reg_channel_policy pol = {.threshold = NAN, .approvals = 0, .expiry_days = 90};
    snprintf(pol.gate_dataset, sizeof pol.gate_dataset, "wiki");
    snprintf(pol.gate_metric, sizeof pol.gate_metric, "next_token_accuracy");
    assert_int_equal(reg_channel_set(r, &admin, "cf", "prod", &pol), 0);
    json_t *list = NULL;
    assert_int_equal(reg_channel_list(r, &viewer, "cf", &list), 0);
    json_t *got = json_object_get(json_object_get(json_array_get(list, 0), "policy"), "threshold");
    assert_float_equal(json_number_value(got), 1.25, 1e-12);
    json_decref(list);

    push_model("st", NULL, NULL);
    push_model("st", "st:1", NULL);
    push_model("st", "st:1", NULL);
    set_channel("st", "prod", 2.0, 1);
    record_eval("st:1", 0.50, 512);
    record_eval("st:2", 0.50, 512);
    record_eval("st:3", 0.49, 512);
    int64_t first, a, b;
    assert_int_equal(promote("st:1", "prod", NULL, &first), 0);
    assert_int_equal(reg_promote_approve(r, &alice, first, NULL, ""), 0);
    assert_int_equal(promote("st:2", "prod", NULL, &a), 0);
    assert_int_equal(promote("st:3", "prod", NULL, &b), 0);
    assert_string_equal(state_of(b), "pending");
    assert_int_equal(reg_promote_approve(r, &alice, a, NULL, ""), 0); /* the channel moves */
    assert_int_equal(reg_promote_approve(r, &bob, b, NULL, ""), MLV_EGATE);
    assert_non_null(strstr(core_err_last(), "released since its gate ran"));
    assert_string_equal(state_of(b), "rejected");
    int v;
    assert_int_equal(current_sequence("st", "prod", &v), 2);
    assert_int_equal(v, 2);
}

static void t_audit(void **s)
{
    (void)s;
    int64_t rows;
    assert_int_equal(reg_audit_verify(r, &admin, &rows), 0);
    static const char *actions[] = {"channel.set",     "promote.request", "promote.gate",
                                    "promote.approve", "promote.reject",  "promote.release"};
    for (size_t i = 0; i < sizeof actions / sizeof *actions; i++) {
        reg_audit_filter f = {.action = actions[i]};
        json_t *l = NULL;
        assert_int_equal(reg_audit_list(r, &admin, &f, &l), 0);
        assert_true(json_array_size(l) > 0);
        json_decref(l);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_policy),
        cmocka_unit_test(t_gate_boundaries),
        cmocka_unit_test(t_baseline_ancestor),
        cmocka_unit_test(t_approvals),
        cmocka_unit_test(t_sequence_rollback),
        cmocka_unit_test(t_stale_gate),
        cmocka_unit_test(t_audit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
