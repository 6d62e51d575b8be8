"""The VM's changes that finishing an interrupted push would overwrite, kept before it does.

A push killed in the middle of its apply is finished by the next request (transaction.py), and
finishing it writes every path the push writes. Between the kill and that request the VM may
have changed some of them: an agent in the VM goes on working. So before finishing, each path
the push writes is compared with what it was when the journal was written (its stat data). One
that moved and holds neither what the push puts there nor a link of the push's own source is
the VM's work: its bytes are saved in a tree under `refs/slicer/kept/<push>` (a tree, not a
commit: the VM's git may have no identity), and `.git/slicer-kept.json` lists it. Every state
reply carries that list (the host warns) until the VM deletes the ref.

A file git was writing when the push was killed can be saved too (half written, it is neither
state): that costs a ref, never a byte.
"""

from __future__ import annotations

import json
import os
import re
import stat

from ..wire.files import write_atomic
from ..wire.overlay import FileChanged, hash_worktree_file
from ..wire.paths import has_control

RECORD = "slicer-kept.json"
PREFIX = "refs/slicer/kept/"
MAX_LISTED = 1000           # paths per kept ref in a state reply


def stat_mark(root: str, path: str):
    """What a path is now, by its stat data but ctime (which dropping a second link moves):
    None when it is not there, "dir" for a directory (not compared)."""
    try:
        st = os.lstat(os.path.join(root, path))
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode]


def marks(root: str, paths) -> dict:
    return {path: stat_mark(root, path) for path in paths}


def changed_since(repo, before: dict, is_push_source, new_ids) -> list:
    """The paths of `before` ({path: stat_mark when the journal was written}) that someone other
    than the push changed since: moved, not a link of the push's source (`is_push_source(path)`),
    and not holding what the push writes there (`new_ids(paths)`: {path: a set of blob ids})."""
    suspects = []
    for path, then in sorted(before.items()):
        now = stat_mark(repo.root, path)
        if now == then or now is None or now == "dir" or is_push_source(path):
            continue
        suspects.append(path)
    if not suspects:
        return []
    algo, expected = repo.algo(), new_ids(suspects)
    left = []
    for path in suspects:
        try:
            entry = hash_worktree_file(os.path.join(repo.root, path), algo)
        except (OSError, FileChanged):
            entry = None
        if entry is None or entry.oid not in expected[path]:
            left.append(path)
    # git's own checkouts wrote converted content (eol, filters): judge those as git does
    plain = [p for p in left if expected[p] and _line_safe(p) and _regular(os.path.join(repo.root, p))]
    if plain:
        out = repo.git(["hash-object", "--stdin-paths"], input=os.fsencode("".join(p + "\n" for p in plain)),
                       check=False).decode("ascii", "replace").split()
        if len(out) == len(plain):
            same = {p for p, oid in zip(plain, out) if oid in expected[p]}
            left = [p for p in left if p not in same]
    return left


def _line_safe(path: str) -> bool:
    """Whether `--stdin-paths` reads `path` as it is: one line, not C-quoted, no CR to strip."""
    return not has_control(path) and not path.startswith('"')


def _regular(full: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(full).st_mode)
    except OSError:
        return False


def save(repo, push_id: str, paths: list, scratch_index: str) -> dict:
    """Store the bytes of `paths` as they are now in a tree under refs/slicer/kept/, add it to
    the record, and return its entry ({"ref", "paths"}). Each call makes a new ref: a later
    interruption of the same push never replaces what an earlier one kept."""
    found = []                                  # (path, mode, symlink target or None)
    for path in paths:
        full = os.path.join(repo.root, path)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found.append((path, "120000", os.readlink(os.fsencode(full))))
            elif stat.S_ISREG(st.st_mode):
                found.append((path, "100755" if st.st_mode & 0o111 else "100644", None))
        except OSError:
            continue
    # git reads each file itself (a large one is never held in memory here), as raw bytes
    batch = [path for path, _, target in found if target is None and _line_safe(path)]
    ids = dict(zip(batch, repo.git(["hash-object", "-w", "--no-filters", "--stdin-paths"],
                                   input=os.fsencode("".join(p + "\n" for p in batch))).decode().split())) \
        if batch else {}
    lines, kept = [], []
    for path, mode, target in found:
        oid = ids.get(path) or repo.git(["hash-object", "-w", "--no-filters"] + (
            ["--stdin"] if target is not None else ["--", path]), input=target).decode().strip()
        lines.append(os.fsencode("%s %s\t%s" % (mode, oid, path)) + b"\0")
        kept.append(path)
    if not kept:
        return None
    env = {"GIT_INDEX_FILE": scratch_index}
    if os.path.lexists(scratch_index):
        os.unlink(scratch_index)
    repo.git(["update-index", "-z", "--index-info"], input=b"".join(lines), env=env)
    tree = repo.git(["write-tree"], env=env).decode().strip()
    os.unlink(scratch_index)
    base = PREFIX + (re.sub(r"[^0-9A-Za-z_-]", "", push_id)[:64] or "push")
    record = _read(repo)
    taken = {e["ref"] for e in record}
    ref, n = base, 1
    while ref in taken or repo.git(["rev-parse", "-q", "--verify", ref], check=False).strip():
        n += 1
        ref = "%s-%d" % (base, n)
    repo.git(["update-ref", "-m", "slicer: kept before finishing an interrupted push", ref, tree])
    entry = {"ref": ref, "paths": kept}
    _write(repo, record + [entry])
    return entry


def listed(repo):
    """The kept refs the VM still has, each with its paths; None when there are none. The
    record is dropped once the VM has deleted every ref it names."""
    path = os.path.join(repo.root, ".git", RECORD)
    if not os.path.exists(path):
        return None
    record = _read(repo)
    present = set()
    if record:
        out = repo.git(["for-each-ref", "--format=%(refname)", PREFIX], check=False)
        present = set(out.decode("utf-8", "replace").split("\n"))
    still = [e for e in record if e["ref"] in present]
    if not still:
        os.unlink(path)
        return None
    if len(still) != len(record):
        _write(repo, still)
    return [{"ref": e["ref"], "paths": e["paths"][:MAX_LISTED]} for e in still]


def _read(repo) -> list:
    try:
        with open(os.path.join(repo.root, ".git", RECORD), "rb") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return []
    if not isinstance(record, list):
        return []
    return [e for e in record if isinstance(e, dict) and isinstance(e.get("ref"), str)
            and isinstance(e.get("paths"), list)]


def _write(repo, record: list) -> None:
    write_atomic(os.path.join(repo.root, ".git", RECORD), json.dumps(record).encode(), sync_dir=True)
