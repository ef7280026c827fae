#!/usr/bin/env python3
"""Golden figures from llama.cpp (through llama-cpp-python) for a GGUF llama/qwen2
model, which mlvault's engine (issue 4) is tested against: logits, greedy generations,
perplexity / next-token accuracy, and multiple-choice accuracy.

usage: make_llama_golden.py MODEL.gguf TAG
       writes tests/golden/llama_TAG.json (llama_TAG.json.gz when over 1 MB)

Everything runs on the CPU with 2 threads, no flash attention (llama.cpp's default F16
KV cache), one sequence; nothing is sampled, so a rerun on the same machine and
llama.cpp version gives the same file. llama.cpp rounds activations to the weight
type's dot-product type (e.g. Q8_1 blocks for Q4_1 weights), so an exact float64
forward pass (tests/ref/np_forward.py) differs from these logits by a small amount;
the tests compare with tolerances. "system_info" records the SIMD paths llama.cpp used.

The file holds:
  model_sha256, llama_cpp_version, script, system_info, add_bos (the model's
  tokenizer.ggml.add_bos_token, used everywhere below), bos_id, eos_id.

  logits: {"tokens": the first 1100 tokens of the evaluation corpus
           (tests/ref/eval_corpus.py), tokenized with BOS first when add_bos,
           "top": per position the 8 highest [id, logit] pairs, highest first (logits
           rounded to 1e-4), all positions from one llama_decode of the 1100 tokens
           (n_batch = n_ubatch = 2048)}

  greedy: [{"prompt", "chat" (true: the prompt is a ChatML rendering whose special
           tokens are parsed), "prompt_ids" (BOS first when add_bos), "ids" (up to 48
           generated ids: each the argmax of the last position's logits, lowest id on
           ties; the prompt is decoded as one batch, then one token per decode; the
           stop token, EOS or <|im_end|>, is included as the last id when reached),
           "stop" ("eog" | "length"), "margins" (per step, top-1 minus top-2 logit:
           where a margin is tiny a correct engine may legitimately pick the other
           token), "text" (the generated ids detokenized without special tokens)}]

  eval:   the engine's text metrics, defined exactly as follows (eng_evaluate):
           tokenize the whole corpus (BOS first only when add_bos); cut the tokens into
           consecutive non-overlapping windows of ctx = 512 tokens, dropping the final
           partial window; when add_bos, each window's first token is replaced by BOS
           (as llama-perplexity does). Each window is decoded from an empty KV cache
           with logits at every position. For each window position i in
           ctx/2 .. ctx-1 (the first half is context only), with p = softmax of the
           logits at position i-1 (computed in float64):
             NLL_i = -log p[token_i];  correct_i = (argmax of those logits == token_i)
           perplexity = exp(mean NLL), accuracy = mean correct, over all windows;
           n_scored = n_windows * ctx/2. (llama-perplexity scores ctx/2 - 1 tokens per
           window, from ctx/2 + 1; we also score position ctx/2.) Also recorded:
           corpus_sha256, n_tokens (whole corpus), n_windows, window_nll (mean NLL per
           window).

  mc:     tests/data/mc_general.jsonl scored as lm-evaluation-harness's loglikelihood
           ("acc"): for each choice, whole = tok(context + choice) and ctx =
           tok(context) (BOS first when add_bos, special tokens not parsed); the
           choice's tokens are whole[len(ctx):], i.e. the boundary is drawn by the
           context's token count and the input is always `whole`'s own tokens (if a
           token merged across the boundary, whole[:len(ctx)] is what the model sees;
           "boundary_merges" counts such cases, 0 for this data since every choice
           begins with a space). score = sum over j in len(ctx) .. len(whole)-1 of
           log softmax(logits at j-1)[whole[j]] (float64), from one decode of whole
           from an empty cache. pick = argmax of the scores (first on ties);
           accuracy = fraction of questions with pick == answer. Per question:
           "scores" (rounded to 1e-4), "pick", "answer", "n_tokens" (per choice).
"""
import gzip
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import eval_corpus  # noqa: E402

try:
    import llama_cpp
except ImportError:
    sys.exit("make_llama_golden: llama-cpp-python is missing (scripts/deps-llama-cpp.sh installs it)")

N_THREADS = 2
LOGITS_TOKENS = 1100
TOP_K = 8
N_GREEDY = 48
EVAL_CTX = 512


def chatml(question):
    """SmolLM2's chat template rendered for one user message (its default system prompt,
    then the assistant header)."""
    return ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
            "Hugging Face<|im_end|>\n<|im_start|>user\n" + question +
            "<|im_end|>\n<|im_start|>assistant\n")


# Chosen among candidates for fairly large top-1 margins on the Q4_1 model (a 135M model
# is often undecided; the margins are recorded for the tests to allow for that).
PROMPTS = [
    ("The capital of France is", False),
    ("1, 2, 3, 4, 5,", False),
    ("Water boils at a temperature of", False),
    ("import numpy as np\n", False),
    ("The three primary colors are", False),
    ("The word café comes from the French, where it means", False),
    (chatml("Give me a short tip for staying healthy."), True),
    (chatml("Write a haiku about the sea."), True),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Runner:
    """One llama.cpp context over the model; decode() starts from an empty KV cache."""

    def __init__(self, path, n_ctx, n_batch, logits_all):
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch,
                                   n_ubatch=n_batch, n_threads=N_THREADS,
                                   n_threads_batch=N_THREADS, logits_all=logits_all,
                                   flash_attn=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.logits_all = logits_all

    def decode_all(self, ids):
        """Logits (len(ids), n_vocab) float32 of one pass from an empty cache."""
        assert self.logits_all and len(ids) <= self.llm.n_batch
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def last_logits(self):
        # with logits_all off only the batch's last token has an output: row 0
        p = self.llm._ctx.get_logits()
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).astype(np.float32)


def log_softmax(row):
    row = row.astype(np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


def tokenize(llm, text, add_bos, special=False):
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)


def section_logits(path, corpus, add_bos):
    r = Runner(path, n_ctx=2048, n_batch=2048, logits_all=True)
    ids = tokenize(r.llm, corpus, add_bos)[:LOGITS_TOKENS]
    lg = r.decode_all(ids)
    top = []
    for row in lg:
        # highest first; lowest id first among equal logits
        order = np.lexsort((np.arange(len(row)), -row))[:TOP_K]
        top.append([[int(i), round(float(row[i]), 4)] for i in order])
    return {"tokens": [int(t) for t in ids], "top": top}


def section_greedy(path, add_bos, eog_ids):
    r = Runner(path, n_ctx=1024, n_batch=512, logits_all=False)
    out = []
    for prompt, chat in PROMPTS:
        ids = tokenize(r.llm, prompt, add_bos, special=chat)
        r.llm.reset()
        r.llm.eval(ids)
        gen, margins, stop = [], [], "length"
        for _ in range(N_GREEDY):
            lg = r.last_logits()
            nxt = int(np.argmax(lg))   # first maximum = lowest id on ties
            second = np.partition(lg, -2)[-2]
            margins.append(round(float(lg[nxt] - second), 4))
            gen.append(nxt)
            if nxt in eog_ids:
                stop = "eog"
                break
            r.llm.eval([nxt])
        text = r.llm.detokenize(gen, special=False).decode("utf-8", errors="replace")
        out.append({"prompt": prompt, "chat": chat, "prompt_ids": [int(t) for t in ids],
                    "ids": gen, "stop": stop, "margins": margins, "text": text})
        print(f"  greedy {prompt[:40]!r}: {text[:60]!r}", file=sys.stderr)
    return out


def section_eval(path, corpus, add_bos, bos_id):
    r = Runner(path, n_ctx=EVAL_CTX, n_batch=EVAL_CTX, logits_all=True)
    toks = tokenize(r.llm, corpus, add_bos)
    n_windows = len(toks) // EVAL_CTX
    half = EVAL_CTX // 2
    nll_sum, n_correct, window_nll = 0.0, 0, []
    for w in range(n_windows):
        win = list(toks[w * EVAL_CTX:(w + 1) * EVAL_CTX])
        if add_bos:
            win[0] = bos_id
        lg = r.decode_all(win)
        wn = 0.0
        for i in range(half, EVAL_CTX):
            row = lg[i - 1]
            wn -= log_softmax(row)[win[i]]
            n_correct += int(np.argmax(row) == win[i])
        nll_sum += wn
        window_nll.append(round(wn / half, 6))
    n_scored = n_windows * half
    res = {"ctx": EVAL_CTX, "corpus_sha256": eval_corpus.SHA256, "n_tokens": len(toks),
           "n_windows": n_windows, "n_scored": n_scored,
           "perplexity": round(float(np.exp(nll_sum / n_scored)), 6),
           "accuracy": round(n_correct / n_scored, 6), "window_nll": window_nll}
    print(f"  eval: ppl {res['perplexity']:.4f} acc {res['accuracy']:.4f} over {n_scored}",
          file=sys.stderr)
    return res


def section_mc(path, add_bos):
    mc_path = os.path.join(ROOT, "tests", "data", "mc_general.jsonl")
    r = Runner(path, n_ctx=512, n_batch=512, logits_all=True)
    questions, n_right, merges = [], 0, 0
    with open(mc_path, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    for q in data:
        ctx_ids = tokenize(r.llm, q["context"], add_bos)
        scores, n_tokens = [], []
        for choice in q["choices"]:
            whole = tokenize(r.llm, q["context"] + choice, add_bos)
            if whole[:len(ctx_ids)] != ctx_ids:
                merges += 1
            n = len(ctx_ids)
            assert len(whole) > n, (q["context"], choice)
            lg = r.decode_all(whole)
            s = sum(log_softmax(lg[j - 1])[whole[j]] for j in range(n, len(whole)))
            scores.append(float(s))
            n_tokens.append(len(whole) - n)
        pick = int(np.argmax(scores))
        n_right += int(pick == q["answer"])
        questions.append({"scores": [round(s, 4) for s in scores], "pick": pick,
                          "answer": q["answer"], "n_tokens": n_tokens})
    acc = n_right / len(data)
    print(f"  mc: accuracy {acc:.4f} ({n_right}/{len(data)})", file=sys.stderr)
    return {"file": "tests/data/mc_general.jsonl",
            "file_sha256": sha256_file(mc_path), "n_questions": len(data),
            "accuracy": round(acc, 6), "boundary_merges": merges, "questions": questions}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_llama_golden.py MODEL.gguf TAG")
    path, tag = sys.argv[1], sys.argv[2]
    if not tag.replace("_", "").isalnum():
        sys.exit("make_llama_golden: TAG must be letters, digits and _")
    corpus = eval_corpus.corpus_bytes().decode("utf-8")

    probe = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(probe.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos_id, eos_id = int(probe.token_bos()), int(probe.token_eos())
    eog_ids = {eos_id}
    im_end = probe.tokenize(b"<|im_end|>", add_bos=False, special=True)
    if len(im_end) == 1:
        eog_ids.add(int(im_end[0]))
    del probe

    gold = {
        "model_sha256": sha256_file(path),
        "model_file": os.path.basename(path),
        "llama_cpp_version": llama_cpp.__version__,
        "script": "tests/ref/make_llama_golden.py",
        "system_info": llama_cpp.llama_print_system_info().decode(),
        "n_threads": N_THREADS,
        "add_bos": add_bos, "bos_id": bos_id, "eos_id": eos_id,
        "eog_ids": sorted(eog_ids),
    }
    print(f"make_llama_golden: {path} (add_bos {add_bos})", file=sys.stderr)
    gold["logits"] = section_logits(path, corpus, add_bos)
    gold["greedy"] = section_greedy(path, add_bos, eog_ids)
    gold["eval"] = section_eval(path, corpus, add_bos, bos_id)
    gold["mc"] = section_mc(path, add_bos)

    blob = (json.dumps(gold, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    out = os.path.join(ROOT, "tests", "golden", f"llama_{tag}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for stale in (out, out + ".gz"):
        if os.path.exists(stale):
            os.remove(stale)
    if len(blob) > 1 << 20:
        out += ".gz"
        # mtime 0: the same content gives the same bytes
        blob = gzip.compress(blob, mtime=0)
    with open(out + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(out + ".tmp", out)
    print(f"make_llama_golden: wrote {os.path.relpath(out, ROOT)} ({len(blob)} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
