"""End-to-end tests of the vault through the real `mlvault` binary, checked against
independent tools: cmp-style byte comparison, `git` (log, fsck), the PyPI
`model_signing` verifier, SQLite edits made behind mlvault's back, and numpy scans of
the blob store for plaintext.

Environment (set by ctest): MLVAULT_BIN, MLV_TEST_TMP, MLV_VENV, MLV_MODEL_GGUF."""
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import fixtures  # noqa: E402

BIN = os.environ.get("MLVAULT_BIN", "build/mlvault")
TMP = os.environ.get("MLV_TEST_TMP", "/tmp")
VENV = os.environ.get("MLV_VENV", ".venv")
MODEL = os.environ.get("MLV_MODEL_GGUF", os.path.expanduser(
    "~/.cache/mlvault/SmolLM2-135M-Instruct.Q4_1.gguf"))

EXIT = {"EINVAL": 2, "ENOTFOUND": 3, "EEXISTS": 4, "EAUTH": 5, "EFORBIDDEN": 6,
        "EINTEGRITY": 7, "EIO": 8, "EGATE": 9, "EBUSY": 10, "EUNSUPPORTED": 11}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Vault:
    """One data home and the tokens of its users."""

    def __init__(self, root):
        self.home = os.path.join(root, "home")
        out = self.run("init", "--json", token=None)
        assert out.returncode == 0, out.stderr
        self.admin = json.loads(out.stdout)["token"]
        self.tokens = {"admin": self.admin}

    def run(self, *args, token="admin", env=None, limits=None):
        """Runs mlvault as user `token` (a name or a raw token); `limits` is a preexec_fn,
        e.g. to cap the size of files the process may write."""
        e = dict(os.environ)
        e.pop("MLVAULT_TOKEN", None)
        e["MLVAULT_HOME"] = self.home
        if token is not None:
            e["MLVAULT_TOKEN"] = self.tokens.get(token, token) if hasattr(self, "tokens") else token
        if env:
            e.update(env)
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=900,
                              preexec_fn=limits)

    def ok(self, *args, token="admin"):
        r = self.run(*args, token=token)
        if r.returncode != 0:
            raise AssertionError(f"mlvault {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def json(self, *args, token="admin"):
        return json.loads(self.ok(*args, "--json", token=token).stdout)

    def add_user(self, name, role):
        self.tokens[name] = self.json("user", "add", name, "--role", role)["token"]

    def objects(self):
        out = []
        for d, _, files in os.walk(os.path.join(self.home, "objects")):
            out += [os.path.join(d, f) for f in files]
        return sorted(out)

    def git(self, *args):
        return subprocess.run(["git", "-C", os.path.join(self.home, "ledger.git"), *args],
                              capture_output=True, text=True, check=True).stdout

    def db(self):
        return sqlite3.connect(os.path.join(self.home, "mlvault.db"))

    def state(self):
        """Everything a failed command must leave as it was."""
        con = self.db()
        rows = [con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("versions", "blobs", "audit", "users", "artifacts")]
        con.close()
        return rows, self.objects(), self.git("rev-parse", "main").strip()


def plaintext_in(blob, plain, block=32):
    """True when any 64-byte window of `plain` occurs in `blob`. Every 64-byte window
    contains a whole 32-byte block aligned to 32 in `plain`, so it suffices to find those
    blocks: candidates by their first 8 bytes (numpy, over all 8 byte shifts of `blob`),
    each confirmed by a full comparison."""
    n = len(plain) // block
    if n == 0 or len(blob) < block:
        return False
    heads = np.frombuffer(plain, dtype="<u8", count=n * block // 8)[::block // 8]
    keys = np.unique(heads)
    mask = np.uint64((1 << 27) - 1)
    table = np.zeros(1 << 27, dtype=bool)  # a cheap prefilter on the low 27 bits
    table[keys & mask] = True
    for shift in range(8):
        m = (len(blob) - shift) // 8
        words = np.frombuffer(blob, dtype="<u8", count=m, offset=shift)
        maybe = np.nonzero(table[words & mask])[0]
        pos = np.searchsorted(keys, words[maybe])
        pos[pos == len(keys)] = 0
        for idx in maybe[keys[pos] == words[maybe]]:
            off = shift + 8 * int(idx)
            cand = blob[off:off + block]
            if len(cand) == block and plain.find(cand) >= 0 and any(
                    plain[k * block:(k + 1) * block] == cand
                    for k in np.nonzero(heads == words[idx])[0]):
                return True
    return False


class VaultTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(TMP, exist_ok=True)
        cls.root = tempfile.mkdtemp(prefix="vault-", dir=TMP)
        cls.v = Vault(cls.root)
        cls.v.add_user("alice", "engineer")
        cls.v.add_user("victor", "viewer")
        cls.v.add_user("dora", "engineer")
        cls.tiny = fixtures.tiny_gguf(os.path.join(cls.root, "tiny.gguf"), seed=1)
        cls.tiny2 = fixtures.tiny_gguf(os.path.join(cls.root, "tiny2.gguf"), seed=2)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def fresh_vault(self, name):
        root = tempfile.mkdtemp(prefix=name + "-", dir=self.root)
        v = Vault(root)
        v.add_user("alice", "engineer")
        return v

    # 1. push -> export is byte-identical; no plaintext under objects/
    def test_real_gguf_roundtrip_and_no_plaintext(self):
        self.assertTrue(os.path.exists(MODEL), f"{MODEL} missing: run scripts/fetch-model.sh")
        v = self.v
        p = v.json("push", "smollm2", MODEL, "--note", "the real model", token="alice")
        self.assertEqual(p["name"], "smollm2")
        self.assertEqual(len(p["digest"]), 64)
        show = v.json("show", f"smollm2:{p['version']}", token="victor")
        m = show["manifest"]
        self.assertEqual(m["format"], "gguf")
        self.assertEqual(m["architecture"], "llama")
        self.assertIn("Q4_1", m["tensor_types"])
        self.assertEqual(m["files"][0]["sha256"], sha256(MODEL))
        self.assertEqual(m["files"][0]["size"], os.path.getsize(MODEL))
        self.assertEqual(show["signature"]["state"], "valid")
        # The manifest digest is the SHA-256 of the canonical manifest bytes.
        canon = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.assertEqual(hashlib.sha256(canon.encode()).hexdigest(), p["digest"])

        out = os.path.join(self.root, "export-real")
        v.ok("export", f"smollm2:{p['version']}", "-o", out, token="victor")
        self.assertEqual(sha256(os.path.join(out, os.path.basename(MODEL))), sha256(MODEL))
        self.assertEqual(sorted(os.listdir(out)),
                         sorted([os.path.basename(MODEL), "mlvault-manifest.json", "model.sig"]))

        with open(MODEL, "rb") as f:
            plain = f.read()
        blob = [o for o in v.objects() if o.endswith(sha256(MODEL))]
        self.assertEqual(len(blob), 1)
        for o in v.objects():
            with open(o, "rb") as f:
                self.assertFalse(plaintext_in(f.read(), plain), f"plaintext found in {o}")
        # The check itself can fail: it finds plaintext planted in a copy.
        self.assertTrue(plaintext_in(b"\x01" * 100 + plain[5000:5064] + b"\x02" * 50, plain))

    def test_safetensors_folder_roundtrip(self):
        v = self.v
        src = fixtures.hf_folder(os.path.join(self.root, "hf"), seed=3)
        os.makedirs(os.path.join(src, ".git"), exist_ok=True)  # hidden entries are skipped
        p = v.json("push", "tiny-hf", src, token="alice")
        show = v.json("show", "tiny-hf")
        self.assertEqual(show["manifest"]["format"], "safetensors")
        self.assertEqual(show["manifest"]["architecture"], "llama")
        self.assertEqual(sorted(show["manifest"]["tensor_types"]), ["F16", "F32"])
        self.assertEqual(show["manifest"]["parameters"], 256 * 64 + 64 + 64 * 64)
        out = os.path.join(self.root, "export-hf")
        v.ok("export", f"tiny-hf:{p['version']}", "-o", out)
        names = sorted(n for n in os.listdir(src) if not n.startswith("."))
        self.assertEqual(sorted(os.listdir(out)),
                         sorted(names + ["mlvault-manifest.json", "model.sig"]))
        for n in names:
            self.assertEqual(sha256(os.path.join(out, n)), sha256(os.path.join(src, n)), n)
        # the exported manifest is the stored one, byte for byte
        with open(os.path.join(out, "mlvault-manifest.json"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), p["digest"])
        for n in names:
            with open(os.path.join(src, n), "rb") as f:
                plain = f.read()
            for o in v.objects():
                with open(o, "rb") as f:
                    self.assertFalse(plaintext_in(f.read(), plain), f"{n} in {o}")

    # 2. the same file twice is stored once
    def test_dedup(self):
        v = self.fresh_vault("dedup")
        a = v.json("push", "m", self.tiny, token="alice")
        before = v.objects()
        b = v.json("push", "m", self.tiny, token="alice")
        c = v.json("push", "other", self.tiny, token="alice")
        self.assertEqual((a["version"], b["version"], c["version"]), (1, 2, 1))
        self.assertEqual((a["new_blobs"], b["new_blobs"], c["new_blobs"]), (1, 0, 0))
        self.assertEqual(v.objects(), before)
        self.assertEqual(len(before), 1)
        v.ok("verify", "m:1")
        v.ok("verify", "m:2")
        v.ok("verify", "other")

    # 3. tampering of every kind is detected, and nothing partial is written
    def tamper_case(self, name, damage, expect_msg):
        v = self.fresh_vault("tamper-" + name)
        v.json("push", "m", self.tiny, token="alice")
        v.json("push", "n", self.tiny2, token="alice")
        damage(v)
        r = v.run("verify", "m:1")
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], f"{name}: {r.stdout} {r.stderr}")
        self.assertIn(expect_msg, r.stderr, name)
        parent = os.path.join(v.home, "..", "exports")
        os.makedirs(parent, exist_ok=True)
        out = os.path.join(parent, "out")
        r = v.run("export", "m:1", "-o", out)
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], f"{name}: {r.stderr}")
        self.assertIn(expect_msg, r.stderr, name)
        self.assertEqual(os.listdir(parent), [], f"{name}: export left files behind")
        # an empty existing folder stays empty
        os.makedirs(out)
        self.assertEqual(v.run("export", "m:1", "-o", out).returncode, EXIT["EINTEGRITY"])
        self.assertEqual(os.listdir(out), [])

    def blob_of(self, v, path):
        return os.path.join(v.home, "objects", sha256(path)[:2], sha256(path))

    def flip(self, path, offset):
        os.chmod(path, 0o600)
        with open(path, "r+b") as f:
            f.seek(offset if offset >= 0 else os.path.getsize(path) + offset)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))

    def test_tamper_blob_bytes(self):
        size = None
        for label, off in (("magic", 0), ("salt", 20), ("header-mac", 60), ("chunk0", 64 + 1000),
                           ("tag0", 64 + 65536 + 15), ("chunk1", 64 + 65552 + 7), ("last", -1)):
            with self.subTest(label):
                self.tamper_case("flip-" + label,
                                 lambda v, o=off: self.flip(self.blob_of(v, self.tiny), o),
                                 "blob " + sha256(self.tiny))
        del size

    def test_tamper_truncate_and_extend(self):
        def trunc(n):
            def f(v):
                p = self.blob_of(v, self.tiny)
                os.truncate(p, n if n >= 0 else os.path.getsize(p) + n)
            return f

        for label, n in (("to-header", 64), ("mid", 100000), ("last-byte", -1), ("empty", 0)):
            with self.subTest(label):
                self.tamper_case("trunc-" + label, trunc(n), "blob " + sha256(self.tiny))

        def extend(v):
            with open(self.blob_of(v, self.tiny), "ab") as f:
                f.write(b"\0" * 16)
        self.tamper_case("extend", extend, "blob " + sha256(self.tiny))

    def test_tamper_swap_and_missing(self):
        def swap(v):
            a, b = self.blob_of(v, self.tiny), self.blob_of(v, self.tiny2)
            tmp = a + ".x"
            os.rename(a, tmp)
            os.rename(b, a)
            os.rename(tmp, b)
        self.tamper_case("swap", swap, "blob " + sha256(self.tiny))

        def reorder(v):
            p = self.blob_of(v, self.tiny)
            with open(p, "rb") as f:
                d = f.read()
            c = 65536 + 16
            d = d[:64] + d[64 + c:64 + 2 * c] + d[64:64 + c] + d[64 + 2 * c:]
            with open(p, "wb") as f:
                f.write(d)
        self.tamper_case("reorder", reorder, "blob " + sha256(self.tiny))

    def test_tamper_manifest_and_signature(self):
        def edit_manifest(v):
            con = v.db()
            con.execute("UPDATE versions SET manifest = replace(manifest, '\"alice\"', '\"mallory\"')"
                        " WHERE version = 1 AND artifact_id = (SELECT id FROM artifacts"
                        " WHERE name = 'm')")
            con.commit()
            con.close()
        self.tamper_case("manifest", edit_manifest, "manifest was altered")

        def edit_manifest_and_digest(v):
            con = v.db()
            (mf,) = con.execute("SELECT manifest FROM versions WHERE id = 1").fetchone()
            mf = mf.replace('"alice"', '"mallory"')
            con.execute("UPDATE versions SET manifest = ?, manifest_digest = ? WHERE id = 1",
                        (mf, hashlib.sha256(mf.encode()).hexdigest()))
            con.commit()
            con.close()
        self.tamper_case("manifest+digest", edit_manifest_and_digest,
                         "catalog and ledger disagree on the manifest.json")

        def edit_signature(v):
            con = v.db()
            (sig,) = con.execute("SELECT signature FROM versions WHERE id = 1").fetchone()
            b = json.loads(sig)
            s = b["dsseEnvelope"]["signatures"][0]["sig"]
            b["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if s[0] != "A" else "B") + s[1:]
            con.execute("UPDATE versions SET signature = ? WHERE id = 1", (json.dumps(b),))
            con.commit()
            con.close()
        self.tamper_case("signature", edit_signature,
                         "catalog and ledger disagree on the signature")

    # 4. the standard model_signing tool accepts our signature, and rejects a changed file
    def test_model_signing_verifies_export(self):
        v = self.fresh_vault("msig")
        v.json("push", "m", fixtures.hf_folder(os.path.join(v.home, "..", "hf"), seed=4),
               token="alice")
        out = os.path.join(v.home, "..", "out")
        v.ok("export", "m", "-o", out)
        tool = os.path.join(VENV, "bin", "model_signing")
        pub = os.path.join(v.home, "keys", "signing.pub")
        cmd = [tool, "verify", "key", out, "--signature", os.path.join(out, "model.sig"),
               "--public_key", pub]
        r = subprocess.run(cmd, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Verification succeeded", r.stdout + r.stderr)
        self.flip(os.path.join(out, "model-00002-of-00002.safetensors"), 100)
        r = subprocess.run(cmd, capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        # and a key that is not the registry's is refused
        other = os.path.join(v.home, "..", "other.pem")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                        other + ".key"], check=True)
        subprocess.run(["openssl", "ec", "-in", other + ".key", "-pubout", "-out", other],
                       check=True, capture_output=True)
        self.flip(os.path.join(out, "model-00002-of-00002.safetensors"), 100)  # undo
        r = subprocess.run(cmd[:-1] + [other], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)

    # 5. one ledger commit per state change, authored by the actor; git fsck clean
    def test_ledger_matches_audit(self):
        v = self.fresh_vault("ledger")
        v.json("push", "m", self.tiny, token="alice")
        v.ok("dataset", "push", "evalset", self.tiny2, token="alice")
        v.ok("export", "m", "-o", os.path.join(v.home, "..", "x"))
        audit = v.json("audit")
        log = v.git("log", "--reverse", "--format=%an|%ae|%s", "main").splitlines()
        self.assertEqual(len(log), len(audit))
        for row, line in zip(audit, log):
            author, email, subject = line.split("|", 2)
            self.assertEqual(author, row["actor"])
            self.assertEqual(email, row["actor"] + "@mlvault")
            self.assertTrue(subject.startswith(row["action"]), (subject, row))
        self.assertEqual([r["action"] for r in audit],
                         ["user.add", "user.add", "push", "dataset.push", "export"])
        self.assertEqual(audit[2]["actor"], "alice")
        manifest = v.git("show", "main:models/m/1/manifest.json")
        self.assertEqual(hashlib.sha256(manifest.encode()).hexdigest(),
                         v.json("show", "m")["digest"])
        v.git("show", "main:datasets/evalset/1/signature")
        subprocess.run(["git", "-C", os.path.join(v.home, "ledger.git"), "fsck", "--strict",
                        "--no-dangling"], check=True, capture_output=True)

    # 6. tokens and roles
    def test_auth_refusals_change_nothing(self):
        v = self.v
        v.add_user("gone", "engineer")
        v.ok("user", "disable", "gone")
        before = v.state()
        cases = [
            (None, EXIT["EAUTH"], "no token"),
            ("mlv_" + "0" * 64, EXIT["EAUTH"], "invalid token"),
            ("not-a-token", EXIT["EAUTH"], "invalid token"),
            ("victor", EXIT["EFORBIDDEN"], "forbidden"),
            ("gone", EXIT["EAUTH"], "disabled"),
        ]
        for tok, code, msg in cases:
            with self.subTest(tok):
                r = v.run("push", "blocked", self.tiny, token=tok)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(msg, r.stderr)
        r = v.run("user", "add", "eve", "--role", "admin", token="alice")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"], r.stderr)
        r = v.run("list", token="gone")
        self.assertEqual(r.returncode, EXIT["EAUTH"])
        self.assertEqual(v.state(), before)

    # 7. bad input: a clear error and no change
    def test_bad_input_changes_nothing(self):
        v = self.v
        empty = os.path.join(self.root, "empty")
        os.makedirs(empty, exist_ok=True)
        fake = os.path.join(self.root, "fake.gguf")
        with open(fake, "wb") as f:
            f.write(b"this is not a gguf file at all, just text\n" * 10)
        half = os.path.join(self.root, "half.gguf")
        with open(self.tiny, "rb") as f, open(half, "wb") as g:
            g.write(f.read(300))
        txt = os.path.join(self.root, "model.bin")
        with open(txt, "wb") as f:
            f.write(b"x")
        before = v.state()
        cases = [
            (("push", "m", os.path.join(self.root, "missing.gguf")), EXIT["ENOTFOUND"],
             "No such file"),
            (("push", "m", empty), EXIT["EINVAL"], "empty folder"),
            (("push", "../x", self.tiny), EXIT["EINVAL"], "invalid name"),
            (("push", "Upper", self.tiny), EXIT["EINVAL"], "invalid name"),
            (("push", "a" * 65, self.tiny), EXIT["EINVAL"], "invalid name"),
            (("push", "m", fake), EXIT["EINVAL"], "gguf"),
            (("push", "m", half), EXIT["EINVAL"], "gguf"),
            (("push", "m", txt), EXIT["EINVAL"], ".gguf file or a Hugging Face folder"),
            (("push", "m", self.tiny, "--parent", "nosuch:3"), EXIT["ENOTFOUND"], "nosuch"),
            (("show", "nosuch"), EXIT["ENOTFOUND"], "nosuch"),
            (("show", "smollm2:999"), EXIT["ENOTFOUND"], "no version 999"),
            (("export", "nosuch", "-o", os.path.join(self.root, "nx")), EXIT["ENOTFOUND"],
             "nosuch"),
            (("verify", "Bad:ref"), EXIT["EINVAL"], "invalid name"),
            (("dataset", "push", "d", empty), EXIT["EINVAL"], "regular file"),
            (("push", "m"), EXIT["EINVAL"], "usage"),
            (("push", "m", self.tiny, "--bogus"), EXIT["EINVAL"], "unknown option"),
        ]
        for args, code, msg in cases:
            with self.subTest(args):
                r = v.run(*args, token="alice")
                self.assertEqual(r.returncode, code, f"{args}: {r.stderr}")
                self.assertIn(msg, r.stderr, args)
                self.assertTrue(r.stderr.startswith("mlvault: error: "), r.stderr)
        # An unreadable file. Root reads anything, so as root the command runs without
        # the capabilities that bypass file permissions (setpriv, util-linux).
        locked = os.path.join(self.root, "locked.gguf")
        shutil.copy(self.tiny, locked)
        os.chmod(locked, 0)
        prefix = []
        if os.geteuid() == 0:
            prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        e = dict(os.environ, MLVAULT_HOME=v.home, MLVAULT_TOKEN=v.tokens["alice"])
        r = subprocess.run(prefix + [BIN, "push", "m", locked], capture_output=True, text=True,
                           env=e)
        self.assertEqual(r.returncode, 8, r.stderr)  # I/O
        self.assertIn("Permission denied", r.stderr)
        self.assertIn("locked.gguf", r.stderr)
        self.assertEqual(v.state(), before)
        self.assertFalse(os.path.exists(os.path.join(self.root, "nx")))

    def test_export_refuses_nonempty_dir(self):
        v = self.fresh_vault("nonempty")
        v.json("push", "m", self.tiny, token="alice")
        out = os.path.join(v.home, "..", "full")
        os.makedirs(out)
        with open(os.path.join(out, "keep.txt"), "w") as f:
            f.write("mine")
        r = v.run("export", "m", "-o", out)
        self.assertEqual(r.returncode, EXIT["EEXISTS"], r.stderr)
        self.assertEqual(os.listdir(out), ["keep.txt"])

    # several processes pushing at once: every push succeeds, versions are distinct,
    # and the ledger has one commit per change
    def test_concurrent_pushes(self):
        v = self.fresh_vault("concurrent")
        files = [fixtures.tiny_gguf(os.path.join(v.home, "..", f"c{i}.gguf"), seed=10 + i)
                 for i in range(6)]
        e = dict(os.environ, MLVAULT_HOME=v.home, MLVAULT_TOKEN=v.tokens["alice"])
        procs = [subprocess.Popen([BIN, "push", "m", f, "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=e) for f in files]
        outs = [p.communicate() for p in procs]
        for p, (out, err) in zip(procs, outs):
            self.assertEqual(p.returncode, 0, err)
            self.assertEqual(err, "")
        self.assertEqual(sorted(json.loads(o)["version"] for o, _ in outs), [1, 2, 3, 4, 5, 6])
        audit = v.json("audit")
        self.assertEqual(len(v.git("log", "--format=%H", "main").split()), len(audit))
        v.ok("audit", "--verify")
        for n in range(1, 7):
            v.ok("verify", f"m:{n}")

    # lineage: parents recorded, children found, graph in JSON and DOT
    def test_lineage(self):
        v = self.fresh_vault("lineage")
        v.json("push", "base", self.tiny, token="alice")
        v.json("push", "child", self.tiny2, "--parent", "base:1", token="alice")
        v.json("push", "grandchild", self.tiny, "--parent", "child", "--parent", "base:1",
               token="alice")
        show = v.json("show", "child:1")
        self.assertEqual(show["parents"], ["base:1"])
        self.assertEqual(show["children"], ["grandchild:1"])
        parents = show["manifest"]["lineage"]["parents"]
        self.assertEqual(parents[0]["name"], "base")
        self.assertEqual(parents[0]["digest"], v.json("show", "base:1")["digest"])
        g = v.json("lineage", "child")
        self.assertEqual(g["root"], "child:1")
        self.assertEqual(sorted(n["id"] for n in g["nodes"]), ["base:1", "child:1", "grandchild:1"])
        self.assertEqual(sorted((e["from"], e["to"]) for e in g["edges"]),
                         [("base:1", "child:1"), ("base:1", "grandchild:1"),
                          ("child:1", "grandchild:1")])
        dot = v.ok("lineage", "base", "--dot").stdout
        self.assertIn('"base:1" -> "child:1";', dot)
        self.assertTrue(dot.startswith("digraph lineage {"))
        lst = v.json("list")
        self.assertEqual(sorted(x["name"] for x in lst), ["base", "child", "grandchild"])

    # audit chain: altered or removed rows are detected
    def test_audit_chain(self):
        v = self.fresh_vault("audit")
        v.json("push", "m", self.tiny, token="alice")
        v.json("push", "m", self.tiny2, token="alice")
        self.assertIn("intact", v.ok("audit", "--verify").stdout)
        r = v.run("audit", token="alice")
        self.assertEqual(r.returncode, EXIT["EFORBIDDEN"])
        home_copy = v.home + ".copy"
        shutil.copytree(v.home, home_copy)

        con = v.db()
        con.execute("DROP TRIGGER audit_append_only")
        con.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
        con.commit()
        con.close()
        r = v.run("audit", "--verify")
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
        self.assertIn("row 2", r.stderr)

        shutil.rmtree(v.home)
        shutil.copytree(home_copy, v.home)
        con = v.db()
        con.execute("DROP TRIGGER audit_keep_180_days")
        con.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
        con.commit()
        con.close()
        r = v.run("audit", "--verify")
        self.assertEqual(r.returncode, EXIT["EINTEGRITY"], r.stderr)
        self.assertIn("ledger records", r.stderr)

        con = sqlite3.connect(os.path.join(home_copy, "mlvault.db"))
        with self.assertRaises(sqlite3.DatabaseError):
            con.execute("DELETE FROM audit WHERE seq = 1")
        with self.assertRaises(sqlite3.DatabaseError):
            con.execute("UPDATE audit SET actor = 'x' WHERE seq = 1")
        con.close()

    # fsck: passes on a healthy store, and names each kind of damage
    def test_fsck(self):
        def damaged(name, damage, expect):
            v = self.fresh_vault("fsck-" + name)
            v.json("push", "m", self.tiny, token="alice")
            v.json("push", "n", self.tiny2, "--parent", "m", token="alice")
            r = v.run("fsck")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("fsck: ok", r.stdout)
            damage(v)
            r = v.run("fsck")
            self.assertEqual(r.returncode, EXIT["EINTEGRITY"], f"{name}: {r.stdout}{r.stderr}")
            self.assertIn(expect, r.stdout, name)
            rep = json.loads(v.run("fsck", "--json").stdout)
            self.assertFalse(rep["ok"])
            self.assertTrue(any(expect in p for p in rep["problems"]), rep)
            return v

        damaged("removed-blob", lambda v: os.unlink(self.blob_of(v, self.tiny)),
                f"blob {sha256(self.tiny)} is missing")
        damaged("flipped-blob", lambda v: self.flip(self.blob_of(v, self.tiny), 70000),
                f"blob {sha256(self.tiny)}")

        def row_without_ledger(v):
            con = v.db()
            con.execute("INSERT INTO versions(artifact_id, version, manifest_digest, manifest,"
                        " signature, size, created_by, created_at, signer, origin)"
                        " SELECT artifact_id, 99, (CASE substr(manifest_digest, 1, 1) WHEN '0' THEN '1'"
                        " ELSE '0' END) || substr(manifest_digest, 2), manifest,"
                        " signature, size, created_by, created_at, signer, origin FROM versions"
                        " WHERE id = 1")
            con.commit()
            con.close()
        damaged("row-without-ledger", row_without_ledger, "version m:99")

        def ledger_without_row(v):
            con = v.db()
            con.execute("DELETE FROM lineage")
            con.execute("DELETE FROM version_files WHERE version_id = 2")
            con.execute("DELETE FROM versions WHERE id = 2")
            con.commit()
            con.close()
        damaged("ledger-without-row", ledger_without_row,
                "ledger records n:1 (models/n/1/manifest.json) but the catalog has no such version")

        def edited_audit(v):
            con = v.db()
            con.execute("DROP TRIGGER audit_append_only")
            con.execute("UPDATE audit SET detail = 'nothing to see' WHERE seq = 2")
            con.commit()
            con.close()
        damaged("audit", edited_audit, "audit: audit chain broken at row 2")

        def stray(v):
            with open(os.path.join(v.home, "objects", "zz"), "w") as f:
                f.write("junk")
        v = damaged("stray", stray, "stray file in the blob store")
        r = v.run("fsck", "--prune")
        self.assertIn("removed", r.stdout)
        self.assertEqual(v.run("fsck").returncode, 0)

    def test_key_permissions_enforced(self):
        v = self.fresh_vault("perms")
        keys = os.path.join(v.home, "keys")
        for f in ("master.key", "signing.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(keys, f)).st_mode), 0o600)
        self.assertEqual(len(open(os.path.join(keys, "master.key"), "rb").read()), 32)
        os.chmod(os.path.join(keys, "master.key"), 0o644)
        r = v.run("list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("master.key", r.stderr)
        os.chmod(os.path.join(keys, "master.key"), 0o600)
        os.chmod(os.path.join(keys, "signing.key"), 0o640)
        r = v.run("list")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("signing.key", r.stderr)
        os.chmod(os.path.join(keys, "signing.key"), 0o600)
        v.ok("list")
        # init refuses an existing home
        r = v.run("init", token=None)
        self.assertEqual(r.returncode, EXIT["EEXISTS"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
