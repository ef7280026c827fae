#!/usr/bin/env python3
"""Independent reference for tests/test_engine_convert.c: writes a GGUF file with the
PyPI `gguf` package's GGUFWriter (maintained with llama.cpp), from a JSON description
the C test also feeds to engine/gguf_write.c, so that the two files can be compared
byte for byte.

  gguf_write_ref.py SPEC.json OUT.gguf

SPEC: {"arch": "llama",                    (GGUFWriter writes general.architecture first)
       "alignment": 64 | null,             (general.alignment, set where it is listed)
       "kv": [[KEY, VTYPE, VALUE, ELEMTYPE], ...],   VTYPE/ELEMTYPE: GGUFValueType ids;
             strings as given, f32/f64 as exact hex of their bits ("f32:3f800000")
       "tensors": [[NAME, GGML_TYPE, [ne0, ne1, ...], DATA_FILE], ...]}
"""
import json
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES


def value(vtype, v):
    if isinstance(v, str) and v.startswith('f32:'):
        return struct.unpack('<f', bytes.fromhex(v[4:])[::-1])[0]
    if isinstance(v, str) and v.startswith('f64:'):
        return struct.unpack('<d', bytes.fromhex(v[4:])[::-1])[0]
    return v


def main():
    spec = json.load(open(sys.argv[1]))
    w = GGUFWriter(sys.argv[2], spec['arch'])
    for key, vtype, val, elem in spec['kv']:
        vtype = GGUFValueType(vtype)
        if key == 'general.alignment':
            w.add_custom_alignment(val)
        elif vtype == GGUFValueType.ARRAY:
            et = GGUFValueType(elem)
            w.add_key_value(key, [value(et, x) for x in val], vtype, sub_type=et)
        else:
            w.add_key_value(key, value(vtype, val), vtype)
    for name, gtype, ne, path in spec['tensors']:
        qt = GGMLQuantizationType(gtype)
        blck, size = GGML_QUANT_SIZES[qt]
        raw = np.fromfile(path, dtype=np.uint8)
        byte_shape = list(reversed(ne))
        byte_shape[-1] = byte_shape[-1] // blck * size
        w.add_tensor(name, raw.reshape(byte_shape), raw_shape=byte_shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == '__main__':
    main()
