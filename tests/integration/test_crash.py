"""Crash safety of the vault (issue 3, "What it must show" 1): the real `mlvault` binary
is made to fail the way a full or failing disk fails, and is killed at random and at
chosen moments; after each, the next command must find a consistent home in which the
version being written is wholly present (listed, and it verifies) or wholly absent (not
listed, no new objects, nothing left in tmp/), and earlier versions are untouched.

  test_fault_library                    the fault library itself, on known writes
  test_full_disk                        push: ENOSPC at ~45 byte budgets, EIO at each fsync
  test_read_only_commands_on_a_full_disk  list/show/verify/audit while the disk is full
  test_full_disk_bundle_import          bundle import: the same faults
  test_kill_at_every_sync_and_rename    push: SIGKILL at each fsync and rename/link
  test_kill_push                        push of 256 MiB: SIGKILL at 50 random moments
  test_kill_bundle_import               import (256 MiB inside): SIGKILL at 50 moments
  test_kill_bundle_import_at_every_step import: SIGKILL at each fsync and rename/link

Faults come from tests/faults/enospc.c, an LD_PRELOAD library ($MLV_FAULTS_LIB):
MLV_FAULT_ENOSPC_AFTER (a byte budget for writes to regular files), MLV_FAULT_EIO_FSYNC
(the K-th fsync fails), MLV_FAULT_KILL_FSYNC / MLV_FAULT_KILL_RENAME (SIGKILL at the
K-th fsync or rename), MLV_FAULT_REPORT and MLV_FAULT_TRACE (what a push writes and
syncs, used here to place the faults in every phase of a push: staging the blob, the
SQLite transactions, the git ledger commit, the checkpoint at close).

Consistency is judged by `mlvault fsck`; where fsck is not there yet ("fsck: not yet"),
by `mlvault verify` of every listed version and `mlvault audit --verify`, and the test
says so. `git fsck` on the ledger and SQLite's own quick_check back it up.

Environment (set by ctest): MLVAULT_BIN, MLV_FAULTS_LIB, MLV_TEST_TMP, MLV_VENV,
MLV_MODEL_GGUF. Optional: MLV_CRASH_SEED (the random seed, printed), MLV_CRASH_KILLS
(kills per kill test, default 50), MLV_CRASH_VERBOSE (one line per fault case)."""
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import fixtures  # noqa: E402
from test_vault import BIN, MODEL, TMP, Vault, sha256  # noqa: E402

FAULTS = os.path.abspath(os.environ.get("MLV_FAULTS_LIB", "build/libmlv_faults.so"))
SEED = int(os.environ.get("MLV_CRASH_SEED", "20261129"))
KILLS = int(os.environ.get("MLV_CRASH_KILLS", "50"))
VERBOSE = bool(os.environ.get("MLV_CRASH_VERBOSE"))  # one line per fault case
BIG_SIZE = 256 << 20  # the kill test's file
MID_SIZE = 64 << 20   # the full-disk test's new version

# What a failed command's message must contain, per injected fault.
ENOSPC_TEXT = "No space left on device"
EIO_TEXT = "Input/output error"
# ... and it must name what failed: a part of the store, a file, or the operation.
NAMES_WHAT = re.compile(r"catalog|ledger|blob|objects/|tmp/|mlvault\.db|fsync|write|rename|"
                        r"commit|\.gguf")

FSCK_FALLBACK = []  # non-empty once fsck said "not yet": results must be re-run later


def write_gguf(path, size, seed):
    """A valid GGUF v3 of `size` bytes (bench/ingest's layout): one F32 tensor of random,
    incompressible bytes. The last bytes are tensor data, so changing them keeps it valid."""
    def gstr(s):
        return struct.pack("<Q", len(s)) + s.encode()
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    head += gstr("general.architecture") + struct.pack("<I", 8) + gstr("llama")
    info = gstr("weights") + struct.pack("<I", 1)
    hdr_len = len(head) + len(info) + 8 + 4 + 8
    pad = (32 - hdr_len % 32) % 32
    n = (size - hdr_len - pad) // 4
    head += info + struct.pack("<QIQ", n, 0, 0) + b"\0" * pad
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(head)
        left = n * 4
        while left:
            k = min(left, 8 << 20)
            f.write(rng.bytes(k))
            left -= k
    return path


def fault_env(**faults):
    """The environment that loads the fault library with MLV_FAULT_<NAME>=value."""
    e = {"LD_PRELOAD": ":".join(p for p in (FAULTS, os.environ.get("LD_PRELOAD")) if p),
         # An ASan build insists that its runtime come first in the library list; ours
         # may come first without harm (it only forwards to the C library).
         "ASAN_OPTIONS": ":".join(p for p in (os.environ.get("ASAN_OPTIONS"),
                                              "verify_asan_link_order=0") if p)}
    e.update({f"MLV_FAULT_{k.upper()}": str(v) for k, v in faults.items()})
    return e


class Home(Vault):
    """A data home (test_vault's Vault) with the views a crash check compares."""

    def __init__(self, root):
        os.makedirs(root, exist_ok=True)
        super().__init__(root)

    def environ(self, env=None):
        e = dict(os.environ)
        e.pop("MLVAULT_TOKEN", None)
        e.update(MLVAULT_HOME=self.home, MLVAULT_TOKEN=self.admin)
        e.update(env or {})
        return e

    def popen(self, *args, env=None):
        return subprocess.Popen([BIN, *args], env=self.environ(env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def listing(self):
        """`list --json` and `list NAME --json` of every name: what users see."""
        top = self.json("list")
        return {"_": top, **{a["name"]: self.json("list", a["name"]) for a in top}}

    def versions(self, name, listing):
        return {x["version"]: x for x in listing.get(name, [])}

    def objects_rel(self):
        base = os.path.join(self.home, "objects")
        return {os.path.relpath(p, base) for p in self.objects()}

    def before(self):
        """What after_crash compares with: listings, objects, catalog row counts and the
        ledger head (test_vault's state())."""
        return {"list": self.listing(), "objects": self.objects_rel(), "state": self.state()}

    def tmp_files(self):
        out = []
        for d, dirs, files in os.walk(os.path.join(self.home, "tmp")):
            out += [os.path.join(d, x) for x in dirs + files]
        return out

    def restore(self, snapshot):
        """Makes the home a copy of `snapshot` (taken with no process running)."""
        shutil.rmtree(self.home)
        shutil.copytree(snapshot, self.home, symlinks=True)

    def snapshot(self, dest):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.home, dest, symlinks=True)
        return dest

    def check(self, ctx):
        """The next command after a crash: fsck (or the fallback) must find no problem.
        Returns fsck's output. Also git fsck of the ledger and SQLite's quick_check."""
        r = self.run("fsck")
        if r.returncode != 0 and "not yet" in r.stderr:
            if not FSCK_FALLBACK:
                FSCK_FALLBACK.append(ctx)
            for name, vs in self.listing().items():
                if name == "_":
                    continue
                for x in vs:
                    v = self.run("verify", f"{name}:{x['version']}")
                    if v.returncode != 0:
                        raise AssertionError(f"{ctx}: verify {name}:{x['version']} failed: "
                                             f"{v.stderr.strip()}")
            a = self.run("audit", "--verify")
            if a.returncode != 0:
                raise AssertionError(f"{ctx}: audit --verify failed: {a.stderr.strip()}")
        elif r.returncode != 0:
            raise AssertionError(f"{ctx}: fsck exits {r.returncode}:\n{r.stdout}{r.stderr}")
        g = subprocess.run(["git", "-C", os.path.join(self.home, "ledger.git"), "fsck",
                            "--no-dangling", "--no-progress"], capture_output=True, text=True)
        if g.returncode != 0:
            raise AssertionError(f"{ctx}: git fsck of the ledger: {g.stdout}{g.stderr}")
        con = sqlite3.connect(f"file:{os.path.join(self.home, 'mlvault.db')}?mode=ro", uri=True)
        try:
            qc = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
        if qc != [("ok",)]:
            raise AssertionError(f"{ctx}: SQLite quick_check: {qc}")
        return r


class CrashTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert os.path.exists(FAULTS), f"{FAULTS} missing: build the mlv_faults target"
        os.makedirs(TMP, exist_ok=True)
        cls.root = os.path.abspath(tempfile.mkdtemp(prefix="crash-", dir=TMP))
        print(f"\ncrash tests: seed {SEED} (set MLV_CRASH_SEED to repeat), {KILLS} kills",
              file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        if FSCK_FALLBACK:
            print("\nNOTE: `mlvault fsck` is not there yet; consistency was judged by verify "
                  "of every version + audit --verify. Re-run this test once fsck exists.",
                  file=sys.stderr)

    # ------------------------------------------------------- the fault library ----

    def test_fault_library(self):
        """The library itself, on a process whose every write we know: a write that
        crosses the budget is cut short, the next fails with ENOSPC, pwrite and writev
        alike; stdout is never failed; the K-th fsync fails with EIO; a kill at the
        K-th fsync kills; the report counts it all."""
        # Built with ASan (the sanitizer build), the library needs ASan's runtime loaded
        # before it; Python is not built with it, so preload it, and spare Python's leaks.
        asan = re.search(r"(\S*libasan\S*) => (\S+)", subprocess.run(
            ["ldd", FAULTS], capture_output=True, text=True).stdout)
        extra = {}
        if asan:
            extra = {"LD_PRELOAD": f"{asan.group(2)}:{FAULTS}",
                     "ASAN_OPTIONS": "detect_leaks=0:verify_asan_link_order=0"}
        path = os.path.join(self.root, "lib-selftest.bin")
        rep = os.path.join(self.root, "lib-selftest.json")
        script = f"""if True:
            import errno, json, os, sys
            out = {{}}
            def attempt(name, f):
                try:
                    out[name] = f()
                except OSError as e:
                    out[name] = errno.errorcode[e.errno]
            fd = os.open({path!r}, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            attempt("write", lambda: os.write(fd, b"a" * 3000))
            attempt("pwrite", lambda: os.pwrite(fd, b"b" * 1000, 3000))
            os.lseek(fd, 4000, os.SEEK_SET)
            attempt("writev", lambda: os.writev(fd, [b"c" * 50, b"d" * 100]))
            attempt("write_full", lambda: os.write(fd, b"e"))
            attempt("pwrite_full", lambda: os.pwrite(fd, b"f", 0))
            attempt("fsync1", lambda: os.fsync(fd))
            attempt("fsync2", lambda: os.fsync(fd))
            attempt("fdatasync3", lambda: os.fdatasync(fd))
            sys.stdout.write(json.dumps(out))
        """
        r = subprocess.run([sys.executable, "-I", "-B", "-c", script], capture_output=True,
                           text=True, env={**os.environ, **fault_env(
                               enospc_after=4096, eio_fsync=2, report=rep), **extra})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {
            "write": 3000, "pwrite": 1000, "writev": 96, "write_full": "ENOSPC",
            "pwrite_full": "ENOSPC", "fsync1": None, "fsync2": "EIO", "fdatasync3": None})
        self.assertEqual(os.path.getsize(path), 4096)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"a" * 3000 + b"b" * 1000 + b"c" * 50 + b"d" * 46)
        with open(rep) as f:
            report = json.load(f)
        self.assertEqual({k: report[k] for k in ("bytes", "fsyncs", "enospc", "short_writes",
                                                 "eio")},
                         {"bytes": 4096, "fsyncs": 3, "enospc": 2, "short_writes": 1, "eio": 1})
        r = subprocess.run([sys.executable, "-I", "-B", "-c", script], capture_output=True,
                           text=True, env={**os.environ, **fault_env(kill_fsync=2), **extra})
        self.assertEqual(r.returncode, -9, "MLV_FAULT_KILL_FSYNC=2 did not kill at fsync 2")

    # --------------------------------------------------------------- shared checks ----

    def after_crash(self, v, ctx, name, before, expect_sha):
        """The invariants after an interrupted or failed write of one version of `name`
        whose only file has digest `expect_sha`; `before` is v.before() from just before
        it. Returns the new version's number, or None when it is wholly absent."""
        v.check(ctx)  # the next command: sweeps tmp/, commits a pending ledger entry
        self.assertEqual(v.tmp_files(), [], f"{ctx}: files left in tmp/ after the next command")
        after_list = v.listing()
        before_v, after_v = v.versions(name, before["list"]), v.versions(name, after_list)
        self.assertTrue(set(before_v) <= set(after_v), f"{ctx}: versions disappeared")
        for n in before_v:
            self.assertEqual(before_v[n]["digest"], after_v[n]["digest"], f"{ctx}: {name}:{n}")
        new = sorted(set(after_v) - set(before_v))
        self.assertLessEqual(len(new), 1, f"{ctx}: more than one new version: {new}")
        objects = v.objects_rel()
        self.assertTrue(before["objects"] <= objects, f"{ctx}: objects disappeared: "
                        f"{sorted(before['objects'] - objects)}")
        added = objects - before["objects"]
        if not new:
            # Wholly absent: what users see is as before, no object was added, and the
            # catalog's rows and the ledger's head are as they were.
            self.assertEqual(after_list, before["list"], f"{ctx}: listing changed")
            self.assertEqual(added, set(), f"{ctx}: stray objects after a failed push")
            self.assertEqual(v.state(), before["state"], f"{ctx}: catalog rows or ledger "
                             "head changed")
            return None
        # Wholly present: listed, its file is the one pushed, it verifies.
        ref = f"{name}:{new[0]}"
        show = v.json("show", ref)
        self.assertEqual([f["sha256"] for f in show["files"]], [expect_sha], f"{ctx}: {ref}")
        r = v.run("verify", ref)
        self.assertEqual(r.returncode, 0, f"{ctx}: {ref} is listed but does not verify: "
                         f"{r.stderr.strip()}")
        self.assertLessEqual(added, {f"{expect_sha[:2]}/{expect_sha}"},
                             f"{ctx}: unexpected objects")
        return new[0]

    def assert_failed_clearly(self, r, text, ctx):
        err = r.stderr.strip()
        self.assertIn(text, err, f"{ctx}: the error does not say '{text}': {err!r}")
        line = next((x for x in err.splitlines() if text in x), "")
        self.assertRegex(line, NAMES_WHAT, f"{ctx}: the error does not say what failed")

    # ------------------------------------------------------------------ full disk ----

    def traced(self, v, args, **faults):
        """Runs one command under the fault library; returns its result, its report (bytes,
        fsyncs, ...; None when it was killed) and its trace, one list per line."""
        rep = os.path.join(self.root, "report.json")
        tr = os.path.join(self.root, "trace.txt")
        for p in (rep, tr):
            if os.path.exists(p):
                os.unlink(p)
        r = v.run(*args, env=fault_env(report=rep, trace=tr, **faults))
        report = None
        if os.path.exists(rep):
            with open(rep) as f:
                report = json.load(f)
        with open(tr) as f:
            trace = [line.rstrip("\n").split(" ", 2) for line in f]
        return r, report, trace

    def measure(self, v, args):
        """One successful command under the fault library, without faults."""
        r, report, trace = self.traced(v, args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return report, trace

    @staticmethod
    def phase_of(path, home):
        """Which part of a push a write or sync of `path` belongs to."""
        rel = os.path.relpath(path, home) if path.startswith(home + "/") else path
        if rel.startswith("ledger.git"):
            return "git"
        if rel.startswith(("tmp/", "objects")):
            return "blob"
        if rel.startswith("mlvault.db"):
            return "sqlite"
        return "other"

    def fault_phase(self, trace, home):
        """Where the first injected fault of a traced run landed: "blob" (staging or
        committing the blob), "sqlite" (a catalog transaction), "git" (the ledger
        commit, after the SQLite commit), "after-git" (the ledger queue, the checkpoint at
        close), "other"; None when no fault was injected. Returns (phase, path)."""
        git_seen, last_sync = False, ""
        for t in trace:
            if t[0] in ("fsync", "fdatasync", "syncfs"):
                last_sync = t[2]
            if t[0] in ("ENOSPC", "EIO"):
                path = t[2] if t[0] == "ENOSPC" else last_sync
                ph = self.phase_of(path, home)
                if ph in ("sqlite", "other") and git_seen:
                    ph = "after-git"
                return ph, os.path.relpath(path, home)
            if len(t) == 3 and self.phase_of(t[2], home) == "git":
                git_seen = True
        return None, None

    def fault_cases(self, report, trace, home):
        """The faults to inject into a command whose faultless run wrote and synced what
        `report` and `trace` say: ENOSPC at nothing at all, a page, a MiB, mid-blob, just
        before the (first) blob's end, the last byte; and at every point where the writes
        move on to another file (each SQLite transaction, each git object, the ref lock,
        the checkpoint) and one byte into it; EIO at each sync. Offsets past a blob drift
        by a few bytes from run to run (zlib of timestamps), so a case's phase is read from
        its own trace, not from these. Returns [(label, faults, expected text)]."""
        total, nsync = report["bytes"], report["fsyncs"]
        writes = [(int(t[1]), t[2]) for t in trace if t[0] == "write"]  # (offset, path)
        self.assertEqual(sum(t[0] in ("fsync", "fdatasync", "syncfs") for t in trace), nsync)
        self.assertTrue(any(self.phase_of(p, home) == "git" for _, p in writes),
                        "the trace shows no ledger commit")
        blob = [off for off, path in writes if "/tmp/" in path]
        self.assertTrue(blob, "the trace shows no blob staged in tmp/")
        blob_end = next(off for off, _ in writes if off > blob[0])
        budgets = {0, 1, 4096, 1 << 20, (blob[0] + blob_end) // 2, blob_end - 4096, blob_end - 1,
                   total - 1}
        for off, _ in writes:
            budgets |= {off, off + 1}
        cases = [(f"ENOSPC after {b} bytes", {"enospc_after": b}, ENOSPC_TEXT)
                 for b in sorted(x for x in budgets if 0 <= x < total)]
        return cases + [(f"EIO at sync {k}", {"eio_fsync": k}, EIO_TEXT)
                        for k in range(1, nsync + 1)]

    def faulted(self, v, args, faults, text, ctx, ledger_path, seen):
        """Runs one command with `faults` and judges what it says: a failure names the
        fault (`text`) and what failed, and comes before the SQLite commit; a fault in
        the ledger commit leaves the change saved, with a pending-ledger warning unless
        git has `ledger_path` anyway. Counts the outcome by phase in `seen`. Returns the
        result, the context with the fault's place, and the phase."""
        r, _, ftrace = self.traced(v, args, **faults)
        phase, where = self.fault_phase(ftrace, v.home)
        ctx = f"{ctx} ({phase}: {where})"
        # Before any other command can commit a pending entry: is it in git?
        in_ledger = ledger_path in v.git("ls-tree", "-r", "--name-only", "main").split()
        if VERBOSE:
            print(f"  {ctx}: exit {r.returncode}, in ledger {in_ledger}: "
                  f"{r.stderr.strip()[:200]}", file=sys.stderr)
        outcome = "failed" if r.returncode else "pending" if "pending" in r.stderr else "ok"
        seen[f"{phase}: {outcome}"] = seen.get(f"{phase}: {outcome}", 0) + 1
        # A sub-test of its own, so that the store is checked whatever the message.
        with self.subTest(f"{ctx}: what it says"):
            if phase is None:
                self.assertEqual(r.returncode, 0, f"{ctx}: no fault, yet: {r.stderr}")
            elif r.returncode != 0:
                self.assert_failed_clearly(r, text, ctx)
                self.assertNotIn(phase, ("git", "after-git"), f"{ctx}: the command failed "
                                 f"after its SQLite commit: {r.stderr.strip()}")
            elif phase == "git" and not in_ledger:
                # The change is saved; only its ledger commit waits, and it says so.
                # (libgit2 retries a failed object write once, as a stream; when that retry
                # succeeds, the commit is made and nothing is pending.)
                self.assertIn("pending", r.stderr, f"{ctx}: the ledger lacks the change and "
                              "there is no pending-ledger warning")
        return r, ctx, phase

    def test_full_disk(self):
        """ENOSPC at many byte budgets and EIO at every fsync of a push of a new 64 MiB
        version: a clear error and an unchanged store, or (fault after the SQLite commit)
        success with a pending-ledger warning; earlier versions still export."""
        self.assertTrue(os.path.exists(MODEL), f"{MODEL} missing: run scripts/fetch-model.sh")
        root = os.path.join(self.root, "full")
        v = Home(root)
        tiny = fixtures.tiny_gguf(os.path.join(root, "tiny.gguf"), seed=3)
        v.ok("push", "tiny", tiny)
        v.ok("push", "smol", MODEL)
        earlier = {"tiny:1": (os.path.basename(tiny), sha256(tiny)),
                   "smol:1": (os.path.basename(MODEL), sha256(MODEL))}
        big = write_gguf(os.path.join(root, "smol-next.gguf"), MID_SIZE, SEED)
        big_sha = sha256(big)
        pristine = v.snapshot(os.path.join(root, "pristine"))

        # One push without faults, measured: every byte and sync, and where it goes.
        report, trace = self.measure(v, ("push", "smol", big))
        v.restore(pristine)
        total, nsync = report["bytes"], report["fsyncs"]
        self.assertGreater(total, MID_SIZE)
        cases = self.fault_cases(report, trace, v.home)
        print(f"\nfull disk: a push writes {total} bytes and makes {nsync} syncs; "
              f"{len(cases)} faults", file=sys.stderr)

        seen = {}
        for ctx, faults, text in cases:
            with self.subTest(ctx):
                before = v.before()
                next_v = max(v.versions("smol", before["list"])) + 1
                try:
                    r, ctx, _ = self.faulted(v, ("push", "smol", big), faults, text, ctx,
                                             f"models/smol/{next_v}/manifest.json", seen)
                    new = self.after_crash(v, ctx, "smol", before, big_sha)
                    if r.returncode == 0:
                        self.assertIsNotNone(new, f"{ctx}: the push said it succeeded but "
                                             "stored nothing")
                    elif new is not None:
                        print(f"  note: {ctx}: the push failed but its version is wholly "
                              f"present (the commit reached disk): {r.stderr.strip()}",
                              file=sys.stderr)
                    if new is not None:
                        v.restore(pristine)
                except BaseException:
                    v.restore(pristine)
                    raise
        print("full disk: " + ", ".join(f"{k} {n}" for k, n in sorted(seen.items(), key=str)),
              file=sys.stderr)

        # Earlier versions still export, byte for byte.
        for ref, (fname, digest) in earlier.items():
            out = os.path.join(root, "export-" + ref.replace(":", "-"))
            v.ok("export", ref, "-o", out)
            self.assertEqual(sha256(os.path.join(out, fname)), digest, ref)
        v.check("full disk, at the end")

    def test_read_only_commands_on_a_full_disk(self):
        """While the home's disk stays nearly full (4 KiB left: SQLite needs a few bytes
        to map its -shm index), the commands that only read — list, show, verify, audit —
        still work, so an operator can see what is stored while making room."""
        root = os.path.join(self.root, "ro")
        v = Home(root)
        tiny = fixtures.tiny_gguf(os.path.join(root, "tiny.gguf"), seed=5)
        v.ok("push", "tiny", tiny)
        before = v.before()
        for args in (("list",), ("list", "tiny"), ("show", "tiny:1"), ("verify", "tiny:1"),
                     ("audit",)):
            with self.subTest(" ".join(args)):
                r = v.run(*args, env=fault_env(enospc_after=4096))
                self.assertEqual(r.returncode, 0, f"`mlvault {' '.join(args)}` fails on a "
                                 f"nearly full disk: {r.stderr.strip()}")
        self.assertEqual(v.before(), before)

    def test_full_disk_bundle_import(self):
        """ENOSPC and EIO at every step of `mlvault bundle import` (two small versions):
        a clear error and nothing imported, or (fault in the ledger commit) everything
        imported with a pending-ledger warning."""
        a, b, bundles = self.sites()
        want = sorted(x["digest"] for x in a.json("list", "mini"))
        empty = b.snapshot(os.path.join(self.root, "site-b-empty-full"))
        report, trace = self.measure(b, ("bundle", "import", bundles["mini"]))
        b.restore(empty)
        cases = self.fault_cases(report, trace, b.home)
        print(f"\nfull disk, import: {report['bytes']} bytes, {report['fsyncs']} syncs; "
              f"{len(cases)} faults", file=sys.stderr)
        seen = {}
        for ctx, faults, text in cases:
            with self.subTest(ctx):
                before = b.before()
                try:
                    r, ctx, _ = self.faulted(b, ("bundle", "import", bundles["mini"]), faults,
                                             text, ctx, "models/mini/2/manifest.json", seen)
                    if self.after_import(b, ctx, "mini", r.returncode, before, want):
                        b.restore(empty)
                except BaseException:
                    b.restore(empty)
                    raise
        print("full disk, import: " + ", ".join(f"{k} {n}" for k, n in
                                                 sorted(seen.items(), key=str)), file=sys.stderr)

    # -------------------------------------------------------- kills at every step ----

    def test_kill_at_every_sync_and_rename(self):
        """SIGKILL at the start of each fsync and each rename/link a push makes (each a
        step of a durable write): the version is wholly present or wholly absent."""
        root = os.path.join(self.root, "steps")
        v = Home(root)
        v.ok("push", "steps", fixtures.tiny_gguf(os.path.join(root, "t0.gguf"), seed=100))
        files = iter(range(101, 10_000))

        def fresh():
            n = next(files)
            p = fixtures.tiny_gguf(os.path.join(root, f"t{n}.gguf"), seed=n)
            return p, sha256(p)

        probe, _ = fresh()
        report, _ = self.measure(v, ("push", "steps", probe))
        cases = [("kill_fsync", k) for k in range(1, report["fsyncs"] + 1)]
        cases += [("kill_rename", k) for k in range(1, report["renames"] + 1)]
        print(f"\nsteps: a push of a new version makes {report['fsyncs']} syncs and "
              f"{report['renames']} renames/links", file=sys.stderr)
        good = v.snapshot(os.path.join(root, "good"))
        outcomes = {}
        for what, k in cases:
            ctx = f"{what}={k}"
            with self.subTest(ctx):
                path, digest = fresh()
                before = v.before()
                r = v.run("push", "steps", path, env=fault_env(**{what: k}))
                try:
                    self.assertIn(r.returncode, (0, -9), f"{ctx}: {r.stderr.strip()}")
                    new = self.after_crash(v, ctx, "steps", before, digest)
                    if r.returncode == 0:
                        self.assertIsNotNone(new, f"{ctx}: push succeeded, nothing stored")
                    outcomes[ctx] = "present" if new else "absent"
                    good = v.snapshot(good)
                except BaseException:
                    v.restore(good)  # go on from the last state that checked out
                    raise
        print("steps: " + ", ".join(f"{c}:{o[0]}" for c, o in outcomes.items()), file=sys.stderr)

    # --------------------------------------------------------------- random kills ----

    def big_file(self):
        """The ≥ 256 MiB GGUF, written once per run, deleted with the test's root."""
        path = os.path.join(self.root, "big.gguf")
        if not os.path.exists(path):
            write_gguf(path, BIG_SIZE, SEED)
        return path

    def test_kill_push(self):
        """SIGKILL `mlvault push` of a 256 MiB file at KILLS random moments, one home
        throughout; each attempt pushes new bytes (its last 16 bytes differ), so each
        stages, commits and records a new blob."""
        big = self.big_file()
        size = os.path.getsize(big)
        self.assertGreaterEqual(size, 256 << 20)
        tail = 16
        prefix = hashlib.sha256()
        with open(big, "rb") as f:
            while (chunk := f.read(min(8 << 20, size - tail - f.tell()))):
                prefix.update(chunk)
        rng = random.Random(SEED)

        def retail(i):
            """Gives the file attempt i's last bytes; returns the file's SHA-256."""
            t = rng.randbytes(tail)
            with open(big, "r+b") as f:
                f.seek(size - tail)
                f.write(t)
            h = prefix.copy()
            h.update(t)
            return h.hexdigest()

        # One uninterrupted push, in a home of its own, gives the time to spread kills over.
        scratch = Home(os.path.join(self.root, "kill-measure"))
        t0 = time.monotonic()
        scratch.ok("push", "big", big)
        duration = time.monotonic() - t0
        shutil.rmtree(scratch.home)

        v = Home(os.path.join(self.root, "kill"))
        tiny = fixtures.tiny_gguf(os.path.join(self.root, "kill-tiny.gguf"), seed=7)
        v.ok("push", "tiny", tiny)
        counts = {"killed, absent": 0, "killed, present": 0, "completed": 0}
        for i in range(KILLS):
            digest = retail(i)
            delay = rng.uniform(0, duration)
            ctx = f"kill {i + 1}/{KILLS} at {delay:.3f}s of {duration:.3f}s (seed {SEED})"
            before = v.before()
            p = v.popen("push", "big", big)
            time.sleep(delay)
            p.kill()
            _, err = p.communicate()
            self.assertIn(p.returncode, (0, -9), f"{ctx}: push failed: {err.strip()}")
            new = self.after_crash(v, ctx, "big", before, digest)
            if p.returncode == 0:
                self.assertIsNotNone(new, f"{ctx}: push completed but nothing is listed")
                counts["completed"] += 1
            else:
                counts["killed, present" if new else "killed, absent"] += 1
        print(f"\nkill push: {KILLS} attempts over {duration:.2f}s: {counts}", file=sys.stderr)
        # The version pushed before the kills is untouched.
        out = os.path.join(self.root, "kill-export")
        v.ok("export", "tiny:1", "-o", out)
        self.assertEqual(sha256(os.path.join(out, os.path.basename(tiny))), sha256(tiny))

    def bundle_sites(self):
        """Site A with two models, each a version and its parent: `lab` (a tiny GGUF and
        the 256 MiB one) and `mini` (two tiny ones), exported as bundles for site B, which
        trusts A's key. Returns ((a, b, {model: bundle path}), None), or (None, the
        reason) when `mlvault bundle` does not work yet. Made once, shared by the tests."""
        if hasattr(CrashTest, "_sites"):
            return CrashTest._sites
        a = Home(os.path.join(self.root, "site-a"))
        b = Home(os.path.join(self.root, "site-b"))
        imp = os.path.join(self.root, "site-b-import.pub")
        CrashTest._sites = None, "unknown"
        r = b.run("keys", "export-import-key", "-o", imp)
        if r.returncode != 0:
            CrashTest._sites = None, ("`mlvault keys export-import-key` does not work yet: "
                                      f"{r.stderr.strip()}")
            return CrashTest._sites
        r = b.run("keys", "trust", os.path.join(a.home, "keys", "signing.pub"))
        if r.returncode != 0:
            CrashTest._sites = None, f"`mlvault keys trust` does not work yet: {r.stderr.strip()}"
            return CrashTest._sites
        tiny = [fixtures.tiny_gguf(os.path.join(self.root, f"site-a-{n}.gguf"), seed=n)
                for n in (11, 12, 13)]
        a.ok("push", "lab", tiny[0])
        a.ok("push", "lab", self.big_file(), "--parent", "lab:1")
        a.ok("push", "mini", tiny[1])
        a.ok("push", "mini", tiny[2], "--parent", "mini:1")
        bundles = {}
        for name in ("lab", "mini"):
            bundles[name] = os.path.join(self.root, f"{name}.tar.zst")
            r = a.run("bundle", "export", f"{name}:2", "--with-ancestors", "--to", imp, "-o",
                      bundles[name])
            if r.returncode != 0:
                CrashTest._sites = None, ("`mlvault bundle export` does not work yet: "
                                          f"{r.stderr.strip()}")
                return CrashTest._sites
        b.snapshot(os.path.join(self.root, "site-b-clean"))
        CrashTest._sites = (a, b, bundles), None
        return CrashTest._sites

    def sites(self):
        """bundle_sites(), with site B as it was before any import (an earlier test may
        have failed and left it otherwise); skips when bundles do not work yet."""
        sites, why = self.bundle_sites()
        if sites is None:
            self.skipTest(why)
        sites[1].restore(os.path.join(self.root, "site-b-clean"))
        return sites

    def after_import(self, b, ctx, name, rc, before, want):
        """After an import of `name`'s bundle that exited with rc (0, or -9 when killed):
        fsck passes, and either every version in the bundle is listed and verifies or none
        is and nothing changed. Returns True when they are there."""
        b.check(ctx)
        self.assertEqual(b.tmp_files(), [], f"{ctx}: files left in tmp/")
        listed = b.listing().get(name, [])
        if listed:
            self.assertEqual(sorted(x["digest"] for x in listed), want,
                             f"{ctx}: a part of the bundle was imported")
            for x in listed:
                r = b.run("verify", f"{name}:{x['version']}")
                self.assertEqual(r.returncode, 0, f"{ctx}: {name}:{x['version']} is listed but "
                                 f"does not verify: {r.stderr.strip()}")
            return True
        self.assertNotEqual(rc, 0, f"{ctx}: import said ok, imported nothing")
        self.assertEqual(b.listing(), before["list"], f"{ctx}: listing changed")
        self.assertEqual(b.objects_rel(), before["objects"], f"{ctx}: stray objects")
        self.assertEqual(b.state(), before["state"], f"{ctx}: catalog or ledger changed")
        return False

    def test_kill_bundle_import(self):
        """SIGKILL `mlvault bundle import` (two versions, one of 256 MiB) at KILLS random
        moments: all of the bundle's versions are imported, or none; fsck passes after
        each. An attempt after a killed one imports into the home that kill left."""
        a, b, bundles = self.sites()
        bundle = bundles["lab"]
        want = sorted(x["digest"] for x in a.json("list", "lab"))  # manifest digests
        empty = b.snapshot(os.path.join(self.root, "site-b-empty"))
        # Two imports without a kill (the first reads the bundle from disk, the second
        # from the page cache, like the attempts); the faster gives the time to kill in.
        times = []
        for _ in range(2):
            t0 = time.monotonic()
            b.ok("bundle", "import", bundle)
            times.append(time.monotonic() - t0)
            b.check("bundle import without a kill")
            self.assertEqual(sorted(x["digest"] for x in b.json("list", "lab")), want)
            b.restore(empty)
        duration = min(times)

        rng = random.Random(SEED + 1)
        counts = {"killed, absent": 0, "killed, present": 0, "completed": 0}
        for i in range(KILLS):
            delay = rng.uniform(0, duration)
            ctx = f"import kill {i + 1}/{KILLS} at {delay:.3f}s of {duration:.3f}s (seed {SEED})"
            before = b.before()
            p = b.popen("bundle", "import", bundle)
            time.sleep(delay)
            p.kill()
            _, err = p.communicate()
            self.assertIn(p.returncode, (0, -9), f"{ctx}: import failed: {err.strip()}")
            if self.after_import(b, ctx, "lab", p.returncode, before, want):
                counts["completed" if p.returncode == 0 else "killed, present"] += 1
                b.restore(empty)  # the next attempt imports into a site without the bundle
            else:
                counts["killed, absent"] += 1
        print(f"\nkill bundle import: {KILLS} attempts over {duration:.2f}s: {counts}",
              file=sys.stderr)

    def test_kill_bundle_import_at_every_step(self):
        """SIGKILL at the start of each fsync and rename/link of `mlvault bundle import`
        (a bundle of two small versions): all or nothing after each."""
        a, b, bundles = self.sites()
        want = sorted(x["digest"] for x in a.json("list", "mini"))
        empty = b.snapshot(os.path.join(self.root, "site-b-empty-steps"))
        report, _ = self.measure(b, ("bundle", "import", bundles["mini"]))
        b.restore(empty)
        cases = [("kill_fsync", k) for k in range(1, report["fsyncs"] + 1)]
        cases += [("kill_rename", k) for k in range(1, report["renames"] + 1)]
        print(f"\nimport steps: {report['fsyncs']} syncs, {report['renames']} renames/links",
              file=sys.stderr)
        for what, k in cases:
            ctx = f"import {what}={k}"
            with self.subTest(ctx):
                before = b.before()
                r = b.run("bundle", "import", bundles["mini"], env=fault_env(**{what: k}))
                try:
                    self.assertIn(r.returncode, (0, -9), f"{ctx}: {r.stderr.strip()}")
                    if self.after_import(b, ctx, "mini", r.returncode, before, want):
                        b.restore(empty)
                except BaseException:
                    b.restore(empty)
                    raise


if __name__ == "__main__":
    unittest.main(verbosity=2)
