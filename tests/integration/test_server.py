"""The registry server end to end: a real `mlvault serve` process on loopback, driven
through its HTTP API (urllib) and through the remote CLI (MLVAULT_URL), with independent
checks: the release record's signature with the `openssl` CLI, /metrics with `promtool`,
upload digests with hashlib, gate numbers from evaluations the engine really ran.

Serving nodes: a node enrolled for one model pulls its release record, keys and
encrypted blobs; the blobs are decrypted here with keys unwrapped by Python's
`cryptography` (X25519, HKDF, AES key wrap) and tests/ref/blob_decrypt.py.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_SOURCE_DIR, MLV_MODEL_GGUF."""
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

sys.path.insert(0, os.path.dirname(__file__))
from test_vault import BIN, EXIT, MODEL, TMP, Vault, sha256  # noqa: E402

SRC = os.environ.get("MLV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "ref"))
from blob_decrypt import decrypt as ref_decrypt  # noqa: E402
TINY = os.path.join(SRC, "tests", "ref", "tiny_models.py")
PROMTOOL = shutil.which("promtool")


class Server:
    """`mlvault serve` on 127.0.0.1 with a free port, its output drained by a thread."""

    def __init__(self, vault, workers=2, extra=()):
        self.vault, self.workers, self.extra, self.proc, self.lines = vault, workers, extra, None, []
        self.start()

    def start(self):
        e = dict(os.environ)
        e.pop("MLVAULT_URL", None)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--home", self.vault.home, "--listen", "127.0.0.1:0",
             "--job-workers", str(self.workers), *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)
        found = threading.Event()

        def drain():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"(https?)://127\.0\.0\.1:(\d+)", line)
                if m and not found.is_set():
                    self.scheme, self.port = m.group(1), int(m.group(2))
                    found.set()
        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60):
            self.proc.kill()
            raise AssertionError("server did not start: " + "".join(self.lines))
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, method, path, token="admin", body=None, headers=None, raw=None):
        """(status, parsed JSON or bytes, headers). token: a user name, a raw token or None."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + self.vault.tokens.get(token, token)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        c.close()
        ctype = r.getheader("Content-Type") or ""
        if "json" in ctype:
            payload = json.loads(payload)
        return r.status, payload, r

    def cli(self, *args, token="admin", env=None):
        """The remote CLI: MLVAULT_URL set and no usable local home."""
        e = dict(os.environ)
        e.update(env or {})
        e["MLVAULT_URL"] = self.url
        e["MLVAULT_HOME"] = "/nonexistent-home"
        e["MLVAULT_TOKEN"] = self.vault.tokens.get(token, token)
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=900)

    def cli_ok(self, *args, token="admin"):
        r = self.cli(*args, token=token)
        if r.returncode != 0:
            raise AssertionError(f"remote mlvault {' '.join(args)} ({r.returncode}): {r.stderr}")
        return r

    def cli_json(self, *args, token="admin"):
        return json.loads(self.cli_ok(*args, "--json", token=token).stdout)

    def wait_job(self, job_id, timeout=600):
        end = time.time() + timeout
        while time.time() < end:
            st, j, _ = self.api("GET", f"/api/v1/jobs/{job_id}")
            assert st == 200, j
            if j["state"] not in ("queued", "running"):
                return j
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish")


def check_clean_exit(srv):
    """A stopped server exited 0 and printed no sanitizer report (ASan builds)."""
    time.sleep(0.2)  # the thread that drains its output reads the last lines
    out = "".join(srv.lines)
    for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        if bad in out:
            raise AssertionError(f"the server reported {bad}:\n{out[-6000:]}")
    if srv.proc.returncode != 0:
        raise AssertionError(f"the server exited with {srv.proc.returncode}:\n{out[-3000:]}")


def tiny(kind, path):
    subprocess.run([sys.executable, TINY, kind, path], check=True)
    return path


def gpl_text(path, n=6000):
    with open("/usr/share/common-licenses/GPL-3") as f:
        text = f.read()[:n]
    with open(path, "w") as f:
        f.write(text)
    return path


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="server-", dir=TMP)
        cls.v = Vault(cls.root)
        for name, role in (("eng", "engineer"), ("eng2", "engineer"), ("appr1", "approver"),
                           ("appr2", "approver"), ("view", "viewer"), ("gone", "engineer")):
            cls.v.add_user(name, role)
        cls.v.ok("user", "disable", "gone")
        cls.base = tiny("llama", os.path.join(cls.root, "base.gguf"))
        cls.other = tiny("qwen2", os.path.join(cls.root, "other.gguf"))
        cls.text = gpl_text(os.path.join(cls.root, "eval.txt"))
        cls.srv = Server(cls.v)
        cls.srv.cli_ok("push", "base", cls.base, "--note", "tiny llama", token="eng")
        cls.srv.cli_ok("dataset", "push", "evalset", cls.text, token="eng")
        # a serving node for base, its key made here (as `node init` would)
        cls.node_key = x25519.X25519PrivateKey.generate()
        cls.enroll("nodeu", cls.node_key, "base")

    @classmethod
    def enroll(cls, name, key, model):
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        st, j, _ = cls.srv.api("POST", "/api/v1/nodes", "admin",
                               {"name": name, "pubkey": pem.decode(), "model": model})
        assert st == 201, (st, j)
        cls.v.tokens[name] = j["token"]
        return j

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    # -------------------------------------------------------------- the whole flow ---
    def test_01_flow(self):
        s = self.srv
        # quantize as a job, through the remote CLI (the same command as locally)
        q = s.cli_json("quantize", "base:1", "--type", "Q8_0", "--eval-data", "evalset",
                       token="eng")
        self.assertEqual(q["output"], "base:2", q)
        show = s.cli_json("show", "base:2")
        self.assertEqual(show["parents"], ["base:1"])
        # an explicit eval job through the API
        st, job, _ = s.api("POST", "/api/v1/jobs", "eng",
                           {"kind": "eval", "params": {"ref": "base:1", "data": "evalset"}})
        self.assertEqual(st, 201, job)
        job = s.wait_job(job["id"])
        self.assertEqual(job["state"], "succeeded", job)
        self.assertGreater(job["result"]["value"], 0)
        st, log, _ = s.api("GET", f"/api/v1/jobs/{job['id']}/log")
        self.assertEqual(st, 200)
        # the channel needs two approvals
        s.cli_ok("channel", "set", "base", "production", "--gate-data", "evalset",
                 "--approvals", "2")
        r = s.cli("promote", "base:2", "--to", "production", "--reason", "smaller",
                  "--json", token="eng")
        self.assertEqual(r.returncode, 0, r.stderr)
        req = json.loads(r.stdout)
        self.assertEqual(req["state"], "pending", req)
        self.assertEqual(req["gate"]["verdict"], "pass")
        self.assertEqual(req["gate"]["baseline"]["ref"], "base:1")
        rid = req["id"]
        pending = s.cli_json("requests", "--pending", token="view")
        self.assertIn(rid, [p["id"] for p in pending])
        # the requester may not approve; nor may an engineer approve through the API
        r = s.cli("approve", str(rid), token="eng")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        st, err, _ = s.api("POST", f"/api/v1/promotions/{rid}/approve", "eng", {})
        self.assertEqual(st, 403, err)
        # an approval bound to another digest is refused
        st, err, _ = s.api("POST", f"/api/v1/promotions/{rid}/approve", "appr1",
                           {"digest": "0" * 64})
        self.assertIn(st, (400, 409, 422), err)
        s.cli_ok("approve", str(rid), "--comment", "checked", token="appr1")
        r = s.cli("approve", str(rid), token="appr1")
        self.assertNotEqual(r.returncode, 0, "the same approver twice")
        st, rec, _ = s.api("GET", "/api/v1/models/base/channels/production", "view")
        self.assertEqual(st, 404, "no release before the second approval")
        s.cli_ok("approve", str(rid), token="appr2")
        st, rel, _ = s.api("GET", "/api/v1/models/base/channels/production", "view")
        self.assertEqual(st, 200, rel)
        record = rel["record"]
        self.assertEqual((record["model"], record["version"], record["channel"]),
                         ("base", 2, "production"))
        self.assertEqual(record["digest"], show["digest"])
        self.assertEqual(sorted(record["approvers"]), ["appr1", "appr2"])
        self.assertGreaterEqual(record["sequence"], 1)
        self.assertIn("drop", json.dumps(record["gate"]))
        # the signature verifies with the registry's public key (openssl CLI)
        st, key, _ = s.api("GET", "/api/v1/registry/key", "view")
        d = tempfile.mkdtemp(dir=self.root)
        import base64
        with open(os.path.join(d, "pub.pem"), "w") as f:
            f.write(key["pem"])
        with open(os.path.join(d, "rec.json"), "wb") as f:
            f.write(rel["record_json"].encode())
        with open(os.path.join(d, "sig.der"), "wb") as f:
            f.write(base64.b64decode(rel["signature"]))
        v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature",
                            "sig.der", "rec.json"], cwd=d, capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertEqual(json.loads(rel["record_json"]), record)
        # a changed byte does not verify
        with open(os.path.join(d, "rec.json"), "wb") as f:
            f.write(rel["record_json"].replace('"version":2', '"version":1').encode())
        v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature",
                            "sig.der", "rec.json"], cwd=d, capture_output=True, text=True)
        self.assertNotEqual(v.returncode, 0)
        # the release is in the ledger and the audit log
        shown = s.cli_json("channel", "show", "base", "production", token="view")
        self.assertEqual(shown["record"]["sequence"], record["sequence"])
        st, audit, _ = s.api("GET", "/api/v1/audit?action=promote.", "appr1")
        self.assertEqual(st, 200, audit)
        actions = {a["action"] for a in audit}
        self.assertTrue({"promote.request", "promote.approve"} <= actions, actions)
        git = subprocess.run(["git", "-C", os.path.join(self.v.home, "ledger.git"), "show",
                              "main:channels/base/production.json"], capture_output=True,
                             text=True)
        self.assertEqual(git.returncode, 0, git.stderr)
        self.assertEqual(json.loads(git.stdout)["signature"], rel["signature"])
        # rollback: promoting base:1 goes through the same checks, the sequence grows
        r = s.cli("promote", "base:1", "--to", "production", "--json", token="eng")
        self.assertEqual(r.returncode, 0, r.stderr)
        rid2 = json.loads(r.stdout)["id"]
        s.cli_ok("reject", str(rid2), "--reason", "not now", token="appr1")
        st, req2, _ = s.api("GET", f"/api/v1/promotions/{rid2}", "view")
        self.assertEqual(req2["state"], "rejected")
        r = s.cli("approve", str(rid2), token="appr2")
        self.assertNotEqual(r.returncode, 0, "a rejected request cannot be approved")

    # ---------------------------------------------------------- gate boundaries ---
    def mc_pick(self, model, q):
        """Which choice `model` picks for question q (its 2 choices), by the real engine."""
        path = os.path.join(self.root, "one.jsonl")
        with open(path, "w") as f:
            f.write(json.dumps({**q, "answer": 0}) + "\n")
        r = self.v.ok("eval", model, "--data", path, "--metric", "mc_accuracy", "--json")
        return 0 if json.loads(r.stdout)["value"] == 1.0 else 1

    def test_02_gate_boundaries(self):
        s, v = self.srv, self.v
        words = ("the cat sat on a mat and then it ran to the red house near our old tree "
                 "where some birds sing in the early morning light").split()
        import random
        rnd = random.Random(7)
        agree, disagree = [], []
        for i in range(300):
            q = {"context": " ".join(rnd.choice(words) for _ in range(6)),
                 "choices": [" " + rnd.choice(words), " " + rnd.choice(words) + " " +
                             rnd.choice(words)]}
            if q["choices"][0] == q["choices"][1]:
                continue
            a, b = self.mc_pick(self.base, q), self.mc_pick(self.other, q)
            if a == b:
                agree.append({**q, "answer": a})
            else:
                disagree.append({**q, "answer": a})  # the baseline right, the candidate wrong
            if len(agree) >= 3 and len(disagree) >= 5:
                break
        self.assertGreaterEqual(len(disagree), 5, "not enough questions the models disagree on")
        self.assertGreaterEqual(len(agree), 1)
        s.cli_ok("push", "gm", self.base, token="eng")
        s.cli_ok("push", "gm", self.other, "--parent", "gm:1", token="eng")
        cases = (("d200", 100, 2, False), ("d250", 200, 5, False), ("d199", 201, 4, True))
        for name, n, k, passes in cases:
            rows = disagree[:k] + [agree[i % len(agree)] for i in range(n - k)]
            path = os.path.join(self.root, name + ".jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            s.cli_ok("dataset", "push", name, path, token="eng")
            s.cli_ok("channel", "set", "gm", name, "--gate-data", name, "--gate-metric",
                     "mc_accuracy", "--approvals", "0")
            r = s.cli("promote", "gm:1", "--to", name, "--json", token="eng")
            self.assertEqual(r.returncode, 0, r.stderr)
            first = json.loads(r.stdout)
            self.assertEqual(first["state"], "released", first)
            self.assertEqual(first["gate"]["verdict"], "no baseline")  # the channel is empty
            r = s.cli("promote", "gm:2", "--to", name, "--json", token="eng")
            expect_drop = 100.0 * k / n
            if passes:
                self.assertEqual(r.returncode, 0, r.stderr)
                req = json.loads(r.stdout)
                self.assertEqual(req["state"], "released")
            else:
                self.assertEqual(r.returncode, EXIT["EGATE"], r.stdout + r.stderr)
                self.assertIn(f"{expect_drop:.2f}", r.stderr)
                self.assertIn("2.00", r.stderr)  # the threshold
                reqs = s.cli_json("requests", token="view")
                req = [q for q in reqs if q["channel"] == name and q["version"] == 2][0]
                self.assertEqual(req["state"], "rejected")
            g = req["gate"]
            self.assertAlmostEqual(g["baseline"]["value"], 1.0)
            self.assertAlmostEqual(g["candidate"]["value"], (n - k) / n)
            self.assertAlmostEqual(g["drop"], expect_drop, places=9)
            self.assertEqual(g["verdict"], "pass" if passes else "fail")
            st, rel, _ = s.api("GET", f"/api/v1/models/gm/channels/{name}", "view")
            self.assertEqual(rel["record"]["version"], 2 if passes else 1)

    # ------------------------------------------------------------- RBAC matrix ---
    def test_03_rbac_matrix(self):
        s = self.srv
        st, show, _ = s.api("GET", "/api/v1/models/base/versions/1")
        fpath = show["files"][0]["path"]
        READ = {"viewer", "engineer", "approver", "admin"}
        PUSH = {"engineer", "admin"}
        ADMIN = {"admin"}
        AUDIT = {"approver", "admin"}
        APPROVE = {"approver"}
        ALL = READ | {"node"}
        PULL = READ | {"node"}  # a node: its enrolled model only (base)
        NODE = {"node"}
        v1 = "/api/v1/models/base/versions/1"
        up = {"name": "rbac-up", "kind": "dataset",
              "files": [{"path": "d.txt", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}]}
        routes = [
            ("GET", "/api/v1/whoami", None, ALL),
            ("GET", "/api/v1/models", None, READ),
            ("GET", "/api/v1/models/base", None, READ),
            ("GET", v1, None, PULL),
            ("GET", v1 + "/lineage", None, READ),
            ("GET", v1 + "/manifest", None, PULL),
            ("GET", v1 + "/signature", None, PULL),
            ("GET", v1 + "/keys", None, NODE),
            ("GET", v1 + "/blobs/" + fpath, None, NODE),
            ("GET", v1 + "/evaluations", None, READ),
            ("POST", v1 + "/verify", {}, READ),
            ("GET", v1 + "/files/" + fpath, None, READ),
            ("GET", "/api/v1/registry/key", None, READ),
            ("GET", "/api/v1/users", None, ADMIN),
            ("POST", "/api/v1/users", {"name": "Not A Name!", "role": "viewer"}, ADMIN),
            ("POST", "/api/v1/users/nosuchuser/disable", {}, ADMIN),
            ("POST", "/api/v1/users/nosuchuser/token", {}, ADMIN),
            ("POST", "/api/v1/uploads", up, PUSH),
            ("POST", "/api/v1/bundles", {"refs": [], "recipient_pem": "not a key"}, PUSH),
            ("GET", "/api/v1/bundles/" + "0" * 32, None, PUSH),
            ("DELETE", "/api/v1/bundles/" + "0" * 32, None, PUSH),
            ("GET", "/api/v1/jobs", None, READ),
            ("GET", "/api/v1/jobs/999999", None, READ),
            ("POST", "/api/v1/jobs", {"kind": "eval", "params": {"ref": "nosuch:1"}}, PUSH),
            ("POST", "/api/v1/jobs/999999/cancel", {}, PUSH),
            ("GET", "/api/v1/models/base/channels", None, READ),
            ("PUT", "/api/v1/models/base/channels/rbac", {"gate_data": "nosuch"}, ADMIN),
            ("GET", "/api/v1/models/base/channels/production", None, PULL),
            ("POST", "/api/v1/models/base/channels/norelease/renew", {}, ADMIN),
            ("POST", "/api/v1/promotions", {"ref": "base:1", "channel": "nochannel"}, PUSH),
            ("GET", "/api/v1/promotions", None, READ),
            ("GET", "/api/v1/promotions/999999", None, READ),
            ("POST", "/api/v1/promotions/999999/approve", {}, APPROVE),
            ("POST", "/api/v1/promotions/999999/reject", {"reason": "x"}, APPROVE),
            ("GET", "/api/v1/audit", None, AUDIT),
            ("GET", "/api/v1/audit/verify", None, AUDIT),
            ("POST", "/api/v1/admin/fsck", {"prune": "yes"}, ADMIN),
            ("GET", "/api/v1/keys", None, READ),
            ("POST", "/api/v1/keys", {"pem": "not a key", "name": "rbac"}, ADMIN),
            ("GET", "/api/v1/keys/import", None, READ),
            ("GET", "/api/v1/uploads", None, PUSH),
            ("GET", "/api/v1/uploads/" + "0" * 32, None, PUSH),
            ("PUT", "/api/v1/uploads/" + "0" * 32 + "/files/d.txt", None, PUSH),
            ("POST", "/api/v1/uploads/" + "0" * 32 + "/commit", {}, PUSH),
            ("DELETE", "/api/v1/uploads/" + "0" * 32, None, PUSH),
            ("GET", "/api/v1/jobs/999999/log", None, READ),
            ("POST", "/api/v1/nodes", {"name": "Not A Name!", "pubkey": "x", "model": "base"},
             ADMIN),
            ("GET", "/api/v1/nodes", None, READ),
            ("PUT", "/api/v1/nodes/nodeu/state", {"version": 0, "healthy": False}, NODE),
        ]
        self.assertEqual(len(routes) + 4, 53, "every route of the server's table (and the public "
                         "/healthz, /metrics, / and /ui/{asset}) is in the matrix")
        users = {"viewer": "view", "engineer": "eng", "approver": "appr1", "admin": "admin",
                 "node": "nodeu"}
        bad = "mlv_" + "0" * 64
        failures = []
        for method, path, body, allowed in routes:
            for role, user in users.items():
                st, payload, _ = s.api(method, path, user, body)
                ok = st not in (401, 403) if role in allowed else st == 403
                if not ok:
                    failures.append(f"{method} {path} as {role}: {st} {payload!r:.200}")
                if st == 201 and isinstance(payload, dict) and path == "/api/v1/uploads":
                    s.api("DELETE", f"/api/v1/uploads/{payload['id']}", user)
            for label, tok in (("no token", None), ("bad token", bad), ("disabled", "gone")):
                st, payload, _ = s.api(method, path, tok, body)
                if st != 401:
                    failures.append(f"{method} {path} with {label}: {st}")
                elif not (isinstance(payload, dict) and payload["error"]["code"] == "EAUTH"):
                    failures.append(f"{method} {path} with {label}: not an EAUTH error")
        self.assertEqual(failures, [], "\n".join(failures))
        # a node enrolled for another model learns nothing about this one (403, before any
        # lookup: an unknown model and version answer the same), nor reports for another
        if "nodeo" not in self.v.tokens:
            self.srv.cli_ok("push", "rbac-other", self.other, token="eng")
            self.enroll("nodeo", x25519.X25519PrivateKey.generate(), "rbac-other")
        for method, path in (("GET", v1), ("GET", v1 + "/manifest"), ("GET", v1 + "/signature"),
                             ("GET", v1 + "/keys"), ("GET", v1 + "/blobs/" + fpath),
                             ("GET", "/api/v1/models/base/channels/production"),
                             ("GET", "/api/v1/models/base/versions/99"),
                             ("GET", "/api/v1/models/nosuch/versions/1/keys"),
                             ("GET", "/api/v1/models/nosuch/channels/production")):
            st, payload, _ = s.api(method, path, "nodeo")
            self.assertEqual(st, 403, (path, payload))
            self.assertEqual(payload["error"]["code"], "EFORBIDDEN")
        st, _, _ = s.api("GET", "/api/v1/models/rbac-other/versions/1", "nodeo")
        self.assertEqual(st, 200)
        st, payload, _ = s.api("PUT", "/api/v1/nodes/nodeo/state", "nodeu",
                               {"version": 0, "healthy": True})
        self.assertEqual(st, 403, payload)
        # refused mutations leave a trace
        st, audit, _ = s.api("GET", "/api/v1/audit?action=api.refused", "admin")
        self.assertGreater(len(audit), 0)
        st, newest, _ = s.api("GET", "/api/v1/audit?order=desc&limit=2", "admin")
        self.assertEqual(st, 200, newest)
        self.assertEqual(len(newest), 2)
        self.assertGreater(newest[0]["seq"], newest[1]["seq"])
        for bad in ("order=sideways", "before=-1", "before=%2B5", "after=x", "before=1e3",
                    "actor=" + "a" * 200, "target=" + "t" * 300):  # too long: refused, not dropped
            st, err, _ = s.api("GET", "/api/v1/audit?" + bad, "admin")
            self.assertEqual(st, 400, (bad, err))
            self.assertEqual(err["error"]["code"], "EINVAL", bad)
        for path in ("/api/v1/jobs?state=" + "q" * 100, "/api/v1/promotions?pending=" + "1" * 20,
                     "/api/v1/jobs/1/log?offset=" + "1" * 40):
            st, err, _ = s.api("GET", path, "admin")
            self.assertEqual((st, err["error"]["code"]), (400, "EINVAL"), path)
        # errors are JSON with a code and a message; unknown routes too
        st, err, _ = s.api("GET", "/api/v1/nonsense", "admin")
        self.assertEqual(st, 404)
        self.assertEqual(err["error"]["code"], "ENOTFOUND")
        st, err, _ = s.api("POST", "/api/v1/users", "admin", raw=b"{not json")
        self.assertEqual(st, 400, err)
        deep = b"[" * 100 + b"]" * 100
        st, err, _ = s.api("POST", "/api/v1/users", "admin", raw=deep)
        self.assertIn(st, (400, 413), err)
        big = b'{"name":"' + b"a" * (2 << 20) + b'"}'
        st, err, _ = s.api("POST", "/api/v1/users", "admin", raw=big)
        self.assertEqual(st, 413, err)

    # ------------------------------------------------- jobs that die, servers that die ---
    def test_04_job_killed_and_server_restart(self):
        s = self.srv
        # a slow job: evaluating the real model on a long text
        s.cli_ok("push", "smol", MODEL, token="eng")
        big = gpl_text(os.path.join(self.root, "long.txt"), n=35000)
        s.cli_ok("dataset", "push", "longtext", big, token="eng")

        def slow_job():
            st, j, _ = s.api("POST", "/api/v1/jobs", "eng",
                             {"kind": "eval", "params": {"ref": "smol:1", "data": "longtext",
                                                         "no-cache": True}})
            self.assertEqual(st, 201, j)
            end = time.time() + 120
            while time.time() < end:
                st, j, _ = s.api("GET", f"/api/v1/jobs/{j['id']}")
                if j["state"] == "running" and j["progress"] > 0:
                    return j
                time.sleep(0.2)
            raise AssertionError(f"job did not start running: {j}")

        def child_pid(job_id):
            out = subprocess.run(["pgrep", "-f", f"job run {job_id}( |$)"], capture_output=True,
                                 text=True).stdout.split()
            self.assertTrue(out, f"no child process for job {job_id}")
            return int(out[0])

        j = slow_job()
        self.assertGreater(j["eta_s"], 0)
        os.kill(child_pid(j["id"]), signal.SIGKILL)
        j = s.wait_job(j["id"], 60)
        self.assertEqual(j["state"], "failed")
        self.assertIn("signal 9", j["error"])
        st, h, _ = s.api("GET", "/healthz", None)
        self.assertEqual(st, 200)
        st, j2, _ = s.api("POST", "/api/v1/jobs", "eng",
                          {"kind": "eval", "params": {"ref": "base:1", "data": "evalset"}})
        self.assertEqual(s.wait_job(j2["id"])["state"], "succeeded")
        # cancel a running job
        j = slow_job()
        st, _, _ = s.api("POST", f"/api/v1/jobs/{j['id']}/cancel", "eng")
        self.assertEqual(st, 200)
        self.assertEqual(s.wait_job(j["id"], 60)["state"], "cancelled")
        # kill the server while a job runs: the restarted server marks it failed
        j = slow_job()
        s.proc.kill()
        s.proc.wait()
        time.sleep(0.5)
        s.start()
        st, j, _ = s.api("GET", f"/api/v1/jobs/{j['id']}")
        self.assertEqual(j["state"], "failed", j)
        self.assertIn("server", j["error"])
        r = subprocess.run(["pgrep", "-f", f"job run {j['id']}( |$)"], capture_output=True)
        self.assertNotEqual(r.returncode, 0, "the orphaned child still runs")

    # ------------------------------------------------ a gate whose job is killed ---
    def test_04b_gate_job_killed(self):
        s = self.srv
        if "smol" not in [m["name"] for m in s.api("GET", "/api/v1/models", "view")[1]]:
            self.skipTest("needs test_04's model and text")
        s.cli_ok("channel", "set", "smol", "slowgate", "--gate-data", "longtext")
        st, req, _ = s.api("POST", "/api/v1/promotions", "eng",
                           {"ref": "smol:1", "channel": "slowgate", "reason": "kill its gate"})
        self.assertEqual(st, 201, req)
        self.assertEqual(req["state"], "gating")
        job = req["job"]
        end = time.time() + 120
        while time.time() < end:
            j = s.api("GET", f"/api/v1/jobs/{job}")[1]
            if j["state"] == "running" and j["progress"] > 0:
                break
            time.sleep(0.2)
        self.assertEqual(j["state"], "running", j)
        pid = subprocess.run(["pgrep", "-f", f"job run {job}( |$)"], capture_output=True,
                             text=True).stdout.split()
        self.assertTrue(pid)
        os.kill(int(pid[0]), signal.SIGKILL)
        end = time.time() + 60
        while time.time() < end:
            req = s.api("GET", f"/api/v1/promotions/{req['id']}", "view")[1]
            if req["state"] != "gating":
                break
            time.sleep(0.2)
        self.assertEqual(req["state"], "rejected", req)
        self.assertIn("the gate could not run", req["rejection"]["reason"])
        self.assertIn("signal 9", req["rejection"]["reason"])
        st, _, _ = s.api("GET", "/api/v1/models/smol/channels/slowgate", "view")
        self.assertEqual(st, 404, "nothing was released")

    # ---------------------------------------------------------- resumable upload ---
    def test_05_upload_resume(self):
        s = self.srv
        data = os.urandom(3 << 20)
        digest = hashlib.sha256(data).hexdigest()
        st, up, _ = s.api("POST", "/api/v1/uploads", "eng",
                          {"name": "blobby", "kind": "dataset",
                           "files": [{"path": "data.bin", "size": len(data), "sha256": digest}]})
        self.assertEqual(st, 201, up)
        path = f"/api/v1/uploads/{up['id']}/files/data.bin"
        part = 1 << 20
        st, r, _ = s.api("PUT", path, "eng", raw=data[:part],
                         headers={"Content-Range": f"bytes 0-{part - 1}/{len(data)}"})
        self.assertEqual(st, 200, r)
        # a part that does not start where the last ended
        st, r, _ = s.api("PUT", path, "eng", raw=data[2 * part:],
                         headers={"Content-Range": f"bytes {2 * part}-{len(data) - 1}/{len(data)}"})
        self.assertEqual(st, 409, r)
        # a broken connection in the middle of a part
        sock = http.client.HTTPConnection("127.0.0.1", s.port)
        sock.putrequest("PUT", path)
        sock.putheader("Authorization", "Bearer " + self.v.tokens["eng"])
        sock.putheader("Content-Range", f"bytes {part}-{len(data) - 1}/{len(data)}")
        sock.putheader("Content-Length", str(len(data) - part))
        sock.endheaders()
        sock.send(data[part:part + 700000])
        sock.sock.shutdown(2)
        sock.close()
        time.sleep(1)
        st, info, _ = s.api("GET", f"/api/v1/uploads/{up['id']}", "eng")
        got = info["files"][0]["received"]
        self.assertGreaterEqual(got, part)
        self.assertLessEqual(got, part + 700000)
        st, r, _ = s.api("PUT", path, "eng", raw=data[got:],
                         headers={"Content-Range": f"bytes {got}-{len(data) - 1}/{len(data)}"})
        self.assertEqual(st, 200, r)
        # another user cannot touch the session
        st, r, _ = s.api("POST", f"/api/v1/uploads/{up['id']}/commit", "eng2")
        self.assertIn(st, (403, 404), r)
        st, pushed, _ = s.api("POST", f"/api/v1/uploads/{up['id']}/commit", "eng")
        self.assertEqual(st, 201, pushed)
        # the stored bytes, downloaded (ranged too), match
        st, show, _ = s.api("GET", "/api/v1/models/blobby/versions/1")
        self.assertEqual(show["files"][0]["sha256"], digest)
        st, body, resp = s.api("GET", "/api/v1/models/blobby/versions/1/files/data.bin", "view")
        self.assertEqual(st, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest)
        self.assertEqual(resp.getheader("X-Mlvault-Sha256"), digest)
        st, body, _ = s.api("GET", "/api/v1/models/blobby/versions/1/files/data.bin", "view",
                            headers={"Range": "bytes=100000-"})
        self.assertEqual(st, 206)
        self.assertEqual(body, data[100000:])
        st, body, _ = s.api("GET", "/api/v1/models/blobby/versions/1/files/data.bin", "view",
                            headers={"Range": "bytes=65530-65545"})
        self.assertEqual((st, body), (206, data[65530:65546]))
        st, audit, _ = s.api("GET", "/api/v1/audit?action=download&actor=view", "admin")
        self.assertGreaterEqual(len(audit), 3)
        # the remote CLI downloads and resumes the same way
        out = os.path.join(self.root, "exported")
        s.cli_ok("export", "blobby:1", "-o", out, token="view")
        self.assertEqual(sha256(os.path.join(out, "data.bin")), digest)

    # ------------------------------------------------------- remote = local output ---
    def test_06_remote_cli_matches_local(self):
        s, v = self.srv, self.v
        for args in (("list",), ("list", "base"), ("show", "base:1"), ("lineage", "base:1"),
                     ("show", "base:1", "--json"), ("user", "list")):
            local = v.run(*args)
            remote = s.cli(*args)
            self.assertEqual(remote.returncode, local.returncode, (args, remote.stderr))
            self.assertEqual(remote.stdout, local.stdout, args)
        for args, code in ((("show", "nosuch:1"), "ENOTFOUND"), (("show", "base:99"), "ENOTFOUND"),
                           (("user", "add", "x1", "--role", "admin"), "EFORBIDDEN")):
            local = v.run(*args, token=self.v.tokens["view"])
            remote = s.cli(*args, token="view")
            self.assertEqual(local.returncode, EXIT[code], local.stderr)
            self.assertEqual(remote.returncode, EXIT[code], remote.stderr)
        r = s.cli("list", token="mlv_" + "1" * 64)
        self.assertEqual(r.returncode, EXIT["EAUTH"])

    # --------------------------------------------------------------- metrics ---
    def test_07_metrics(self):
        s = self.srv
        st, text, resp = s.api("GET", "/metrics", None)
        self.assertEqual(st, 200)
        if isinstance(text, bytes):
            text = text.decode()
        for name in ("mlvault_http_requests_total", "mlvault_http_request_duration_seconds_bucket",
                     "mlvault_jobs", "mlvault_channel_accuracy"):
            self.assertIn(name, text)
        if PROMTOOL:
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        else:
            self.skipTest("promtool is not installed (Debian package prometheus)")

    # ---------------------------------------------------------- a serving node ---
    def test_08_node_pull(self):
        """What `node run` does, by hand: the signed record, the wrapped keys, the
        encrypted blobs (ranged), decrypted here by an independent implementation."""
        s = self.srv
        st, rel, _ = s.api("GET", "/api/v1/models/base/channels/production", "nodeu")
        self.assertEqual(st, 200, rel)
        version = rel["record"]["version"]
        vpath = f"/api/v1/models/base/versions/{version}"
        st, manifest, resp = s.api("GET", vpath + "/manifest", "nodeu")
        self.assertEqual(st, 200)
        self.assertEqual(resp.getheader("X-Mlvault-Digest"), rel["record"]["digest"])
        st, _, _ = s.api("GET", vpath + "/signature", "nodeu")
        self.assertEqual(st, 200)
        n_pull = len(s.api("GET", "/api/v1/audit?action=node.pull", "admin")[1])
        st, keys, _ = s.api("GET", vpath + "/keys", "nodeu")
        self.assertEqual(st, 200, keys)
        self.assertEqual(keys["digest"], rel["record"]["digest"])
        eph = x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(keys["eph_pub"]))
        mine = self.node_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
        kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(keys["eph_pub"]) + mine,
                   info=b"mlvault node dek wrap v1").derive(self.node_key.exchange(eph))
        self.assertEqual(sorted(f["path"] for f in keys["files"]),
                         sorted(f["path"] for f in manifest["files"]))
        for f in keys["files"]:
            want = next(m for m in manifest["files"] if m["path"] == f["path"])
            self.assertEqual((f["blob"], f["size"]), (want["sha256"], want["size"]))
            dek = aes_key_unwrap(kek, bytes.fromhex(f["wrapped"]))
            url = vpath + "/blobs/" + urllib.parse.quote(f["path"])
            st, whole, resp = s.api("GET", url, "nodeu")
            self.assertEqual(st, 200)
            self.assertEqual(len(whole), f["cipher_size"])
            self.assertEqual(int(resp.getheader("X-Mlvault-Size")), f["cipher_size"])
            self.assertEqual(resp.getheader("X-Mlvault-Plain-Sha256"), want["sha256"])
            self.assertIsNone(resp.getheader("X-Mlvault-Sha256"))
            # resumed: the rest from an offset, as after a broken connection
            cut = len(whole) // 3
            st, rest, resp = s.api("GET", url, "nodeu", headers={"Range": f"bytes={cut}-"})
            self.assertEqual(st, 206)
            self.assertEqual(whole[:cut] + rest, whole)
            plain = ref_decrypt(whole, dek)
            self.assertEqual(hashlib.sha256(plain).hexdigest(), want["sha256"])
            # the same bytes as a person's plaintext download
            st, body, _ = s.api("GET", vpath + "/files/" + urllib.parse.quote(f["path"]), "view")
            self.assertEqual(body, plain)
            # not the node's key: the wrapped key does not unwrap
            other = x25519.X25519PrivateKey.generate()
            bad = HKDF(algorithm=hashes.SHA256(), length=32,
                       salt=bytes.fromhex(keys["eph_pub"]) + mine,
                       info=b"mlvault node dek wrap v1").derive(other.exchange(eph))
            with self.assertRaises(Exception):
                aes_key_unwrap(bad, bytes.fromhex(f["wrapped"]))
        pulls = s.api("GET", "/api/v1/audit?action=node.pull", "admin")[1]
        self.assertEqual(len(pulls) - n_pull, 2 * len(keys["files"]), "one row per request")
        self.assertEqual(pulls[-1]["actor"], "nodeu")
        # its report, and what people see of it
        report = {"channel": "production", "version": version, "digest": keys["digest"],
                  "sequence": rel["record"]["sequence"], "healthy": True, "last_error": "",
                  "rps": 1.5, "serving": f"base:{version}"}
        st, j, _ = s.api("PUT", "/api/v1/nodes/nodeu/state", "nodeu", report)
        self.assertEqual(st, 200, j)
        st, j, _ = s.api("PUT", "/api/v1/nodes/nodeu/state", "nodeu", dict(report, rps="x"))
        self.assertEqual(st, 400, j)
        nodes = s.cli_json("node", "list", token="view")
        mine_row = next(n for n in nodes if n["name"] == "nodeu")
        self.assertEqual(mine_row["model"], "base")
        self.assertEqual(mine_row["state"], report)
        self.assertIsNotNone(mine_row["last_seen"])
        text = s.cli_ok("node", "list", token="view").stdout
        self.assertIn(f"base:{version}", text)
        # an expired record is renewed by an admin: next sequence, same version, signed
        r = s.cli("channel", "renew", "base", "production", token="eng")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        renewed = s.cli_json("channel", "renew", "base", "production")
        rec = renewed["record"]
        self.assertEqual(rec["sequence"], rel["record"]["sequence"] + 1)
        self.assertEqual(rec["renewal_of"], rel["record"]["sequence"])
        self.assertEqual((rec["version"], rec["digest"]), (version, rel["record"]["digest"]))
        st, key, _ = s.api("GET", "/api/v1/registry/key", "view")
        d = tempfile.mkdtemp(dir=self.root)
        import base64
        with open(os.path.join(d, "pub.pem"), "w") as f:
            f.write(key["pem"])
        with open(os.path.join(d, "rec.json"), "wb") as f:
            f.write(renewed["record_json"].encode())
        with open(os.path.join(d, "sig.der"), "wb") as f:
            f.write(base64.b64decode(renewed["signature"]))
        v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature",
                            "sig.der", "rec.json"], cwd=d, capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        st, now, _ = s.api("GET", "/api/v1/models/base/channels/production", "nodeu")
        self.assertEqual(now["record"], rec)
        # enrolment over the remote CLI: the token once, then it works
        pub = os.path.join(d, "n2.pub")
        with open(pub, "wb") as f:
            f.write(x25519.X25519PrivateKey.generate().public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        j = s.cli_json("node", "enroll", "node2", "--pubkey", pub, "--model", "base")
        self.assertEqual((j["name"], j["model"]), ("node2", "base"))
        st, who, _ = s.api("GET", "/api/v1/whoami", j["token"])
        self.assertEqual(who, {"name": "node2", "role": "node"})
        r = s.cli("node", "enroll", "node3", "--pubkey", pub, "--model", "base")
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)


class TlsTest(unittest.TestCase):
    """--tls-cert/--tls-key: HTTPS only, and the CLI trusts the CA named by MLVAULT_CACERT."""

    def test_tls(self):
        root = tempfile.mkdtemp(prefix="tls-", dir=TMP)
        try:
            key, cert = os.path.join(root, "key.pem"), os.path.join(root, "cert.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                            "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            v = Vault(root)
            srv = Server(v, workers=1, extra=("--tls-cert", cert, "--tls-key", key))
            try:
                self.assertEqual(srv.scheme, "https")
                import ssl
                ctx = ssl.create_default_context(cafile=cert)
                c = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
                c.request("GET", "/api/v1/whoami", headers={"Authorization": "Bearer " + v.admin})
                r = c.getresponse()
                self.assertEqual((r.status, json.loads(r.read())["name"]), (200, "admin"))
                c.close()
                ok = srv.cli("user", "list", env={"MLVAULT_CACERT": cert})
                self.assertEqual(ok.returncode, 0, ok.stderr)
                self.assertEqual(ok.stdout, v.ok("user", "list").stdout)
                bad = srv.cli("user", "list")  # the self-signed certificate is not trusted
                self.assertEqual(bad.returncode, EXIT["EIO"], bad.stderr)
                self.assertIn("certificate", bad.stderr)
                plain = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
                with self.assertRaises(Exception):
                    plain.request("GET", "/healthz")
                    plain.getresponse().read()
            finally:
                srv.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
