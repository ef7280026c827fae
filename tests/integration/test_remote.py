"""The remote CLI (MLVAULT_URL / --registry) against a real `mlvault serve`: every
command prints what the local one prints, byte for byte, and exits with the same code;
pushes and exports of the real model survive connections cut in the middle (a TCP proxy
in this file drops them every few MB), and the bytes that arrive are checked with
hashlib and against a local export; `run` of a stored version generates what it does
locally and refuses a tampered blob; a push killed mid-upload resumes its session.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_MODEL_GGUF."""
import filecmp
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from test_vault import BIN, EXIT, MODEL, TMP, Vault, sha256  # noqa: E402
from test_server import Server  # noqa: E402


class CuttingProxy:
    """Forwards 127.0.0.1:port to the server and closes the connection in flight each
    time another `every` bytes have passed (either direction), `cuts` times in all;
    `delay` seconds after each chunk forwarded slows the traffic down."""

    def __init__(self, target_port, every, cuts, delay=0.0):
        self.target, self.every, self.cuts_left, self.delay = target_port, every, cuts, delay
        self.lock, self.total, self.cut_done = threading.Lock(), 0, 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self.pump, args=(a, b, c, s), daemon=True).start()

    def pump(self, src, dst, c, s):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                with self.lock:
                    before = self.total
                    self.total += len(data)
                    if self.cuts_left and before // self.every != self.total // self.every:
                        self.cuts_left -= 1
                        self.cut_done += 1
                        cut = True
                if cut:
                    dst.sendall(data[: len(data) // 2])
                    break
                dst.sendall(data)
                if self.delay:
                    time.sleep(self.delay)
        except OSError:
            pass
        for x in (c, s):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def close(self):
        self.sock.close()


class RemoteCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(dir=TMP, prefix="remote-")
        cls.v = Vault(cls.root)
        for name, role in (("eng", "engineer"), ("view", "viewer"), ("aud", "approver")):
            cls.v.add_user(name, role)
        cls.v.ok("push", "smol", MODEL, "--note", "pushed locally", token="eng")
        cls.srv = Server(cls.v, workers=1)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def remote(self, *args, token="admin", url=None):
        e = dict(os.environ)
        e["MLVAULT_URL"] = url or self.srv.url
        e["MLVAULT_HOME"] = "/nonexistent-home"
        e["MLVAULT_TOKEN"] = self.v.tokens.get(token, token)
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=900)

    def same(self, *args, token="admin"):
        local, remote = self.v.run(*args, token=token), self.remote(*args, token=token)
        self.assertEqual(remote.returncode, local.returncode, (args, local.stderr, remote.stderr))
        self.assertEqual(remote.stdout, local.stdout, args)
        self.assertEqual(remote.stderr, local.stderr, args)
        return remote

    def test_01_reads_match_local(self):
        for args in (("list",), ("list", "smol"), ("show", "smol"), ("show", "smol:1"),
                     ("lineage", "smol:1"), ("lineage", "smol", "--dot"), ("verify", "smol:1"),
                     ("list", "--json"), ("list", "smol", "--json"), ("show", "smol:1", "--json"),
                     ("lineage", "smol:1", "--json"), ("verify", "smol:1", "--json"),
                     ("user", "list"), ("user", "list", "--json")):
            self.same(*args, token="admin" if args[0] == "user" else "view")

    def test_02_errors_match_local(self):
        for args, tok, code in ((("show", "nosuch:1"), "view", "ENOTFOUND"),
                                (("show", "smol:9"), "view", "ENOTFOUND"),
                                (("lineage", "nosuch"), "view", "ENOTFOUND"),
                                (("show", "Bad Name"), "view", "EINVAL"),
                                (("user", "add", "x1", "--role", "admin"), "view", "EFORBIDDEN"),
                                (("user", "disable", "nobody"), "admin", "ENOTFOUND"),
                                (("audit",), "view", "EFORBIDDEN"),
                                (("push", "x", "/nonexistent.gguf"), "eng", "ENOTFOUND"),
                                (("push", "smol", MODEL), "view", "EFORBIDDEN")):
            r = self.same(*args, token=tok)
            self.assertEqual(r.returncode, EXIT[code], (args, r.stderr))
        r = self.remote("list", token="mlv_" + "1" * 64)
        self.assertEqual(r.returncode, EXIT["EAUTH"], r.stderr)
        # nothing listens there
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        r = self.remote("list", url=f"http://127.0.0.1:{port}")
        self.assertEqual(r.returncode, EXIT["EIO"], r.stderr)
        self.assertIn("cannot connect", r.stderr)

    def test_03_host_only_commands_refuse(self):
        for args in (("init",),):
            r = self.remote(*args)
            self.assertEqual(r.returncode, EXIT["EUNSUPPORTED"], (args, r.stderr))
            self.assertIn("MLVAULT_URL", r.stderr)

    def test_04_push_and_export_through_cuts(self):
        proxy = CuttingProxy(self.srv.port, every=23 << 20, cuts=3)
        try:
            r = self.remote("push", "smol2", MODEL, "--parent", "smol:1", "--note", "remote",
                            "--json", token="eng", url=proxy.url)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertGreaterEqual(proxy.cut_done, 3, "the proxy did not cut the upload")
            pushed = json.loads(r.stdout)
            self.assertEqual(pushed["ref"], "smol2:1")
            show = self.v.json("show", "smol2:1")
            self.assertEqual(show["digest"], pushed["digest"])
            self.assertEqual(show["files"][0]["sha256"], sha256(MODEL))
            self.assertEqual(show["parents"], ["smol:1"])
            self.v.ok("verify", "smol2:1")
        finally:
            proxy.close()
        # an export through cuts: the same bytes as a local export, file for file
        local_dir = os.path.join(self.root, "local-export")
        remote_dir = os.path.join(self.root, "remote-export")
        self.v.ok("export", "smol2:1", "-o", local_dir, token="view")
        proxy = CuttingProxy(self.srv.port, every=29 << 20, cuts=3)
        try:
            r = self.remote("export", "smol2:1", "-o", remote_dir, token="view", url=proxy.url)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertGreaterEqual(proxy.cut_done, 3, "the proxy did not cut the download")
        finally:
            proxy.close()
        self.assertEqual(r.stdout, f"exported smol2:1 to {remote_dir} (verified; signature in "
                                   "model.sig)\n")
        self.assertEqual(sorted(os.listdir(remote_dir)), sorted(os.listdir(local_dir)))
        for f in os.listdir(local_dir):
            self.assertTrue(filecmp.cmp(os.path.join(local_dir, f), os.path.join(remote_dir, f),
                                        shallow=False), f)
        self.assertEqual(sha256(os.path.join(remote_dir, os.path.basename(MODEL))), sha256(MODEL))
        self.assertFalse([x for x in os.listdir(self.root) if ".partial-" in x])
        # a non-empty target is refused before anything is fetched, as locally
        self.same("export", "smol2:1", "-o", remote_dir, token="view")

    def test_05_dataset_push_and_users(self):
        data = os.path.join(self.root, "evalset.txt")
        with open(data, "w") as f:
            f.write("the quick brown fox jumps over the lazy dog\n" * 1000)
        r = self.remote("dataset", "push", "evalset", data, token="eng")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("evalset:1\nmanifest sha256:"), r.stdout)
        self.assertEqual(self.v.json("show", "evalset:1")["files"][0]["sha256"], sha256(data))
        # users: add, rotate, disable remotely; the tokens work as they should
        added = json.loads(self.remote("user", "add", "rem1", "--role", "viewer",
                                       "--json").stdout)
        self.assertEqual((added["user"], added["role"]), ("rem1", "viewer"))
        self.assertEqual(self.remote("list", token=added["token"]).returncode, 0)
        rot = self.remote("user", "token", "rem1", "--json")
        self.assertEqual(rot.returncode, 0, rot.stderr)
        new = json.loads(rot.stdout)["token"]
        self.assertEqual(self.remote("list", token=added["token"]).returncode, EXIT["EAUTH"])
        self.assertEqual(self.remote("list", token=new).returncode, 0)
        r = self.v.run("user", "token", "rem1")  # and locally
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("new token for rem1", r.stdout)
        self.assertEqual(self.remote("list", token=new).returncode, EXIT["EAUTH"])
        r = self.remote("user", "disable", "rem1")
        self.assertEqual((r.returncode, r.stdout), (0, "disabled rem1\n"))

    def test_06_audit_filters_match_local(self):
        for args in (("audit", "--action", "push"), ("audit", "--actor", "eng", "--json"),
                     ("audit", "--action", "user.", "--limit", "3"),
                     ("audit", "--since", "2000-01-01", "--until", "2000-12-31"),
                     ("audit", "--target", "smol:1", "--until", "2999-01-01T00:00:00Z"),
                     ("audit", "--verify", "--json")):
            self.same(*args, token="aud")
        rows = json.loads(self.v.run("audit", "--action", "user.", "--json").stdout)
        self.assertTrue(rows and all(r["action"].startswith("user.") for r in rows))
        r = self.v.run("audit", "--since", "yesterday")
        self.assertEqual(r.returncode, EXIT["EINVAL"])
        # newest first: the last rows, paged back with --before (what the web UI shows)
        every = json.loads(self.v.run("audit", "--json", token="aud").stdout)
        seqs = [x["seq"] for x in every]
        self.assertEqual(seqs, sorted(seqs))
        last3 = json.loads(self.v.run("audit", "--newest-first", "--limit", "3", "--json",
                                      token="aud").stdout)
        self.assertEqual([x["seq"] for x in last3], seqs[::-1][:3])
        back = json.loads(self.v.run("audit", "--newest-first", "--before", str(seqs[-3]),
                                     "--limit", "2", "--json", token="aud").stdout)
        self.assertEqual([x["seq"] for x in back], seqs[::-1][3:5])
        between = json.loads(self.v.run("audit", "--after", str(seqs[1]), "--before",
                                        str(seqs[4]), "--json", token="aud").stdout)
        self.assertEqual([x["seq"] for x in between], seqs[2:4])
        for args in (("audit", "--newest-first", "--limit", "3", "--json"),
                     ("audit", "--newest-first", "--before", str(seqs[-3]), "--action", "user.")):
            self.same(*args, token="aud")
        for bad in (("--before", "0"), ("--before", "x")):
            self.assertEqual(self.v.run("audit", *bad, token="aud").returncode, EXIT["EINVAL"])

    def test_07_run_of_a_stored_version(self):
        args = ("run", "smol:1", "--prompt", "The capital of France is", "-n", "8", "--temp", "0")
        local = self.v.run(*args, token="eng")
        self.assertEqual(local.returncode, 0, local.stderr)
        self.assertTrue(local.stdout.strip(), local.stdout)
        # fetched into memory: nothing lands in the working folder or TMPDIR
        work = tempfile.mkdtemp(dir=self.root, prefix="run-cwd-")
        e = dict(os.environ, MLVAULT_URL=self.srv.url, MLVAULT_HOME="/nonexistent-home",
                 MLVAULT_TOKEN=self.v.tokens["eng"], TMPDIR=work)
        r = subprocess.run([BIN, *args], capture_output=True, text=True, env=e, cwd=work,
                           timeout=900)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, local.stdout)
        self.assertEqual(os.listdir(work), [])
        # through a link that breaks: the download resumes in memory, the same text
        proxy = CuttingProxy(self.srv.port, every=29 << 20, cuts=2)
        try:
            r = self.remote(*args, token="eng", url=proxy.url)
            self.assertGreaterEqual(proxy.cut_done, 2, "the proxy did not cut the download")
        finally:
            proxy.close()
        self.assertEqual((r.returncode, r.stdout), (0, local.stdout), r.stderr)
        lj = json.loads(self.v.run(*args, "--json", token="eng").stdout)
        rj = json.loads(self.remote(*args, "--json", token="eng").stdout)
        for k in ("model", "prompt_ids", "ids", "text"):
            self.assertEqual(rj[k], lj[k], k)
        # the server audited the download of the file
        rows = self.v.json("audit", "--action", "download", "--actor", "eng")
        self.assertTrue(any(x["target"] == f"smol:1/{os.path.basename(MODEL)}" for x in rows))
        self.same("run", "nosuch:1", "--prompt", "hi", token="eng")
        # a tampered blob on the server is refused, whether the damage is in the first
        # chunk (before any byte is sent) or in the middle (after a resumed download)
        blob = os.path.join(self.v.home, "objects", sha256(MODEL)[:2], sha256(MODEL))
        mode = os.stat(blob).st_mode
        for label, off in (("chunk0", 64 + 1000), ("middle", os.path.getsize(blob) // 2)):
            with self.subTest(label):
                os.chmod(blob, 0o600)
                with open(blob, "r+b") as f:
                    f.seek(off)
                    b = f.read(1)
                    f.seek(off)
                    f.write(bytes([b[0] ^ 0x01]))
                try:
                    r = self.remote(*args, token="eng")
                finally:
                    with open(blob, "r+b") as f:
                        f.seek(off)
                        f.write(b)
                    os.chmod(blob, mode)
                self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
                self.assertEqual(r.stdout, "")
        self.v.ok("verify", "smol:1")  # restored

    def sessions(self, token="eng"):
        st, body, _ = self.srv.api("GET", "/api/v1/uploads", token)
        self.assertEqual(st, 200, body)
        return body

    def test_08_killed_push_resumes_its_session(self):
        data = os.path.join(self.root, "big.bin")
        with open(data, "wb") as f:
            f.write(os.urandom(60 << 20))
        size = os.path.getsize(data)
        self.assertEqual(self.sessions(), [])
        # a slow link, so that the push is still sending when it is killed
        proxy = CuttingProxy(self.srv.port, every=1 << 40, cuts=0, delay=0.004)
        e = dict(os.environ, MLVAULT_URL=proxy.url, MLVAULT_HOME="/nonexistent-home",
                 MLVAULT_TOKEN=self.v.tokens["eng"])
        p = subprocess.Popen([BIN, "dataset", "push", "bigset", data, "--note", "resumed"],
                             env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and p.poll() is None:
                ss = self.sessions()
                if ss and ss[0]["files"][0]["received"] >= 16 << 20:
                    break
                time.sleep(0.05)
            self.assertIsNone(p.poll(), "the push ended before it could be killed")
        finally:
            p.kill()
            p.wait()
            proxy.close()
        # the session stays open; the listing shows it, to its owner only
        time.sleep(0.5)
        ss = self.sessions()
        self.assertEqual(len(ss), 1, ss)
        s = ss[0]
        self.assertEqual((s["name"], s["kind"], s["note"], s["parents"]),
                         ("bigset", "dataset", "resumed", []))
        f = s["files"][0]
        self.assertEqual((f["path"], f["size"], f["sha256"]), ("big.bin", size, sha256(data)))
        before = f["received"]
        self.assertGreaterEqual(before, 16 << 20)
        self.assertLess(before, size)
        self.assertTrue(s["created_at"].endswith("Z"), s)
        self.assertEqual(self.sessions("admin"), [])
        self.assertEqual(self.srv.api("GET", "/api/v1/uploads", "view")[0], 403)
        # the same push again (through a proxy that counts the bytes) resumes the session
        # and sends only the rest
        proxy = CuttingProxy(self.srv.port, every=1 << 40, cuts=0)
        try:
            e = dict(os.environ, MLVAULT_URL=proxy.url, MLVAULT_HOME="/nonexistent-home",
                     MLVAULT_TOKEN=self.v.tokens["eng"], MLVAULT_LOG="info")
            r = subprocess.run([BIN, "dataset", "push", "bigset", data, "--note", "resumed",
                                "--json"], capture_output=True, text=True, env=e, timeout=900)
            sent = proxy.total
        finally:
            proxy.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"resuming upload {s['id']} ({before} bytes already sent)", r.stderr)
        self.assertLess(sent, size - before + (1 << 20), (sent, size, before))
        pushed = json.loads(r.stdout)
        self.assertEqual(pushed["ref"], "bigset:1")
        show = self.v.json("show", "bigset:1")
        self.assertEqual(show["digest"], pushed["digest"])
        self.assertEqual(show["files"][0]["sha256"], sha256(data))
        self.v.ok("verify", "bigset:1")
        self.assertEqual(self.sessions(), [])
        os.unlink(data)


class RemoteAdmin(unittest.TestCase):
    """fsck and keys through the server (POST /api/v1/admin/fsck, /api/v1/keys): the same
    JSON, text and exit codes as the local commands, on a home with one tiny model; what
    the remote commands change shows locally."""

    remote, same = RemoteCli.remote, RemoteCli.same

    @classmethod
    def setUpClass(cls):
        from test_server import tiny
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(dir=TMP, prefix="remote-admin-")
        cls.v = Vault(cls.root)
        for name, role in (("eng", "engineer"), ("view", "viewer")):
            cls.v.add_user(name, role)
        cls.v.ok("push", "tiny", tiny("llama", os.path.join(cls.root, "tiny.gguf")), token="eng")
        os.makedirs(os.path.join(cls.root, "site-b"))
        cls.site_b = Vault(os.path.join(cls.root, "site-b"))  # another site, its signing key
        cls.srv = Server(cls.v, workers=1)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def fsck_both(self, code):
        """fsck --json locally and remotely: both exit `code` with the same report."""
        local, remote = self.v.run("fsck", "--json"), self.remote("fsck", "--json")
        self.assertEqual((local.returncode, remote.returncode), (code, code),
                         (local.stderr, remote.stderr))
        self.assertEqual(json.loads(remote.stdout), json.loads(local.stdout))
        return json.loads(remote.stdout)

    def test_fsck_matches_local(self):
        rep = self.fsck_both(0)
        self.assertTrue(rep["ok"])
        self.assertEqual(rep["checked"]["versions"], 1)
        self.same("fsck")
        # a stray file: both report it and exit EINTEGRITY, text and JSON alike
        stray = os.path.join(self.v.home, "objects", "stray-file")
        with open(stray, "w") as f:
            f.write("not a blob")
        rep = self.fsck_both(EXIT["EINTEGRITY"])
        self.assertFalse(rep["ok"])
        self.assertEqual(len(rep["problems"]), 1)
        self.assertIn(stray, rep["problems"][0])
        self.same("fsck")
        # only an admin may run it, remotely as locally; a viewer's refusal prunes nothing
        for tok in ("view", "eng"):
            r = self.same("fsck", "--prune", token=tok)
            self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        self.assertTrue(os.path.exists(stray))
        # --prune on the server removes it, audited; the local fsck agrees afterwards
        r = self.remote("fsck", "--prune", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["removed"], [stray])
        self.assertFalse(os.path.exists(stray))
        self.assertEqual(len(self.v.json("audit", "--action", "fsck.prune")), 1)
        self.fsck_both(0)

    def test_keys_match_local(self):
        signing = os.path.join(self.site_b.home, "keys", "signing.pub")
        for args in (("keys", "list"), ("keys", "list", "--json"),
                     ("keys", "export-import-key"), ("keys", "export-import-key", "--json")):
            self.same(*args, token="view")
        # -o FILE is written where the command runs, with the same bytes
        out_l, out_r = (os.path.join(self.root, f"import-{x}.pub") for x in ("local", "remote"))
        local = self.v.run("keys", "export-import-key", "-o", out_l, "--json")
        remote = self.remote("keys", "export-import-key", "-o", out_r, "--json", token="view")
        self.assertEqual((local.returncode, remote.returncode), (0, 0), remote.stderr)
        self.assertEqual(json.loads(remote.stdout)["hint"], json.loads(local.stdout)["hint"])
        self.assertTrue(filecmp.cmp(out_l, out_r, shallow=False))
        with open(os.path.join(self.v.home, "keys", "import.pub")) as f, open(out_r) as g:
            self.assertEqual(g.read(), f.read())
        # refusals: a non-admin, a file that is no key, a bad name — each as locally
        junk = os.path.join(self.root, "junk.pub")
        with open(junk, "w") as f:
            f.write("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
        for args, tok, code in ((("keys", "trust", signing, "--name", "x"), "eng", "EFORBIDDEN"),
                                (("keys", "trust", junk, "--name", "junk"), "admin", "EINVAL"),
                                (("keys", "trust", signing, "--name", "Bad Name"), "admin",
                                 "EINVAL"),
                                (("keys", "trust", "/nonexistent.pub"), "admin", "ENOTFOUND")):
            r = self.same(*args, token=tok)
            self.assertEqual(r.returncode, EXIT[code], (args, r.stderr))
        for body in ({"pem": "x" * 20000, "name": "big"}, {"pem": "x"}, {"pem": 1, "name": "n"},
                     {"pem": "x", "name": "Bad Name"}):
            st, err, _ = self.srv.api("POST", "/api/v1/keys", "admin", body)
            self.assertEqual((st, err["error"]["code"]), (400, "EINVAL"), body)
        st, err, _ = self.srv.api("POST", "/api/v1/admin/fsck", "admin", {"prune": 1})
        self.assertEqual((st, err["error"]["code"]), (400, "EINVAL"))
        self.assertEqual([k["name"] for k in self.v.json("keys", "list")], ["self"])
        # trusting remotely: the local list shows the key, in the ledger as fsck checks
        r = self.remote("keys", "trust", signing, "--name", "x")
        self.assertEqual(r.returncode, 0, r.stderr)
        keys = {k["name"]: k for k in self.v.json("keys", "list")}
        self.assertEqual(sorted(keys), ["self", "x"])
        self.assertEqual(r.stdout, f"trusted x: signing key sha256:{keys['x']['hint']}\n")
        self.assertEqual((keys["x"]["added_by"], keys["x"]["self"]), ("admin", False))
        self.same("keys", "list", token="view")
        r = self.same("keys", "trust", signing, "--name", "again")  # the same key twice
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)
        self.assertEqual(len(self.v.json("audit", "--action", "key.trust")), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
