#!/usr/bin/env python3
"""The held-out English evaluation text for the engine's text metrics (perplexity,
next-token accuracy; issue 4): five licence texts that Debian ships in
/usr/share/common-licenses (package base-files), concatenated byte for byte in the
order below. They are long, plain, edited English and are not part of this project, so
nothing in the repository tunes against them. About 104 kB, 22,761 SmolLM2 tokens.

The combined SHA-256 is pinned: a system whose files differ (another base-files
version) fails clearly instead of producing figures that silently do not compare with
the golden files in tests/golden/.

usage: eval_corpus.py OUT.txt      (prints the SHA-256 and size)
"""
import hashlib
import os
import sys

LICENSE_DIR = "/usr/share/common-licenses"
FILES = ["GPL-3", "GFDL-1.3", "Apache-2.0", "MPL-2.0", "GPL-2"]
SHA256 = "f42852758cf1b208c19f7b1218c97bd7ca5f3a1fff81eb16cecb388ddeba10d6"
SIZE = 104280


def corpus_bytes():
    """The corpus; raises SystemExit when a file is missing or the digest differs."""
    parts = []
    for name in FILES:
        path = os.path.join(LICENSE_DIR, name)
        try:
            with open(path, "rb") as f:
                parts.append(f.read())
        except OSError as e:
            raise SystemExit(f"eval_corpus: cannot read {path} ({e.strerror}); the evaluation "
                             "corpus needs Debian's base-files licence texts")
    data = b"".join(parts)
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise SystemExit(f"eval_corpus: {LICENSE_DIR}/{{{','.join(FILES)}}} concatenated have "
                         f"SHA-256 {got} ({len(data)} bytes), expected {SHA256} ({SIZE} bytes); "
                         "this system's licence texts differ from the ones the golden files "
                         "were made from")
    return data


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: eval_corpus.py OUT.txt")
    data = corpus_bytes()
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, sys.argv[1])
    print(f"{SHA256} {len(data)}")


if __name__ == "__main__":
    main()
