"""The engine's OpenAI-compatible server end to end: a real `mlvault serve --serve-model
smol@production` on loopback serving the real SmolLM2 GGUF, stored and released to a
channel, driven with the `openai` PyPI client and raw HTTP, and checked against
independent references: llama.cpp (llama-cpp-python, and the golden greedy continuation
of tests/golden/llama_q4_1.json) for token counts and greedy text, `mlvault run` for the
same prompt, `promtool` for /metrics, the gguf package's own metadata rewriter for the
second release.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_SOURCE_DIR, MLV_MODEL_GGUF,
MLV_VENV, MLV_SANITIZED."""
import concurrent.futures
import http.client
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
from test_server import PROMTOOL, Server, check_clean_exit  # noqa: E402
from test_vault import MODEL, TMP, VENV, Vault  # noqa: E402

import openai  # noqa: E402

SRC = os.environ.get("MLV_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SANITIZED = os.environ.get("MLV_SANITIZED") == "1"
N_TOK = 8 if SANITIZED else 16  # greedy tokens per comparison
QUESTION = "What is the capital of France?"


def golden():
    with open(os.path.join(SRC, "tests", "golden", "llama_q4_1.json")) as f:
        return json.load(f)


def llama_vocab():
    """llama.cpp's tokenizer of the model, or None when llama-cpp-python is missing."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp.Llama(model_path=MODEL, vocab_only=True, verbose=False)


class OpenAITest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(MODEL):
            raise unittest.SkipTest("the SmolLM2 model is not cached (scripts/fetch-model.sh)")
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="openai-", dir=TMP)
        cls.v = Vault(cls.root)
        cls.v.add_user("eng", "engineer")
        cls.v.add_user("view", "viewer")
        cls.v.ok("push", "smol", MODEL, token="eng")
        # a short gate dataset: the release's evaluation stays quick
        text = os.path.join(cls.root, "gate.txt")
        with open("/usr/share/common-licenses/GPL-3") as f:
            gpl = f.read()
        with open(text, "w") as f:
            f.write(gpl[:1200 if SANITIZED else 3000])
        cls.v.ok("dataset", "push", "gatetext", text, token="eng")
        cls.v.ok("channel", "set", "smol", "production", "--gate-data", "gatetext",
                 "--approvals", "0", "--ctx", "64")
        cls.srv = Server(cls.v, workers=1, extra=("--serve-model", "smol@production"))
        cls.url = f"http://127.0.0.1:{cls.srv.port}"
        # before the first release the model is loading
        st, doc, _ = cls.http("GET", "/health")
        assert st == 503 and doc["status"] == "loading", (st, doc)
        st, e, r = cls.http("POST", "/v1/completions", {"prompt": "Hi"})
        assert st == 503 and e["error"]["code"] == "model_not_loaded", (st, e)
        assert r.getheader("Retry-After"), r.getheaders()
        cls.v.ok("promote", "smol:1", "--to", "production", token="eng")
        cls.wait_model("smol:1")
        cls.client = openai.OpenAI(base_url=cls.url + "/v1", api_key=cls.v.tokens["view"],
                                   max_retries=0, timeout=600)

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "srv"):
            cls.srv.stop()
            check_clean_exit(cls.srv)
        shutil.rmtree(cls.root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers ---
    @classmethod
    def http(cls, method, path, body=None, token="view", raw=None, port=None, headers=None):
        """(status, parsed JSON or text, response) of one raw HTTP request."""
        c = http.client.HTTPConnection("127.0.0.1", port or cls.srv.port, timeout=600)
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + cls.v.tokens.get(token, token)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        if data is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        c.close()
        if "json" in (r.getheader("Content-Type") or ""):
            payload = json.loads(payload)
        else:
            payload = payload.decode()
        return r.status, payload, r

    @classmethod
    def wait_model(cls, want, timeout=300, port=None):
        end = time.time() + timeout
        doc = None
        while time.time() < end:
            st, doc, _ = cls.http("GET", "/health", port=port)
            if st == 200 and doc["model"] == want:
                return doc
            time.sleep(0.2)
        raise AssertionError(f"the server did not serve {want}: {doc}")

    def run_json(self, *args):
        return self.v.json("run", *args, token="view")

    def chat(self, content, n=N_TOK, **kw):
        return self.client.chat.completions.create(
            model="whatever", messages=[{"role": "user", "content": content}], max_tokens=n,
            temperature=0, **kw)

    def complete(self, prompt, n=N_TOK, **kw):
        return self.client.completions.create(model="smol", prompt=prompt, max_tokens=n,
                                              temperature=0, **kw)

    # -------------------------------------------------------------------- tests ---
    def test_01_models_and_chat(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["smol:1"])
        raw = self.client.chat.completions.with_raw_response.create(
            model="not-the-name", messages=[{"role": "user", "content": QUESTION}],
            max_tokens=N_TOK, temperature=0)
        self.assertEqual(raw.headers["x-mlvault-model"], "smol:1")
        r = raw.parse()
        self.assertEqual(r.model, "smol:1")  # the served id, whatever the request named
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        msg = r.choices[0].message
        self.assertEqual(msg.role, "assistant")
        self.assertTrue(msg.content.strip())
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        # the same prompt and greedy length through `mlvault run` (the engine without the
        # server and its batching): the same tokens, the same text
        ref = self.run_json("smol:1", "--chat", "--prompt", QUESTION, "-n", str(N_TOK),
                            "--temp", "0")
        self.assertEqual(msg.content, ref["text"])
        self.assertEqual(r.usage.prompt_tokens, len(ref["prompt_ids"]))
        self.assertEqual(r.usage.completion_tokens, len(ref["ids"]))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        # the prompt's token count from llama.cpp: SmolLM2's Jinja template rendered by
        # jinja2, tokenized with special tokens parsed
        vocab = llama_vocab()
        if vocab is not None:
            import jinja2
            s = jinja2.Template(vocab.metadata["tokenizer.chat_template"]).render(
                messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
            ids = vocab.tokenize(s.encode(), add_bos=False, special=True)
            self.assertEqual(r.usage.prompt_tokens, len(ids))

    def test_02_completion_greedy_matches_llama_cpp(self):
        g = golden()["greedy"][0]
        r = self.complete(g["prompt"])
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual(r.usage.prompt_tokens, len(g["prompt_ids"]))  # llama.cpp's count
        self.assertEqual(r.usage.completion_tokens, N_TOK)
        self.assertEqual(r.choices[0].finish_reason, "length")
        text = r.choices[0].text
        vocab = llama_vocab()
        if vocab is not None:  # llama.cpp's greedy tokens, detokenized by llama.cpp
            want = vocab.detokenize(g["ids"][:N_TOK]).decode()
            self.assertEqual(text, want)
        self.assertTrue(g["text"].startswith(text), (text, g["text"]))
        ref = self.run_json("smol:1", "--prompt", g["prompt"], "-n", str(N_TOK), "--temp", "0")
        self.assertEqual(text, ref["text"])
        # sampling: a seed reproduces, and draws what `mlvault run` draws with the same
        # sampler (temperature 1, nothing truncated) and seed
        a = self.client.completions.create(model="m", prompt="Once upon a time",
                                           max_tokens=N_TOK, temperature=1.0, seed=7)
        b = self.client.completions.create(model="m", prompt="Once upon a time",
                                           max_tokens=N_TOK, temperature=1.0, seed=7)
        self.assertEqual(a.choices[0].text, b.choices[0].text)
        ref = self.run_json("smol:1", "--prompt", "Once upon a time", "-n", str(N_TOK),
                            "--seed", "7", "--temp", "1.0", "--top-k", "0", "--top-p", "1",
                            "--min-p", "0")
        self.assertEqual(a.choices[0].text, ref["text"])

    def test_03_stream_equals_non_stream(self):
        whole = self.chat(QUESTION)
        chunks = list(self.chat(QUESTION, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual({c.model for c in chunks}, {"smol:1"})
        self.assertEqual(len({c.id for c in chunks}), 1)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finals = [c.choices[0].finish_reason for c in chunks if c.choices
                  and c.choices[0].finish_reason]
        self.assertEqual(finals, [whole.choices[0].finish_reason])
        self.assertIsNotNone(chunks[-1].usage)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        # the wire format: text/event-stream, one data: line per event, [DONE] last
        st, body, resp = self.http("POST", "/v1/completions",
                                   {"prompt": "Once upon a time", "max_tokens": 4,
                                    "temperature": 0, "stream": True})
        self.assertEqual(st, 200)
        self.assertTrue(resp.getheader("Content-Type").startswith("text/event-stream"))
        self.assertEqual(resp.getheader("X-Mlvault-Model"), "smol:1")
        events = [e for e in body.split("\n\n") if e]
        self.assertTrue(all(e.startswith("data: ") for e in events), body)
        self.assertEqual(events[-1], "data: [DONE]")
        pieces = [json.loads(e[6:]) for e in events[:-1]]
        self.assertEqual(pieces[-1]["choices"][0]["finish_reason"], "length")
        # Japanese comes out of byte-level BPE one byte group per token: a character split
        # across tokens is never split across chunks (each would turn into U+FFFD)
        whole = self.complete("日本の首都は", n=9).choices[0].text
        self.assertTrue(any(ord(ch) > 0x3000 for ch in whole), whole)
        self.assertNotIn("\ufffd", whole)
        pieces = [c.choices[0].text for c in self.complete("日本の首都は", n=9, stream=True)
                  if c.choices]
        self.assertEqual("".join(pieces), whole)
        self.assertFalse(any("\ufffd" in p for p in pieces), pieces)

    def test_04_stop_strings(self):
        prompt = golden()["greedy"][0]["prompt"]
        full = self.complete(prompt).choices[0].text  # " Paris.\n\nThe United States has..."
        for stop in ("United", "ed Sta", ["zzz", "\n\n"], [" has", "States"]):
            stops = stop if isinstance(stop, list) else [stop]
            cut = min(full.index(s) for s in stops if s in full)
            r = self.complete(prompt, stop=stop)
            self.assertEqual(r.choices[0].text, full[:cut], stop)
            self.assertEqual(r.choices[0].finish_reason, "stop")
            self.assertLess(r.usage.completion_tokens, N_TOK)
            # streamed: the held-back tail never leaks the stop string
            chunks = list(self.complete(prompt, stop=stop, stream=True))
            pieces = [c.choices[0].text for c in chunks if c.choices]
            self.assertEqual("".join(pieces), full[:cut], stop)
            self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        # chat with a stop string: the text ends right before it
        whole = self.chat(QUESTION).choices[0].message.content
        word = whole.split()[1] if len(whole.split()) > 1 else whole.strip()
        r = self.chat(QUESTION, stop=word)
        self.assertEqual(r.choices[0].message.content, whole[:whole.index(word)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_05_invalid_requests(self):
        c = self.client
        msgs = [{"role": "user", "content": "hi"}]
        cases = (
            (lambda: c.chat.completions.create(model="m", messages=msgs, n=2), "n", "n=1"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, temperature="hot"),
             "temperature", "number"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, temperature=3),
             "temperature", "between"),
            (lambda: c.chat.completions.create(model="m", messages=[]), "messages", "non-empty"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, logprobs=True),
             "logprobs", "not supported"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, max_tokens=0),
             "max_tokens", "between"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, stop=["a"] * 5),
             "stop", "at most 4"),
            (lambda: c.chat.completions.create(model="m", messages=msgs, stop=[""]), "stop",
             "empty"),
            (lambda: c.chat.completions.create(
                model="m", messages=[{"role": "tool", "content": "x"}]), "messages[0].role",
             "tool"),
            (lambda: c.completions.create(model="m", prompt=[1, 2, 3]), "prompt", "string"),
            (lambda: c.completions.create(model="m", prompt="x", presence_penalty=0.5),
             "presence_penalty", "not supported"),
            (lambda: c.completions.create(model="m", prompt="x", echo=True), "echo",
             "not supported"),
        )
        for call, param, text in cases:
            with self.assertRaises(openai.BadRequestError) as cm:
                call()
            err = cm.exception.body
            self.assertEqual(err["param"], param, err)
            self.assertEqual(err["type"], "invalid_request_error")
            self.assertIn(text, err["message"])
            self.assertEqual(cm.exception.response.headers["x-mlvault-model"], "smol:1")
        # missing messages, bad JSON, invalid UTF-8, a body over 1 MiB: raw HTTP
        st, e, r = self.http("POST", "/v1/chat/completions", {"model": "m"})
        self.assertEqual((st, e["error"]["param"]), (400, "messages"), e)
        self.assertIn("required", e["error"]["message"])
        self.assertEqual(r.getheader("X-Mlvault-Model"), "smol:1")
        st, e, _ = self.http("POST", "/v1/chat/completions", raw=b'{"messages": [')
        self.assertEqual(st, 400)
        self.assertIn("JSON", e["error"]["message"])
        self.assertEqual(set(e["error"]), {"message", "type", "param", "code"})
        st, e, _ = self.http("POST", "/v1/completions", raw=b'{"prompt": "caf\xe9"}')
        self.assertEqual(st, 400)
        self.assertIn("UTF-8", e["error"]["message"])
        st, e, _ = self.http("POST", "/v1/completions",
                             raw=b'{"prompt": "' + b"a" * (1 << 20) + b'"}')
        self.assertEqual(st, 413, e)
        st, e, _ = self.http("GET", "/v1/completions")
        self.assertEqual(st, 405)
        st, e, r = self.http("GET", "/v1/nothing-here")
        self.assertEqual((st, e["error"]["code"]), (404, "unknown_url"))
        # a prompt longer than the context
        long = "word " * 2100
        st, e, _ = self.http("POST", "/v1/completions", {"prompt": long})
        self.assertEqual((st, e["error"]["code"]), (400, "context_length_exceeded"), e)
        # still serving
        self.assertTrue(self.complete("Hello", n=2).choices[0].text)

    def test_06_auth(self):
        bad = openai.OpenAI(base_url=self.url + "/v1", api_key="mlv_" + "0" * 64, max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as cm:
            bad.models.list()
        self.assertEqual(cm.exception.status_code, 401)
        self.assertEqual(cm.exception.response.headers["x-mlvault-model"], "smol:1")
        for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST"),
                             ("/health", "GET")):
            st, e, r = self.http(method, path, {"messages": []} if method == "POST" else None,
                                 token=None)
            self.assertEqual(st, 401, path)
            self.assertEqual(e["error"]["code"], "invalid_api_key")
            self.assertIn("Bearer", r.getheader("WWW-Authenticate"))
        # any enabled user may use the model, whatever the role
        self.v.add_user("gone", "viewer")
        st, _, _ = self.http("GET", "/v1/models", token="gone")
        self.assertEqual(st, 200)
        self.v.ok("user", "disable", "gone")
        st, e, _ = self.http("GET", "/v1/models", token="gone")
        self.assertEqual(st, 401, e)
        st, _, _ = self.http("GET", "/v1/models", token="eng")
        self.assertEqual(st, 200)

    def test_07_concurrent_greedy_equals_single(self):
        # Batched decoding equals single decoding up to float rounding (the batch's tile
        # kernels sum in another order), so greedy text may only change at a near tie. These
        # prompts were chosen for margins of at least 0.1 logit between llama.cpp's top two
        # tokens over the compared tokens (checked below): "In 1492, Columbus" (0.019 at its
        # 7th token) did flip between batched and single decoding and is not among them.
        prompts = ["The capital of France is", "The best way to learn", "def fibonacci(n):",
                   "My favourite food is", "Water boils at", "The first man on the moon was",
                   "Photosynthesis is the process", "The largest ocean on Earth is"]
        n = 6 if SANITIZED else 12
        vocab = llama_vocab()
        if vocab is not None:
            import llama_cpp
            import numpy as np
            m = llama_cpp.Llama(model_path=MODEL, logits_all=True, verbose=False, n_ctx=64)
            for p in prompts:
                m.reset()
                m.eval(m.tokenize(p.encode(), add_bos=False, special=False))
                for _ in range(n):
                    lg = np.array(m.scores[m.n_tokens - 1])
                    top = np.argsort(-lg)[:2]
                    self.assertGreaterEqual(lg[top[0]] - lg[top[1]], 0.1, p)
                    m.eval([int(top[0])])
            del m
        single = [self.complete(p, n=n).choices[0].text for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
            futs = [ex.submit(self.complete, p, n) for p in prompts]
            together = [f.result().choices[0].text for f in futs]
        for p, a, b in zip(prompts, single, together):
            self.assertEqual(b, a, f"batched greedy text differs for {p!r}")

    def test_08_client_disconnect_stops_generation(self):
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0,
                           "stream": True}).encode()
        s = socket.create_connection(("127.0.0.1", self.srv.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Authorization: Bearer " + self.v.tokens["view"].encode() + b"\r\n"
                  b"Content-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            self.assertTrue(chunk, got)
            got += chunk
        self.assertIn(b"Transfer-Encoding: chunked", got)
        s.close()
        # its sequence leaves the batch within a token or two, not 1,500 tokens later
        end = time.time() + 30
        while time.time() < end:
            st, doc, _ = self.http("GET", "/health")
            if doc["running"] == 0 and doc["waiting"] == 0:
                break
            time.sleep(0.1)
        self.assertEqual((doc["running"], doc["waiting"]), (0, 0), doc)
        st, text, _ = self.http("GET", "/metrics", token=None)
        self.assertIn('mlvault_inference_requests_total{endpoint="/v1/completions",code="499"} 1',
                      text)

    def test_09_metrics(self):
        st, text, resp = self.http("GET", "/metrics", token=None)
        self.assertEqual(st, 200)
        for name in ("mlvault_inference_requests_total", "mlvault_inference_generated_tokens_total",
                     "mlvault_inference_prompt_tokens_total", "mlvault_inference_tokens_per_second",
                     "mlvault_inference_queue_length", "mlvault_inference_running_sequences",
                     'mlvault_inference_model_info{model="smol:1"} 1',
                     "mlvault_http_requests_total"):  # the registry's own beside them
            self.assertIn(name, text)

        def value(line_start):
            for line in text.splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
            raise AssertionError(line_start + " missing")
        for h in ("mlvault_inference_request_duration_seconds", "mlvault_inference_ttft_seconds"):
            for ep in ("/v1/completions", "/v1/chat/completions"):
                count = value(f'{h}_count{{endpoint="{ep}"}}')
                self.assertGreater(count, 0, (h, ep))
                self.assertEqual(value(f'{h}_bucket{{endpoint="{ep}",le="+Inf"}}'), count)
                self.assertGreater(value(f'{h}_sum{{endpoint="{ep}"}}'), 0)
        self.assertGreater(value("mlvault_inference_generated_tokens_total"), 0)
        self.assertGreater(value(
            'mlvault_inference_requests_total{endpoint="/v1/chat/completions",code="200"}'), 0)
        self.assertGreater(value(
            'mlvault_inference_requests_total{endpoint="/v1/completions",code="400"}'), 0)
        if not PROMTOOL:
            self.skipTest("promtool is not installed (Debian package prometheus)")
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_10_queue_limit(self):
        """One slot and one place in the queue: of 4 requests at once, the first two run
        and the others are refused with 429 and Retry-After."""
        second = Server(self.v, workers=1, extra=("--serve-model", "smol@production",
                                                  "--batch", "1", "--queue", "1"))
        try:
            self.wait_model("smol:1", port=second.port)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{second.port}/v1",
                                   api_key=self.v.tokens["view"], max_retries=0, timeout=600)
            barrier = threading.Barrier(4)

            def one(i):
                barrier.wait()
                try:
                    r = client.completions.create(model="smol", prompt="Once upon a time",
                                                  max_tokens=24 if SANITIZED else 48,
                                                  temperature=0)
                    return ("ok", r.usage.completion_tokens)
                except openai.RateLimitError as e:
                    return ("429", e.response.headers.get("retry-after"), e.body)
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                out = list(ex.map(one, range(4)))
            limited = [o for o in out if o[0] == "429"]
            ok = [o for o in out if o[0] == "ok"]
            self.assertEqual(len(limited) + len(ok), 4, out)
            self.assertGreaterEqual(len(limited), 1, out)
            self.assertGreaterEqual(len(ok), 1, out)
            for o in limited:
                self.assertEqual(o[1], "1")
                self.assertIn("busy", o[2]["message"])
            # stopping the server ends a streamed generation at its next token
            stream = client.completions.create(model="smol", prompt="Once upon a time",
                                               max_tokens=1500, temperature=0, stream=True)
            next(iter(stream))
            t0 = time.time()
            second.stop()
            self.assertLess(time.time() - t0, 15, "a long stream held up the shutdown")
            self.assertEqual(second.proc.returncode, 0)
        finally:
            second.stop()
        check_clean_exit(second)

    def test_11_new_release_swaps_without_failures(self):
        v2 = os.path.join(self.root, "smol-v2.gguf")
        subprocess.run([os.path.join(VENV, "bin", "gguf-new-metadata"), MODEL, v2,
                        "--general-description", "mlvault test: the second release", "--force"],
                       check=True, capture_output=True)
        self.v.ok("push", "smol", v2, "--parent", "smol:1", token="eng")
        seen, errors, stop = [], [], threading.Event()

        def hammer():
            while not stop.is_set():
                t0 = time.time()
                try:
                    raw = self.client.completions.with_raw_response.create(
                        model="smol", prompt="Hello", max_tokens=3, temperature=0)
                    r = raw.parse()
                    seen.append((t0, time.time(), raw.headers["x-mlvault-model"], r.model))
                except Exception as e:  # noqa: BLE001 - every failure counts
                    errors.append(repr(e))
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            self.v.ok("promote", "smol:2", "--to", "production", token="eng")
            t_release = time.time()
            doc = self.wait_model("smol:2", timeout=120)
            took = time.time() - t_release
            end = time.time() + 3
            while time.time() < end and not any(s[2] == "smol:2" for s in seen):
                time.sleep(0.1)
            time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        self.assertLess(took, 20, "the release was not picked up within a few seconds")
        self.assertTrue(all(h == m for _, _, h, m in seen), seen)
        models = [h for _, _, h, _ in seen]
        self.assertIn("smol:1", models)
        self.assertIn("smol:2", models)
        # a request that starts once the new model has answered one is never served by the
        # old one (those already running may finish on it)
        first2 = min(t1 for _, t1, h, _ in seen if h == "smol:2")
        self.assertEqual([h for t0, _, h, _ in seen if t0 > first2 and h != "smol:2"], [])
        self.assertEqual(doc["channel"], "smol@production")
        self.assertGreaterEqual(doc["release_sequence"], 2)
        self.assertEqual([m.id for m in self.client.models.list().data], ["smol:2"])
        st, text, _ = self.http("GET", "/metrics", token=None)
        self.assertIn('mlvault_inference_model_info{model="smol:2"} 1', text)
        # the loads are audited as the internal actor
        rows = self.v.json("audit")
        loads = [(r["actor"], r["target"]) for r in rows if r["action"] == "load"]
        self.assertIn(("mlvault-serve", "smol:1"), loads)
        self.assertIn(("mlvault-serve", "smol:2"), loads)

    def test_12_failed_load_keeps_serving(self):
        """A release whose stored blob no longer verifies is not served: the previous model
        keeps serving, /health names the error, and once the blob is repaired the release
        is loaded at a later retry."""
        v3 = os.path.join(self.root, "smol-v3.gguf")
        subprocess.run([os.path.join(VENV, "bin", "gguf-new-metadata"), MODEL, v3,
                        "--general-description", "mlvault test: the third release", "--force"],
                       check=True, capture_output=True)
        self.v.ok("push", "smol", v3, "--parent", "smol:2", token="eng")
        # the gate's evaluation first (cached), so that the release needs no blob
        self.v.ok("eval", "smol:3", "--data", "gatetext", "--ctx", "64", token="eng")
        import hashlib
        with open(v3, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        blob = os.path.join(self.v.home, "objects", digest[:2], digest)
        with open(blob, "r+b") as f:
            f.seek(4096)
            byte = f.read(1)
            f.seek(4096)
            f.write(bytes([byte[0] ^ 1]))
        try:
            self.v.ok("promote", "smol:3", "--to", "production", token="eng")
            end, doc = time.time() + 60, None
            while time.time() < end:
                st, doc, _ = self.http("GET", "/health")
                if doc.get("last_error") and "smol:3" in doc["last_error"]:
                    break
                time.sleep(0.2)
            self.assertIn("smol:3", doc.get("last_error") or "", doc)
            self.assertEqual(doc["model"], "smol:2")
            r = self.complete("Hello", n=2)
            self.assertEqual(r.model, "smol:2")
        finally:
            with open(blob, "r+b") as f:
                f.seek(4096)
                f.write(byte)
        doc = self.wait_model("smol:3", timeout=120)
        self.assertIsNone(doc["last_error"])
        self.assertEqual(self.complete("Hello", n=2).model, "smol:3")


if __name__ == "__main__":
    unittest.main(verbosity=2)
