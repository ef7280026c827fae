"""End-to-end tests of `mlvault quantize` through the real binary, against independent
references:

- round to nearest is byte for byte llama.cpp's quantizer (llama-cpp-python's
  llama_model_quantize, "pure") for every type, and the PyPI `gguf` package's numpy
  quantizer where it has one, on a tiny model with hand-made edge rows
  (tests/ref/tiny_models.py quant); the Q4_0 and Q4_K_M recipes on SmolLM2 give
  llama.cpp's own files byte for byte;
- a stored version becomes a new version with its recipe as lineage and its evaluation
  recorded; the output loads in llama.cpp, whose perplexity on the same windows is
  within 1% of ours;
- imatrix and GPTQ lower the mean KL divergence of Q4_0 and Q4_K against RTN;
- --max-drop: success with the raised tensors listed, and failure with the best
  result, nothing stored;
- bad input: each a clear error, nothing stored.

The base is SmolLM2's Q4_1 file dequantized to F16 (mlvault convert --outtype f16).
Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_VENV, MLV_MODEL_GGUF,
MLV_SOURCE_DIR, MLV_SANITIZED."""
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
SANITIZED = os.environ.get("MLV_SANITIZED") == "1"
PY = os.path.join(VENV, "bin", "python")
REF = os.path.join(SRC, "tests", "ref", "quant_ref.py")
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
NUMPY_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def ref(*args):
    r = subprocess.run([PY, REF, *args], capture_output=True, text=True)
    return r


class QuantizeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(MODEL):
            raise unittest.SkipTest("the SmolLM2 model is not cached (scripts/fetch-model.sh)")
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="quantize-", dir=TMP)
        cls.v = Vault(cls.root)
        cls.v.add_user("eng", "engineer")
        cls.tiny = os.path.join(cls.root, "tiny.gguf")
        subprocess.run([PY, os.path.join(SRC, "tests/ref/tiny_models.py"), "quant", cls.tiny],
                       check=True)
        cls.base = os.path.join(cls.root, "base_f16.gguf")
        subprocess.run([BIN, "convert", MODEL, "-o", cls.base, "--outtype", "f16"], check=True,
                       capture_output=True)
        corpus = os.path.join(cls.root, "corpus.txt")
        subprocess.run([PY, os.path.join(SRC, "tests/ref/eval_corpus.py"), corpus], check=True,
                       capture_output=True)
        with open(corpus, "rb") as f:
            text = f.read()
        # calibration and evaluation text are disjoint parts of the corpus
        cls.calib = os.path.join(cls.root, "calib.txt")
        cls.evaltext = os.path.join(cls.root, "eval.txt")
        with open(cls.calib, "wb") as f:
            f.write(text[:16000])
        with open(cls.evaltext, "wb") as f:
            f.write(text[20000:20000 + (5000 if SANITIZED else 12000)])
        cls.v.ok("push", "smollm2", cls.base, token="eng")
        cls.v.ok("dataset", "push", "calibtext", cls.calib, token="eng")
        cls.v.ok("dataset", "push", "evaltext", cls.evaltext, token="eng")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def out(self, name):
        return os.path.join(self.root, name)

    def versions(self):
        return [r["version"] for r in self.v.json("list", "smollm2")]

    # ------------------------------------------------------------ byte exactness --
    def test_rtn_is_llama_cpp_byte_for_byte(self):
        for t in TYPES:
            ours, theirs = self.out(f"tiny_{t}.gguf"), self.out(f"tiny_llama_{t}.gguf")
            # Q5_K is no target of its own (it is Q5_K_M's base): an override sets it
            target = "Q4_K" if t == "Q5_K" else t
            self.v.ok("quantize", self.tiny, "--type", target, "--tensor-type", f".*={t}", "-o",
                      ours)
            r = ref("llama", self.tiny, theirs, t)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = ref("compare", ours, theirs)
            self.assertEqual(r.returncode, 0, f"{t}: {r.stderr}")
            self.assertEqual(json.loads(r.stdout)["types"][t], 16, t)
            r = ref("numpy", self.tiny, ours)
            self.assertEqual(r.returncode, 0, f"{t}: {r.stderr}")
            # the round trip loses what the format must, and no more
            err = json.loads(r.stdout)["types"][t]["max_rel_rmse"]
            self.assertLess(err, 0.1, t)

    def test_recipes_are_llama_cpp_files(self):
        """The default recipes on SmolLM2 (576-wide rows: K types fall back, the tied
        embedding is the output matrix) give llama.cpp's files byte for byte."""
        for t in ["Q4_0", "Q4_K_M"]:
            ours, theirs = self.out(f"s_{t}.gguf"), self.out(f"s_llama_{t}.gguf")
            self.v.ok("quantize", self.base, "--type", t, "-o", ours)
            r = ref("llama", self.base, theirs, t, "2", "--mix")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = ref("compare", ours, theirs)
            self.assertEqual(r.returncode, 0, f"{t}: {r.stderr}")

    def test_every_type_loads_in_llama_cpp_with_the_same_perplexity(self):
        short = self.out("short.txt")
        with open(self.evaltext, "rb") as f, open(short, "wb") as g:
            g.write(f.read()[:5000])
        types = ["Q4_0", "Q5_K_M"] if SANITIZED else \
            ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K", "Q4_K_M", "Q5_K_M"]
        for t in types:
            path = self.out(f"ppl_{t}.gguf")
            self.v.ok("quantize", self.base, "--type", t, "-o", path)
            ours = self.v.json("eval", path, "--data", short, "--metric", "perplexity",
                               "--ctx", "256")["value"]
            r = ref("ppl", path, short, "256")
            self.assertEqual(r.returncode, 0, f"{t}: {r.stderr}")
            theirs = json.loads(r.stdout)["perplexity"]
            self.assertLess(abs(theirs - ours) / ours, 0.01, (t, theirs, ours))
            os.unlink(path)

    def test_quantized_input_is_dequantized_with_a_warning(self):
        self.v.ok("push", "smolq41", MODEL, token="eng")
        res = self.v.json("quantize", "smolq41", "--type", "Q8_0", token="eng")
        self.assertTrue(any("dequantized first" in w for w in res["warnings"]), res)
        show = self.v.json("show", res["output"])
        self.assertIn("dequantized first", show["manifest"]["note"])
        self.assertEqual(show["manifest"]["lineage"]["job"]["params"]["dequantized_from"],
                         ["Q4_1", "Q8_0"])  # its token_embd is Q8_0
        self.assertEqual(show["manifest"]["tensor_types"], ["F32", "Q8_0"])

    def test_stored_hf_folder_quantizes_as_llama_cpp_does(self):
        """A Hugging Face qwen2 folder stored in the vault is converted in memory and
        quantized; the stored result is llama.cpp's quantization of the converted file."""
        hf = self.out("tiny-qwen2-hf")
        r = subprocess.run([PY, os.path.join(SRC, "tests/ref/hf_export.py"), "tiny-qwen2", hf],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr[-400:])
        self.v.ok("push", "tinyq", hf, token="eng")
        res = self.v.json("quantize", "tinyq", "--type", "Q8_0", token="eng")
        self.assertEqual(res["output"], "tinyq:2")
        show = self.v.json("show", "tinyq:2")
        self.assertEqual(show["manifest"]["architecture"], "qwen2")
        self.assertEqual(show["manifest"]["format"], "gguf")
        exp = self.out("tinyq-export")
        self.v.ok("export", "tinyq:2", "-o", exp, token="eng")
        ours = os.path.join(exp, [f for f in os.listdir(exp) if f.endswith(".gguf")][0])
        conv, theirs = self.out("tinyq.gguf"), self.out("tinyq_llama.gguf")
        self.v.ok("convert", hf, "-o", conv)
        r = ref("llama", conv, theirs, "Q8_0", "1", "--mix")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ref("compare", ours, theirs)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = self.v.json("run", "tinyq:2", "--prompt", "hello", "-n", "4", "--temp", "0",
                          token="eng")
        self.assertGreater(len(out["ids"]), 0)

    # ------------------------------------------------------- stored version ------
    def test_stored_version_lineage_eval_and_llama_cpp_perplexity(self):
        res = self.v.json("quantize", "smollm2:1", "--type", "Q4_K_M", "--eval-data",
                          "evaltext", "--ctx", "256", token="eng")
        out = res["output"]
        self.assertTrue(out.startswith("smollm2:"), res)
        show = self.v.json("show", out)
        lin = show["manifest"]["lineage"]
        self.assertEqual(lin["job"]["kind"], "quantize")
        params = lin["job"]["params"]
        self.assertEqual(params["type"], "Q4_K_M")
        self.assertEqual(params["method"], "rtn")
        # llama.cpp's use_more_bits over 30 layers: 0-2, then every third from 5, 27-29
        self.assertEqual(params["tensor_types"]["blk.0.ffn_down.weight"], "Q6_K")
        self.assertEqual(params["tensor_types"]["blk.4.ffn_down.weight"], "Q4_K")
        self.assertEqual(params["tensor_types"]["blk.5.ffn_down.weight"], "Q6_K")
        self.assertEqual(lin["parents"][0]["name"], "smollm2")
        self.assertEqual(lin["parents"][0]["version"], 1)
        evs = [e for e in show["evaluations"] if e["metric"] == "next_token_accuracy"]
        self.assertEqual(len(evs), 1)
        self.assertAlmostEqual(evs[0]["value"], res["evaluation"]["output"], places=9)
        self.assertGreater(res["evaluation"]["input"], 0.2)
        # the file loads in llama.cpp and gives the same perplexity within 1%
        exp = self.out("exported")
        self.v.ok("export", out, "-o", exp, token="eng")
        gguf = [f for f in os.listdir(exp) if f.endswith(".gguf")][0]
        r = ref("ppl", os.path.join(exp, gguf), self.evaltext, "256")
        self.assertEqual(r.returncode, 0, r.stderr)
        theirs = json.loads(r.stdout)["perplexity"]
        ours = res["evaluation"]["output_perplexity"]
        self.assertLess(abs(theirs - ours) / ours, 0.01, (theirs, ours))

    # ------------------------------------------------------ imatrix and GPTQ -----
    def kld(self, path):
        r = self.v.json("eval", path, "--data", self.evaltext, "--metric", "kld", "--baseline",
                        self.base, "--ctx", "256")
        return r["value"]

    def test_imatrix_and_gptq_beat_rtn(self):
        if SANITIZED:
            self.skipTest("calibration and GPTQ on SmolLM2 take minutes under ASan; the "
                          "release build's run covers this (and test_quantize_gptq the code)")
        for t in ["Q4_0", "Q4_K"]:
            k = {}
            for m in ["rtn", "imatrix", "gptq"]:
                path = self.out(f"m_{t}_{m}.gguf")
                args = ["quantize", self.base, "--type", t, "--method", m, "-o", path]
                if m != "rtn":
                    args += ["--calib", self.calib, "--calib-tokens", "2048", "--ctx", "256"]
                self.v.ok(*args)
                k[m] = self.kld(path)
            self.assertLess(k["imatrix"], k["rtn"], (t, k))
            self.assertLess(k["gptq"], k["rtn"], (t, k))
        # GPTQ with a Hessian budget that forces three calibration passes of 11 layers
        # writes the same bytes as one pass with every Hessian
        grouped = self.out("m_Q4_K_gptq_grouped.gguf")
        res = self.v.json("quantize", self.base, "--type", "Q4_K", "--method", "gptq", "-o",
                          grouped, "--calib", self.calib, "--calib-tokens", "2048", "--ctx",
                          "256", "--hessian-mb", "150")
        self.assertTrue(any("11 layers per pass" in w for w in res["warnings"]), res)
        with open(grouped, "rb") as f, open(self.out("m_Q4_K_gptq.gguf"), "rb") as g:
            self.assertTrue(f.read() == g.read(), "grouped GPTQ differs")

    # ------------------------------------------------------------ --max-drop ----
    def test_max_drop_raises_or_fails_with_the_best(self):
        before = self.versions()
        # no rounds allowed: Q4_0 loses more than 0.05 points on this text -> fails
        r = self.v.run("quantize", "smollm2:1", "--type", "Q4_0", "--eval-data", "evaltext",
                       "--calib", "calibtext", "--calib-tokens", "1024", "--ctx", "256",
                       "--max-drop", "0.05", "--max-rounds", "0", "--json", token="eng")
        self.assertEqual(r.returncode, EXIT["EGATE"], r.stderr)
        self.assertIn("not reached", r.stderr)
        self.assertIn("nothing stored", r.stderr)
        failed = json.loads(r.stdout)
        self.assertGreater(failed["best_drop"], 0.05)
        self.assertEqual(self.versions(), before)
        # with rounds: raised until the drop is under 0.5 points, the raised tensors listed
        res = self.v.json("quantize", "smollm2:1", "--type", "Q4_0", "--eval-data", "evaltext",
                          "--calib", "calibtext", "--calib-tokens", "1024", "--ctx", "256",
                          "--max-drop", "0.5", token="eng")
        self.assertLess(res["evaluation"]["drop"], 0.5)
        rounds = res["rounds"]
        if rounds[0]["drop"] >= 0.5:
            self.assertGreater(len(res["raised"]), 0)
            raised = {x["tensor"] for r_ in rounds for x in r_["raised"]}
            self.assertEqual(raised, {x["tensor"] for x in res["raised"]})
            lin = self.v.json("show", res["output"])["manifest"]["lineage"]
            self.assertEqual(sorted(lin["job"]["params"]["raised"]), sorted(raised))
        self.assertEqual(len(self.versions()), len(before) + 1)

    # ------------------------------------------------------------ a kill --------
    def test_killed_quantize_leaves_the_store_consistent(self):
        """SIGKILL while quantizing (or pushing) a stored version: no new version, the
        plaintext staging file is gone after the next command, fsck finds nothing."""
        import signal
        import time
        before = self.versions()
        e = dict(os.environ, MLVAULT_HOME=self.v.home, MLVAULT_TOKEN=self.v.tokens["eng"])
        for delay in (0.5, 1.5, 3.0):
            p = subprocess.Popen([BIN, "quantize", "smollm2:1", "--type", "Q4_K_M"], env=e,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            r = self.v.run("fsck", token="admin")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            tmp = os.path.join(self.v.home, "tmp")
            self.assertEqual([f for f in os.listdir(tmp) if f.startswith("quant-")], [])
        # a kill after the push committed leaves a whole version, never half of one
        for ver in self.versions()[len(before):]:
            self.v.ok("verify", f"smollm2:{ver}", token="eng")

    # ------------------------------------------------------------ bad input -----
    def test_bad_input(self):
        binary = self.out("binary.dat")
        with open(binary, "wb") as f:
            f.write(bytes(range(256)) * 4)
        self.v.ok("dataset", "push", "blob", binary, token="eng")
        other = self.out("other_arch.gguf")
        r = subprocess.run([PY, "-c", (
            "import sys\n"
            "from gguf import GGUFWriter\n"
            "import numpy as np\n"
            "w = GGUFWriter(sys.argv[1], 'mamba')\n"
            "w.add_tensor('blk.0.ssm_in.weight', np.ones((32, 64), np.float32))\n"
            "w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file()\n"
            "w.close()\n"), other], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        before = self.versions()
        cases = [
            (["quantize", "smollm2:1", "--type", "Q3_K"], EXIT["EINVAL"], "unknown quantization type"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--eval-data", "blob"], EXIT["EINVAL"],
             "not text"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--method", "imatrix", "--calib", "blob"],
             EXIT["EINVAL"], "not text"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--tensor-type", "blk\\.99\\..*=Q8_0"],
             EXIT["EINVAL"], "matches no weight matrix"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--tensor-type", "attn_q=Q9"],
             EXIT["EINVAL"], "unknown type"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--method", "gptq"], EXIT["EINVAL"],
             "--calib"),
            (["quantize", "smollm2:1", "--type", "Q4_0", "--max-drop", "1"], EXIT["EINVAL"],
             "--eval-data"),
            (["quantize", other, "--type", "Q4_0", "-o", self.out("x.gguf")],
             EXIT["EUNSUPPORTED"], "architecture 'mamba' is not supported"),
            (["quantize", self.base, "--type", "Q4_0"], EXIT["EINVAL"], "-o"),
            (["quantize", "nosuchmodel", "--type", "Q4_0"], EXIT["ENOTFOUND"], "nosuchmodel"),
        ]
        self.v.add_user("viewer", "viewer")
        r = self.v.run("quantize", "smollm2:1", "--type", "Q8_0", token="viewer")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        for args, code, msg in cases:
            r = self.v.run(*args, token="eng")
            self.assertEqual(r.returncode, code, f"{args}: {r.stderr}")
            self.assertIn(msg, r.stderr, args)
            self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(self.versions(), before)
        self.assertFalse(os.path.exists(self.out("x.gguf")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
