"""`mlvault bundle export|import` against a server (MLVAULT_URL): the same output and
exit codes as the local commands. Site A is served and exports remotely (POST
/api/v1/bundles, then GET with Range, then DELETE); site B imports locally what A sent;
site C is served and imports remotely (an upload session of kind "bundle"). A viewer is
refused with exit 6 as locally; a bundle with one byte flipped is refused with exit 7
and C is left exactly as it was.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_VENV."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import fixtures  # noqa: E402
from test_bundle import Site  # noqa: E402
from test_server import Server  # noqa: E402
from test_vault import BIN, EXIT, TMP, sha256  # noqa: E402


def strip(j):
    """An export's or import's JSON without what differs from run to run: the file's
    path, the bundle's digest and its compressed size (every export wraps the data keys
    afresh, so the compressed bytes differ)."""
    return {k: v for k, v in j.items() if k not in ("file", "sha256", "bytes")}


def norm(text):
    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:X", text)
    return re.sub(r"^wrote \S+ \([^)]*\)", "wrote FILE", text, flags=re.M)


class RemoteBundle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="remote-bundle-", dir=TMP)
        cls.a = Site(cls.root, "site-a")
        a = cls.a
        a.add_user("alice", "engineer")
        a.add_user("view", "viewer")
        files = a.path("files")
        os.makedirs(files)
        a.json("push", "base", fixtures.tiny_gguf(os.path.join(files, "base.gguf"), seed=1),
               token="alice")
        a.json("push", "child", fixtures.tiny_gguf(os.path.join(files, "child.gguf"), seed=2),
               "--parent", "base", token="alice")
        a.json("push", "extra", fixtures.tiny_gguf(os.path.join(files, "extra.gguf"), seed=3),
               token="alice")
        cls.b = Site(cls.root, "site-b")  # imports locally
        cls.c = Site(cls.root, "site-c")  # imports through its server
        cls.c.add_user("carol", "engineer")
        cls.c.add_user("cview", "viewer")
        for s in (cls.b, cls.c):
            s.ok("keys", "trust", os.path.join(a.home, "keys", "signing.pub"), "--name", "site-a")
        cls.srv_a = Server(a, workers=1)
        cls.srv_c = Server(cls.c, workers=1)

    @classmethod
    def tearDownClass(cls):
        cls.srv_a.stop()
        cls.srv_c.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote(self, site, srv, *args, token="admin"):
        e = dict(os.environ)
        e["MLVAULT_URL"] = srv.url
        e["MLVAULT_HOME"] = "/nonexistent-home"
        e["MLVAULT_TOKEN"] = site.tokens.get(token, token)
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=600)

    def export_args(self, site, out, *refs):
        return ("bundle", "export", *refs, "--with-ancestors", "--to", site.import_key(), "-o",
                out)

    def test_01_remote_export_matches_local_and_imports_locally(self):
        a, b = self.a, self.b
        local, remote = a.path("local-b.tar.zst"), a.path("remote-b.tar.zst")
        lj = a.json(*self.export_args(b, local, "child"), token="alice")
        r = self.remote(a, self.srv_a, *self.export_args(b, remote, "child"), "--json",
                        token="alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        rj = json.loads(r.stdout)
        self.assertEqual(strip(rj), strip(lj))
        self.assertEqual(rj["file"], remote)
        self.assertEqual(rj["sha256"], sha256(remote))
        self.assertEqual(rj["bytes"], os.path.getsize(remote))
        self.assertEqual([v["ref"] for v in rj["versions"]], ["base:1", "child:1"])
        self.assertFalse(os.path.exists(remote + ".part"))
        # the server kept nothing once the client had it
        self.assertEqual(os.listdir(os.path.join(a.home, "tmp", "bundles")), [])
        # audited at A like the local export
        rows = [x for x in a.json("audit") if rj["sha256"] in x["detail"]]
        self.assertEqual([(x["action"], x["actor"]) for x in rows], [("bundle.export", "alice")])

        # the text output, as local (paths and digests aside)
        lt, rt = a.path("local-t.tar.zst"), a.path("remote-t.tar.zst")
        l = a.run(*self.export_args(b, lt, "child"), token="alice")
        r = self.remote(a, self.srv_a, *self.export_args(b, rt, "child"), token="alice")
        self.assertEqual((r.returncode, norm(r.stdout), r.stderr),
                         (l.returncode, norm(l.stdout), l.stderr))
        # an existing FILE is refused as locally, and left alone
        before = sha256(remote)
        l = a.run(*self.export_args(b, remote, "child"), token="alice")
        r = self.remote(a, self.srv_a, *self.export_args(b, remote, "child"), token="alice")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (l.returncode, l.stdout, l.stderr))
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)
        self.assertEqual(sha256(remote), before)
        # a local import at B accepts what the server sent
        imp = b.json("bundle", "import", remote)
        self.assertEqual([(v["ref"], v["status"]) for v in imp["versions"]],
                         [("base:1", "imported"), ("child:1", "imported")])
        self.assertEqual(imp["sha256"], rj["sha256"])
        b.ok("verify", "child:1")

    def test_02_remote_import_matches_local(self):
        a, b, c = self.a, self.b, self.c
        for_c = a.path("for-c.tar.zst")
        r = self.remote(a, self.srv_a, *self.export_args(c, for_c, "child"), token="alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        # what the same content does locally, at a fresh site D
        d = Site(self.root, "site-d")
        d.ok("keys", "trust", os.path.join(a.home, "keys", "signing.pub"), "--name", "site-a")
        for_d = a.path("for-d.tar.zst")
        a.json(*self.export_args(d, for_d, "child"), token="alice")
        lj = d.json("bundle", "import", for_d)

        before = len(c.json("audit"))
        r = self.remote(c, self.srv_c, "bundle", "import", for_c, "--json", token="carol")
        self.assertEqual(r.returncode, 0, r.stderr)
        rj = json.loads(r.stdout)
        self.assertEqual(strip(rj), strip(lj))
        self.assertEqual((rj["file"], rj["sha256"]), (for_c, sha256(for_c)))
        self.assertTrue(rj["changed"])
        audit = c.json("audit")
        self.assertEqual(len(audit), before + 1)
        self.assertEqual((audit[-1]["action"], audit[-1]["actor"]), ("bundle.import", "carol"))
        c.ok("verify", "child:1")
        self.assertEqual(c.json("show", "child:1")["digest"], a.json("show", "child:1")["digest"])
        st, sessions, _ = self.srv_c.api("GET", "/api/v1/uploads", "carol")
        self.assertEqual((st, sessions), (200, []))
        # a second import changes nothing, in the same words
        l = d.run("bundle", "import", for_d)
        r = self.remote(c, self.srv_c, "bundle", "import", for_c, token="carol")
        self.assertEqual((r.returncode, norm(r.stdout), r.stderr),
                         (l.returncode, norm(l.stdout), l.stderr))
        self.assertIn("nothing changed", r.stdout)
        # a missing file, as locally
        l = d.run("bundle", "import", a.path("nope.tar.zst"))
        r = self.remote(c, self.srv_c, "bundle", "import", a.path("nope.tar.zst"), token="carol")
        self.assertEqual(r.returncode, l.returncode, (l.stderr, r.stderr))

    def test_03_viewer_is_refused(self):
        a, c = self.a, self.c
        l = a.run(*self.export_args(c, a.path("v-l.tar.zst"), "child"), token="view")
        r = self.remote(a, self.srv_a, *self.export_args(c, a.path("v-r.tar.zst"), "child"),
                        token="view")
        self.assertEqual(l.returncode, EXIT["EFORBIDDEN"], l.stderr)
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        self.assertFalse(os.path.exists(a.path("v-r.tar.zst")))
        self.assertFalse(os.path.exists(a.path("v-r.tar.zst.part")))
        for_c = a.path("view-c.tar.zst")
        a.json(*self.export_args(c, for_c, "extra"), token="alice")
        state = c.state()
        l = c.run("bundle", "import", for_c, token="cview")
        r = self.remote(c, self.srv_c, "bundle", "import", for_c, token="cview")
        self.assertEqual(l.returncode, EXIT["EFORBIDDEN"], l.stderr)
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        self.assertEqual(strip_audit(c.state()), strip_audit(state))
        self.assertNotIn("extra", [x["name"] for x in c.json("list")])

    def test_04_tampered_bundle_is_refused(self):
        a, b, c = self.a, self.b, self.c
        good = a.path("tamper-c.tar.zst")
        r = self.remote(a, self.srv_a, *self.export_args(c, good, "extra"), token="alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        bad = a.path("tampered.tar.zst")
        with open(good, "rb") as f:
            data = bytearray(f.read())
        data[len(data) // 2] ^= 0x01
        with open(bad, "wb") as f:
            f.write(data)
        state = c.state()
        r = self.remote(c, self.srv_c, "bundle", "import", bad, token="carol")
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
        self.assertEqual(c.state(), state)
        self.assertNotIn("extra", [x["name"] for x in c.json("list")])
        st, sessions, _ = self.srv_c.api("GET", "/api/v1/uploads", "carol")
        self.assertEqual((st, sessions), (200, []))
        self.assertEqual(os.listdir(os.path.join(c.home, "uploads")), [])
        # and locally the same (B's key is not C's: a flip in C's bundle, checked at C)
        l = c.run("bundle", "import", bad, token="carol")
        self.assertEqual(l.returncode, EXIT["EINTEGRITY"], l.stderr)
        self.assertEqual(r.stderr.replace(bad, "F"), l.stderr.replace(bad, "F"))
        # the untampered one still imports remotely
        r = self.remote(c, self.srv_c, "bundle", "import", good, token="carol")
        self.assertEqual(r.returncode, 0, r.stderr)
        del b

    def test_05_bundle_routes(self):
        """The routes themselves: Range, the digest header, the owner, DELETE, bad bodies."""
        a, s = self.a, self.srv_a
        with open(self.b.import_key()) as f:
            pem = f.read()
        st, made, _ = s.api("POST", "/api/v1/bundles", "alice",
                            {"refs": ["base"], "recipient_pem": pem})
        self.assertEqual(st, 201, made)
        self.assertNotIn("file", made)  # no server path leaks
        path = "/api/v1/bundles/" + made["id"]
        st, whole, h = s.api("GET", path, "alice")
        self.assertEqual((st, len(whole)), (200, made["bytes"]))
        self.assertEqual(h.getheader("X-Mlvault-Sha256"), made["sha256"])
        self.assertEqual(hashlib.sha256(whole).hexdigest(), made["sha256"])
        st, tail, h = s.api("GET", path, "alice", headers={"Range": "bytes=100-"})
        self.assertEqual((st, tail), (206, whole[100:]))
        self.assertEqual(h.getheader("Content-Range"), f"bytes 100-{len(whole) - 1}/{len(whole)}")
        st, _, _ = s.api("GET", path, "alice", headers={"Range": f"bytes={len(whole)}-"})
        self.assertEqual(st, 416)
        for method in ("GET", "DELETE"):  # another engineer's bundle is not yours
            st, err, _ = s.api(method, path, "admin")
            self.assertEqual((st, err["error"]["code"]), (403, "EFORBIDDEN"))
        st, _, _ = s.api("DELETE", path, "alice")
        self.assertEqual(st, 200)
        st, err, _ = s.api("GET", path, "alice")
        self.assertEqual((st, err["error"]["code"]), (404, "ENOTFOUND"))
        for body in ({"refs": ["base"]}, {"refs": [], "recipient_pem": pem},
                     {"refs": "base", "recipient_pem": pem},
                     {"refs": ["base"], "recipient_pem": "x" * 20000},
                     {"refs": ["base"], "recipient_pem": pem, "with_ancestors": "yes"},
                     {"refs": ["Bad Ref!"], "recipient_pem": pem}):
            st, err, _ = s.api("POST", "/api/v1/bundles", "alice", body)
            self.assertEqual((st, err["error"]["code"]), (400, "EINVAL"), body)
        st, err, _ = s.api("POST", "/api/v1/bundles", "alice",
                           {"refs": ["nosuch"], "recipient_pem": pem})
        self.assertEqual(st, 404, err)
        self.assertEqual(os.listdir(os.path.join(a.home, "tmp", "bundles")), [])
        # an upload of kind "bundle" is one FILE.tar.zst with no parents or note
        f = {"path": "b.tar.zst", "size": 1, "sha256": "0" * 64}
        for body in ({"kind": "bundle", "files": [dict(f, path="b.bin")]},
                     {"kind": "bundle", "files": [f, dict(f, path="c.tar.zst")]},
                     {"kind": "bundle", "files": [f], "parents": ["base"]}):
            st, err, _ = s.api("POST", "/api/v1/uploads", "alice", body)
            self.assertEqual((st, err["error"]["code"]), (400, "EINVAL"), body)


def strip_audit(state):
    """A refusal by a known user over the API leaves an api.refused row (server.c) and its
    ledger commit, the local refusal neither: compare everything else."""
    return {k: v for k, v in state.items() if k not in ("audit", "head")}


if __name__ == "__main__":
    unittest.main(verbosity=2)
