#!/usr/bin/env python3
"""Builds the small tokenizer fixtures tests/test_engine_tok.c checks engine/tokenizer.c
against: GGUF files that hold only a vocabulary (plus the few llama hyperparameters
llama.cpp reads before it looks at the vocabulary; it opens them with vocab_only and
needs no tensors). Everything is derived from the fixed corpus below, so the files are
the same bytes on every run (tests/golden/tok_fixtures.json records their SHA-256).

  spm.gguf           SentencePiece ("llama"): <unk> <s> </s>, the 256 byte tokens
                     <0x00>..<0xFF>, a user-defined and a control token, an unused one,
                     and pieces from a small BPE run over the corpus, scored by merge
                     order. Characters outside the corpus have no piece (byte fallback).
  spm_noprefix.gguf  the same vocabulary with add_space_prefix, add_bos_token off and
                     add_eos_token on.
  bpe_<pre>.gguf     byte-level BPE ("gpt2"): GPT-2's 256 byte characters, merges learnt
                     over the whole corpus without any pre-tokenization (so they cross
                     spaces, digits and punctuation, and the pre-tokenizer shows in the
                     ids), special tokens, and whole-word tokens no merge reaches (for
                     llama3's ignore_merges), one file per tokenizer.ggml.pre value.

Usage: make_tok_fixtures.py OUT_DIR        (prints "name sha256" per file)
Needs the PyPI `gguf` package (the project's .venv has it)."""
import hashlib
import os
import sys

from gguf import GGUFWriter

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "We've been there, they'll go, I'm here and you're not; she'd say it's fine.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 365 2024 31415926535 1,000,000.",
    "Hello world! Hello, World? hello... HELLO!!!",
    "    def main():\n        return [x * 2 for x in range(10)]\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 1 + 2);\n\treturn 0;\n}\n",
    "Tabs\tand\nnewlines\r\nand   spaces   everywhere  \n\n  ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "the the the and and of of to to in in is is that that for for",
    "<html><body class=\"x\">text &amp; more</body></html>",
    "email: someone@example.com, url: https://example.org/a/b?c=d",
]

# Whole-word byte-level tokens that no merge produces (see ignore_merges).
BPE_WORD_TOKENS = ["\u0120hello", "\u0120World", "zebra"]
BPE_SPECIALS = [  # (text, token type): 3 control, 4 user-defined, 1 normal
    ("<|endoftext|>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<|ud|>", 4),
    ("<|eot_id|>", 1),  # a normal-typed token llama.cpp turns into a control one
]
BPE_PRES = ["default", "gpt-2", "llama-bpe", "qwen2", "deepseek-r1-qwen", "smollm"]


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) +
          list(range(0xAE, 0xFF + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(words, n_merges):
    """Plain BPE: words is a list of strings (with repeats), split into characters; the
    most frequent adjacent pair is merged each round, ties broken by the pair's text."""
    words = [list(w) for w in words]
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def llama_hparams(w, n_vocab):
    # What llama.cpp's llama arch reads before the vocabulary (vocab_only stops there).
    w.add_uint32("llama.context_length", 256)
    w.add_uint32("llama.embedding_length", 64)
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.feed_forward_length", 128)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_uint32("llama.attention.head_count_kv", 4)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32("llama.rope.dimension_count", 16)
    w.add_uint32("llama.vocab_size", n_vocab)


def write(path, build):
    w = GGUFWriter(path, "llama")
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_vocab():
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        scores.append(0.0)
        types.append(6)
    tokens += ["<|ud|>", "<|ctrl|>"]
    scores += [0.0, 0.0]
    types += [4, 3]
    # pieces: SentencePiece-style words ("\u2581" for the space before each word)
    words = []
    for line in CORPUS:
        for word in line.replace("\n", " ").replace("\t", " ").replace("\r", " ").split(" "):
            if word:
                words.append("\u2581" + word)
    chars = sorted({c for w in words for c in w})
    merges = learn_merges(words, 400)
    pieces = []
    for a, b in merges:
        if a + b not in pieces:
            pieces.append(a + b)
    for i, p in enumerate(pieces):  # earlier merges score higher
        tokens.append(p)
        scores.append(-float(i))
        types.append(1)
    for i, c in enumerate(chars):
        if c in ("\u00e9", "\u00df") or ord(c) < 128:  # other characters: byte fallback
            if c not in tokens:
                tokens.append(c)
                scores.append(-1000.0 - i)
                types.append(1)
    tokens.append("\u2581unusedpiece")
    scores.append(-5.0)
    types.append(5)
    return tokens, scores, types


def bpe_vocab():
    b2u = bytes_to_unicode()
    alphabet = [b2u[b] for b in range(256)]
    encoded = ["".join(b2u[b] for b in line.encode("utf-8")) for line in CORPUS]
    merges = learn_merges(encoded, 700)
    tokens = list(alphabet)
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    for t in BPE_WORD_TOKENS:
        if t not in tokens:
            tokens.append(t)
    types = [1] * len(tokens)
    for text, ty in BPE_SPECIALS:
        tokens.append(text)
        types.append(ty)
    return tokens, types, ["%s %s" % m for m in merges]


def build_all(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    made = []

    tokens, scores, types = spm_vocab()

    def spm(w, noprefix=False):
        llama_hparams(w, len(tokens))
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        if noprefix:
            w.add_add_space_prefix(False)
            w.add_add_bos_token(False)
            w.add_add_eos_token(True)

    write(os.path.join(out_dir, "spm.gguf"), spm)
    made.append("spm.gguf")
    write(os.path.join(out_dir, "spm_noprefix.gguf"), lambda w: spm(w, True))
    made.append("spm_noprefix.gguf")

    btokens, btypes, bmerges = bpe_vocab()
    eot = btokens.index("<|endoftext|>")
    for pre in BPE_PRES:
        def bpe(w, pre=pre):
            llama_hparams(w, len(btokens))
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(pre)
            w.add_token_list(btokens)
            w.add_token_types(btypes)
            w.add_token_merges(bmerges)
            w.add_bos_token_id(eot)
            w.add_eos_token_id(eot)
        name = "bpe_%s.gguf" % pre
        write(os.path.join(out_dir, name), bpe)
        made.append(name)
    return made


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name in build_all(sys.argv[1]):
        print(name, sha256_file(os.path.join(sys.argv[1], name)))
