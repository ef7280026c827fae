#!/usr/bin/env python3
"""Independent reference for tests/test_engine_convert.c: converts a GGUF file's tensors
to another type with numpy and the PyPI `gguf` package (gguf.quants: ggml's dequantizers
and its reference quantizers for F16, BF16 and Q8_0), following llama.cpp's
convert_hf_to_gguf.py rule for which tensors change type:

  - 1-D tensors and *_norm.weight become F32;
  - the others become OUTTYPE, except that a Q8_0 row (ne0) which is not a multiple
    of 32 falls back to F16 (llama.cpp's QuantError path);
  - a tensor already of its target type is copied unchanged.

  convert_ref.py GGUF OUTTYPE       OUTTYPE: F32 | F16 | BF16 | Q8_0

Prints one line per tensor, in file order:
  NAME TYPE_ID ne0,ne1,... SHA256     (SHA-256 of the converted tensor's bytes)
"""
import hashlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize, quantize


def target(name, n_dims, ne0, want):
    if n_dims <= 1 or name.endswith('_norm.weight'):
        return T.F32
    if want == T.Q8_0 and ne0 % 32:
        return T.F16
    return want


def main():
    r = GGUFReader(sys.argv[1])
    want = T[sys.argv[2]]
    for t in r.tensors:
        ne = [int(d) for d in t.shape]
        out = target(t.name, len(ne), ne[0], want)
        if out == t.tensor_type:
            raw = bytes(np.ascontiguousarray(t.data).view(np.uint8).reshape(-1))
        else:
            values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(list(reversed(ne)))
            raw = bytes(np.ascontiguousarray(quantize(values, out)).view(np.uint8).reshape(-1))
        print(t.name, int(out), ','.join(map(str, ne)), hashlib.sha256(raw).hexdigest())


if __name__ == '__main__':
    main()
