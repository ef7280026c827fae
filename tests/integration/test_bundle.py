"""Air-gap bundles between two sites, through the real `mlvault` binary (issue 3,
"What it must show" items 2 and 3).

Site A pushes base -> child -> grandchild and exports the grandchild with its ancestors
for site B's import key; B trusts A's signing key and imports. On B, `verify`,
`lineage` and `export` give the same graph and bytes as on A, the independent
`model_signing` verifier accepts B's export with A's public key, and a second import
changes nothing.

Then every kind of bad bundle is refused by a third site C, which is left exactly as it
was (listing, ledger head, objects, audit rows, tmp/; `fsck` passes): byte flips and
truncations of the file, and archives crafted here with Python's own `tarfile` and
`zstandard` (path traversal, absolute paths, symlinks, hardlinks, devices, duplicates,
undeclared entries, a 1 GiB compression bomb run under a 64 MiB file-size limit), a
sender C does not trust, a bundle for another site, and a bundle.json altered and
re-signed with an untrusted key.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_VENV."""
import base64
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest

import zstandard
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, os.path.dirname(__file__))
import fixtures  # noqa: E402
from test_vault import BIN, EXIT, TMP, VENV, Vault, sha256  # noqa: E402

GiB = 1 << 30


def tree_digests(d):
    return {n: sha256(os.path.join(d, n)) for n in sorted(os.listdir(d))}


class Site(Vault):
    """One data home (its own keys) in its own folder, with the views a refused import
    must leave unchanged."""

    def __init__(self, root, name):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        super().__init__(self.dir)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def blob_digests(self):
        out = {}
        for d, _, files in os.walk(os.path.join(self.home, "objects")):
            for f in files:
                out[f] = sha256(os.path.join(d, f))
        return out

    def git_head(self):
        return subprocess.run(["git", "-C", os.path.join(self.home, "ledger.git"), "rev-parse",
                               "main"], capture_output=True, text=True, check=True).stdout.strip()

    def state(self):
        """Everything a refused import must leave as it was."""
        return {"list": self.json("list"), "head": self.git_head(), "objects": self.blob_digests(),
                "audit": len(self.json("audit")),
                "tmp": sorted(os.listdir(os.path.join(self.home, "tmp")))}

    def import_key(self):
        p = self.path("import.pub")
        if not os.path.exists(p):
            self.ok("keys", "export-import-key", "-o", p)
        return p


# ------------------------------------------------------------------ crafting ---

def frame_compressor():
    """zstd with the frame parameters mlvault writes (checksum, no content size, a 2 MiB
    window), so a crafted bundle differs from a real one only where the test says."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=21, write_checksum=1, write_content_size=0)
    return zstandard.ZstdCompressor(compression_params=params)


def unpack(path):
    """[(TarInfo, bytes)] of a bundle, read with zstandard and tarfile."""
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            out.append((m, t.extractfile(m).read() if m.isfile() else b""))
    return out


class Zeros(io.RawIOBase):
    """`n` zero bytes, never held in memory at once."""

    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def append_trailer(path):
    """mlvault's integrity trailer: a zstd skippable frame holding "MLVB1SUM" and the
    SHA-256 of every byte before it (standard decoders skip it)."""
    digest = sha256(path)
    with open(path, "ab") as f:
        f.write(bytes([0x5B, 0x2A, 0x4D, 0x18, 40, 0, 0, 0]) + b"MLVB1SUM"
                + bytes.fromhex(digest))


def pack(entries, path):
    """Writes entries [(TarInfo, bytes | Zeros)] as a tar compressed with zstd, streaming:
    headers from tarfile (TarInfo.tobuf, pax where needed), then data and padding; then
    the trailer."""
    with open(path, "wb") as f, frame_compressor().stream_writer(f, closefd=False) as w:
        for info, data in entries:
            w.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            n = 0
            if isinstance(data, Zeros):
                while chunk := data.read(1 << 20):
                    w.write(chunk)
                    n += len(chunk)
            else:
                w.write(data)
                n = len(data)
            if n % 512:
                w.write(bytes(512 - n % 512))
        w.write(bytes(1024))  # the end of the archive; closing ends the one zstd frame
    append_trailer(path)


def reg(name, data=b"hello", size=None):
    i = tarfile.TarInfo(name)
    i.size = len(data) if size is None else size
    i.mode = 0o644
    return i, data


def special(name, kind, linkname=""):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = linkname
    if kind == tarfile.CHRTYPE:
        i.devmajor, i.devminor = 1, 3
    return i, b""


def sign_with(keyfile, data):
    with open(keyfile, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256())))


def limit_file_size():
    """No file the process writes may grow past 64 MiB (a bomb would be killed)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))


class BundleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="bundle-", dir=TMP)
        cls.a = Site(cls.root, "site-a")
        cls.a.add_user("alice", "engineer")
        files = cls.a.path("files")
        os.makedirs(files)
        cls.base = fixtures.tiny_gguf(os.path.join(files, "base.gguf"), seed=1)
        cls.hf = fixtures.hf_folder(os.path.join(files, "child-hf"), seed=2)
        cls.grand = fixtures.tiny_gguf(os.path.join(files, "grand.gguf"), seed=3)
        a = cls.a
        a.json("push", "base", cls.base, token="alice")
        a.json("push", "child", cls.hf, "--parent", "base", token="alice")
        a.json("push", "grandchild", cls.grand, "--parent", "child", token="alice")
        a.json("push", "unrelated", fixtures.tiny_gguf(os.path.join(files, "u.gguf"), seed=9),
               token="alice")

        # B: the receiving site of the round trip; C: the one that refuses bad bundles
        # (holding a model of its own, so a half-done import would show).
        cls.b = Site(cls.root, "site-b")
        cls.c = Site(cls.root, "site-c")
        cls.c.json("push", "local", fixtures.tiny_gguf(cls.c.path("local.gguf"), seed=7))
        for s in (cls.b, cls.c):
            s.ok("keys", "trust", os.path.join(a.home, "keys", "signing.pub"), "--name", "site-a")
        cls.for_b = a.path("for-b.tar.zst")
        cls.for_c = a.path("for-c.tar.zst")
        cls.export_b = a.json("bundle", "export", "grandchild", "--with-ancestors", "--to",
                              cls.b.import_key(), "-o", cls.for_b, token="alice")
        a.json("bundle", "export", "grandchild", "--with-ancestors", "--to", cls.c.import_key(),
               "-o", cls.for_c, token="alice")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def fsck_ok(self, site):
        r = site.run("fsck")
        if "not yet" in r.stderr:
            return
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    # ---------------------------------------------------------- round trip --------

    def test_round_trip(self):
        a, b = self.a, self.b
        self.assertEqual([v["ref"] for v in self.export_b["versions"]],
                         ["base:1", "child:1", "grandchild:1"])
        self.assertEqual(self.export_b["sha256"], sha256(self.for_b))
        self.assertEqual(self.export_b["bytes"], os.path.getsize(self.for_b))
        # the export is audited at A as a download
        rows = [r for r in a.json("audit") if self.export_b["sha256"] in r["detail"]]
        self.assertEqual([r["action"] for r in rows], ["bundle.export"])
        self.assertEqual(rows[0]["actor"], "alice")

        before = len(b.json("audit"))
        imp = b.json("bundle", "import", self.for_b)
        self.assertTrue(imp["changed"])
        self.assertEqual(imp["imported"], 3)
        self.assertEqual(imp["sha256"], self.export_b["sha256"])
        self.assertEqual([(v["ref"], v["status"]) for v in imp["versions"]],
                         [("base:1", "imported"), ("child:1", "imported"),
                          ("grandchild:1", "imported")])
        audit = b.json("audit")
        self.assertEqual(len(audit), before + 1)
        self.assertEqual(audit[-1]["action"], "bundle.import")

        # Same manifests, digests, graph.
        for ref in ("base:1", "child:1", "grandchild:1"):
            b.ok("verify", ref)
            sa, sb = a.json("show", ref), b.json("show", ref)
            self.assertEqual(sa["digest"], sb["digest"])
            self.assertEqual(sa["manifest"], sb["manifest"])
            self.assertEqual(sb["signature"]["state"], "valid")
        la, lb = a.json("lineage", "grandchild"), b.json("lineage", "grandchild")
        self.assertEqual(la["root"], lb["root"])
        self.assertEqual(sorted(json.dumps(n, sort_keys=True) for n in la["nodes"]),
                         sorted(json.dumps(n, sort_keys=True) for n in lb["nodes"]))
        self.assertEqual(sorted((e["from"], e["to"]) for e in la["edges"]),
                         sorted((e["from"], e["to"]) for e in lb["edges"]))
        self.assertEqual(len(lb["nodes"]), 3)
        self.assertNotIn("unrelated", [x["name"] for x in b.json("list")])

        # Exports are byte-identical, signature included; the blobs travelled as stored.
        for ref in ("base:1", "child:1", "grandchild:1"):
            ea, eb = a.path("exp-" + ref.replace(":", "-")), b.path("exp-" + ref.replace(":", "-"))
            a.ok("export", ref, "-o", ea)
            b.ok("export", ref, "-o", eb)
            self.assertEqual(tree_digests(ea), tree_digests(eb), ref)
        objs_a, objs_b = a.blob_digests(), b.blob_digests()
        for name, digest in objs_b.items():
            self.assertEqual(objs_a[name], digest)

        # The standard verifier accepts B's export with A's public key.
        tool = os.path.join(VENV, "bin", "model_signing")
        out = b.path("exp-child-1")
        r = subprocess.run([tool, "verify", "key", out, "--signature",
                            os.path.join(out, "model.sig"), "--public_key",
                            os.path.join(a.home, "keys", "signing.pub")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

        # `show` says where the version came from.
        show = b.json("show", "grandchild:1")
        self.assertIn("bundle sha256:" + self.export_b["sha256"], show["origin"])
        self.assertIn(imp["sender"], show["origin"])
        self.assertIn("bundle sha256:" + self.export_b["sha256"],
                      b.ok("show", "grandchild:1").stdout)
        self.assertEqual(a.json("show", "grandchild:1")["origin"], "local")
        self.fsck_ok(b)

        # Importing the same bundle again changes nothing.
        head, n_audit, objs = b.git_head(), len(b.json("audit")), b.blob_digests()
        again = b.json("bundle", "import", self.for_b)
        self.assertFalse(again["changed"])
        self.assertEqual(again["imported"], 0)
        self.assertEqual(again["present"], 3)
        self.assertIn("nothing changed", b.ok("bundle", "import", self.for_b).stdout)
        self.assertEqual((b.git_head(), len(b.json("audit")), b.blob_digests()),
                         (head, n_audit, objs))
        self.assertEqual(os.listdir(os.path.join(b.home, "tmp")), [])

        # B can pass on what it imported: its versions still verify with A's key.
        fwd = b.path("forward.tar.zst")
        b.ok("bundle", "export", "child", "--to", self.c.import_key(), "-o", fwd)
        self.assertTrue(os.path.exists(fwd))

    def test_keys_commands(self):
        b = self.b
        pem = b.ok("keys", "export-import-key").stdout
        self.assertTrue(pem.startswith("-----BEGIN PUBLIC KEY-----"))
        with open(os.path.join(b.home, "keys", "import.pub")) as f:
            self.assertEqual(f.read(), pem)
        self.assertEqual(oct(os.stat(os.path.join(b.home, "keys", "import.key")).st_mode & 0o777),
                         "0o600")
        keys = b.json("keys", "list")
        self.assertEqual(sorted(k["name"] for k in keys), ["self", "site-a"])
        # trusting twice, a non-key, and a non-admin are refused
        signing = os.path.join(self.a.home, "keys", "signing.pub")
        r = b.run("keys", "trust", signing, "--name", "again")
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)
        r = b.run("keys", "trust", os.path.join(b.home, "keys", "import.pub"), "--name", "x")
        self.assertEqual(r.returncode, EXIT["EINVAL"], r.stderr)
        b.add_user("eve", "engineer")
        r = b.run("keys", "trust", signing, "--name", "eve-key", token="eve")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)

    def test_export_refusals(self):
        a = self.a
        a.add_user("victor", "viewer")
        out = a.path("refused.tar.zst")
        key = self.b.import_key()
        cases = [
            (("bundle", "export", "base", "-o", out), "admin", EXIT["EINVAL"], "--to"),
            (("bundle", "export", "base", "--to", os.path.join(a.home, "keys", "signing.pub"),
              "-o", out), "admin", EXIT["EINVAL"], "not an mlvault import key"),
            (("bundle", "export", "nosuch", "--to", key, "-o", out), "admin", EXIT["ENOTFOUND"],
             "nosuch"),
            (("bundle", "export", "base", "--to", key, "-o", out), "victor", EXIT["EFORBIDDEN"],
             "forbidden"),
            (("bundle", "export", "base", "--to", key, "-o", self.for_b), "admin",
             EXIT["EEXISTS"], "exists"),
            (("bundle", "import", self.for_b), "victor", EXIT["EFORBIDDEN"], "forbidden"),
        ]
        size = os.path.getsize(self.for_b)
        for args, tok, code, msg in cases:
            with self.subTest(args=args, token=tok):
                r = a.run(*args, token=tok)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(msg, r.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertEqual(os.path.getsize(self.for_b), size)
        # A version that does not verify is not exported, and nothing is left behind.
        t = Site(self.root, "site-tampered")
        t.json("push", "m", self.base)
        obj = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(t.home, "objects"))
               for f in fs][0]
        os.chmod(obj, 0o600)
        with open(obj, "r+b") as f:
            f.seek(1000)
            c = f.read(1)
            f.seek(1000)
            f.write(bytes([c[0] ^ 1]))
        r = t.run("bundle", "export", "m", "--to", key, "-o", t.path("m.tar.zst"))
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
        self.assertEqual([n for n in os.listdir(t.dir) if "tar.zst" in n], [])

    # ------------------------------------------------------------ refusals --------

    def refused(self, path, needle, code=None, limits=None):
        """C refuses the bundle at `path` with a message holding `needle`, unchanged."""
        c = self.c
        before = c.state()
        r = c.run("bundle", "import", path, limits=limits)
        self.assertNotEqual(r.returncode, 0, f"{path} was accepted: {r.stdout}")
        self.assertGreater(r.returncode, 0, f"killed by signal {-r.returncode}: {r.stderr}")
        if code is not None:
            self.assertEqual(r.returncode, code, r.stderr)
        self.assertTrue(r.stderr.startswith("mlvault: error: "), r.stderr)
        self.assertIn(needle, r.stderr)
        self.assertEqual(c.state(), before, f"{path}: site C changed")
        self.fsck_ok(c)
        return r.stderr

    def test_refuses_flipped_bytes(self):
        with open(self.for_c, "rb") as f:
            good = f.read()
        n = len(good)
        bad = self.c.path("flipped.tar.zst")
        for off in (0, 3, 4, 5, 6, 50, 700, 3000, n // 3, n // 2, 2 * n // 3, n - 40, n - 5,
                    n - 1):
            with self.subTest(offset=off):
                data = bytearray(good)
                data[off] ^= 0x10
                with open(bad, "wb") as f:
                    f.write(data)
                self.refused(bad, "bundle", EXIT["EINTEGRITY"])

    def test_refuses_truncation(self):
        with open(self.for_c, "rb") as f:
            good = f.read()
        n = len(good)
        bad = self.c.path("truncated.tar.zst")
        for cut in (0, 5, 200, 4000, n // 4, n // 2, n - 100, n - 4, n - 1):
            with self.subTest(cut=cut):
                with open(bad, "wb") as f:
                    f.write(good[:cut])
                self.refused(bad, "bundle" if cut else "not a zstd", EXIT["EINTEGRITY"])

    def crafted(self, name, edit):
        entries = unpack(self.for_c)
        entries = edit(entries)
        path = self.c.path(name + ".tar.zst")
        pack(entries, path)
        return path

    def test_repacked_bundle_is_accepted(self):
        """The crafting itself breaks nothing: the good bundle unpacked and packed again
        imports (on another site), so each refusal below is due to its one change."""
        r = Site(self.root, "site-r")
        r.ok("keys", "trust", os.path.join(self.a.home, "keys", "signing.pub"), "--name", "a")
        src = self.a.path("for-r.tar.zst")
        self.a.ok("bundle", "export", "child", "--with-ancestors", "--to", r.import_key(),
                  "-o", src)
        path = r.path("repacked.tar.zst")
        pack(unpack(src), path)
        self.assertEqual(r.json("bundle", "import", path)["imported"], 2)
        r.ok("verify", "child:1")

    def test_refuses_crafted_entries(self):
        def at2(extra):
            return lambda e: e[:2] + [extra] + e[2:]

        def dup(e):
            return e + [e[3]]

        cases = [
            ("dotdot", at2(reg("../x")), "'../x' has an unsafe path"),
            ("absolute", at2(reg("/etc/x")), "'/etc/x' has an unsafe path"),
            ("deep-dotdot", lambda e: e + [reg("blobs/../../../x")], "unsafe path"),
            ("symlink", at2(special("blobs/link", tarfile.SYMTYPE, "/etc/passwd")),
             "'blobs/link' is a symbolic link"),
            ("hardlink", at2(special("blobs/hard", tarfile.LNKTYPE, "bundle.json")),
             "'blobs/hard' is a hard link"),
            ("chardev", at2(special("blobs/null", tarfile.CHRTYPE)),
             "'blobs/null' is a character device"),
            ("fifo", at2(special("blobs/fifo", tarfile.FIFOTYPE)), "'blobs/fifo' is a FIFO"),
            ("directory", at2(special("blobs/dir", tarfile.DIRTYPE)), "is a directory"),
            ("duplicate", dup, "duplicate entry"),
            ("undeclared", lambda e: e + [reg("blobs/" + "0" * 64)], "not declared"),
            ("json-not-first", lambda e: [e[1], e[0]] + e[2:], "not bundle.json"),
            ("no-json", lambda e: e[1:], "not bundle.json"),
            ("missing-blob", lambda e: e[:-1], "is missing"),
        ]
        for name, edit, needle in cases:
            with self.subTest(name):
                self.refused(self.crafted(name, edit), needle, EXIT["EINTEGRITY"])

    def test_refuses_compression_bombs(self):
        """1 GiB of zeros (a few hundred kB compressed), declared nowhere or in place of
        a declared blob: refused from the tar header, under a 64 MiB file-size limit, so
        nothing near 1 GiB is written anywhere."""
        def undeclared(e):
            i, _ = reg("ledger/models/base/1/extra", size=GiB)
            return e[:3] + [(i, Zeros(GiB))] + e[3:]

        def oversized(e):
            k = next(k for k, (i, _) in enumerate(e) if i.name.startswith("blobs/"))
            i, _ = reg(e[k][0].name, size=GiB)
            return e[:k] + [(i, Zeros(GiB))] + e[k + 1:]

        for name, edit, needle in (("bomb-undeclared", undeclared, "not declared"),
                                   ("bomb-oversized", oversized, "bundle.json declares")):
            with self.subTest(name):
                path = self.crafted(name, edit)
                self.assertLess(os.path.getsize(path), 64 << 20)
                self.refused(path, needle, EXIT["EINTEGRITY"], limits=limit_file_size)

    def test_refuses_untrusted_sender(self):
        u = Site(self.root, "site-u")  # C does not trust U
        u.json("push", "base", self.base)
        path = u.path("from-u.tar.zst")
        u.ok("bundle", "export", "base", "--to", self.c.import_key(), "-o", path)
        self.refused(path, "not trusted: run mlvault keys trust", EXIT["EINTEGRITY"])

    def test_refuses_bundle_for_another_site(self):
        self.refused(self.for_b, "bundle is for another site", EXIT["EINVAL"])

    def test_refuses_resigned_bundle_json(self):
        u = Site(self.root, "site-forger")  # a key C does not trust
        ukey = os.path.join(u.home, "keys", "signing.key")
        with open(os.path.join(u.home, "keys", "signing.pub")) as f:
            upem = f.read()

        def resign(as_sender):
            def edit(e):
                doc = json.loads(e[0][1])
                doc["created_at"] = "2020-01-01T00:00:00Z"
                if as_sender:
                    doc["sender"] = {"public_key": upem,
                                     "hint": hashlib.sha256(upem.encode()).hexdigest()}
                body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
                sig = sign_with(ukey, body)
                return [reg("bundle.json", body), reg("bundle.sig", sig)] + e[2:]
            return edit

        # signed by the forger, still naming A as the sender: does not verify
        self.refused(self.crafted("resigned-a", resign(False)), "bundle.sig does not verify",
                     EXIT["EINTEGRITY"])
        # signed by the forger, naming the forger: not trusted
        self.refused(self.crafted("resigned-u", resign(True)), "not trusted",
                     EXIT["EINTEGRITY"])
        # unchanged signature over a changed bundle.json
        def tamper(e):
            body = e[0][1].replace(b'"version":1', b'"version":2', 1)
            self.assertNotEqual(body, e[0][1])
            return [reg("bundle.json", body)] + e[1:]
        self.refused(self.crafted("tampered", tamper), "bundle.sig does not verify",
                     EXIT["EINTEGRITY"])

    def test_refuses_conflicting_version(self):
        """A site that has its own base:1 refuses a bundle whose base:1 differs."""
        d = Site(self.root, "site-d")
        d.ok("keys", "trust", os.path.join(self.a.home, "keys", "signing.pub"))
        d.json("push", "base", self.grand)  # another file as base:1
        path = self.a.path("for-d.tar.zst")
        self.a.ok("bundle", "export", "child", "--with-ancestors", "--to", d.import_key(),
                  "-o", path)
        before = d.state()
        r = d.run("bundle", "import", path)
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)
        self.assertIn("base:1 conflicts", r.stderr)
        self.assertEqual(d.state(), before)
        # and without its parent, a child alone is refused
        e = Site(self.root, "site-e")
        e.ok("keys", "trust", os.path.join(self.a.home, "keys", "signing.pub"))
        alone = self.a.path("alone.tar.zst")
        self.a.ok("bundle", "export", "grandchild", "--to", e.import_key(), "-o", alone)
        before = e.state()
        r = e.run("bundle", "import", alone)
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
        self.assertIn("parent child:1", r.stderr)
        self.assertEqual(e.state(), before)


if __name__ == "__main__":
    unittest.main(verbosity=2)
