/* repo/ledger.c: the git ledger (libgit2) — HOME/ledger.git, a bare repository whose
 * branch main records every state change as one commit that writes or removes files
 * (DESIGN.md, Artifacts — Ledger). Not a general git layer: no checkouts, merges or
 * remotes; the registry decides what to record and serialises commits; this file
 * builds trees, commits durably (libgit2's fsync option) and guards the ref update
 * against a lost update with a compare-and-swap. */
#include "repo.h"

#include <git2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LEDGER_DIR "ledger.git"
#define LEDGER_REF "refs/heads/main"

static pthread_once_t git_once = PTHREAD_ONCE_INIT;
static int git_init_rc;

static void git_init_once(void)
{
    if (git_libgit2_init() < 0 || git_libgit2_opts(GIT_OPT_ENABLE_FSYNC_GITDIR, 1) < 0)
        git_init_rc = -1;
}

static int git_fail(const char *what)
{
    const git_error *e = git_error_last();
    return core_err_set(MLV_EIO, "ledger: %s: %s", what,
                        e && e->message ? e->message : "libgit2 error");
}

static int git_ready(void)
{
    pthread_once(&git_once, git_init_once);
    if (git_init_rc) return git_fail("libgit2 initialisation");
    return 0;
}

static int ledger_open(git_repository **repo, const char *home)
{
    *repo = NULL;
    int rc = git_ready();
    if (rc) return rc;
    char *path = core_path_join(home, LEDGER_DIR);
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    int e = git_repository_open_bare(repo, path);
    if (e == GIT_ENOTFOUND)
        rc = core_err_set(MLV_ENOTFOUND, "ledger: %s is not a git repository", path);
    else if (e < 0)
        rc = git_fail(path);
    free(path);
    return rc;
}

/* Ledger paths: safe relative paths (core_relpath_safe) without a ".git" component,
 * which git itself refuses to check out. */
static bool ledger_path_ok(const char *p)
{
    if (!p || !core_relpath_safe(p)) return false;
    for (const char *seg = p; seg;) {
        const char *slash = strchr(seg, '/');
        size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
        if (n == 4 && !strncasecmp(seg, ".git", 4)) return false;
        seg = slash ? slash + 1 : NULL;
    }
    return true;
}

/* main's head commit and tree; both NULL while main is unborn. */
static int head_get(git_repository *r, git_oid *oid, git_commit **commit, git_tree **tree)
{
    *commit = NULL;
    *tree = NULL;
    int e = git_reference_name_to_id(oid, r, LEDGER_REF);
    if (e == GIT_ENOTFOUND) return 0;
    if (e < 0) return git_fail("resolve " LEDGER_REF);
    if (git_commit_lookup(commit, r, oid) < 0) return git_fail("read head commit");
    if (git_commit_tree(tree, *commit) < 0) {
        git_commit_free(*commit);
        *commit = NULL;
        return git_fail("read head tree");
    }
    return 0;
}

int repo_ledger_init(const char *home)
{
    git_repository *r = NULL;
    int rc = git_ready();
    if (rc) return rc;
    char *path = core_path_join(home, LEDGER_DIR);
    if (!path) return core_err_set(MLV_ENOMEM, "out of memory");
    /* Already a repository: nothing to do (init is idempotent). */
    if (git_repository_open_bare(&r, path) == 0) goto done;
    git_repository_init_options o;
    if (git_repository_init_options_init(&o, GIT_REPOSITORY_INIT_OPTIONS_VERSION) < 0) {
        rc = git_fail("init options");
        goto done;
    }
    o.flags = GIT_REPOSITORY_INIT_BARE | GIT_REPOSITORY_INIT_MKPATH;
    o.initial_head = "main";
    o.description = "mlvault ledger: the history of every state change of this vault\n";
    if (git_repository_init_ext(&r, path, &o) < 0) rc = git_fail(path);
done:
    git_repository_free(r);
    free(path);
    return rc;
}

/* Orders paths component by component ('/' sorts before every other byte), so all
 * changes under one directory are adjacent and "a" comes right before "a/...". */
static int path_cmp(const void *pa, const void *pb)
{
    const unsigned char *a = (const unsigned char *)(*(const repo_ledger_change *const *)pa)->path;
    const unsigned char *b = (const unsigned char *)(*(const repo_ledger_change *const *)pb)->path;
    for (;; a++, b++) {
        unsigned ca = *a == '/' ? 1u : *a ? *a + 1u : 0u;
        unsigned cb = *b == '/' ? 1u : *b ? *b + 1u : 0u;
        if (ca != cb) return ca < cb ? -1 : 1;
        if (!ca) return 0;
    }
}

/* Writes the tree that is `base` (NULL: empty) with changes ch[0..n) applied; the
 * part of each change's path below this tree starts at byte `off`. Sets *empty when
 * the result has no entries; an empty subtree is not written (the caller drops it). */
static int build_tree(git_repository *r, const git_tree *base, const repo_ledger_change **ch,
                      size_t n, size_t off, bool root, git_oid *out, bool *empty)
{
    git_treebuilder *bld = NULL;
    int rc = 0;
    if (git_treebuilder_new(&bld, r, base) < 0) return git_fail("tree builder");
    for (size_t i = 0; i < n;) {
        const char *rest = ch[i]->path + off;
        const char *slash = strchr(rest, '/');
        size_t clen = slash ? (size_t)(slash - rest) : strlen(rest);
        size_t j = i + 1;
        while (j < n && !strncmp(ch[j]->path + off, rest, clen) &&
               (ch[j]->path[off + clen] == '/' || ch[j]->path[off + clen] == 0))
            j++;
        char comp[256];
        memcpy(comp, rest, clen); /* clen ≤ 255: core_relpath_safe bounds the path */
        comp[clen] = 0;
        const git_tree_entry *cur = git_treebuilder_get(bld, comp);
        git_object_t cur_type = cur ? git_tree_entry_type(cur) : GIT_OBJECT_INVALID;
        if (!slash) {
            if (j - i > 1) {
                rc = core_err_set(MLV_EINVAL,
                                  "ledger: %s is changed twice, or as a file and a directory",
                                  ch[i]->path);
                goto done;
            }
            if (cur_type == GIT_OBJECT_TREE) {
                rc = core_err_set(MLV_EINVAL, "ledger: %s is a directory", ch[i]->path);
                goto done;
            }
            if (ch[i]->content) {
                git_oid blob;
                if (git_blob_create_from_buffer(&blob, r, ch[i]->content, ch[i]->len) < 0 ||
                    git_treebuilder_insert(NULL, bld, comp, &blob, GIT_FILEMODE_BLOB) < 0) {
                    rc = git_fail(ch[i]->path);
                    goto done;
                }
            } else if (cur && git_treebuilder_remove(bld, comp) < 0) {
                rc = git_fail(ch[i]->path);
                goto done;
            }
        } else {
            git_tree *sub = NULL;
            if (cur && cur_type != GIT_OBJECT_TREE) {
                rc = core_err_set(MLV_EINVAL, "ledger: %s: %.*s is a file", ch[i]->path,
                                  (int)(off + clen), ch[i]->path);
                goto done;
            }
            if (cur && git_tree_lookup(&sub, r, git_tree_entry_id(cur)) < 0) {
                rc = git_fail(ch[i]->path);
                goto done;
            }
            git_oid sub_oid;
            bool sub_empty;
            rc = build_tree(r, sub, ch + i, j - i, off + clen + 1, false, &sub_oid, &sub_empty);
            git_tree_free(sub);
            if (rc) goto done;
            if (sub_empty) {
                if (cur && git_treebuilder_remove(bld, comp) < 0) rc = git_fail(ch[i]->path);
            } else if (git_treebuilder_insert(NULL, bld, comp, &sub_oid, GIT_FILEMODE_TREE) < 0) {
                rc = git_fail(ch[i]->path);
            }
            if (rc) goto done;
        }
        i = j;
    }
    *empty = git_treebuilder_entrycount(bld) == 0;
    if ((root || !*empty) && git_treebuilder_write(out, bld) < 0) rc = git_fail("write tree");
done:
    git_treebuilder_free(bld);
    return rc;
}

static bool author_ok(const char *a)
{
    size_t n = a ? strlen(a) : 0;
    if (n == 0 || n > 128) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c <= 0x20 || c == 0x7f || c == '<' || c == '>') return false;
    }
    return true;
}

/* One attempt: build on the current head and move main from it to the new commit.
 * Returns 1 when main moved under us or its lock was held (the caller retries). */
static int commit_once(git_repository *r, const char *author, const char *message,
                       const repo_ledger_change **sorted, size_t n, char *oid_hex)
{
    git_oid head_oid, tree_oid, commit_oid;
    git_commit *head = NULL;
    git_tree *base = NULL, *tree = NULL;
    git_signature *sig = NULL;
    git_reference *ref = NULL;
    char email[160];
    bool empty;
    int rc = head_get(r, &head_oid, &head, &base);
    if (rc) goto done;
    if ((rc = build_tree(r, base, sorted, n, 0, true, &tree_oid, &empty))) goto done;
    if ((!head && empty) || (base && git_oid_equal(&tree_oid, git_tree_id(base)))) {
        /* Nothing changes: no commit. */
        if (oid_hex) {
            if (head)
                git_oid_tostr(oid_hex, GIT_OID_HEXSZ + 1, &head_oid);
            else
                oid_hex[0] = 0;
        }
        goto done;
    }
    if (git_tree_lookup(&tree, r, &tree_oid) < 0) {
        rc = git_fail("read new tree");
        goto done;
    }
    snprintf(email, sizeof email, "%s@mlvault", author);
    if (git_signature_now(&sig, author, email) < 0) {
        rc = git_fail("signature");
        goto done;
    }
    const git_commit *parents[1] = {head};
    if (git_commit_create(&commit_oid, r, NULL, sig, sig, NULL, message, tree, head ? 1 : 0,
                          parents) < 0) {
        rc = git_fail("create commit");
        goto done;
    }
    int e = git_reference_create_matching(&ref, r, LEDGER_REF, &commit_oid, head != NULL,
                                          head ? &head_oid : NULL, "mlvault: commit");
    if (e == GIT_EMODIFIED || e == GIT_EEXISTS || e == GIT_ELOCKED) {
        rc = 1;
        goto done;
    }
    if (e < 0) {
        rc = git_fail("update " LEDGER_REF);
        goto done;
    }
    if (oid_hex) git_oid_tostr(oid_hex, GIT_OID_HEXSZ + 1, &commit_oid);
done:
    git_reference_free(ref);
    git_signature_free(sig);
    git_tree_free(tree);
    git_tree_free(base);
    git_commit_free(head);
    return rc;
}

int repo_ledger_commit(const char *home, const char *author, const char *message,
                       const repo_ledger_change *changes, size_t n, char *oid_hex)
{
    git_repository *r = NULL;
    const repo_ledger_change **sorted = NULL;
    char *msg = NULL;
    int rc = 0;
    if (oid_hex) oid_hex[0] = 0;
    if (!author_ok(author))
        return core_err_set(MLV_EINVAL, "ledger: author '%.64s' is not a valid name",
                            author ? author : "");
    if (!message || !message[0]) return core_err_set(MLV_EINVAL, "ledger: empty commit message");
    if (n && !changes) return core_err_set(MLV_EINVAL, "ledger: no changes given");
    for (size_t i = 0; i < n; i++) {
        if (!ledger_path_ok(changes[i].path))
            return core_err_set(MLV_EINVAL, "ledger: unsafe path '%.300s'",
                                changes[i].path ? changes[i].path : "");
        if (!changes[i].content && changes[i].len)
            return core_err_set(MLV_EINVAL, "ledger: %s: removal with a length", changes[i].path);
    }
    if (!(sorted = malloc((n ? n : 1) * sizeof *sorted))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = &changes[i];
    qsort(sorted, n, sizeof *sorted, path_cmp);
    /* git's convention: a message ends with a newline. */
    size_t ml = strlen(message);
    if (!(msg = malloc(ml + 2))) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(msg, message, ml + 1);
    if (msg[ml - 1] != '\n') memcpy(msg + ml, "\n", 2);
    if ((rc = ledger_open(&r, home))) goto done;
    /* Commits are serialised by the caller; should main still move between our read
     * and our compare-and-swap, rebuild on the new head once. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = commit_once(r, author, msg, sorted, n, oid_hex);
        if (rc != 1) goto done;
    }
    rc = core_err_set(MLV_EBUSY, "ledger: main was moved or locked by another writer; try again");
done:
    git_repository_free(r);
    free(msg);
    free(sorted);
    return rc;
}

int repo_ledger_read(const char *home, const char *path, char **out, size_t *len)
{
    git_repository *r = NULL;
    git_commit *head = NULL;
    git_tree *tree = NULL;
    git_tree_entry *entry = NULL;
    git_blob *blob = NULL;
    git_oid oid;
    *out = NULL;
    if (len) *len = 0;
    if (!ledger_path_ok(path))
        return core_err_set(MLV_EINVAL, "ledger: unsafe path '%.300s'", path ? path : "");
    int rc = ledger_open(&r, home);
    if (rc) goto done;
    if ((rc = head_get(r, &oid, &head, &tree))) goto done;
    if (!tree) {
        rc = core_err_set(MLV_ENOTFOUND, "ledger: %s not found (the ledger is empty)", path);
        goto done;
    }
    int e = git_tree_entry_bypath(&entry, tree, path);
    if (e == GIT_ENOTFOUND) {
        rc = core_err_set(MLV_ENOTFOUND, "ledger: %s not found", path);
        goto done;
    }
    if (e < 0) {
        rc = git_fail(path);
        goto done;
    }
    if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB) {
        rc = core_err_set(MLV_EINVAL, "ledger: %s is not a file", path);
        goto done;
    }
    if (git_blob_lookup(&blob, r, git_tree_entry_id(entry)) < 0) {
        rc = git_fail(path);
        goto done;
    }
    size_t n = (size_t)git_blob_rawsize(blob);
    char *buf = malloc(n + 1);
    if (!buf) {
        rc = core_err_set(MLV_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(buf, git_blob_rawcontent(blob), n);
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
done:
    git_blob_free(blob);
    git_tree_entry_free(entry);
    git_tree_free(tree);
    git_commit_free(head);
    git_repository_free(r);
    return rc;
}

typedef struct list_ctx {
    const char *prefix;
    size_t plen;
    int (*fn)(const char *path, void *ctx);
    void *ctx;
    int stop; /* fn's nonzero result */
} list_ctx;

static int list_cb(const char *root, const git_tree_entry *entry, void *payload)
{
    list_ctx *c = payload;
    char path[1024];
    int n = snprintf(path, sizeof path, "%s%s%s", root, git_tree_entry_name(entry),
                     git_tree_entry_type(entry) == GIT_OBJECT_TREE ? "/" : "");
    if (n < 0 || (size_t)n >= sizeof path) return 1; /* cannot be a ledger path */
    size_t pl = (size_t)n;
    if (git_tree_entry_type(entry) == GIT_OBJECT_TREE) {
        /* Descend only where the prefix can match. */
        size_t k = pl < c->plen ? pl : c->plen;
        return strncmp(path, c->prefix, k) ? 1 : 0;
    }
    if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB) return 0;
    if (strncmp(path, c->prefix, c->plen)) return 0;
    int rc = c->fn(path, c->ctx);
    if (rc) {
        c->stop = rc;
        return -1;
    }
    return 0;
}

int repo_ledger_list(const char *home, const char *prefix, int (*fn)(const char *path, void *ctx),
                     void *ctx)
{
    git_repository *r = NULL;
    git_commit *head = NULL;
    git_tree *tree = NULL;
    git_oid oid;
    if (!fn) return core_err_set(MLV_EINVAL, "ledger: no callback");
    list_ctx c = {prefix ? prefix : "", prefix ? strlen(prefix) : 0, fn, ctx, 0};
    int rc = ledger_open(&r, home);
    if (rc) goto done;
    if ((rc = head_get(r, &oid, &head, &tree)) || !tree) goto done;
    int e = git_tree_walk(tree, GIT_TREEWALK_PRE, list_cb, &c);
    if (c.stop)
        rc = c.stop;
    else if (e < 0)
        rc = git_fail("walk tree");
done:
    git_tree_free(tree);
    git_commit_free(head);
    git_repository_free(r);
    return rc;
}
