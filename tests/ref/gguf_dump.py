#!/usr/bin/env python3
"""Independent reference for tests/test_engine_gguf.c: prints what the PyPI `gguf`
package (GGUFReader, maintained with llama.cpp) reads from a GGUF file, in a plain
line format the C test reproduces from engine/gguf.c and compares line by line.

  version V / alignment A / data_offset D / n_kv N / n_tensors N
  kv KEY TYPE VALUE   scalars: ints in decimal, f32 '%.9g', f64 '%.17g', bool true|false,
                      strings as hex of their bytes
  kv KEY 9 ELEMTYPE N SHA256   arrays: SHA-256 over the elements (strings: 8-byte LE
                      length + bytes each; numbers: their little-endian bytes); arrays of
                      arrays: no digest
  tensor NAME TYPE d0,d1,.. OFFSET SIZE   (offset relative to the data section)
  params P / types T1,T2,...   sum of elements, sorted unique type names

Usage: gguf_dump.py FILE
"""
import hashlib
import struct
import sys

from gguf import GGUFReader, GGUFValueType, GGMLQuantizationType

INTS = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
        GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}


def scalar(t, part):
    v = part[0]
    if t in INTS:
        return str(int(v))
    if t == GGUFValueType.FLOAT32:
        return '%.9g' % float(v)
    if t == GGUFValueType.FLOAT64:
        return '%.17g' % float(v)
    if t == GGUFValueType.BOOL:
        return 'true' if bool(v) else 'false'
    raise ValueError(t)


def main():
    r = GGUFReader(sys.argv[1])
    out = []
    out.append('version %d' % int(r.fields['GGUF.version'].parts[0][0]))
    out.append('alignment %d' % int(r.alignment))
    out.append('data_offset %d' % int(r.data_offset))
    kvs = [f for name, f in r.fields.items() if not name.startswith('GGUF.')]
    out.append('n_kv %d' % len(kvs))
    out.append('n_tensors %d' % len(r.tensors))
    for f in kvs:
        t = GGUFValueType(int(f.parts[2][0]))
        if t == GGUFValueType.STRING:
            out.append('kv %s %d %s' % (f.name, t, bytes(f.parts[f.data[0]]).hex()))
        elif t == GGUFValueType.ARRAY:
            et = int(f.parts[3][0])
            n = int(f.parts[4][0])
            if et == GGUFValueType.ARRAY:
                out.append('kv %s 9 %d %d' % (f.name, et, n))
                continue
            h = hashlib.sha256()
            for idx in f.data:
                b = bytes(f.parts[idx].tobytes())
                if et == GGUFValueType.STRING:
                    h.update(struct.pack('<Q', len(b)))
                h.update(b)
            out.append('kv %s 9 %d %d %s' % (f.name, et, n, h.hexdigest()))
        else:
            out.append('kv %s %d %s' % (f.name, t, scalar(t, f.parts[f.data[0]])))
    params = 0
    types = set()
    for t in r.tensors:
        dims = ','.join(str(int(d)) for d in t.shape)
        out.append('tensor %s %d %s %d %d' % (t.name, int(t.tensor_type), dims,
                                              int(t.data_offset) - int(r.data_offset), int(t.n_bytes)))
        params += int(t.n_elements)
        types.add(GGMLQuantizationType(int(t.tensor_type)).name)
    out.append('params %d' % params)
    out.append('types %s' % ','.join(sorted(types)))
    sys.stdout.write('\n'.join(out) + '\n')


if __name__ == '__main__':
    main()
