#!/usr/bin/env python3
"""Independent references for mlvault's quantizer (quantize/blocks.c):

  llama IN.gguf OUT.gguf TYPE [THREADS]
      llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize), "pure" (every
      matrix at TYPE, no mixes), so its bytes can be compared with ours tensor by tensor.
      TYPE: Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K, or a llama.cpp file type with
      --mix (Q4_K_M ...), which uses llama.cpp's default recipe instead. Prints the
      seconds it took as JSON.
  compare OURS.gguf THEIRS.gguf
      every tensor: same name, type, shape and bytes; prints {"tensors": N, "types": {..}}
      and exits 1 naming the first tensor that differs (with the first differing block).
  numpy SRC_F32.gguf OURS.gguf
      every quantized tensor of OURS against the PyPI `gguf` package's numpy quantizer
      applied to SRC's F32 data (the types gguf implements: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0),
      and every tensor's dequantized values against gguf's numpy dequantizer.
  ppl MODEL.gguf TEXT CTX
      llama.cpp's perplexity over the windows mlvault's evaluation uses (engine/eval.c:
      consecutive windows of CTX tokens, BOS first when the model adds one, the second
      half of each window scored), printed as {"perplexity": P, "tokens": N}.
"""
import ctypes
import json
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants

FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K": 14, "Q5_K": 16,
          "Q6_K": 18, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17}
NUMPY_TYPES = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}


def llama(src, dst, typ, threads=1, mix=False):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[typ]
    p.nthread = threads
    p.pure = not mix
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    secs = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")
    print(json.dumps({"seconds": secs}))


def tensors(path):
    r = GGUFReader(path)
    return {t.name: t for t in r.tensors}


def compare(ours, theirs):
    a, b = tensors(ours), tensors(theirs)
    if set(a) != set(b):
        sys.exit(f"tensor names differ: {sorted(set(a) ^ set(b))}")
    types = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.tensor_type != tb.tensor_type:
            sys.exit(f"{name}: type {ta.tensor_type.name} here, {tb.tensor_type.name} there")
        if list(ta.shape) != list(tb.shape):
            sys.exit(f"{name}: shape {list(ta.shape)} here, {list(tb.shape)} there")
        da, db = np.asarray(ta.data).view(np.uint8), np.asarray(tb.data).view(np.uint8)
        if da.tobytes() != db.tobytes():
            bsize = quants.GGML_QUANT_SIZES[ta.tensor_type][1]
            fa, fb = da.reshape(-1), db.reshape(-1)
            first = int(np.nonzero(fa != fb)[0][0])
            blk = first // bsize
            n_diff = int(np.count_nonzero((fa != fb).reshape(-1, bsize).any(axis=1)))
            sys.exit(f"{name} ({ta.tensor_type.name}): {n_diff} blocks differ, the first is "
                     f"block {blk}: ours {fa[blk*bsize:(blk+1)*bsize].tobytes().hex()} "
                     f"theirs {fb[blk*bsize:(blk+1)*bsize].tobytes().hex()}")
        types[ta.tensor_type.name] = types.get(ta.tensor_type.name, 0) + 1
    print(json.dumps({"tensors": len(a), "types": types}))


def numpy_check(src, ours):
    s, o = tensors(src), tensors(ours)
    checked = {}
    for name, to in o.items():
        if to.tensor_type == T.F32:
            continue
        x = np.asarray(s[name].data, dtype=np.float32)
        got = np.asarray(to.data).view(np.uint8)
        if to.tensor_type in NUMPY_TYPES:
            want = quants.quantize(x, to.tensor_type)
            if want.tobytes() != got.tobytes():
                sys.exit(f"{name} ({to.tensor_type.name}): bytes differ from gguf's numpy quantizer")
        deq = quants.dequantize(got, to.tensor_type).reshape(x.shape)
        err = float(np.sqrt(np.mean((deq - x) ** 2)) / (np.sqrt(np.mean(x ** 2)) + 1e-30))
        checked.setdefault(to.tensor_type.name, []).append(err)
    print(json.dumps({"types": {k: {"tensors": len(v), "max_rel_rmse": max(v)}
                                for k, v in checked.items()}}))


def ppl(model, text_path, n_ctx):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                          verbose=False, n_threads=2)
    with open(text_path, "rb") as f:
        text = f.read()
    add_bos = llm._model.add_bos_token()
    toks = llm.tokenize(text, add_bos=add_bos, special=False)
    nll, n = 0.0, 0
    for w in range(len(toks) // n_ctx):
        win = toks[w * n_ctx:(w + 1) * n_ctx]
        if add_bos:
            win[0] = llm.token_bos()
        llm.reset()
        llm.eval(win)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for i in range(n_ctx // 2, n_ctx):
            row = logits[i - 1]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            nll += lse - row[win[i]]
            n += 1
    print(json.dumps({"perplexity": float(np.exp(nll / n)), "tokens": n}))


def main():
    a = sys.argv[1:]
    if a[:1] == ["llama"] and len(a) in (4, 5, 6):
        mix = "--mix" in a
        a = [x for x in a if x != "--mix"]
        llama(a[1], a[2], a[3], int(a[4]) if len(a) > 4 else 1, mix)
    elif a[:1] == ["compare"] and len(a) == 3:
        compare(a[1], a[2])
    elif a[:1] == ["numpy"] and len(a) == 3:
        numpy_check(a[1], a[2])
    elif a[:1] == ["ppl"] and len(a) == 4:
        ppl(a[1], a[2], int(a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
