"""Quarantined import of objects from a VM.

A pack from the VM is indexed with `git index-pack --strict` (fsck of every object) into a fresh
object directory that the host owns, with the real object store as a read-only alternate. Its
new commits and trees are then walked with our own rules (names, depth, counts). Only after all
of that succeeds are the pack files moved into the real object store; any failure deletes the
quarantine and the host repository is byte-for-byte unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import UnsafeInput
from .locks import pid_alive
from .objects import ObjectReader, parse_tree
from .wire import gitobj
from .wire.framing import crash_point
from .wire.files import write_atomic
from .wire.gitobj import ENTRY_MODES, Entry, is_oid, mode_bits
from .wire.paths import UnsafePath, check_relpath, display

MODE_TREE = mode_bits(gitobj.MODE_TREE)        # tree entries' modes as pygit2 gives them
MODE_LINK = mode_bits(gitobj.MODE_LINK)
_ALLOWED_MODES = {mode_bits(m) for m in gitobj.ENTRY_MODES} | {MODE_TREE}


@dataclass
class ImportLimits:
    pack_bytes: int = 2 * 1024 ** 3
    objects: int = 1_000_000
    tree_depth: int = 256
    path_bytes: int = 4096
    refs: int = 10_000          # most branches a VM may report (slicer.limit.refs)


class Quarantine:
    def __init__(self, worktree, limits: ImportLimits, control_ok=False):
        self.worktree = worktree
        self.limits = limits
        self.control_ok = control_ok      # names with control characters the host already has
        self.objects = os.path.join(worktree.common_dir, "objects")
        remove_stale(self.objects, "incoming-slicer-")
        self.dir = tempfile.mkdtemp(prefix="incoming-slicer-%d-" % os.getpid(), dir=self.objects)
        os.mkdir(os.path.join(self.dir, "pack"))
        self.env = {"GIT_OBJECT_DIRECTORY": self.dir, "GIT_ALTERNATE_OBJECT_DIRECTORIES": self.objects,
                    "GIT_QUARANTINE_PATH": self.dir}
        self.counted = {}          # tree id -> paths it expands to, of validated trees

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
        crash_point("pull:pack-received")
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

    def validate(self, tips) -> list:
        """Walk commits and trees new to the host; return the new commits."""
        tips = [t for t in tips if is_oid(t)]
        if not tips:
            return []
        out = self.git(["rev-list", "--stdin", "--not", "--all"],
                       input="".join(t + "\n" for t in tips).encode())
        commits = out.decode().split()
        seen = set()
        memo = self.counted = load_path_counts(self.worktree)
        with ObjectReader(self.worktree, self.env) as odb, ObjectReader(self.worktree) as host:
            for commit in commits:
                kind, data = odb.read(commit) or (None, b"")
                if kind != "commit":
                    raise UnsafeInput("object %s from the VM is not a commit" % commit[:12])
                tree = data.split(b"\n", 1)[0]
                if not tree.startswith(b"tree "):
                    raise UnsafeInput("malformed commit %s from the VM" % commit[:12])
                self._walk(odb, host, tree[5:].decode(), "", 0, seen)
                self._count_paths(odb, tree[5:].decode(), memo)
        return commits

    def _count_paths(self, odb, tree: str, memo: dict) -> int:
        """Paths a tree expands to, shared subtrees counted each time they appear (a "git bomb"
        of a few small trees can expand to billions of paths for diff and checkout). Trees the
        host already has count too (a new tree can repeat one of them a million times): their
        counts come from earlier pulls (`memo` starts from load_path_counts), else are walked."""
        if tree in memo:
            return memo[tree]
        total = 0
        _, data = odb.read(tree) or (None, b"")
        for mode, _, oid in parse_tree(data, 32 if self.worktree.algo == "sha256" else 20):
            total += 1 + (self._count_paths(odb, oid, memo) if mode == MODE_TREE else 0)
            if total > self.limits.objects:
                raise UnsafeInput("a commit from the VM expands to more than %d paths "
                                  "(slicer.limit.objects): refusing a tree bomb" % self.limits.objects)
        memo[tree] = total
        return total

    def _walk(self, odb, host, tree: str, prefix: str, depth: int, seen: set) -> None:
        if tree in seen or tree in host:       # trees the host already has were checked before
            return
        seen.add(tree)
        if len(seen) > self.limits.objects:
            raise UnsafeInput("commits from the VM have more than %d trees" % self.limits.objects)
        if depth > self.limits.tree_depth:
            raise UnsafeInput("tree from the VM nested deeper than slicer.limit.treeDepth (%d): %s"
                              % (self.limits.tree_depth, display(prefix[:200])))
        kind, data = odb.read(tree) or (None, b"")
        if kind != "tree":
            raise UnsafeInput("object %s from the VM is not a tree" % tree[:12])
        for mode, name, oid in parse_tree(data, 32 if self.worktree.algo == "sha256" else 20):
            path = prefix + name
            try:
                check_relpath(path, max_bytes=self.limits.path_bytes, max_depth=self.limits.tree_depth + 1,
                              control_ok=self.control_ok)
            except UnsafePath as exc:
                raise UnsafeInput("commit from the VM has an unsafe path: %s" % exc) from None
            if mode not in _ALLOWED_MODES:
                raise UnsafeInput("unsupported file mode %o at %s" % (mode, display(path)))
            if name.lower() == ".gitmodules" and mode == MODE_LINK:
                raise UnsafeInput("commit from the VM has .gitmodules as a symlink")
            if name.lower() == ".gitmodules" and mode != MODE_TREE:
                found = odb.read(oid)
                if found is None:
                    raise UnsafeInput("commit from the VM lacks its .gitmodules blob")
                blob = found[1]
                if b"\r" in blob:      # CVE-2025-48384: a path ending in \r checks out elsewhere
                    raise UnsafeInput("commit from the VM has a .gitmodules with a carriage return")
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
            crash_point("pull:migrating")
        if self.counted:
            save_path_counts(self.worktree, self.counted)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()


# Paths each validated tree expands to, kept between pulls (a tree id names its content, so a
# count never goes stale): the next pull counts only the trees that are new. Host-written, beside
# the objects it describes (objects/info, which git leaves alone; it changes when objects land,
# as a refused pull's may); unreadable or damaged, those trees are simply walked again.
PATH_COUNTS = "slicer-tree-path-counts"
PATH_COUNTS_MAX = 200_000          # entries kept (newest pull's first): ~10 MB at most


def _path_counts_file(worktree) -> str:
    return os.path.join(worktree.common_dir, "objects", "info", PATH_COUNTS)


def load_path_counts(worktree) -> dict:
    counts = {}
    try:
        with open(_path_counts_file(worktree), "rb") as fh:
            for line in fh:
                oid, _, count = line.partition(b" ")
                counts[oid.decode("ascii")] = int(count)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return counts


def save_path_counts(worktree, counts: dict) -> None:
    items = list(counts.items())[-PATH_COUNTS_MAX:]
    try:
        write_atomic(_path_counts_file(worktree), b"".join(b"%s %d\n" % (oid.encode("ascii"), n) for oid, n in items),
                     durable=False)
    except OSError:
        pass                        # only a cache: the next pull walks those trees again


def remove_stale(directory: str, prefix: str) -> None:
    """Remove `<prefix><pid>-*` directories left by a process that was killed."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)



def check_state(state, path_bytes: int = 4096, path_depth: int = 64, max_entries: int = 1_000_000,
                control_ok=False) -> dict:
    """Validate the shape of a `state` reply from the VM before anything uses it.

    Branch names are checked separately (inbound.valid_branches); here: types, oids, modes and
    every overlay path (no absolute paths, '..', .git, control characters except in paths
    `control_ok` holds (scan.KnownPaths), limits). Every entry it passes becomes a
    wire.overlay.Entry in place.
    """
    def bad(what):
        return UnsafeInput("the VM sent a malformed repository state: %s" % what)
    if not isinstance(state, dict) or not isinstance(state.get("exists"), bool):
        raise bad("not an object")
    if not state["exists"]:
        return state
    if not isinstance(state.get("branches"), dict):
        raise bad("branches")
    for key in ("head", "branch"):
        if state.get(key) is not None and not isinstance(state[key], str):
            raise bad(key)
    if state.get("head") is not None and not is_oid(state["head"]):
        raise bad("head")
    if state.get("stash") is not None and not is_oid(state["stash"]):
        raise bad("stash")
    for key in ("ahead", "behind"):
        value = state.get(key)
        if value is not None and (type(value) is not int or value < 0):
            raise bad(key)
    overlay = state.get("overlay")
    if not isinstance(overlay, dict) or set(overlay) != {"index", "files"}:
        raise bad("overlay")
    parts = [overlay["index"], overlay["files"]]
    if "since_base" in state:             # the VM's committed changes since the agreed commit
        parts.append(state["since_base"])
    count = 0
    for part in parts:
        if not isinstance(part, dict):
            raise bad("overlay")
        for path, entry in part.items():
            count += 1
            if count > max_entries:
                raise UnsafeInput("the VM reports more than %d changed paths (slicer.limit.files)"
                                  % max_entries)
            try:
                check_relpath(path, max_bytes=path_bytes, max_depth=path_depth, control_ok=control_ok)
            except UnsafePath as exc:
                raise UnsafeInput("the VM reports an unsafe path: %s" % exc) from None
            if entry is None:
                continue
            mode, oid = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
            if not (isinstance(mode, str) and mode in ENTRY_MODES and is_oid(oid)):
                raise bad("entry for %s" % display(path))
            part[path] = Entry(mode, oid)       # from here on read as .mode and .oid (wire/gitobj.py)
    if state.get("kept") is not None:
        _check_kept(state["kept"], bad, path_bytes, path_depth)
    applied = state.get("applied")
    if applied is not None:                 # the record of a push the VM completed (agreed.py)
        if not isinstance(applied, dict) or not isinstance(applied.get("id"), str):
            raise bad("applied")
        check_state({**applied, "exists": True, "branches": {}}, path_bytes, path_depth, max_entries, control_ok)
    return state


KEPT_REF = re.compile(r"refs/slicer/kept/[0-9A-Za-z_-]{1,80}")


def _check_kept(kept, bad, path_bytes: int, path_depth: int) -> None:
    """The VM's refs of its own work that finishing an interrupted push kept (agent/kept.py):
    names the host shows, so each is checked like any other name from the VM."""
    if not isinstance(kept, list) or len(kept) > 100:
        raise bad("kept")
    for entry in kept:
        if not (isinstance(entry, dict) and isinstance(entry.get("ref"), str) and KEPT_REF.fullmatch(entry["ref"])
                and isinstance(entry.get("paths"), list) and len(entry["paths"]) <= 1000):
            raise bad("kept")
        for path in entry["paths"]:
            try:
                check_relpath(path, max_bytes=path_bytes, max_depth=path_depth, control_ok=True)
            except (UnsafePath, TypeError):
                raise bad("kept") from None
