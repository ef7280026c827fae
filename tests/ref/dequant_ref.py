#!/usr/bin/env python3
"""Independent reference for tests/test_engine_quant.c: dequantizes tensor data with
the PyPI `gguf` package (gguf.quants, numpy; maintained with llama.cpp), so that
engine/quant.c is checked against a second implementation of ggml's block formats.

  dequant_ref.py blocks TYPE_ID IN OUT
      IN holds raw blocks of ggml type TYPE_ID; writes the float32 values
      (little-endian) to OUT.

  dequant_ref.py model GGUF OUTDIR LIMIT
      For every tensor of GGUF (via GGUFReader), writes the first LIMIT dequantized
      values as float32 to OUTDIR/<index>.f32 (index in the file's tensor order) and
      prints one line per tensor:
        INDEX NAME_HEX TYPE_ID N_ELEMS SHA256
      where SHA256 is over the float32 little-endian bytes of all its values.
"""
import hashlib
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize


def as_f32_bytes(values):
    return np.ascontiguousarray(values, dtype='<f4').reshape(-1).tobytes()


def blocks(type_id, src, dst):
    qtype = GGMLQuantizationType(int(type_id))
    data = np.fromfile(src, dtype=np.uint8)
    if qtype == GGMLQuantizationType.BF16:
        # gguf.quants' BF16 path expects whole rows; a flat byte array is one row
        data = data.reshape(1, -1)
    out = dequantize(data, qtype)
    with open(dst, 'wb') as f:
        f.write(as_f32_bytes(out))


def model(path, outdir, limit):
    reader = GGUFReader(path)
    for i, t in enumerate(reader.tensors):
        values = dequantize(t.data, t.tensor_type)
        raw = as_f32_bytes(values)
        assert len(raw) == 4 * int(t.n_elements), t.name
        with open(os.path.join(outdir, '%d.f32' % i), 'wb') as f:
            f.write(raw[:4 * limit])
        print(i, t.name.encode().hex(), int(t.tensor_type), int(t.n_elements),
              hashlib.sha256(raw).hexdigest())


def main():
    if len(sys.argv) == 5 and sys.argv[1] == 'blocks':
        blocks(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == 'model':
        model(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == '__main__':
    main()
