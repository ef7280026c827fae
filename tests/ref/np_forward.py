#!/usr/bin/env python3
"""Independent reference forward pass for GGUF llama and qwen2 models, in float64 numpy.

It exists so that engine/model.c (and its fast kernels) can be checked against a second
implementation that shares no code with it: the file is read with the PyPI `gguf`
package's GGUFReader, every tensor is dequantized with gguf.quants.dequantize, and the
transformer is written out plainly below. It is not fast and not meant to be; it does
not quantize activations or keep an F16 KV cache as llama.cpp does, so its logits differ
from llama.cpp's. Measured against llama-cpp-python 0.3.36 (--check / --golden), logit
std about 6.3:
  SmolLM2-135M Q4_1, first 1100 corpus tokens: top-1 agreement 95.8%, mean |diff|
      0.17, max 2.5 (llama.cpp rounds each matmul input to Q8_1/Q8_0 blocks; over 30
      layers the rounding drifts, and top-1 flips where two logits are close)
  the same weights dequantized to F32 (no activation rounding in llama.cpp): top-1
      99.8%, mean |diff| 0.003, max 0.08 — the reference itself agrees closely
  tests/ref/tiny_models.py qwen2 (F32) / llama (F16), ~126 tokens: top-1 100%, max
      |diff| 0.007 / 0.017

The model, as llama.cpp's llm_build_llama / llm_build_qwen2 compute it:

  x = token_embd[ids]                                    (T, d)
  for each layer l:
      h = rmsnorm(x) * attn_norm
      q = h Wq^T (+ bq)   k = h Wk^T (+ bk)   v = h Wv^T (+ bv)
      rope(q), rope(k)        llama: "norm" rotation of adjacent pairs (2i, 2i+1)
                              (ggml rope type 0; GGUF llama Q/K rows are already
                              permuted for it by the converter)
                              qwen2: "neox" rotation of halves (i, i + n_rot/2)
      attention per head, GQA (kv head = head // (n_head / n_head_kv)), causal mask,
      scale 1/sqrt(head_dim), softmax
      x = x + attn Wo^T
      h = rmsnorm(x) * ffn_norm
      x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T
  logits = (rmsnorm(x) * output_norm) Wout^T   Wout = output.weight, or token_embd
                                               when the file has no output.weight

With --ggml (emulate_ggml=True) it also rounds what llama.cpp's CPU backend rounds:
the input of every matrix product to the weight type's "vec_dot_type" (Q8_1 blocks for
Q4_1/Q5_1, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_K for K-quants, F16 for F16), K and V to F16 (its
KV cache), Q to F16 for QK^T and the softmax probabilities to F16 for P V (the path
without flash attention). On one token it removes most of the difference (SmolLM2
Q4_1: mean |diff| 0.14 -> 0.04; tiny models: exact to 1e-5); over long sequences it does
not help, because float64 vs float32 inputs make different values land on the other
side of a rounding step and the model amplifies that. It explains differences; the
plain mode is the reference.

usage: np_forward.py MODEL.gguf (--tokens 1,2,3 | --text "...") [--out logits.npy] [--ggml]
       (without --out prints the top-5 [id, logit] of the last position)
       np_forward.py MODEL.gguf (--tokens ... | --text ...) --check
       compares both modes with llama-cpp-python (logits_all, one context, 2 threads)
       and prints a JSON line: max/mean absolute logit difference, top-1 agreement.
       np_forward.py MODEL.gguf --golden tests/golden/llama_TAG.json [--n N]
       compares with a golden file's "logits" section (make_llama_golden.py): top-1
       agreement and the absolute differences over the golden top-8 entries, which
       calibrates the tolerances a test of another engine against that file can use.
"""
import argparse
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


class Model:
    """Hyperparameters and float64 weights of a GGUF llama/qwen2 file."""

    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.arch = self.meta("general.architecture")
        if self.arch not in ("llama", "qwen2"):
            raise SystemExit(f"np_forward: architecture {self.arch!r} is not llama or qwen2")
        a = self.arch
        self.n_layer = int(self.meta(f"{a}.block_count"))
        self.n_embd = int(self.meta(f"{a}.embedding_length"))
        self.n_head = int(self.meta(f"{a}.attention.head_count"))
        self.n_head_kv = int(self.meta(f"{a}.attention.head_count_kv", self.n_head))
        self.head_dim = int(self.meta(f"{a}.attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self.meta(f"{a}.rope.dimension_count", self.head_dim))
        self.rope_base = float(self.meta(f"{a}.rope.freq_base", 10000.0))
        self.eps = float(self.meta(f"{a}.attention.layer_norm_rms_epsilon", 1e-5))
        # Linear RoPE scaling (positions divided by the factor), as llama.cpp's freq_scale.
        scale = 1.0
        if self.meta(f"{a}.rope.scaling.type", "none") == "linear":
            scale = float(self.meta(f"{a}.rope.scaling.factor", 1.0)) or 1.0
        self.rope_freq_scale = 1.0 / scale
        self.neox = (a == "qwen2")
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._cache = {}
        self.emulate_ggml = False

    def meta(self, key, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise SystemExit(f"np_forward: metadata key {key} missing")
            return default
        if f.types[0] == GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]][0]

    def has(self, name):
        return name in self.tensors

    def w(self, name):
        """The tensor as float64 in numpy order: a matrix of GGUF dims (in, out) is
        returned as (out, in), so y = x @ w.T."""
        if name not in self._cache:
            t = self.tensors[name]
            v = dequantize(t.data, t.tensor_type)
            shape = tuple(int(n) for n in reversed(t.shape.tolist()))
            v = np.asarray(v, dtype=np.float32).reshape(shape)
            # keep the float32 copy (half the memory); callers get float64
            self._cache[name] = v
        return self._cache[name].astype(np.float64)


def _round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _f16(v):
    return np.asarray(v).astype(np.float16).astype(np.float64)


def ggml_round_activations(x, weight_type):
    """x (T, n) as ggml quantizes it before a dot product with rows of weight_type."""
    if weight_type in (Q.F32,):
        return x
    if weight_type in (Q.F16, Q.BF16):
        return _f16(x) if weight_type == Q.F16 else x
    k_quant = weight_type in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
    bs = 256 if k_quant else 32
    T, n = x.shape
    b = x.astype(np.float32).astype(np.float64).reshape(T, n // bs, bs)
    if k_quant:   # Q8_K: scale from the signed value of largest magnitude, d kept in f32
        idx = np.abs(b).argmax(axis=-1)[..., None]
        mx = np.take_along_axis(b, idx, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(mx != 0, -127.0 / mx, 0.0)
        q = np.minimum(127, _round_half_away(b * iscale))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(iscale != 0, q / iscale, 0.0)
    else:         # Q8_0 / Q8_1: d = amax / 127 stored as f16
        d = np.abs(b).max(axis=-1, keepdims=True) / 127.0
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(d > 0, _round_half_away(b / d), 0.0)
        out = q * _f16(d)
    return out.reshape(T, n)


def matmul(m, x, name):
    """x (T, in) @ W^T -> (T, out)."""
    if m.emulate_ggml:
        x = ggml_round_activations(x, m.tensors[name].tensor_type)
    return x @ m.w(name).T


def rmsnorm(x, weight, eps):
    # x: (T, d)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, positions, n_rot, base, freq_scale, neox):
    """Rotates the first n_rot dims of every head. x: (T, n_heads, head_dim)."""
    x = x.copy()
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)   # (half,)
    theta = (positions[:, None] * freq_scale) * inv_freq[None, :]          # (T, half)
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    if neox:   # pairs (i, i + half)
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half] = a * cos - b * sin
        x[..., half:n_rot] = a * sin + b * cos
    else:      # pairs (2i, 2i + 1)
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2] = a * cos - b * sin
        x[..., 1:n_rot:2] = a * sin + b * cos
    return x


def linear(m, x, prefix):
    y = matmul(m, x, prefix + ".weight")
    if m.has(prefix + ".bias"):
        y = y + m.w(prefix + ".bias")
    return y


def attention(m, l, h, positions):
    T = h.shape[0]
    hd, nh, nkv = m.head_dim, m.n_head, m.n_head_kv
    p = f"blk.{l}."
    q = linear(m, h, p + "attn_q").reshape(T, nh, hd)
    k = linear(m, h, p + "attn_k").reshape(T, nkv, hd)
    v = linear(m, h, p + "attn_v").reshape(T, nkv, hd)
    q = rope(q, positions, m.n_rot, m.rope_base, m.rope_freq_scale, m.neox)
    k = rope(k, positions, m.n_rot, m.rope_base, m.rope_freq_scale, m.neox)
    if m.emulate_ggml:
        q, k, v = _f16(q), _f16(k), _f16(v)
    group = nh // nkv
    mask = np.triu(np.full((T, T), -np.inf), k=1)   # row i sees columns 0..i
    out = np.empty((T, nh, hd))
    for head in range(nh):
        kvh = head // group
        s = (q[:, head, :] @ k[:, kvh, :].T) / np.sqrt(hd) + mask   # (T, T)
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        if m.emulate_ggml:
            pr = _f16(pr)
        out[:, head, :] = pr @ v[:, kvh, :]
    return matmul(m, out.reshape(T, nh * hd), p + "attn_output.weight")


def ffn(m, l, h):
    p = f"blk.{l}."
    g = matmul(m, h, p + "ffn_gate.weight")
    u = matmul(m, h, p + "ffn_up.weight")
    return matmul(m, g / (1.0 + np.exp(-g)) * u, p + "ffn_down.weight")


def forward(m, token_ids):
    """Logits (T, n_vocab) float64 for token_ids at positions 0..T-1."""
    ids = np.asarray(token_ids, dtype=np.int64)
    emb = m.w("token_embd.weight")                  # (n_vocab, d)
    if ids.min() < 0 or ids.max() >= emb.shape[0]:
        raise SystemExit("np_forward: token id out of range")
    x = emb[ids]                                    # (T, d)
    del emb
    positions = np.arange(len(ids), dtype=np.float64)
    for l in range(m.n_layer):
        h = rmsnorm(x, m.w(f"blk.{l}.attn_norm.weight"), m.eps)
        x = x + attention(m, l, h, positions)
        h = rmsnorm(x, m.w(f"blk.{l}.ffn_norm.weight"), m.eps)
        x = x + ffn(m, l, h)
    x = rmsnorm(x, m.w("output_norm.weight"), m.eps)
    out = "output.weight" if m.has("output.weight") else "token_embd.weight"
    return matmul(m, x, out)


def logits(path, token_ids, emulate_ggml=False):
    m = Model(path)
    m.emulate_ggml = emulate_ggml
    return forward(m, token_ids)


def llama_cpp_logits(path, ids=None, text=None):
    """(token ids, logits (T, n_vocab)) from llama-cpp-python, for --check."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(512, len(ids or []) + 8, 2048 if text else 0),
                          n_threads=2, n_batch=512, logits_all=True, verbose=False)
    if ids is None:
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model)))
        ids = llm.tokenize(text.encode(), add_bos=add_bos, special=False)
    llm.reset()
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)], dtype=np.float64)
    return ids, out


def check(path, ids, text):
    import json
    ids, ref = llama_cpp_logits(path, ids, text)
    res = {"model": path, "n_tokens": len(ids)}
    for mode in (False, True):
        lg = logits(path, ids, emulate_ggml=mode)
        d = np.abs(lg - ref)
        res["ggml" if mode else "plain"] = {
            "max_abs_diff": round(float(d.max()), 5), "mean_abs_diff": round(float(d.mean()), 5),
            "top1_agreement": round(float((lg.argmax(1) == ref.argmax(1)).mean()), 4)}
    res["logit_std"] = round(float(ref.std()), 3)
    print(json.dumps(res))


def golden(path, golden_path, n, emulate):
    import gzip
    import json
    opener = gzip.open if golden_path.endswith(".gz") else open
    with opener(golden_path, "rt", encoding="utf-8") as f:
        gold = json.load(f)["logits"]
    ids = gold["tokens"][:n] if n else gold["tokens"]
    lg = logits(path, ids, emulate_ggml=emulate)
    diffs, agree, in_top8 = [], 0, 0
    for t, top in enumerate(gold["top"][:len(ids)]):
        gid = [i for i, _ in top]
        diffs.extend(abs(lg[t, i] - v) for i, v in top)
        agree += int(np.argmax(lg[t]) == gid[0])
        in_top8 += int(np.argmax(lg[t]) in gid)
    d = np.array(diffs)
    print(json.dumps({"model": path, "golden": golden_path, "ggml": emulate, "n_tokens": len(ids),
                      "top1_agreement": round(agree / len(ids), 4),
                      "top1_in_golden_top8": round(in_top8 / len(ids), 4),
                      "top8_mean_abs_diff": round(float(d.mean()), 5),
                      "top8_p99_abs_diff": round(float(np.quantile(d, 0.99)), 5),
                      "top8_max_abs_diff": round(float(d.max()), 5)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--text", help="text, tokenized by llama-cpp-python (--check only)")
    ap.add_argument("--check", action="store_true", help="compare with llama-cpp-python")
    ap.add_argument("--golden", help="compare with a make_llama_golden.py file's logits")
    ap.add_argument("--n", type=int, default=0, help="with --golden: first N tokens only")
    ap.add_argument("--out", help="write the (T, n_vocab) float64 logits here (.npy)")
    ap.add_argument("--ggml", action="store_true", help="round as llama.cpp's CPU backend")
    a = ap.parse_args()
    if a.golden:
        return golden(a.model, a.golden, a.n, a.ggml)
    if a.check:
        ids = [int(s) for s in a.tokens.split(",")] if a.tokens else None
        if ids is None and a.text is None:
            sys.exit("np_forward: --check needs --tokens or --text")
        return check(a.model, ids, a.text)
    ids = [int(s) for s in (a.tokens or "").split(",") if s.strip()]
    if not ids:
        sys.exit("np_forward: no tokens (--tokens 1,2,3)")
    lg = logits(a.model, ids, emulate_ggml=a.ggml)
    if a.out:
        np.save(a.out, lg)
    else:
        top = np.argsort(-lg[-1])[:5]
        print([[int(i), float(lg[-1, i])] for i in top])


if __name__ == "__main__":
    main()
