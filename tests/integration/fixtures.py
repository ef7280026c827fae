"""Fixtures for the integration tests, made by independent code: tiny GGUF files written
with the PyPI `gguf` package (llama.cpp's own Python writer) and safetensors folders
written by hand with numpy, so the files mlvault stores are not of its own making."""
import json
import os
import struct

import numpy as np


def tiny_gguf(path, seed=0, n_layers=2, dim=64, vocab=512):
    """A small Llama-architecture GGUF (F32/F16 tensors) of a few hundred kB."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"tiny-llama-{seed}")
    w.add_context_length(128)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(dim * 2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(vocab)])
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, dim), dtype=np.float32))
    for layer in range(n_layers):
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim // 2, dim)),
                            ("attn_v", (dim // 2, dim)), ("attn_output", (dim, dim)),
                            ("ffn_gate", (dim * 2, dim)), ("ffn_up", (dim * 2, dim)),
                            ("ffn_down", (dim, dim * 2))):
            t = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
            w.add_tensor(f"blk.{layer}.{name}.weight", t)
        w.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_safetensors(path, tensors):
    """safetensors: u64 LE header length, JSON header, then the raw little-endian data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hf_folder(path, seed=0, dim=64, vocab=256):
    """A Hugging Face style folder: config.json, two safetensors shards, tokenizer files."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "hidden_size": dim, "num_hidden_layers": 1, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": vocab, "rope_theta": 10000.0}, f)
    write_safetensors(os.path.join(path, "model-00001-of-00002.safetensors"), {
        "model.embed_tokens.weight": rng.standard_normal((vocab, dim), dtype=np.float32),
        "model.norm.weight": np.ones(dim, dtype=np.float32)})
    write_safetensors(os.path.join(path, "model-00002-of-00002.safetensors"), {
        "model.layers.0.self_attn.q_proj.weight":
            rng.standard_normal((dim, dim), dtype=np.float32).astype(np.float16)})
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "model": {"type": "BPE",
                   "vocab": {f"t{i}": i for i in range(vocab)}, "merges": []}}, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "t0", "eos_token": "t1"}, f)
    return path
