"""The overlay: how a worktree differs from its HEAD commit, as a JSON-able manifest.

Stdlib only: the host and the guest agent compute it with this same code, so "the VM's status
equals the host's" is a comparison of two manifests.

    {"index": {path: [mode, oid] | null},   # index entries that differ from HEAD (null: removed)
     "files": {path: [mode, oid] | null}}   # worktree entries that differ from the index or are
                                            # untracked (null: deleted in the worktree)

Modes are git's octal strings ("100644", "100755", "120000", "160000"); oids are git blob ids
of the bytes (a symlink's blob is its target). In memory each [mode, oid] is an `Entry`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time

from .files import write_atomic
from .gitobj import MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK  # noqa: F401  (the overlay's vocabulary)
from .gitobj import Entry, entries_of  # noqa: F401  (an overlay's entries)

ZERO_MODE = "000000"
_HASH_CHUNK = 1024 * 1024


class UnmergedPaths(Exception):
    def __init__(self, paths):
        super().__init__("unmerged paths: " + ", ".join(paths[:10]))
        self.paths = paths


class FileChanged(Exception):
    """A file changed while it was being read."""


# The settings that decide how git compares worktree files with blobs (line endings, the exec
# bit): a push gives the VM the host's, so that both statuses agree and a VM commit stores what
# the host's would.
CHECKOUT_KEYS = ("core.autocrlf", "core.eol", "core.filemode")


def decoded(overlay: dict) -> dict:
    """An overlay (see the module docstring) decoded from JSON, with every entry an Entry."""
    return {"index": entries_of(overlay["index"]), "files": entries_of(overlay["files"])}


def empty() -> dict:
    return {"index": {}, "files": {}}


def blob_oid(data: bytes, algo: str = "sha1") -> str:
    digest = hashlib.new(algo)
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def file_mode(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return MODE_LINK
    return MODE_EXEC if st.st_mode & 0o100 else MODE_FILE


class StatCache:
    """Blob ids of files whose stat data has not changed since they were hashed, as git's index
    keeps them: a push must not re-read a large untracked file that did not change. An entry is
    trusted only if size, mtime, ctime, inode and mode all match and it was recorded at least two
    seconds after the file's last change (its ctime, which no tool can set back) as the stat data
    taken before the read shows it. A write in the same timestamp tick as that change leaves the
    stat data as it was: git's "racy" rule, which git keeps by hashing such an entry again, as
    this does. Kept as JSON by the caller (`load`/`dump`)."""

    RACY_SECONDS = 2.0

    def __init__(self, entries=None):
        self.entries = entries if isinstance(entries, dict) else {}
        self.used = {}
        self.vouched = {}

    @staticmethod
    def key(st) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode]

    def get(self, path: str, st):
        """The Entry kept for `path` if it may be trusted with stat data `st` (and kept for the
        next scan), else None."""
        vouched = self.vouched.get(path)
        if vouched is not None and vouched[0] == self.key(st):
            self.put(path, st, vouched[1], time.time_ns())
            return vouched[1]
        entry = self.entries.get(path)
        if not entry or len(entry) != 7 or entry[:5] != self.key(st):
            return None
        try:
            if int(entry[6]) - max(st.st_mtime_ns, st.st_ctime_ns) < self.RACY_SECONDS * 1e9:
                return None                     # it could have changed unseen since it was hashed
            result = Entry.of(entry[5])
        except (ValueError, TypeError):         # a damaged cache: hash the file again
            return None
        if result is not None:
            self.used[path] = entry
        return result

    def put(self, path: str, st, result, stat_ns: int) -> None:
        """Keep `result` for the file whose stat data `st` was taken at `stat_ns`
        (time.time_ns()), before the file was read."""
        self.used[path] = self.key(st) + [list(result), stat_ns]

    def vouch(self, path: str, st, result) -> None:
        """A file the caller has just written itself, `result` its entry: this process's scans
        take it while the stat data is `st` (as git's checkout records what it writes), and it is
        saved like any fresh entry, hashed again by a later scan unless it has settled."""
        self.vouched[path] = (self.key(st), result)

    @classmethod
    def load(cls, path: str) -> "StatCache":
        try:
            with open(path, "rb") as fh:
                return cls(json.load(fh))
        except (OSError, ValueError):
            return cls()

    def dump(self, path: str) -> None:
        """Write only the entries used by the last scan (the cache never grows past the overlay);
        nothing at all when they are what was loaded."""
        if self.used == self.entries:
            return
        write_atomic(path, json.dumps(self.used, separators=(",", ":")).encode(), durable=False)


def hash_worktree_file(full_path: str, algo: str = "sha1", cache: StatCache = None, rel: str = None):
    """The Entry (mode, oid) of a file or symlink as git would store it, or None for anything else.

    Never opens FIFOs, sockets or devices (so a scan cannot block on them). With `cache` (and
    `rel`, the path's cache key) an unchanged file is not read again.
    """
    stat_ns = time.time_ns()
    try:
        st = os.lstat(full_path)
    except FileNotFoundError:
        return None
    if cache is not None and rel is not None:
        known = cache.get(rel, st)
        if known is not None:
            return known
        result = hash_worktree_file(full_path, algo)
        if result is not None:
            cache.put(rel, st, result, stat_ns)
        return result
    try:
        if stat.S_ISLNK(st.st_mode):
            return Entry(MODE_LINK, blob_oid(os.readlink(os.fsencode(full_path)), algo))
        if not stat.S_ISREG(st.st_mode):
            return None
        fd = os.open(full_path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise FileChanged(full_path) from None        # removed since the lstat: look again
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EINVAL):  # a file and a symlink swapped since the lstat
            raise FileChanged(full_path) from None
        raise
    digest = hashlib.new(algo)
    digest.update(b"blob %d\0" % st.st_size)
    seen = 0
    try:
        while True:
            block = os.read(fd, _HASH_CHUNK)
            if not block:
                break
            seen += len(block)
            digest.update(block)
    finally:
        os.close(fd)
    if seen != st.st_size:
        raise FileChanged(full_path)
    return Entry(file_mode(st), digest.hexdigest())


def parse_status_v2(output: bytes):
    """Yield (kind, xy, fields, path) from `git status --porcelain=v2 -z` output."""
    entries = output.split(b"\0")
    i = 0
    while i < len(entries):
        raw = entries[i]
        i += 1
        if not raw:
            continue
        kind = raw[:1]
        if kind == b"1":
            parts = raw.split(b" ", 8)
            yield "1", parts[1].decode(), [p.decode() for p in parts[2:8]], os.fsdecode(parts[8])
        elif kind == b"2":  # renames are disabled, but skip the extra path field if present
            parts = raw.split(b" ", 9)
            i += 1
            yield "1", parts[1].decode(), [p.decode() for p in parts[2:8]], os.fsdecode(parts[9])
        elif kind == b"u":
            parts = raw.split(b" ", 10)
            yield "u", parts[1].decode(), [], os.fsdecode(parts[10])
        elif kind in (b"?", b"!"):
            yield kind.decode(), "", [], os.fsdecode(raw[2:])
        elif kind == b"#":                          # with --branch: "# branch.oid X", "# branch.head Y"
            key, _, value = raw[2:].partition(b" ")
            yield "#", key.decode("ascii", "replace"), [], os.fsdecode(value)


def scan(root: str, run_git, algo: str = "sha1", extra_config=(), refresh_index: bool = True,
         cache: StatCache = None, branch: dict = None, paths=None, hash_file=None, untracked: bool = True) -> dict:
    """Compute the overlay of the worktree at `root`.

    `run_git(args) -> bytes` runs git in `root`. `extra_config` are `-c key=value` settings
    (the agent passes core.excludesFile so `.slicerignore`d untracked trees are not listed).
    With `refresh_index`, git may save refreshed stat data in the index as `git status` does;
    without it every later scan re-reads files whose stat data went stale (a fresh copy or
    checkout: every file). Callers that promise not to touch the repository pass False.
    With `branch` (a dict), it is filled from the same `git status` call: "head" (HEAD's commit or
    None) and "branch" (its branch name or None when detached).
    With `paths` (a non-empty list; literal pathspecs, the caller sets GIT_LITERAL_PATHSPECS),
    only those paths and what lies below them are scanned: the overlay restricted to them.
    `hash_file(full_path, path) -> Entry or None` replaces the stat cache's hashing of new and
    changed files (a push leaves large files' ids for later: laterids.py).
    `untracked=False` leaves untracked files out (a third of a status's time at 5k files).
    """
    if hash_file is None:
        def hash_file(full_path, path):
            return hash_worktree_file(full_path, algo, cache, path)
    args = [] if refresh_index else ["--no-optional-locks"]
    for item in extra_config:
        args += ["-c", item]
    args += ["status", "--porcelain=v2", "-z", "--untracked-files=" + ("all" if untracked else "no"), "--no-renames",
             "--ignore-submodules=dirty"] + (["--branch"] if branch is not None else [])
    # Never from git's untracked cache (core.untrackedCache): it trusts directory mtimes, which
    # a copy that keeps them (cp -p, rsync -t, tar x) puts back, and on git 2.39 it was seen to
    # go stale after ordinary changes too. git does not use it for a status with a pathspec, so
    # the whole tree is named as one (it costs what a status without the cache costs, and
    # leaves the cache as it is).
    args += ["--"] + (list(paths) if paths else ["."])
    output = run_git(args)
    overlay = empty()
    unmerged = []
    for kind, xy, fields, path in parse_status_v2(output):
        if kind == "#":
            if branch is not None and xy == "branch.oid":
                branch["head"] = None if path == "(initial)" else path
            elif branch is not None and xy == "branch.head":
                branch["branch"] = None if path == "(detached)" else path
            continue
        if kind == "u":
            unmerged.append(path)
            continue
        if kind == "?":
            if path.endswith("/"):          # a nested repository: not ours to copy
                continue
            entry = hash_file(os.path.join(root, path), path)
            if entry is not None:
                overlay["files"][path] = entry
            continue
        if kind != "1":
            continue
        sub, mode_head, mode_index, mode_wt, oid_head, oid_index = fields
        if xy[0] != ".":
            overlay["index"][path] = None if mode_index == ZERO_MODE else Entry(mode_index, oid_index)
        if xy[1] != "." and mode_index != MODE_GITLINK and not sub.startswith("S"):
            if mode_wt == ZERO_MODE:
                overlay["files"][path] = None
            else:
                entry = hash_file(os.path.join(root, path), path)
                overlay["files"][path] = entry
    if unmerged:
        raise UnmergedPaths(sorted(unmerged))
    # An index change the worktree reverts (staged, then edited back) still shows as `files`.
    return overlay


def filtered(overlay: dict, keep) -> dict:
    """The overlay restricted to paths for which keep(path) is true."""
    return {"index": {p: e for p, e in overlay["index"].items() if keep(p)},
            "files": {p: e for p, e in overlay["files"].items() if keep(p)}}


def tree_changes(run_git, a: str, b: str) -> dict:
    """{path: Entry or None (deleted)} for every file that differs between commits a and b."""
    if a == b:
        return {}
    out = run_git(["diff-tree", "-r", "-z", "--no-renames", a, b])
    fields = out.split(b"\0")
    changes = {}
    for meta, raw in zip(fields[0::2], fields[1::2]):
        if not meta.startswith(b":"):
            continue
        _, new_mode, _, new_oid, _ = meta[1:].decode().split(" ")
        changes[os.fsdecode(raw)] = None if new_mode == ZERO_MODE else Entry(new_mode, new_oid)
    return changes


def changed_paths(a: dict, b: dict) -> list:
    """Paths whose index or worktree entry differs between two overlays."""
    paths = set()
    for part in ("index", "files"):
        for path in set(a[part]) | set(b[part]):
            if a[part].get(path, "absent") != b[part].get(path, "absent"):
                paths.add(path)
    return sorted(paths)
