"""Quarantined import of objects from a VM.

A pack from the VM is indexed with `git index-pack --strict` (fsck of every object) into a fresh
object directory that the host owns, with the real object store as a read-only alternate. Its
new commits and trees are then walked with our own rules (names, depth, counts). Only after all
of that succeeds are the pack files moved into the real object store; any failure deletes the
quarantine and the host repository is byte-for-byte unchanged.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import UnsafeInput
from .wire.paths import UnsafePath, check_relpath, display

MODE_TREE = 0o040000
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000
_ALLOWED_MODES = {0o100644, 0o100755, MODE_LINK, MODE_GITLINK, MODE_TREE}


@dataclass
class ImportLimits:
    pack_bytes: int = 2 * 1024 ** 3
    objects: int = 1_000_000
    tree_depth: int = 256
    path_bytes: int = 4096


class Quarantine:
    def __init__(self, worktree, limits: ImportLimits):
        self.worktree = worktree
        self.limits = limits
        self.objects = os.path.join(worktree.common_dir, "objects")
        self.dir = tempfile.mkdtemp(prefix="incoming-slicer-", dir=self.objects)
        os.mkdir(os.path.join(self.dir, "pack"))
        self.env = {"GIT_OBJECT_DIRECTORY": self.dir, "GIT_ALTERNATE_OBJECT_DIRECTORIES": self.objects,
                    "GIT_QUARANTINE_PATH": self.dir}

    # -- receiving -------------------------------------------------------------
    def receive(self, chunks) -> None:
        """Index a pack stream into the quarantine, enforcing size and object-count limits."""
        args = ["git", "index-pack", "--strict", "--fix-thin", "--stdin",
                "--max-input-size=%d" % self.limits.pack_bytes]
        errors = tempfile.TemporaryFile()
        proc = subprocess.Popen(args, cwd=self.worktree.root, env={**self.worktree.env, **self.env},
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        header = b""
        received = 0
        failure = None
        try:
            for chunk in chunks:
                received += len(chunk)
                if received > self.limits.pack_bytes:
                    raise UnsafeInput("pack from the VM exceeds slicer.limit.packBytes (%d bytes)"
                                      % self.limits.pack_bytes)
                if len(header) < 12:
                    header += chunk[:12 - len(header)]
                    if len(header) == 12:
                        self._check_header(header)
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        except BaseException as exc:
            failure = exc
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            code = proc.wait()
        if failure is not None:
            raise failure
        if code != 0:
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise UnsafeInput("pack from the VM failed verification: %s"
                              % (display(message[-1])[:300] if message else "index-pack exit %d" % code))

    def _check_header(self, header: bytes) -> None:
        magic, version, count = struct.unpack(">4sII", header)
        if magic != b"PACK" or version not in (2, 3):
            raise UnsafeInput("data from the VM is not a git pack")
        if count > self.limits.objects:
            raise UnsafeInput("pack from the VM has %d objects, over slicer.limit.objects (%d)"
                              % (count, self.limits.objects))

    # -- validation --------------------------------------------------------------
    def git(self, args, input=None) -> bytes:
        return self.worktree.git(args, input=input, env=self.env)

    def has_commit(self, oid: str) -> bool:
        out = self.git(["cat-file", "-t", oid], input=None) if _is_oid(oid) else b""
        return out.strip() == b"commit"

    def validate(self, tips) -> list:
        """Walk commits and trees new to the host; return the new commits."""
        import pygit2
        tips = [t for t in tips if _is_oid(t)]
        if not tips:
            return []
        out = self.git(["rev-list", "--stdin", "--not", "--all"],
                       input="".join(t + "\n" for t in tips).encode())
        commits = out.decode().split()
        odb = pygit2.Odb(self.dir)
        odb.add_disk_alternate(self.objects)
        host = pygit2.Odb(self.objects)
        seen = set()
        for commit in commits:
            kind, data = odb.read(commit)
            if kind != pygit2.GIT_OBJECT_COMMIT:
                raise UnsafeInput("object %s from the VM is not a commit" % commit[:12])
            tree = data.split(b"\n", 1)[0]
            if not tree.startswith(b"tree "):
                raise UnsafeInput("malformed commit %s from the VM" % commit[:12])
            self._walk(odb, host, tree[5:].decode(), "", 0, seen)
        return commits

    def _walk(self, odb, host, tree: str, prefix: str, depth: int, seen: set) -> None:
        if tree in seen or tree in host:       # trees the host already has were checked before
            return
        seen.add(tree)
        if len(seen) > self.limits.objects:
            raise UnsafeInput("commits from the VM have more than %d trees" % self.limits.objects)
        if depth > self.limits.tree_depth:
            raise UnsafeInput("tree from the VM nested deeper than slicer.limit.treeDepth (%d): %s"
                              % (self.limits.tree_depth, display(prefix[:200])))
        import pygit2
        kind, data = odb.read(tree)
        if kind != pygit2.GIT_OBJECT_TREE:
            raise UnsafeInput("object %s from the VM is not a tree" % tree[:12])
        for mode, name, oid in parse_tree(data, 32 if self.worktree.algo == "sha256" else 20):
            path = prefix + name
            try:
                check_relpath(path, max_bytes=self.limits.path_bytes, max_depth=self.limits.tree_depth + 1)
            except UnsafePath as exc:
                raise UnsafeInput("commit from the VM has an unsafe path: %s" % exc) from None
            if mode not in _ALLOWED_MODES:
                raise UnsafeInput("unsupported file mode %o at %s" % (mode, display(path)))
            if name.lower() == ".gitmodules" and mode == MODE_LINK:
                raise UnsafeInput("commit from the VM has .gitmodules as a symlink")
            if mode == MODE_TREE:
                self._walk(odb, host, oid, path + "/", depth + 1, seen)

    # -- moving in -----------------------------------------------------------------
    def migrate(self) -> None:
        """Move the verified pack into the real object store: data first, index last."""
        pack_dir = os.path.join(self.dir, "pack")
        target = os.path.join(self.objects, "pack")
        os.makedirs(target, exist_ok=True)
        names = sorted(os.listdir(pack_dir), key=lambda n: (n.endswith(".idx"), n))
        for name in names:
            os.replace(os.path.join(pack_dir, name), os.path.join(target, name))

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()


def parse_tree(data: bytes, oid_len: int = 20):
    """Yield (mode, name, hex oid) from a raw tree object."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        nul = data.find(b"\0", space)
        if space < 0 or nul < 0 or nul + 1 + oid_len > len(data):
            raise UnsafeInput("malformed tree object from the VM")
        try:
            mode = int(data[pos:space], 8)
        except ValueError:
            raise UnsafeInput("malformed tree entry mode from the VM") from None
        name = data[space + 1:nul].decode("utf-8", "surrogateescape")
        oid = data[nul + 1:nul + 1 + oid_len].hex()
        if "/" in name or not name:
            raise UnsafeInput("tree entry from the VM has an empty name or contains '/'")
        yield mode, name, oid
        pos = nul + 1 + oid_len


def _is_oid(value) -> bool:
    return isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)
