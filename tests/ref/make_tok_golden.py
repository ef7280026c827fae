#!/usr/bin/env python3
"""Writes the golden files tests/test_engine_tok.c compares engine/tokenizer.c and
engine/chat.c with. The independent reference is llama.cpp itself, through the PyPI
package llama-cpp-python (llama_cpp.Llama(..., vocab_only=True) to load a vocabulary,
llama_cpp's low-level llama_tokenize / llama_detokenize / llama_token_to_piece /
llama_vocab_is_eog on it), and jinja2 for the chat templates (with the settings of
transformers' apply_chat_template: trim_blocks, lstrip_blocks).

  tests/golden/tok_smollm2.json   the real model (SmolLM2-135M-Instruct): ids for every
        string below with add_special and parse_special both ways, the detokenized text
        (llama_detokenize, remove_special off, unparse_special off and on), the EOG ids,
        BOS/EOS, digests of every token's piece, and a ~100 KB text's ids (a digest).
        In a case, "text" is left out when it equals the string itself and
        "text_special" when it equals "text".
  tests/golden/tok_fixtures.json  the same for the small fixtures of make_tok_fixtures.py
        (SentencePiece and byte-level BPE with six pre-tokenizers), with each file's
        SHA-256 so a fixture that drifts fails clearly.
  tests/golden/chat_templates.json  conversations rendered with SmolLM2's template (from
        the GGUF), a Llama 3 template, a plain ChatML one and a Qwen-style ChatML one
        with a default system prompt.

Usage: make_tok_golden.py SMOLLM2_GGUF [GOLDEN_DIR]   (default: tests/golden beside this)
Strings are stored as hex (exact bytes) next to a readable copy."""
import ctypes
import hashlib
import importlib.metadata
import json
import os
import re
import struct
import sys
import tempfile

import jinja2
import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tok_fixtures  # noqa: E402

STRINGS = [
    "",
    "Hello world",
    " Hello world",
    "Hello world ",
    "   leading spaces and trailing   ",
    "multiple    spaces   between words",
    "   ",
    " ",
    "line one\nline two\n\nline four\r\nwindows\r\n",
    "\n\n\n",
    "\ttabbed\tcolumns\t\tdouble tab",
    "  \n  \t mixed whitespace \n ",
    "1234567890",
    "123456789012345678901234567890",
    "The year 2024 had 366 days; pi is 3.14159265358979 and 1,000,000 is a million.",
    "abc123def456 7 89 x1y22z333",
    "Phone: +1 (555) 010-9999, ID #42!",
    "It's, you're, we've, they'll, I'm, he'd, can't",
    "IT'S YOU'RE WE'VE THEY'LL I'M HE'D CAN'T",
    "'s 'LL 't 'Re 'vE x's",
    "Punctuation!!! Really??? Yes... (maybe) [ok] {fine} <tag> \"quoted\" 'single' `tick`",
    "a , b . c ? d ! e ' f 's g 'm h 're i 've j 't",
    "$100 + 5% = ~$105 ^ 2 | x <= y >= z == w != v && u || t",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade jalape\u00f1o \u00c5ngstr\u00f6m",
    "Gr\u00fc\u00dfe aus M\u00fcnchen, Stra\u00dfe",
    "e\u0301 a\u0308 n\u0303 (combining marks)",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u03ba\u03b1\u03b9 \u0420\u0443\u0441\u0441\u043a\u0438\u0439 "
    "\u0442\u0435\u043a\u0441\u0442",
    "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca\u3001"
    "\u3072\u3089\u304c\u306a\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 "
    "\u0661\u0662\u0663",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u05d5\u05e2\u05d5\u05d3",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092e\u0947\u0902 \u0932\u093f\u0916\u093e",
    "Emoji: \U0001f600\U0001f603\U0001f604 \U0001f44d\U0001f3fd \u2764\ufe0f",
    "Family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 and "
    "\U0001f469\U0001f3fd\u200d\U0001f4bb",
    "Flags: \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8",
    "#include <stdio.h>\nint main(void) {\n    printf(\"hi %d\\n\", 42);\n    return 0;\n}\n",
    "def f(x):\n    return [i**2 for i in range(x) if i % 2 == 0]  # squares\n\n\nprint(f(10))\n",
    "x\u00b2 + y\u00b2 = z\u00b2, \u2211\u1d62 a\u1d62 \u2264 \u221e, \u221a2 \u2248 1.414, "
    "\u00bd \u2153 \u2167",
    "\u20ac100, \u00a350, \u00a51000, $3.50",
    "https://example.com/path/to?query=1&b=two#frag",
    "user.name+tag@example.co.uk",
    "a\u00a0b\u2003c\u3000d\u2009e\u202ff",
    "a\u200bb\u200dc\u2060d\ufeffe",
    "\u0085NEL \u2028LS \u2029PS \u000bVT \u000cFF",
    "\x01\x02\x1b[0m\x7f",
    "\u0120 \u010a \u0109 weird alphabet",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>text <|im_start|> spaced <|endoftext|>",
    "<|im_start|<|im_end|>>",
    "<reponame>repo<file_sep>a.py",
    "a<|ud|>b <|ctrl|> c <|eot_id|>",
    "<s>hello</s> <unk> <0x41>",
    "The quick brown fox jumps over the lazy dog. We've been there, they'll go.",
    "Once upon a time, in a land far, far away, there lived a curious little robot named "
    "Pip. Pip loved to explore; every morning it rolled out of its charging dock, "
    "blinked its two blue eyes, and set off to find something new.\n\n\"What will I "
    "discover today?\" it wondered aloud.",
]

BIG_TEXT_MIN = 100_000


def hexs(b):
    return b.hex()


def big_text():
    """The timing text: every string, joined by blank lines, repeated to >= 100 KB
    (tests/test_engine_tok.c builds the same bytes)."""
    unit = b"\n\n".join(s.encode("utf-8") for s in STRINGS)
    reps = -(-BIG_TEXT_MIN // len(unit))
    return unit * reps, reps


class Vocab:
    """llama.cpp's view of a GGUF vocabulary."""

    def __init__(self, path):
        self.llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.n = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text, add_special, parse_special):
        cap = len(text) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, text, len(text), buf, cap, add_special,
                                     parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, text, len(text), buf, cap, add_special,
                                         parse_special)
        assert n >= 0
        return list(buf[:n])

    def detokenize(self, ids, special):
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        cap = 64 + 64 * len(ids)
        out = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), out, cap, False, special)
        assert n >= 0, n
        return out.raw[:n]

    def piece(self, tid, special):
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, tid, buf, 1024, 0, special)
        assert 0 <= n <= 1024
        return buf.raw[:n]

    def pieces_digest(self, special):
        h = hashlib.sha256()
        for i in range(self.n):
            p = self.piece(i, special)
            h.update(struct.pack("<I", len(p)) + p)
        return h.hexdigest()

    def eog(self):
        return [i for i in range(self.n) if llama_cpp.llama_vocab_is_eog(self.vocab, i)]

    def summary(self):
        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        return {"n_vocab": self.n, "bos": bos, "eos": eos, "eog": self.eog(),
                "piece_sha256": self.pieces_digest(False),
                "piece_special_sha256": self.pieces_digest(True)}

    def cases(self, combos):
        out = []
        for i, s in enumerate(STRINGS):
            b = s.encode("utf-8")
            for add_special, parse_special in combos:
                ids = self.tokenize(b, add_special, parse_special)
                plain, special = self.detokenize(ids, False), self.detokenize(ids, True)
                case = {"s": i, "add_special": add_special, "parse_special": parse_special,
                        "ids": ids}
                if plain != b:  # absent: the string itself
                    case["text"] = hexs(plain)
                if special != plain:  # absent: the same as "text"
                    case["text_special"] = hexs(special)
                out.append(case)
        return out


def ids_digest(ids):
    return hashlib.sha256(b"".join(struct.pack("<i", i) for i in ids)).hexdigest()


ALL_COMBOS = [(False, False), (False, True), (True, False), (True, True)]
FIXTURE_COMBOS = [(False, False), (True, True)]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN_STYLE_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
    "helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n")

CONVERSATIONS = [
    ([("user", "Hello!")], True),
    ([("user", "Hello!")], False),
    ([("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye")],
     True),
    ([("user", "What is 2+2?"), ("assistant", "4")], False),
    ([("assistant", "I speak first."), ("user", "ok")], True),
    ([("user", "  padded content \n\n"), ("assistant", "\tGr\u00fc\u00dfe \U0001f44b  ")],
     True),
    ([("system", ""), ("user", "")], True),
    ([], True),
]


def render(template, messages, add_generation_prompt, bos_token=""):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    t = env.from_string(template)
    return t.render(messages=[{"role": r, "content": c} for r, c in messages],
                    add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                    eos_token="")


def chat_cases(template, bos_token="", skip_empty=False):
    cases = []
    for messages, gen in CONVERSATIONS:
        if skip_empty and not messages:
            continue
        text = render(template, messages, gen, bos_token)
        if bos_token and text.startswith(bos_token):
            text = text[len(bos_token):]  # the tokenizer adds BOS (llama.cpp strips it too)
        cases.append({"messages": [{"role": r, "content": c} for r, c in messages],
                      "add_generation_prompt": gen, "rendered": text})
    return cases


def gguf_chat_template(path):
    from gguf import GGUFReader
    f = GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def dump(path, obj):
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    # one line per list of numbers, to keep the files short and diffs readable
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print("wrote", path)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    model = sys.argv[1]
    golden = sys.argv[2] if len(sys.argv) == 3 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "golden")
    os.makedirs(golden, exist_ok=True)
    meta = {"generator": "tests/ref/make_tok_golden.py",
            "llama_cpp_python": llama_cpp.__version__,
            "gguf": importlib.metadata.version("gguf"),  # writes the fixtures' bytes
            "strings": [{"text": s, "hex": hexs(s.encode("utf-8"))} for s in STRINGS]}

    # the real model
    v = Vocab(model)
    big, reps = big_text()
    big_ids = v.tokenize(big, False, False)
    dump(os.path.join(golden, "tok_smollm2.json"), dict(
        meta, model=os.path.basename(model), **v.summary(), cases=v.cases(ALL_COMBOS),
        big={"min_bytes": BIG_TEXT_MIN, "repeat": reps, "bytes": len(big),
             "n_ids": len(big_ids), "ids_sha256": ids_digest(big_ids)}))

    # the fixtures
    fixtures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in make_tok_fixtures.build_all(tmp):
            path = os.path.join(tmp, name)
            fv = Vocab(path)
            fixtures.append(dict(name=name, sha256=make_tok_fixtures.sha256_file(path),
                                 **fv.summary(), cases=fv.cases(FIXTURE_COMBOS)))
            del fv
    dump(os.path.join(golden, "tok_fixtures.json"), dict(meta, fixtures=fixtures))

    # chat templates
    smol = gguf_chat_template(model)
    dump(os.path.join(golden, "chat_templates.json"), {
        "generator": "tests/ref/make_tok_golden.py", "jinja2": jinja2.__version__,
        "templates": [
            {"name": "smollm2", "template": smol, "kind": "chatml",
             "default_system": "You are a helpful AI assistant named SmolLM, trained by "
                               "Hugging Face", "cases": chat_cases(smol)},
            {"name": "qwen-style", "template": QWEN_STYLE_TEMPLATE, "kind": "chatml",
             "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful "
                               "assistant.", "cases": chat_cases(QWEN_STYLE_TEMPLATE,
                                                                 skip_empty=True)},
            {"name": "chatml", "template": CHATML_TEMPLATE, "kind": "chatml",
             "default_system": "", "cases": chat_cases(CHATML_TEMPLATE)},
            {"name": "llama3", "template": LLAMA3_TEMPLATE, "kind": "llama3",
             "default_system": "", "bos_token": "<|begin_of_text|>",
             "cases": chat_cases(LLAMA3_TEMPLATE, "<|begin_of_text|>")},
        ]})


if __name__ == "__main__":
    main()
