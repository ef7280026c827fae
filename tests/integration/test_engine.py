"""End-to-end tests of `mlvault run`, `mlvault eval` and `mlvault convert` through the real
binary: generation from a file and from a stored version (decrypted in memory) agrees
with llama.cpp's golden greedy continuation (tests/golden/llama_q4_1.json); seeds
reproduce; chat prompts go through the model's template; evaluations of stored
versions are recorded with the dataset digest, cached, and shown by `mlvault show`;
a Hugging Face folder stored in the vault runs through the in-memory converter; bad
input gets a clear error and the right exit code.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_VENV, MLV_MODEL_GGUF,
MLV_SOURCE_DIR."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from test_vault import BIN, EXIT, MODEL, TMP, VENV, Vault  # noqa: E402

SRC = os.environ.get("MLV_SOURCE_DIR", ".")
# Under sanitizers (several times slower) the evaluations use less text.
SANITIZED = os.environ.get("MLV_SANITIZED") == "1"
PY = os.path.join(VENV, "bin", "python")


def golden():
    with open(os.path.join(SRC, "tests", "golden", "llama_q4_1.json")) as f:
        return json.load(f)


class EngineTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(MODEL):
            raise unittest.SkipTest("the SmolLM2 model is not cached (scripts/fetch-model.sh)")
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="engine-", dir=TMP)
        cls.v = Vault(cls.root)
        cls.v.add_user("eng", "engineer")
        cls.v.add_user("view", "viewer")
        cls.v.ok("push", "smollm2", MODEL, token="eng")
        # an evaluation text of ~3,000 tokens: the start of the corpus
        corpus = os.path.join(cls.root, "corpus.txt")
        subprocess.run([PY, os.path.join(SRC, "tests/ref/eval_corpus.py"), corpus], check=True)
        with open(corpus, "rb") as f:
            text = f.read()[:4000 if SANITIZED else 12000]
        cls.text = os.path.join(cls.root, "eval.txt")
        with open(cls.text, "wb") as f:
            f.write(text)
        cls.v.ok("dataset", "push", "evaltext", cls.text, token="eng")
        cls.v.ok("dataset", "push", "mc", os.path.join(SRC, "tests/data/mc_general.jsonl"),
                 token="eng")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def run_json(self, *args, token="eng"):
        return self.v.json("run", *args, token=token)

    def test_greedy_matches_llama_cpp_from_file_and_vault(self):
        g = golden()["greedy"][0]
        want = g["ids"][:24]
        for src in (MODEL, "smollm2", "smollm2:1"):
            out = self.run_json(src, "--prompt", g["prompt"], "-n", "24", "--temp", "0")
            self.assertEqual(out["prompt_ids"], g["prompt_ids"], src)
            self.assertEqual(out["ids"][:len(want)], want[:len(out["ids"])], src)
            self.assertGreater(out["decode_tokens_per_s"], 0)
            self.assertGreater(out["prefill_tokens_per_s"], 0)
        # the load of a stored version is audited
        rows = self.v.json("audit")
        self.assertTrue(any(r["action"] == "load" and r["target"] == "smollm2:1" for r in rows))

    def test_text_streams_and_seed_reproduces(self):
        r = self.v.ok("run", MODEL, "--prompt", "Once upon a time", "-n", "12", "--seed", "7")
        self.assertTrue(r.stdout.strip())
        self.assertIn("tok/s", r.stderr)
        a = self.run_json(MODEL, "--prompt", "Once upon a time", "-n", "20", "--seed", "7",
                          "--temp", "1.0", "--top-k", "0", "--top-p", "1", "--min-p", "0")
        b = self.run_json(MODEL, "--prompt", "Once upon a time", "-n", "20", "--seed", "7",
                          "--temp", "1.0", "--top-k", "0", "--top-p", "1", "--min-p", "0")
        c = self.run_json(MODEL, "--prompt", "Once upon a time", "-n", "20", "--seed", "8",
                          "--temp", "1.0", "--top-k", "0", "--top-p", "1", "--min-p", "0")
        self.assertEqual(a["ids"], b["ids"])
        self.assertEqual(a["seed"], 7)
        self.assertNotEqual(a["ids"], c["ids"])

    def test_chat_uses_the_template(self):
        out = self.run_json(MODEL, "--chat", "--prompt", "What is the capital of France?",
                            "-n", "16", "--temp", "0")
        # rendered as SmolLM2's Jinja template does (default system prompt, ChatML) and
        # tokenized by llama.cpp with its special tokens parsed
        ref = subprocess.run(
            [PY, "-c",
             "import sys, llama_cpp, jinja2, json\n"
             "m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
             "t = m.metadata['tokenizer.chat_template']\n"
             "s = jinja2.Template(t).render(messages=[{'role':'user','content':sys.argv[2]}],"
             " add_generation_prompt=True)\n"
             "print(json.dumps(m.tokenize(s.encode(), add_bos=False, special=True)))",
             MODEL, "What is the capital of France?"], capture_output=True, text=True)
        if ref.returncode != 0:
            self.skipTest("llama-cpp-python is not installed: " + ref.stderr[-200:])
        self.assertEqual(out["prompt_ids"], json.loads(ref.stdout))
        self.assertEqual(out["stop_reason"] in ("eog", "length"), True)

    def test_eval_recorded_cached_and_shown(self):
        with open(self.text, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        first = self.v.json("eval", "smollm2", "--data", "evaltext", "--metric",
                            "next_token_accuracy", "--ctx", "256", token="eng")
        self.assertFalse(first["cached"])
        self.assertEqual(first["dataset_digest"], digest)
        self.assertGreater(first["n_samples"], 300 if SANITIZED else 1000)
        self.assertTrue(0.2 < first["value"] < 0.9)
        self.assertLess(first["ci_low"], first["value"])
        self.assertGreater(first["ci_high"], first["value"])
        again = self.v.json("eval", "smollm2", "--data", "evaltext", "--metric",
                            "next_token_accuracy", "--ctx", "256", token="eng")
        self.assertTrue(again["cached"])
        self.assertEqual(again["value"], first["value"])
        # the same text given as a file is the same dataset digest: the cache answers
        byfile = self.v.json("eval", "smollm2", "--data", self.text, "--metric",
                             "next_token_accuracy", "--ctx", "256", token="eng")
        self.assertEqual(byfile["value"], first["value"])
        show = self.v.json("show", "smollm2:1")
        evs = [e for e in show["evaluations"] if e["metric"] == "next_token_accuracy"]
        self.assertEqual(evs[0]["dataset_digest"], digest)
        self.assertEqual(evs[0]["dataset"], "evaltext:1")
        self.assertEqual(evs[0]["n_samples"], first["n_samples"])
        self.assertIn("mlvault", evs[0]["engine"])
        # perplexity agrees with the accuracy run's by-product
        ppl = self.v.json("eval", "smollm2", "--data", "evaltext", "--metric", "perplexity",
                          "--ctx", "256", token="eng")
        self.assertAlmostEqual(ppl["value"], first["perplexity"], places=6)
        # a viewer may evaluate files but not record results
        r = self.v.run("eval", "smollm2", "--data", "evaltext", "--metric", "perplexity",
                       "--ctx", "128", token="view")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)

    def test_mc(self):
        if SANITIZED:
            self.skipTest("77 questions x 4 choices: the release build's run covers this")
        mc = self.v.json("eval", "smollm2", "--data", "mc", "--metric", "mc_accuracy",
                         token="eng")
        self.assertGreaterEqual(mc["n_samples"], 50)
        want = golden()["mc"]["accuracy"]
        self.assertLessEqual(abs(mc["value"] - want), 2.0 / mc["n_samples"] + 1e-9)

    def test_kld_against_itself_is_zero(self):
        kld = self.v.json("eval", MODEL, "--data", self.text, "--metric", "kld", "--baseline",
                          "smollm2", "--ctx", "128", token="eng")
        self.assertLess(abs(kld["value"]), 1e-6)
        self.assertEqual(kld["same_top"], 1.0)

    def test_hf_folder_in_the_vault_runs(self):
        """A Hugging Face folder (made from the tiny llama by tests/ref/hf_export.py)
        stored in the vault runs through the in-memory converter exactly as the file
        `mlvault convert` writes from the folder does."""
        tiny = os.path.join(self.root, "tiny.gguf")
        hf = os.path.join(self.root, "tiny-hf")
        subprocess.run([PY, os.path.join(SRC, "tests/ref/tiny_models.py"), "llama", tiny],
                       check=True)
        r = subprocess.run([PY, os.path.join(SRC, "tests/ref/hf_export.py"), "gguf", tiny, hf],
                           capture_output=True, text=True)
        if r.returncode != 0:
            self.fail("hf_export: " + r.stderr[-400:])
        self.v.ok("push", "tinyhf", hf, token="eng")
        conv = os.path.join(self.root, "tiny-back.gguf")
        self.v.ok("convert", hf, "-o", conv)
        a = self.run_json(conv, "--prompt", "hello", "-n", "8", "--temp", "0")
        b = self.run_json("tinyhf", "--prompt", "hello", "-n", "8", "--temp", "0")
        c = self.run_json(hf, "--prompt", "hello", "-n", "8", "--temp", "0")
        self.assertEqual(len(a["ids"]) + len(a["prompt_ids"]) > 1, True)
        self.assertEqual(a["prompt_ids"], b["prompt_ids"])
        self.assertEqual(a["ids"], b["ids"])
        self.assertEqual(a["ids"], c["ids"])

    def test_bad_input(self):
        bad = os.path.join(self.root, "bad.gguf")
        with open(bad, "wb") as f:
            f.write(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
        cases = [
            (["run", bad, "--prompt", "x"], EXIT["EINVAL"], "gguf"),
            (["run", "nosuchmodel", "--prompt", "x"], EXIT["ENOTFOUND"], "nosuchmodel"),
            (["run", MODEL], EXIT["EINVAL"], "usage"),
            (["run", MODEL, "--prompt", "x", "--temp", "-1"], EXIT["EINVAL"], "--temp"),
            (["run", MODEL, "--prompt", "x", "--backend", "gpu"], EXIT["EINVAL"], "--backend"),
            (["run", "evaltext", "--prompt", "x"], EXIT["EINVAL"], "not a model"),
            (["eval", MODEL, "--data", self.text, "--metric", "bogus"], EXIT["EINVAL"], "metric"),
            (["eval", MODEL, "--data", self.text, "--metric", "kld"], EXIT["EINVAL"], "baseline"),
            (["eval", MODEL, "--data", "nosuchdata", "--metric", "perplexity"],
             EXIT["ENOTFOUND"], "nosuchdata"),
            (["eval", MODEL, "--data", self.text, "--metric", "mc_accuracy"], EXIT["EINVAL"],
             "line 1"),
            (["eval", MODEL, "--data", os.path.join(SRC, "tests/data/mc_general.jsonl"),
              "--metric", "perplexity", "--ctx", "65536"], EXIT["EINVAL"], "window"),
        ]
        before = self.v.json("show", "smollm2:1")["evaluations"]
        for args, code, msg in cases:
            r = self.v.run(*args, token="eng")
            self.assertEqual(r.returncode, code, f"{args}: {r.stderr}")
            self.assertIn(msg, r.stderr, args)
            self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(self.v.json("show", "smollm2:1")["evaluations"], before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
