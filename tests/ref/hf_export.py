#!/usr/bin/env python3
"""Hugging Face folders for tests/test_engine_convert.c, written with numpy only (no
torch, no transformers): safetensors files by hand (8-byte little-endian header length,
JSON header padded with spaces to a multiple of 8, the data), config.json,
tokenizer.json and tokenizer_config.json.

  hf_export.py gguf GGUF OUTDIR
      The model of a GGUF file (llama) as the HF checkpoint llama.cpp's converter
      would have started from: every tensor dequantized to F32 with gguf.quants, the
      q/k rows un-permuted (the inverse of convert_hf_to_gguf.py's LlamaModel.permute),
      GGUF names mapped back to HF names, written over two shards with a
      model.safetensors.index.json; config.json from the llama.* keys; tokenizer.json
      (model.vocab, added_tokens for CONTROL and USER_DEFINED tokens, merges as
      ["a", "b"] pairs, a pre-tokenizer matching tokenizer.ggml.pre) and
      tokenizer_config.json (special tokens, add_bos_token, chat_template).

  hf_export.py tiny-qwen2 OUTDIR
      A tiny Qwen2ForCausalLM with random weights (q/k/v biases, F32/F16/BF16 mixed,
      tied embeddings, an inv_freq buffer to drop, one row of 80 that Q8_0 cannot
      hold), a 264-token byte-level vocabulary padded to vocab_size 272, merges as
      "a b" strings, special and user-defined added tokens.

  hf_export.py check OUT.gguf HFDIR
      Confirms with GGUFReader that every HF tensor is in OUT.gguf under its llama.cpp
      name, with the same values (after the q/k permutation for llama): exactly, both
      sides read as float32. Prints "ok N".
"""
import json
import os
import re
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

LAYER = {
    'attn_norm.weight': 'input_layernorm.weight',
    'attn_q.weight': 'self_attn.q_proj.weight', 'attn_q.bias': 'self_attn.q_proj.bias',
    'attn_k.weight': 'self_attn.k_proj.weight', 'attn_k.bias': 'self_attn.k_proj.bias',
    'attn_v.weight': 'self_attn.v_proj.weight', 'attn_v.bias': 'self_attn.v_proj.bias',
    'attn_output.weight': 'self_attn.o_proj.weight',
    'ffn_norm.weight': 'post_attention_layernorm.weight',
    'ffn_gate.weight': 'mlp.gate_proj.weight', 'ffn_up.weight': 'mlp.up_proj.weight',
    'ffn_down.weight': 'mlp.down_proj.weight',
}
TOP = {'token_embd.weight': 'model.embed_tokens.weight', 'output_norm.weight': 'model.norm.weight',
       'output.weight': 'lm_head.weight'}
HF_TO_GGUF = {v: k for k, v in TOP.items()}


def hf_name(gguf_name):
    if gguf_name in TOP:
        return TOP[gguf_name]
    m = re.fullmatch(r'blk\.(\d+)\.(.+)', gguf_name)
    return 'model.layers.%s.%s' % (m.group(1), LAYER[m.group(2)])


def gguf_name(hf):
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    m = re.fullmatch(r'model\.layers\.(\d+)\.(.+)', hf)
    if not m:
        return None
    inv = {v: k for k, v in LAYER.items()}
    return 'blk.%s.%s' % (m.group(1), inv[m.group(2)]) if m.group(2) in inv else None


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute (HF rows -> GGUF rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bytes_to_unicode():
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ------------------------------------------------------------------ safetensors ----

def st_dtype(a):
    return {np.dtype('float32'): 'F32', np.dtype('float16'): 'F16'}[a.dtype]


def write_safetensors(path, tensors):
    """tensors: list of (name, array, dtype) — dtype 'BF16' for a uint16 array of bfloat16
    bits, else None (from the array's dtype)."""
    header, off = {'__metadata__': {'format': 'pt'}}, 0
    for name, a, dt in tensors:
        n = a.nbytes
        header[name] = {'dtype': dt or st_dtype(a), 'shape': list(a.shape), 'data_offsets': [off, off + n]}
        off += n
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for _, a, _ in tensors:
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder('<')).tobytes())
    return off


def read_safetensors(path):
    with open(path, 'rb') as f:
        raw = f.read()
    hl = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + hl])
    data = raw[8 + hl:]
    out = {}
    for name, d in header.items():
        if name == '__metadata__':
            continue
        b, e = d['data_offsets']
        buf = np.frombuffer(data[b:e], dtype=np.uint8)
        if d['dtype'] == 'F32':
            a = buf.view('<f4')
        elif d['dtype'] == 'F16':
            a = buf.view('<f2').astype(np.float32)
        elif d['dtype'] == 'BF16':
            a = (buf.view('<u2').astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(d['dtype'])
        out[name] = a.reshape(d['shape'])
    return out


# ------------------------------------------------------------------------ gguf ----

def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    if f.types[0].name == 'ARRAY':
        if f.types[-1].name == 'STRING':
            return [bytes(f.parts[i]).decode('utf-8') for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0].name == 'STRING':
        return bytes(f.parts[f.data[0]]).decode('utf-8')
    return f.parts[f.data[0]][0].item()


def export_gguf(path, out):
    r = GGUFReader(path)
    arch = field(r, 'general.architecture')
    assert arch == 'llama', arch
    n_head = field(r, 'llama.attention.head_count')
    n_head_kv = field(r, 'llama.attention.head_count_kv', n_head)
    names = [t.name for t in r.tensors]
    os.makedirs(out, exist_ok=True)

    tensors = []
    for t in r.tensors:
        ne = [int(d) for d in t.shape]
        a = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(list(reversed(ne)))
        if t.name.endswith(('attn_q.weight', 'attn_q.bias')):
            a = unpermute(a, n_head)
        elif t.name.endswith(('attn_k.weight', 'attn_k.bias')):
            a = unpermute(a, n_head_kv)
        tensors.append((hf_name(t.name), np.ascontiguousarray(a), None))
    half = len(tensors) // 2
    shards = [tensors[:half], tensors[half:]]
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = 'model-%05d-of-%05d.safetensors' % (i + 1, len(shards))
        total += write_safetensors(os.path.join(out, fname), shard)
        for name, _, _ in shard:
            weight_map[name] = fname
    with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=2)

    tokens = field(r, 'tokenizer.ggml.tokens')
    types = field(r, 'tokenizer.ggml.token_type')
    merges = field(r, 'tokenizer.ggml.merges', [])
    config = {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
        '_name_or_path': 'HuggingFaceTB/' + os.path.basename(os.path.normpath(out)),
        'hidden_size': field(r, 'llama.embedding_length'),
        'intermediate_size': field(r, 'llama.feed_forward_length'),
        'num_hidden_layers': field(r, 'llama.block_count'),
        'num_attention_heads': n_head, 'num_key_value_heads': n_head_kv,
        'max_position_embeddings': field(r, 'llama.context_length'),
        'rms_norm_eps': field(r, 'llama.attention.layer_norm_rms_epsilon'),
        'rope_theta': field(r, 'llama.rope.freq_base'),
        'vocab_size': field(r, 'llama.vocab_size', len(tokens)),
        'tie_word_embeddings': 'output.weight' not in names,
        'torch_dtype': 'float32', 'hidden_act': 'silu',
    }
    special_ids = {'bos': 'tokenizer.ggml.bos_token_id', 'eos': 'tokenizer.ggml.eos_token_id',
                   'unk': 'tokenizer.ggml.unknown_token_id', 'pad': 'tokenizer.ggml.padding_token_id'}
    tcfg = {'tokenizer_class': 'GPT2Tokenizer', 'clean_up_tokenization_spaces': False,
            'model_max_length': config['max_position_embeddings']}
    for typ, key in special_ids.items():
        tid = field(r, key)
        if tid is None:
            continue
        if types[tid] in (3, 4):            # an added token: by its text
            tcfg[typ + '_token'] = tokens[tid]
        else:                               # else config.json's id
            config[typ + '_token_id'] = tid
    for typ in ('bos', 'eos'):
        v = field(r, 'tokenizer.ggml.add_%s_token' % typ)
        if v is not None:
            tcfg['add_%s_token' % typ] = bool(v)
    tmpl = field(r, 'tokenizer.chat_template')
    if tmpl is not None:
        tcfg['chat_template'] = tmpl

    vocab = {tok: i for i, tok in enumerate(tokens) if types[i] != 5}
    assert len(vocab) == sum(1 for t in types if t != 5), 'duplicate tokens'
    added = [{'id': i, 'content': tokens[i], 'single_word': False, 'lstrip': False, 'rstrip': False,
              'normalized': False, 'special': types[i] == 3}
             for i in range(len(tokens)) if types[i] in (3, 4)]
    byte_level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True}
    pre = field(r, 'tokenizer.ggml.pre', 'gpt2')
    if pre == 'smollm':
        pre_tok = {'type': 'Sequence', 'pretokenizers': [{'type': 'Digits', 'individual_digits': True}, byte_level]}
    elif pre == 'llama-bpe':
        regex = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                 "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
        pre_tok = {'type': 'Sequence', 'pretokenizers': [
            {'type': 'Split', 'pattern': {'Regex': regex}, 'behavior': 'Isolated', 'invert': False},
            dict(byte_level, use_regex=False)]}
    else:
        pre_tok = byte_level
    tokenizer = {
        'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': added,
        'normalizer': None, 'pre_tokenizer': pre_tok, 'post_processor': byte_level,
        'decoder': byte_level,
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False,
                  'ignore_merges': False, 'vocab': vocab,
                  'merges': [m.split(' ') for m in merges]},
    }
    assert all(len(m.split(' ')) == 2 for m in merges)
    for name, obj in (('config.json', config), ('tokenizer.json', tokenizer),
                      ('tokenizer_config.json', tcfg)):
        with open(os.path.join(out, name), 'w', encoding='utf-8') as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)


# ------------------------------------------------------------------- tiny qwen2 ----

def bf16(a):
    return (np.asarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def tiny_qwen2(out):
    rng = np.random.default_rng(1234)
    n_embd, n_head, n_kv, n_ff, n_layer, n_vocab = 64, 4, 2, 80, 2, 272
    hd = n_embd // n_head
    os.makedirs(out, exist_ok=True)

    def rnd(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    t = [('model.embed_tokens.weight', bf16(rnd(n_vocab, n_embd)), 'BF16')]
    for i in range(n_layer):
        p = 'model.layers.%d.' % i
        t += [(p + 'input_layernorm.weight', 1 + rnd(n_embd), None),
              (p + 'self_attn.q_proj.weight', bf16(rnd(n_embd, n_embd)), 'BF16'),
              (p + 'self_attn.q_proj.bias', bf16(rnd(n_embd)), 'BF16'),
              (p + 'self_attn.k_proj.weight', rnd(n_kv * hd, n_embd).astype(np.float16), None),
              (p + 'self_attn.k_proj.bias', rnd(n_kv * hd), None),
              (p + 'self_attn.v_proj.weight', rnd(n_kv * hd, n_embd), None),
              (p + 'self_attn.v_proj.bias', rnd(n_kv * hd).astype(np.float16), None),
              (p + 'self_attn.o_proj.weight', bf16(rnd(n_embd, n_embd)), 'BF16'),
              (p + 'self_attn.rotary_emb.inv_freq', rnd(hd // 2), None),
              (p + 'post_attention_layernorm.weight', 1 + rnd(n_embd), None),
              (p + 'mlp.gate_proj.weight', bf16(rnd(n_ff, n_embd)), 'BF16'),
              (p + 'mlp.up_proj.weight', bf16(rnd(n_ff, n_embd)), 'BF16'),
              (p + 'mlp.down_proj.weight', bf16(rnd(n_embd, n_ff)), 'BF16')]
    t += [('model.norm.weight', 1 + rnd(n_embd), None)]
    write_safetensors(os.path.join(out, 'model.safetensors'), t)

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = ['Ġ t', 'h e', 'Ġt he']
    for m in merges:
        vocab[m.replace(' ', '')] = len(vocab)
    added = [('<|endoftext|>', True), ('<|im_start|>', True), ('<|im_end|>', True),
             ('<tool_call>', False), ('<|fake|>', False), ('\u2581hi', False)]
    added_json = []
    for content, special in added:
        added_json.append({'id': len(vocab), 'content': content, 'single_word': False, 'lstrip': False,
                           'rstrip': False, 'normalized': False, 'special': special})
        vocab[content] = len(vocab)
    regex = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
             "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    tokenizer = {
        'version': '1.0', 'added_tokens': added_json, 'normalizer': {'type': 'NFC'},
        'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [
            {'type': 'Split', 'pattern': {'Regex': regex}, 'behavior': 'Isolated', 'invert': False},
            {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': False, 'use_regex': False}]},
        'post_processor': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': False,
                           'use_regex': False},
        'model': {'type': 'BPE', 'vocab': vocab, 'merges': merges},
    }
    config = {'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', 'hidden_size': n_embd,
              'intermediate_size': n_ff, 'num_hidden_layers': n_layer, 'num_attention_heads': n_head,
              'num_key_value_heads': n_kv, 'max_position_embeddings': 512, 'rope_theta': 1000000.0,
              'rms_norm_eps': 1e-6, 'vocab_size': n_vocab, 'tie_word_embeddings': True,
              'bos_token_id': 259, 'eos_token_id': 261, 'rope_scaling': None, 'torch_dtype': 'bfloat16'}
    tcfg = {'bos_token': None, 'eos_token': '<|im_end|>', 'pad_token': '<|endoftext|>',
            'unk_token': None, 'add_prefix_space': False,
            'chat_template': "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                             "<|im_end|>\n{% endfor %}"}
    for name, obj in (('config.json', config), ('tokenizer.json', tokenizer),
                      ('tokenizer_config.json', tcfg)):
        with open(os.path.join(out, name), 'w', encoding='utf-8') as f:
            json.dump(obj, f, ensure_ascii=False)


# ------------------------------------------------------------------------ check ----

def check(gguf_path, hf_dir):
    r = GGUFReader(gguf_path)
    arch = field(r, 'general.architecture')
    cfg = json.load(open(os.path.join(hf_dir, 'config.json')))
    n_head = cfg['num_attention_heads']
    n_kv = cfg.get('num_key_value_heads', n_head)
    out = {t.name: t for t in r.tensors}
    seen = 0
    for fn in sorted(os.listdir(hf_dir)):
        if not fn.endswith('.safetensors'):
            continue
        for name, a in read_safetensors(os.path.join(hf_dir, fn)).items():
            g = gguf_name(name)
            if name.endswith('rotary_emb.inv_freq') or (name == 'lm_head.weight' and cfg.get('tie_word_embeddings')):
                assert g is None or g not in out, name
                continue
            assert g in out, (name, g)
            t = out[g]
            assert [int(d) for d in t.shape] == list(reversed(a.shape)), (name, t.shape, a.shape)
            want = a.astype(np.float32)
            if arch == 'llama' and name.endswith(('q_proj.weight', 'q_proj.bias')):
                want = permute(want, n_head)
            elif arch == 'llama' and name.endswith(('k_proj.weight', 'k_proj.bias')):
                want = permute(want, n_kv)
            got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(a.shape)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
            seen += 1
    assert seen == len(out), (seen, len(out))
    print('ok', seen)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == 'gguf':
        export_gguf(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == 'tiny-qwen2':
        tiny_qwen2(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == 'check':
        check(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == '__main__':
    main()
