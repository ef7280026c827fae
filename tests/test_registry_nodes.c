/* Unit tests for registry/nodes.c and the renewal of release records (release.c):
 * enrolment (admin only, the key, the model, the name; one transaction with one audit
 * row), the scope of a node (its model only; persons unaffected), state reports
 * (validation, audited only on change), the data keys wrapped for a node — unwrapped with
 * the node's own key and used to decrypt the blob files of HOME/objects in memory to the
 * pushed bytes — and channel renewals (next sequence, same version, a signature that
 * verifies, a new expiry, pending requests unaffected). Real SQLite, libgit2, OpenSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "registry/reg_internal.h"

static char home[512], dir[400];
static char admin_tok[REG_TOKEN_LEN + 1];
static reg_ctx *r;
static reg_user admin, eng, alice, viewer;
static char data_digest[65];
static char key_a[600], pub_a[600], key_b[600], pub_b[600], key_c[600], pub_c[600];
static char *file_m1; /* the bytes pushed as m:1 */
static size_t len_m1;

static void add_user(const char *name, reg_role role, reg_user *u)
{
    char tok[REG_TOKEN_LEN + 1];
    assert_int_equal(reg_user_add(r, &admin, name, role, tok), 0);
    assert_int_equal(reg_authenticate(r, tok, u), 0);
}

/* A tiny valid GGUF; `tag` makes each file different. */
static void write_gguf(const char *path, const char *tag)
{
    eng_gguf_writer *w;
    assert_int_equal(eng_gguf_writer_new(&w), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(eng_gguf_set_str(w, "general.name", tag), 0);
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i * 0.5f;
    uint64_t dims[1] = {64};
    assert_int_equal(eng_gguf_add_tensor(w, "w", ENG_F32, 1, dims, x, sizeof x), 0);
    assert_int_equal(eng_gguf_write_file(w, path), 0);
    eng_gguf_writer_free(w);
}

static void push_model(const char *name, const char *tag, char **bytes, size_t *len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.gguf", dir, tag);
    write_gguf(path, tag);
    if (bytes) assert_int_equal(core_read_file(path, 1 << 20, bytes, len), 0);
    reg_push_opts o = {.name = name, .path = path};
    reg_pushed p;
    assert_int_equal(reg_push(r, &admin, &o, &p), 0);
}

static char *read_text(const char *path)
{
    char *s = NULL;
    size_t n;
    assert_int_equal(core_read_file(path, 1 << 16, &s, &n), 0);
    return s;
}

/* Enrolls `name` for `model` with the public key file `pub`; the node user in *u. */
static void enroll(const char *name, const char *pub, const char *model, reg_user *u)
{
    char *pem = read_text(pub), tok[REG_TOKEN_LEN + 1];
    int rc = reg_node_enroll(r, &admin, name, pem, model, tok);
    if (rc) print_error("enroll: %s\n", core_err_last());
    assert_int_equal(rc, 0);
    assert_int_equal(reg_authenticate(r, tok, u), 0);
    assert_int_equal(u->role, REG_ROLE_NODE);
    free(pem);
}

static int64_t audit_count(const char *action, const char *target)
{
    reg_audit_filter f = {.action = action, .target = target};
    json_t *l = NULL;
    assert_int_equal(reg_audit_list(r, &admin, &f, &l), 0);
    int64_t n = (int64_t)json_array_size(l);
    json_decref(l);
    return n;
}

static size_t user_count(void)
{
    reg_user *us;
    size_t n;
    assert_int_equal(reg_user_list(r, &admin, &us, &n), 0);
    free(us);
    return n;
}

static int setup(void **s)
{
    (void)s;
    const char *base = getenv("MLV_TEST_TMP") ? getenv("MLV_TEST_TMP") : "/tmp";
    core_mkdir_p(base, 0700);
    snprintf(dir, sizeof dir, "%s/nodes-XXXXXX", base);
    if (!mkdtemp(dir)) return -1;
    snprintf(home, sizeof home, "%s/home", dir);
    if (reg_home_init(home, admin_tok) || reg_open(&r, home) ||
        reg_authenticate(r, admin_tok, &admin))
        return -1;
    add_user("eng", REG_ROLE_ENGINEER, &eng);
    add_user("alice", REG_ROLE_APPROVER, &alice);
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
    if (reg_push(r, &admin, &o, &p)) return -1;
    snprintf(key_a, sizeof key_a, "%s/a.key", dir);
    snprintf(pub_a, sizeof pub_a, "%s/a.pub", dir);
    snprintf(key_b, sizeof key_b, "%s/b.key", dir);
    snprintf(pub_b, sizeof pub_b, "%s/b.pub", dir);
    snprintf(key_c, sizeof key_c, "%s/c.key", dir);
    snprintf(pub_c, sizeof pub_c, "%s/c.pub", dir);
    return repo_node_key_create(key_a, pub_a) || repo_node_key_create(key_b, pub_b) ||
           repo_node_key_create(key_c, pub_c);
}

static int teardown(void **s)
{
    (void)s;
    reg_close(r);
    free(file_m1);
    return core_rm_rf(dir);
}

/* ------------------------------------------------------------------ tests --- */

static reg_user node_a, node_b; /* a: model m; b: model other */

static void t_enroll(void **s)
{
    (void)s;
    push_model("m", "m-1", &file_m1, &len_m1);
    push_model("m", "m-2", NULL, NULL);
    push_model("other", "other-1", NULL, NULL);
    char *pem = read_text(pub_a), tok[REG_TOKEN_LEN + 1];
    size_t users = user_count();
    int64_t enrolls = audit_count("node.enroll", NULL);
    /* admin only */
    assert_int_equal(reg_node_enroll(r, &eng, "na", pem, "m", tok), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_enroll(r, &viewer, "na", pem, "m", tok), MLV_EFORBIDDEN);
    /* bad keys: garbage, an ECDSA key */
    assert_int_equal(reg_node_enroll(r, &admin, "na", "not a key", "m", tok), MLV_EINVAL);
    assert_non_null(strstr(core_err_last(), "X25519"));
    assert_int_equal(reg_node_enroll(r, &admin, "na", repo_keys_public_pem(r->keys), "m", tok),
                     MLV_EINVAL);
    assert_int_equal(reg_node_enroll(r, &admin, "na", NULL, "m", tok), MLV_EINVAL);
    /* the model: unknown, a dataset, not a name */
    assert_int_equal(reg_node_enroll(r, &admin, "na", pem, "nosuch", tok), MLV_ENOTFOUND);
    assert_int_equal(reg_node_enroll(r, &admin, "na", pem, "wiki", tok), MLV_EINVAL);
    assert_int_equal(reg_node_enroll(r, &admin, "na", pem, "Bad Model", tok), MLV_EINVAL);
    /* the name: not a name, a person's */
    assert_int_equal(reg_node_enroll(r, &admin, "Not A Name", pem, "m", tok), MLV_EINVAL);
    assert_int_equal(reg_node_enroll(r, &admin, "eng", pem, "m", tok), MLV_EEXISTS);
    assert_int_equal(user_count(), users); /* nothing half-made */
    assert_int_equal(audit_count("node.enroll", NULL), enrolls);
    free(pem);

    enroll("na", pub_a, "m", &node_a);
    enroll("nb", pub_b, "other", &node_b);
    char tok2[REG_TOKEN_LEN + 1];
    pem = read_text(pub_c);
    assert_int_equal(reg_node_enroll(r, &admin, "na", pem, "m", tok2), MLV_EEXISTS); /* name */
    free(pem);
    pem = read_text(pub_a);
    assert_int_equal(reg_node_enroll(r, &admin, "nc", pem, "m", tok2), MLV_EEXISTS); /* key */
    assert_non_null(strstr(core_err_last(), "already enrolled, for node na"));
    free(pem);
    assert_int_equal(user_count(), users + 2);

    /* one audit row, "node.enroll", naming the model and the key, never the token */
    assert_int_equal(audit_count("node.enroll", "na"), 1);
    assert_int_equal(audit_count("user.add", "na"), 0);
    reg_audit_filter f = {.action = "node.enroll", .target = "na"};
    json_t *l = NULL;
    assert_int_equal(reg_audit_list(r, &admin, &f, &l), 0);
    const char *detail = json_string_value(json_object_get(json_array_get(l, 0), "detail"));
    repo_node_key *ka;
    assert_int_equal(repo_node_key_load(&ka, key_a), 0);
    assert_non_null(strstr(detail, "model=m"));
    assert_non_null(strstr(detail, repo_node_key_hint(ka)));
    assert_null(strstr(detail, "mlv_"));
    json_decref(l);

    /* the list (readers), ordered by name */
    json_t *nodes = NULL;
    assert_int_equal(reg_node_list(r, &node_a, &nodes), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_list(r, &viewer, &nodes), 0);
    assert_int_equal(json_array_size(nodes), 2);
    json_t *n0 = json_array_get(nodes, 0);
    assert_string_equal(json_string_value(json_object_get(n0, "name")), "na");
    assert_string_equal(json_string_value(json_object_get(n0, "model")), "m");
    assert_string_equal(json_string_value(json_object_get(n0, "key_hint")), repo_node_key_hint(ka));
    assert_string_equal(json_string_value(json_object_get(n0, "enrolled_by")), "admin");
    assert_true(json_is_false(json_object_get(n0, "disabled")));
    assert_true(json_is_null(json_object_get(n0, "last_seen")));
    assert_true(json_is_null(json_object_get(n0, "state")));
    json_decref(nodes);
    repo_node_key_free(ka);
}

static void t_scope(void **s)
{
    (void)s;
    assert_int_equal(reg_node_scope(r, &node_a, "m"), 0);
    assert_int_equal(reg_node_scope(r, &node_a, "other"), MLV_EFORBIDDEN);
    assert_non_null(strstr(core_err_last(), "enrolled for model m, not other"));
    assert_int_equal(reg_node_scope(r, &node_a, "nosuch"), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_scope(r, &node_b, "m"), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_scope(r, &viewer, "other"), 0);
    assert_int_equal(reg_node_scope(r, &admin, "nosuch"), 0);
    /* a node user made without enrolment may read nothing */
    reg_user bare;
    add_user("bare", REG_ROLE_NODE, &bare);
    assert_int_equal(reg_node_scope(r, &bare, "m"), MLV_EFORBIDDEN);
    assert_non_null(strstr(core_err_last(), "not enrolled"));
    /* the reg_* functions check it themselves */
    json_t *o = NULL;
    assert_int_equal(reg_show(r, &node_a, "m:1", &o), 0);
    assert_null(json_object_get(o, "children")); /* other models' versions stay hidden */
    assert_null(json_object_get(o, "evaluations"));
    json_decref(o);
    assert_int_equal(reg_show(r, &node_a, "other:1", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_show(r, &node_a, "other@prod", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_show(r, &node_a, "m@prod", &o), MLV_ENOTFOUND); /* in scope */
    assert_int_equal(reg_show(r, &bare, "m:1", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_channel_release(r, &node_a, "other", "prod", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_channel_release(r, &node_a, "m", "prod", &o), MLV_ENOTFOUND);
    assert_int_equal(reg_list(r, &node_a, NULL, &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_list(r, &node_a, "m", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_show(r, &viewer, "other:1", &o), 0);
    json_decref(o);
}

/* A report with the given fields (a JSON text); the code of reg_node_report. */
static int report(const reg_user *u, const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &e);
    assert_non_null(j);
    int rc = reg_node_report(r, u, j);
    json_decref(j);
    return rc;
}

static void t_report(void **s)
{
    (void)s;
    static const char *bad[] = {
        "[]",
        "{\"version\":1}",
        "{\"healthy\":true}",
        "{\"version\":\"1\",\"healthy\":true}",
        "{\"version\":-1,\"healthy\":true}",
        "{\"version\":1.5,\"healthy\":true}",
        "{\"version\":1,\"healthy\":\"yes\"}",
        "{\"version\":1,\"healthy\":true,\"rps\":-1}",
        "{\"version\":1,\"healthy\":true,\"rps\":\"fast\"}",
        "{\"version\":1,\"healthy\":true,\"rps\":1e300}",
        "{\"version\":1,\"healthy\":true,\"digest\":\"xyz\"}",
        "{\"version\":1,\"healthy\":true,\"channel\":\"Bad Channel\"}",
        "{\"version\":1,\"healthy\":true,\"serving\":\"nope\"}",
        "{\"version\":1,\"healthy\":true,\"serving\":\"m@prod\"}",
        "{\"version\":1,\"healthy\":true,\"sequence\":-3}",
        "{\"version\":1,\"healthy\":true,\"last_error\":7}",
        "{\"version\":1,\"healthy\":true,\"last_error\":\"a\\u0000b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = report(&node_a, bad[i]);
        if (rc != MLV_EINVAL) print_error("accepted: %s\n", bad[i]);
        assert_int_equal(rc, MLV_EINVAL);
    }
    /* last_error: at most 1000 characters (not bytes) */
    char big[2200], *p;
    p = big + sprintf(big, "{\"version\":1,\"healthy\":false,\"last_error\":\"");
    for (int i = 0; i < 1000; i++)
        p += sprintf(p, "\xc3\xa9"); /* é: 2 bytes, 1 character */
    sprintf(p, "\"}");
    assert_int_equal(report(&node_a, big), 0);
    sprintf(p, "x\"}"); /* 1001 characters */
    assert_int_equal(report(&node_a, big), MLV_EINVAL);

    /* persons and unenrolled node users do not report */
    const char *ok = "{\"channel\":\"prod\",\"version\":1,\"digest\":\"\",\"sequence\":1,"
                     "\"healthy\":true,\"last_error\":\"\",\"rps\":2.5,\"serving\":\"m:1\"}";
    assert_int_equal(report(&admin, ok), MLV_EFORBIDDEN);
    reg_user bare;
    assert_int_equal(reg_authenticate(r, admin_tok, &bare), 0);
    bare.role = REG_ROLE_NODE;
    snprintf(bare.name, sizeof bare.name, "bare");
    assert_int_equal(report(&bare, ok), MLV_EFORBIDDEN);

    /* audited only when version, healthy or last_error change */
    int64_t n0 = audit_count("node.state", "na");
    assert_int_equal(report(&node_a, ok), 0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 1);
    assert_int_equal(report(&node_a, ok), 0);
    const char *rps = "{\"channel\":\"prod\",\"version\":1,\"digest\":\"\",\"sequence\":2,"
                      "\"healthy\":true,\"last_error\":\"\",\"rps\":9,\"serving\":\"m:1\"}";
    assert_int_equal(report(&node_a, rps), 0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 1);
    assert_int_equal(report(&node_a, "{\"version\":1,\"healthy\":true,\"last_error\":\"boom\"}"),
                     0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 2);
    assert_int_equal(report(&node_a, "{\"version\":1,\"healthy\":false,\"last_error\":\"boom\"}"),
                     0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 3);
    assert_int_equal(report(&node_a, "{\"version\":2,\"healthy\":false,\"last_error\":\"boom\"}"),
                     0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 4);
    assert_int_equal(report(&node_a, rps), 0);
    assert_int_equal(audit_count("node.state", "na"), n0 + 5);

    /* the list shows the last report, as stored (typed, defaults filled) */
    json_t *nodes = NULL;
    assert_int_equal(reg_node_list(r, &viewer, &nodes), 0);
    json_t *n = json_array_get(nodes, 0), *st = json_object_get(n, "state");
    assert_true(json_is_string(json_object_get(n, "last_seen")));
    assert_string_equal(json_string_value(json_object_get(st, "serving")), "m:1");
    assert_int_equal(json_integer_value(json_object_get(st, "sequence")), 2);
    assert_true(json_is_true(json_object_get(st, "healthy")));
    assert_float_equal(json_number_value(json_object_get(st, "rps")), 9.0, 1e-12);
    assert_true(json_is_null(json_object_get(json_array_get(nodes, 1), "state")));
    json_decref(nodes);
}

/* The data keys of `ref` for node u with key file `key`: each file's blob, read from
 * HOME/objects as a node would download it, decrypts in memory to what was pushed. */
static void t_keys(void **s)
{
    (void)s;
    json_t *o = NULL;
    assert_int_equal(reg_node_keys(r, &admin, "m:1", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_keys(r, &node_b, "m:1", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_keys(r, &node_a, "other:1", &o), MLV_EFORBIDDEN);
    assert_int_equal(reg_node_keys(r, &node_a, "m:9", &o), MLV_ENOTFOUND);
    int64_t n0 = audit_count("node.keys", "m:1");
    assert_int_equal(reg_node_keys(r, &node_a, "m:1", &o), 0);
    assert_int_equal(audit_count("node.keys", "m:1"), n0 + 1);
    assert_string_equal(json_string_value(json_object_get(o, "ref")), "m:1");
    int64_t vid;
    reg_version_row v;
    assert_int_equal(reg_resolve(r, "m:1", &vid, NULL, NULL), 0);
    assert_int_equal(reg_version_load(r, vid, &v), 0);
    assert_string_equal(json_string_value(json_object_get(o, "digest")), v.digest);
    reg_version_row_clear(&v);
    unsigned char eph[REPO_X25519_LEN];
    assert_int_equal(core_unhex(eph, sizeof eph, json_string_value(json_object_get(o, "eph_pub"))),
                     0);
    json_t *files = json_object_get(o, "files");
    assert_int_equal(json_array_size(files), 1);
    json_t *f = json_array_get(files, 0);
    unsigned char w[1][REPO_WRAPPED_DEK_LEN], dek[1][REPO_KEY_LEN];
    assert_int_equal(
        core_unhex(w[0], REPO_WRAPPED_DEK_LEN, json_string_value(json_object_get(f, "wrapped"))),
        0);
    uint64_t size = (uint64_t)json_integer_value(json_object_get(f, "size"));
    uint64_t csize = (uint64_t)json_integer_value(json_object_get(f, "cipher_size"));
    const char *blob = json_string_value(json_object_get(f, "blob"));
    assert_int_equal(size, len_m1);
    assert_int_equal(csize, repo_aead_ciphertext_size(size));
    char want[65];
    repo_sha256_hex(want, file_m1, len_m1);
    assert_string_equal(blob, want);

    repo_node_key *ka = NULL, *kb = NULL;
    assert_int_equal(repo_node_key_load(&ka, key_a), 0);
    assert_int_equal(repo_node_key_load(&kb, key_b), 0);
    /* another node's key cannot unwrap it */
    assert_int_equal(
        repo_node_key_unwrap(kb, eph, (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])w, 1, dek),
        MLV_EINTEGRITY);
    assert_int_equal(
        repo_node_key_unwrap(ka, eph, (const unsigned char(*)[REPO_WRAPPED_DEK_LEN])w, 1, dek), 0);
    char *path = repo_blob_path(home, blob), *cipher = NULL;
    size_t clen = 0;
    assert_int_equal(core_read_file(path, 1 << 24, &cipher, &clen), 0);
    assert_int_equal(clen, csize);
    unsigned char *plain = malloc(size);
    assert_int_equal(repo_blob_decrypt_buf(dek[0], cipher, clen, blob, size, plain, "m:1"), 0);
    assert_memory_equal(plain, file_m1, len_m1);
    /* the same blob with the other node's view of the key fails */
    dek[0][0] ^= 1;
    assert_int_equal(repo_blob_decrypt_buf(dek[0], cipher, clen, blob, size, plain, "m:1"),
                     MLV_EINTEGRITY);
    free(plain);
    free(cipher);

    /* a blob that is not the size it should be is reported, not handed out */
    FILE *fp = fopen(path, "ab");
    assert_non_null(fp);
    fputc(0, fp);
    fclose(fp);
    json_t *o2 = NULL;
    assert_int_equal(reg_node_keys(r, &node_a, "m:1", &o2), MLV_EINTEGRITY);
    assert_int_equal(truncate(path, (off_t)csize), 0);
    assert_int_equal(reg_node_keys(r, &node_a, "m", &o2), 0); /* latest: m:2 */
    assert_string_equal(json_string_value(json_object_get(o2, "ref")), "m:2");
    /* one ephemeral key per call */
    assert_string_not_equal(json_string_value(json_object_get(o2, "eph_pub")),
                            json_string_value(json_object_get(o, "eph_pub")));
    json_decref(o2);
    free(path);
    repo_node_key_free(ka);
    repo_node_key_free(kb);
    json_decref(o);
}

/* -------------------------------------------------------------- renewals --- */

static void record_eval(const char *ref, double value)
{
    reg_eval e;
    memset(&e, 0, sizeof e);
    snprintf(e.model_ref, sizeof e.model_ref, "%s", ref);
    int64_t vid;
    reg_version_row v;
    assert_int_equal(reg_resolve(r, ref, &vid, NULL, NULL), 0);
    assert_int_equal(reg_version_load(r, vid, &v), 0);
    memcpy(e.model_digest, v.digest, 65);
    reg_version_row_clear(&v);
    snprintf(e.dataset_ref, sizeof e.dataset_ref, "wiki:1");
    memcpy(e.dataset_digest, data_digest, 65);
    snprintf(e.metric, sizeof e.metric, "next_token_accuracy");
    e.value = e.accuracy = value;
    e.n_samples = 1000;
    e.n_ctx = 512;
    snprintf(e.engine, sizeof e.engine, "test");
    assert_int_equal(reg_eval_record(r, &admin, &e), 0);
}

static void set_channel(const char *channel, int approvals, int expiry_days)
{
    reg_channel_policy p = {.threshold = 2.0, .approvals = approvals, .expiry_days = expiry_days};
    snprintf(p.gate_dataset, sizeof p.gate_dataset, "wiki");
    snprintf(p.gate_metric, sizeof p.gate_metric, "next_token_accuracy");
    assert_int_equal(reg_channel_set(r, &admin, "m", channel, &p), 0);
}

static json_t *release_of(const char *channel)
{
    json_t *doc = NULL;
    assert_int_equal(reg_channel_release(r, &node_a, "m", channel, &doc), 0);
    return doc;
}

static const char *rec_str(const json_t *doc, const char *k)
{
    return json_string_value(json_object_get(json_object_get(doc, "record"), k));
}

static json_int_t rec_int(const json_t *doc, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(doc, "record"), k));
}

static void t_renew(void **s)
{
    (void)s;
    record_eval("m:1", 0.50);
    record_eval("m:2", 0.51);
    set_channel("prod", 1, 90);
    json_t *out = NULL;
    assert_int_equal(reg_channel_renew(r, &admin, "m", "prod", &out), MLV_ENOTFOUND);
    assert_int_equal(reg_channel_renew(r, &admin, "m", "nochannel", &out), MLV_ENOTFOUND);
    int64_t first, second;
    assert_int_equal(reg_promote_request(r, &eng, "m:1", "prod", "first", &first), 0);
    assert_int_equal(reg_promote_gate(r, &eng, first, NULL, NULL), 0);
    assert_int_equal(reg_promote_approve(r, &alice, first, NULL, "ok"), 0);
    json_t *before = release_of("prod");
    assert_int_equal(rec_int(before, "sequence"), 1);
    /* a request gated now, approved after the renewal: a renewal is no new baseline */
    assert_int_equal(reg_promote_request(r, &eng, "m:2", "prod", "second", &second), 0);
    assert_int_equal(reg_promote_gate(r, &eng, second, NULL, NULL), 0);

    assert_int_equal(reg_channel_renew(r, &eng, "m", "prod", &out), MLV_EFORBIDDEN);
    assert_int_equal(reg_channel_renew(r, &node_a, "m", "prod", &out), MLV_EFORBIDDEN);
    assert_int_equal(reg_channel_renew(r, &admin, "m", "Bad", &out), MLV_EINVAL);
    set_channel("prod", 1, 30); /* a new expiry: the renewal takes the policy's */
    int64_t n0 = audit_count("promote.renew", "m@prod");
    assert_int_equal(reg_channel_renew(r, &admin, "m", "prod", &out), 0);
    assert_int_equal(audit_count("promote.renew", "m@prod"), n0 + 1);
    json_t *after = release_of("prod");
    assert_true(json_equal(out, after));
    assert_int_equal(rec_int(after, "sequence"), 2);
    assert_int_equal(rec_int(after, "renewal_of"), 1);
    assert_int_equal(rec_int(after, "version"), 1);
    assert_string_equal(rec_str(after, "digest"), rec_str(before, "digest"));
    assert_int_equal(rec_int(after, "promotion"), first);
    json_t *ra = json_object_get(after, "record"), *rb = json_object_get(before, "record");
    assert_true(json_equal(json_object_get(ra, "approvers"), json_object_get(rb, "approvers")));
    assert_true(json_equal(json_object_get(ra, "gate"), json_object_get(rb, "gate")));
    assert_string_not_equal(rec_str(after, "expires_at"), rec_str(before, "expires_at"));
    assert_true(strcmp(rec_str(after, "expires_at"), rec_str(before, "expires_at")) <
                0); /* 30 < 90 */
    assert_null(json_object_get(rb, "renewal_of"));
    /* signed like the others: the exact bytes, the registry's key */
    const char *rj = json_string_value(json_object_get(after, "record_json"));
    const char *sig = json_string_value(json_object_get(after, "signature"));
    assert_int_equal(repo_verify_bytes(repo_keys_public_pem(r->keys), rj, strlen(rj), sig), 0);
    char *tampered = strdup(rj);
    tampered[strlen(tampered) - 2] ^= 1;
    assert_int_equal(
        repo_verify_bytes(repo_keys_public_pem(r->keys), tampered, strlen(tampered), sig),
        MLV_EINTEGRITY);
    free(tampered);
    /* the ledger holds the renewal */
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(repo_ledger_read(home, "channels/m/prod.json", &text, &len), 0);
    json_t *ledger = json_loadb(text, len, 0, NULL);
    assert_true(json_equal(ledger, after));
    json_decref(ledger);
    free(text);
    /* the request still shows its own release, not the renewal */
    json_t *req = NULL;
    assert_int_equal(reg_promote_get(r, &viewer, first, &req), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(req, "release"), "sequence")), 1);
    json_decref(req);
    /* the request gated before the renewal is still good */
    assert_int_equal(reg_promote_approve(r, &alice, second, NULL, "ok"), 0);
    json_t *third = release_of("prod");
    assert_int_equal(rec_int(third, "sequence"), 3);
    assert_int_equal(rec_int(third, "version"), 2);
    assert_null(json_object_get(json_object_get(third, "record"), "renewal_of"));
    json_decref(third);
    json_decref(before);
    json_decref(after);
    json_decref(out);
    int64_t rows;
    assert_int_equal(reg_audit_verify(r, &admin, &rows), 0);
}

/* A home made before nodes (catalog schema 4) opens as schema 5 with the nodes table. */
static void t_migration(void **s)
{
    (void)s;
    char mig[600], tok[REG_TOKEN_LEN + 1];
    snprintf(mig, sizeof mig, "%s/mig", dir);
    assert_int_equal(reg_home_init(mig, tok), 0);
    reg_ctx *m = NULL;
    assert_int_equal(reg_open(&m, mig), 0);
    assert_int_equal(reg_exec(m, "DROP TABLE nodes; UPDATE meta SET value = '4'"
                                 " WHERE key = 'schema'"),
                     0);
    reg_close(m);
    assert_int_equal(reg_open(&m, mig), 0);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(m->db, "SELECT value FROM meta WHERE key = 'schema'", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "5");
    sqlite3_finalize(st);
    reg_user a;
    json_t *nodes = NULL;
    assert_int_equal(reg_authenticate(m, tok, &a), 0);
    assert_int_equal(reg_node_list(m, &a, &nodes), 0);
    assert_int_equal(json_array_size(nodes), 0);
    json_decref(nodes);
    /* a newer catalog than this build reads is refused */
    assert_int_equal(reg_exec(m, "UPDATE meta SET value = '6' WHERE key = 'schema'"), 0);
    reg_close(m);
    assert_int_equal(reg_open(&m, mig), MLV_EUNSUPPORTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_enroll), cmocka_unit_test(t_scope), cmocka_unit_test(t_report),
        cmocka_unit_test(t_keys),   cmocka_unit_test(t_renew), cmocka_unit_test(t_migration),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
