"""Serving nodes end to end: a real registry (`mlvault serve`) and real nodes (`mlvault
node run`) on loopback. The OpenAI Python client (PyPI `openai`) talks to a node; clients
keep it busy while a promotion switches it to another version; a forging proxy between
node and registry (an attacker on the network) serves release records signed by another
key, replayed or expired; a blob is changed on the registry's disk; a node is run for a
model it is not enrolled for; the registry is killed and the node restarted without it.

Two tiny models with different architectures (tests/ref/tiny_models.py) are the versions,
so a response that mixed models could not name one version and carry the other's text:
every response's text is checked against the greedy text of the version it names.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_SOURCE_DIR."""
import base64
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import openai

sys.path.insert(0, os.path.dirname(__file__))
from test_vault import BIN, EXIT, TMP, Vault  # noqa: E402
from test_server import Server, gpl_text, tiny  # noqa: E402

POLL = 1.0  # seconds between a node's polls
PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "the rain in"]


class Node:
    """`mlvault node run` on 127.0.0.1 with a free port; stderr kept."""

    def __init__(self, home, registry, token, trust, model="m", channel="prod", extra=()):
        self.args = [BIN, "node", "run", "--home", home, "--registry", registry, "--token", token,
                     "--model", model, "--channel", channel, "--trust", trust,
                     "--listen", "127.0.0.1:0", "--poll", str(POLL), "--threads", "1", *extra]
        self.lines, self.proc = [], None
        self.start()

    def start(self):
        e = dict(os.environ)
        e.pop("MLVAULT_URL", None)
        e["MLVAULT_LOG"] = "info"
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=e)
        found = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"serving the OpenAI API on port (\d+)", line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()
        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60):
            self.proc.kill()
            raise AssertionError("node did not start: " + "".join(self.lines))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM):
        """Stops the node; a clean stop (SIGTERM) must exit 0 with no sanitizer report."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            time.sleep(0.2)  # the drain thread reads the last lines
            out = "".join(self.lines)
            for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
                assert bad not in out, out[-4000:]
            if sig == signal.SIGTERM:
                assert self.proc.returncode == 0, (self.proc.returncode, out[-2000:])

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def health(self):
        st, body = self.get("/health")
        return st, json.loads(body)

    def complete(self, prompt, max_tokens=8, key=None):
        """(status, body, X-Mlvault-Model) of a greedy completion."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = "Bearer " + key
        c.request("POST", "/v1/completions", body=json.dumps(
            {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
            headers=headers)
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return r.status, body, r.getheader("X-Mlvault-Model")

    def wait_health(self, pred, timeout=60):
        end = time.time() + timeout
        h = None
        while time.time() < end:
            try:
                st, h = self.health()
                if pred(st, h):
                    return h
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node health never matched: {h}\n" + "".join(self.lines[-20:]))


class ForgingProxy:
    """HTTP proxy from node to registry. While `forge` is set, a GET of the channel's
    release record is answered with it instead of the registry's."""

    def __init__(self, target_port):
        proxy = self
        self.forge = None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.command == "GET" and self.path.endswith("/channels/prod") and proxy.forge:
                    data = json.dumps(proxy.forge).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                try:
                    c = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                    hdrs = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    c.request(self.command, self.path, body=body, headers=hdrs)
                    r = c.getresponse()
                    data = r.read()
                except OSError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = relay

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def sign_record(key_pem_path, record, tmp):
    """A release document signed with the `openssl` CLI (ECDSA P-256 over SHA-256)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    src, sig = os.path.join(tmp, "rec.json"), os.path.join(tmp, "rec.sig")
    with open(src, "w") as f:
        f.write(text)
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_pem_path, "-out", sig, src],
                   check=True)
    with open(sig, "rb") as f:
        return {"record": record, "record_json": text,
                "signature": base64.b64encode(f.read()).decode(), "key_hint": ""}


class NodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="node-", dir=TMP)
        cls.v = Vault(cls.root)
        cls.v.add_user("eng", "engineer")
        cls.v.add_user("view", "viewer")
        cls.llama = tiny("llama", os.path.join(cls.root, "llama.gguf"))
        cls.qwen = tiny("qwen2", os.path.join(cls.root, "qwen2.gguf"))
        cls.text = gpl_text(os.path.join(cls.root, "eval.txt"), 3000)
        cls.srv = Server(cls.v)
        s = cls.srv
        s.cli_ok("push", "m", cls.llama, token="eng")  # m:1
        s.cli_ok("push", "m", cls.qwen, token="eng")  # m:2
        s.cli_ok("push", "m", cls.llama, "--note", "again", token="eng")  # m:3
        s.cli_ok("push", "other", cls.qwen, token="eng")
        s.cli_ok("dataset", "push", "evalset", cls.text, token="eng")
        # threshold 100: any accuracy passes; the versions differ on purpose
        s.cli_ok("channel", "set", "m", "prod", "--gate-data", "evalset", "--threshold", "100")
        s.cli_ok("promote", "m:1", "--to", "prod", token="eng")
        st, cls.first_doc, _ = s.api("GET", "/api/v1/models/m/channels/prod", token="view")
        assert st == 200, cls.first_doc
        cls.trust = os.path.join(cls.v.home, "keys", "signing.pub")
        # the node's own key pair, its enrolment (admin), as an operator would do it
        cls.nhome = os.path.join(cls.root, "node1")
        subprocess.run([BIN, "node", "init", "--home", cls.nhome], check=True,
                       capture_output=True)
        enr = s.cli_json("node", "enroll", "node1", "--pubkey",
                         os.path.join(cls.nhome, "node.pub"), "--model", "m")
        cls.ntoken = enr["token"]
        cls.proxy = ForgingProxy(s.port)
        cls.node = Node(cls.nhome, cls.proxy.url, cls.ntoken, cls.trust)
        cls.node.wait_health(lambda st, h: st == 200 and h.get("model") == "m:1")
        # each version's greedy completion of each prompt, from a node serving it alone
        cls.expect = {"m:1": {p: cls.node.complete(p)[1]["choices"][0]["text"] for p in PROMPTS}}

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.proxy.close()
        cls.srv.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def nodes(self):
        st, j, _ = self.srv.api("GET", "/api/v1/nodes", token="view")
        self.assertEqual(st, 200, j)
        lst = j["nodes"] if isinstance(j, dict) else j
        return {n["name"]: n for n in lst}

    def wait_reported(self, pred, timeout=30):
        end = time.time() + timeout
        n = None
        while time.time() < end:
            n = self.nodes().get("node1")
            if n and n.get("state") and pred(n["state"]):
                return n["state"]
            time.sleep(0.2)
        raise AssertionError(f"node state never matched: {n}")

    # ------------------------------------------------------- the OpenAI client ---
    def test_01_openai_client(self):
        client = openai.OpenAI(base_url=self.node.url + "/v1", api_key="unused", max_retries=0)
        self.assertEqual([m.id for m in client.models.list().data], ["m:1"])
        msgs = [{"role": "user", "content": "Say something."}]
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=msgs, max_tokens=12, temperature=0)
        self.assertEqual(raw.headers["x-mlvault-model"], "m:1")
        chat = raw.parse()
        self.assertEqual(chat.model, "m:1")
        self.assertEqual(chat.choices[0].message.role, "assistant")
        self.assertIn(chat.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(chat.usage.prompt_tokens, 3)
        self.assertEqual(chat.usage.total_tokens,
                         chat.usage.prompt_tokens + chat.usage.completion_tokens)
        # streamed: the same greedy text, piece by piece
        pieces, finish = [], None
        for ch in client.chat.completions.create(model="m", messages=msgs, max_tokens=12,
                                                 temperature=0, stream=True):
            self.assertEqual(ch.model, "m:1")
            if ch.choices and ch.choices[0].delta.content:
                pieces.append(ch.choices[0].delta.content)
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        self.assertEqual("".join(pieces), chat.choices[0].message.content)
        self.assertEqual(finish, chat.choices[0].finish_reason)
        # a completion cut at a stop string taken from the middle of the greedy text
        full = client.completions.create(model="m", prompt=PROMPTS[0], max_tokens=16,
                                         temperature=0).choices[0].text
        # (random tiny weights emit stray bytes: take two printable ASCII characters, which
        # the server's byte-level stop matching and the client's text agree on)
        at = [i for i in range(1, len(full) - 1)
              if full[i:i + 2].isascii() and full[i:i + 2].isprintable()
              and full.index(full[i:i + 2]) == i]
        self.assertTrue(at, full)
        stop = full[at[0]:at[0] + 2]
        cut = client.completions.create(model="m", prompt=PROMPTS[0], max_tokens=16,
                                        temperature=0, stop=[stop])
        self.assertEqual(cut.choices[0].text, full[:full.index(stop)])
        self.assertEqual(cut.choices[0].finish_reason, "stop")
        # invalid requests are API errors the client raises
        with self.assertRaises(openai.BadRequestError) as e:
            client.chat.completions.create(model="m", messages=msgs, n=2)
        self.assertIn("n", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[{"role": "wizard",
                                                                 "content": "x"}])
        with self.assertRaises(openai.BadRequestError):
            client.completions.create(model="m", prompt="x", max_tokens=-5)

    # ------------------------------------------------ a promotion under load ---
    def test_02_promotion_under_load(self):
        # the expected greedy texts of m:2, from the model file itself (another process)
        exp2 = {}
        for p in PROMPTS:
            r = subprocess.run([BIN, "run", self.qwen, "--prompt", p, "-n", "8", "--temp", "0",
                                "--json"], capture_output=True, text=True, check=True)
            exp2[p] = json.loads(r.stdout)["text"]
        expect = dict(self.expect, **{"m:2": exp2})
        results, stop = [], threading.Event()

        def client(i):
            k = 0
            while not stop.is_set():
                p = PROMPTS[(i + k) % len(PROMPTS)]
                k += 1
                try:
                    st, body, hdr = self.node.complete(p)
                    results.append((i, st, body.get("model"), hdr, p,
                                    body["choices"][0]["text"] if st == 200 else body))
                except Exception as ex:  # noqa: BLE001 — every failure is counted
                    results.append((i, -1, None, None, p, repr(ex)))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        polls0 = self.node.health()[1]["node"]["polls"]
        self.srv.cli_ok("promote", "m:2", "--to", "prod", token="eng")
        released = self.node.health()[1]["node"]["polls"]
        h = self.node.wait_health(lambda st, h: h.get("model") == "m:2")
        switched = h["node"]["polls"]
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        # within two poll intervals of the release
        self.assertLessEqual(switched - released, 2, (polls0, released, switched))
        failed = [r for r in results if r[1] != 200]
        self.assertEqual(failed, [])
        seen = {"m:1": 0, "m:2": 0}
        last = {}
        for i, st, model, hdr, p, text in results:
            self.assertEqual(model, hdr)
            self.assertIn(model, expect)
            self.assertEqual(text, expect[model][p], (model, p))
            seen[model] += 1
            # once a client saw the new version, it never sees the old one again
            self.assertFalse(last.get(i) == "m:2" and model == "m:1")
            last[i] = model
        self.assertGreater(seen["m:1"], 0)
        self.assertGreater(seen["m:2"], 0)
        st = self.wait_reported(lambda s: s["version"] == 2)
        self.assertTrue(st["healthy"])
        self.assertEqual(st["last_error"], "")

    # ------------------------------------------------------------ refusals ---
    def refused(self, forged, reason):
        """The proxy serves `forged`; the node must keep serving m:2 and report why."""
        self.proxy.forge = forged
        try:
            h = self.node.wait_health(lambda st, h: reason in h["node"]["last_error"])
            self.assertEqual(h["model"], "m:2")
            st, body, hdr = self.node.complete(PROMPTS[0])
            self.assertEqual((st, hdr), (200, "m:2"))
            self.wait_reported(lambda s: reason in s["last_error"] and s["version"] == 2)
        finally:
            self.proxy.forge = None
        self.node.wait_health(lambda st, h: h["node"]["last_error"] == "")

    def current(self):
        st, doc, _ = self.srv.api("GET", "/api/v1/models/m/channels/prod", token="view")
        self.assertEqual(st, 200, doc)
        return doc

    def test_03_refusals(self):
        tmp = tempfile.mkdtemp(dir=self.root)
        cur = self.current()
        rec = dict(cur["record"])
        rec["sequence"] += 1
        rec["version"], rec["digest"] = 3, self.srv.api(
            "GET", "/api/v1/models/m/versions/3", token="view")[1]["digest"]
        # signed by another key
        other = os.path.join(tmp, "other.key")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", other], check=True,
                       capture_output=True)
        self.refused(sign_record(other, rec, tmp), "does not verify with the pinned")
        # a valid record with one byte changed after signing
        bad = sign_record(os.path.join(self.v.home, "keys", "signing.key"), rec, tmp)
        bad["record_json"] = bad["record_json"].replace('"version":3', '"version":1')
        self.refused(bad, "does not verify with the pinned")
        # an older record replayed: m:1's release, exactly as the registry signed it
        self.assertEqual(self.first_doc["record"]["sequence"], 1)
        self.refused(self.first_doc, "rollback")
        # an expired record (signed by the registry's key: a freeze attack)
        exp = dict(rec, expires_at="2020-01-01T00:00:00Z", issued_at="2019-12-01T00:00:00Z")
        self.refused(sign_record(os.path.join(self.v.home, "keys", "signing.key"), exp, tmp),
                     "expired")
        # a blob changed by one byte on the registry's disk: m:3 is released while the node
        # is paused, one byte of its blob flipped; the node refuses it and keeps m:2, and
        # takes m:3 once the blob is restored
        self.node.proc.send_signal(signal.SIGSTOP)
        try:
            self.srv.cli_ok("promote", "m:3", "--to", "prod", token="eng")
            files = self.srv.api("GET", "/api/v1/models/m/versions/3", token="view")[1]["files"]
            blob = os.path.join(self.v.home, "objects", files[0]["sha256"][:2],
                                files[0]["sha256"])
            at = os.path.getsize(blob) // 2
            with open(blob, "r+b") as f:
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 1]))
        finally:
            self.node.proc.send_signal(signal.SIGCONT)
        h = self.node.wait_health(lambda st, h: "m:3" in h["node"]["last_error"])
        self.assertEqual(h["model"], "m:2")
        self.assertRegex(h["node"]["last_error"], "tag|integrity|authent|does not")
        self.assertEqual(self.node.complete(PROMPTS[0])[2], "m:2")
        with open(blob, "r+b") as f:
            f.seek(at)
            f.write(byte)
        self.node.wait_health(lambda st, h: h.get("model") == "m:3")
        self.wait_reported(lambda s: s["version"] == 3 and s["last_error"] == "")

    def test_04_not_enrolled(self):
        # node2 is enrolled for `other`; run for `m` it gets nothing and says why
        home = os.path.join(self.root, "node2")
        subprocess.run([BIN, "node", "init", "--home", home], check=True, capture_output=True)
        tok = self.srv.cli_json("node", "enroll", "node2", "--pubkey",
                                os.path.join(home, "node.pub"), "--model", "other")["token"]
        n2 = Node(home, self.srv.url, tok, self.trust)
        try:
            h = n2.wait_health(lambda st, h: "enrolled" in h.get("node", {}).get("last_error",
                                                                                   ""))
            self.assertEqual(n2.health()[0], 503)
            self.assertIn("other", h["node"]["last_error"])
            # and the registry refuses its keys and blobs for m outright
            st, j, _ = self.srv.api("GET", "/api/v1/models/m/versions/1/keys", token=tok)
            self.assertEqual(st, 403, j)
            st, j, _ = self.srv.api("GET", "/api/v1/models/m/channels/prod", token=tok)
            self.assertEqual(st, 403, j)
            # a person cannot fetch wrapped keys at all
            st, j, _ = self.srv.api("GET", "/api/v1/models/m/versions/1/keys", token="admin")
            self.assertEqual(st, 403, j)
        finally:
            n2.stop()
        self.assertIn("node2", self.nodes())

    # ------------------------------------------- registry down, node restart ---
    def test_05_registry_down_and_restart(self):
        served = self.node.health()[1]["model"]
        self.srv.proc.send_signal(signal.SIGKILL)
        self.srv.proc.wait()
        try:
            h = self.node.wait_health(lambda st, h: "registry" in h["node"]["last_error"])
            self.assertEqual(h["model"], served)
            for p in PROMPTS:
                st, body, hdr = self.node.complete(p)
                self.assertEqual((st, hdr), (200, served))
            # restarted with the registry still down: the cached version, at once
            self.node.stop()
            self.node.start()
            h = self.node.wait_health(lambda st, h: st == 200)
            self.assertEqual(h["model"], served)
            st, body, hdr = self.node.complete(PROMPTS[1])
            self.assertEqual((st, hdr), (200, served))
            # again with --api-key-file: /v1 wants the key, /health stays open
            keyfile = os.path.join(self.root, "node-api.key")
            with open(keyfile, "w") as f:
                f.write("k" * 5 + "\n")
            r = subprocess.run(self.node.args + ["--api-key-file", keyfile],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, EXIT["EINVAL"], r.stderr)  # too short: refused
            self.assertIn("--api-key-file", r.stderr)
            key = secrets.token_hex(24)
            with open(keyfile, "w") as f:
                f.write(key + "\n")
            self.node.stop()
            self.node.args += ["--api-key-file", keyfile]
            self.node.start()
            self.assertEqual(self.node.wait_health(lambda st, h: st == 200)["model"], served)
            for wrong in (None, key[:-1], key + "x", key.upper()):
                st, body, _ = self.node.complete(PROMPTS[1], key=wrong)
                self.assertEqual((st, body["error"]["code"]), (401, "invalid_api_key"), wrong)
            st, body, hdr = self.node.complete(PROMPTS[1], key=key)
            self.assertEqual((st, hdr), (200, served))
            client = openai.OpenAI(base_url=self.node.url + "/v1", api_key=key, max_retries=0)
            self.assertEqual(client.models.list().data[0].id, served)
            with self.assertRaises(openai.AuthenticationError):
                openai.OpenAI(base_url=self.node.url + "/v1", api_key="not-" + key,
                              max_retries=0).models.list()
            # no plaintext in the node's home: only ciphertext blobs and wrapped keys
            with open(self.llama, "rb") as f:
                head = f.read(4096)
            for d, _, files in os.walk(self.nhome):
                for fn in files:
                    with open(os.path.join(d, fn), "rb") as f:
                        self.assertNotIn(head[256:1024], f.read(), fn)
        finally:
            self.srv.start()
            self.proxy.close()
            type(self).proxy = ForgingProxy(self.srv.port)
        # a restarted node with a new proxy address carries on following the channel
        self.node.stop()
        self.node.args[self.node.args.index("--registry") + 1] = self.proxy.url
        self.node.start()
        self.node.wait_health(lambda st, h: st == 200 and h["node"]["last_error"] == ""
                              and h["node"]["polls"] > 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
