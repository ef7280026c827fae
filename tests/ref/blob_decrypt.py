#!/usr/bin/env python3
"""Independent reference decryptor for mlvault blobs (repo/repo.h, "AEAD stream"),
written from the format description with the `cryptography` package only, so the
C implementation is checked against a second reading of the spec.

usage: blob_decrypt.py BLOB_FILE DEK_HEX
Prints the SHA-256 (hex) of the plaintext; exits 1 with a message when the blob does
not authenticate or is malformed."""
import hashlib
import hmac
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK = 65536
TAG = 16
MAGIC = b"MLVBLOB1"


def hkdf(dek: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dek)


def decrypt(blob: bytes, dek: bytes) -> bytes:
    if len(blob) < 64 or blob[:8] != MAGIC:
        raise ValueError("bad magic or short header")
    salt, mac = blob[8:40], blob[40:64]
    hk = hkdf(dek, salt, b"mlvault blob header")
    if not hmac.compare_digest(hmac.new(hk, blob[:40], hashlib.sha256).digest()[:24], mac):
        raise ValueError("header MAC does not verify")
    aead = AESGCM(hkdf(dek, salt, b"mlvault blob payload"))
    body, out, counter, pos = blob[64:], [], 0, 0
    while True:
        piece = body[pos:pos + CHUNK + TAG]
        pos += len(piece)
        # A chunk is last exactly when it holds less than a full chunk of plaintext.
        last = len(piece) < CHUNK + TAG
        if last and pos != len(body):
            raise ValueError("trailing data")
        if len(piece) < TAG:
            raise ValueError("truncated chunk")
        nonce = counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        out.append(aead.decrypt(nonce, piece, None))
        counter += 1
        if last:
            return b"".join(out)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        blob = f.read()
    try:
        plain = decrypt(blob, bytes.fromhex(sys.argv[2]))
    except (ValueError, InvalidTag) as e:
        print(f"blob does not decrypt: {e!r}", file=sys.stderr)
        return 1
    print(hashlib.sha256(plain).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
