"""The remote CLI (MLVAULT_URL / --registry) against a real `mlvault serve`: every
command prints what the local one prints, byte for byte, and exits with the same code;
pushes and exports of the real model survive connections cut in the middle (a TCP proxy
in this file drops them every few MB), and the bytes that arrive are checked with
hashlib and against a local export.

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
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from test_vault import BIN, EXIT, MODEL, TMP, Vault, sha256  # noqa: E402
from test_server import Server  # noqa: E402


class CuttingProxy:
    """Forwards 127.0.0.1:port to the server and closes the connection in flight each
    time another `every` bytes have passed (either direction), `cuts` times in all."""

    def __init__(self, target_port, every, cuts):
        self.target, self.every, self.cuts_left = target_port, every, cuts
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
        for args in (("fsck",), ("keys", "list"), ("bundle", "import", "x.tar.zst"), ("init",),
                     ("run", "smol:1", "--prompt", "hi")):
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
