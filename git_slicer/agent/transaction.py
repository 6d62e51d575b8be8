"""A push applied in the VM as a transaction that always rolls forward.

Before its first write to the worktree, index or refs, a push has everything the new state
needs inside `.git/slicer-push/`: the files the host sent (files/), hard links to the VM files it
keeps but that checking out the commit would replace (keep/), and a copy of the old index
(index.old). Then it writes the journal there and runs the steps below, each of which can be run
again from the start with the same result. Whoever finds a journal (the next request of any kind,
under the agent lock) runs them again, so a push killed at any moment (the agent, its git, or the
whole VM) ends exactly as an uninterrupted one would: the host never reads a half-applied VM.
Before it does, it saves what the VM changed since the journal was written in the paths the
steps write (agent/kept.py: a ref under refs/slicer/kept/), so finishing overwrites no VM work.

    1. remove the old state's untracked files that the new state does not have
    2. the commit's tree into a private index started from index.old (`read-tree --reset -u
       COMMIT`, or only the paths the commit changes when the VM was clean: see _read_tree)
    3. the overlay's index entries, then its worktree files (removals first)
    4. refresh the private index; .git/shallow; the branch ref; HEAD
    5. install the private index as .git/index (through index.lock, as git does; a large one
       split first, see _split_if_large)
    -- everything the steps wrote is flushed to disk; journal phase "applied" --
    6. drop the sources, scan the paths the push touched (see touched_paths), write
       .git/slicer-applied.json, drop the journal

The sources are flushed to disk before the journal that names them is written, and the new
state before the journal says "applied" (one syncfs(2) each, see _sync): a VM that loses power
finishes the push from whole files and never records as applied a state its disk does not hold.

Nothing but this module's steps write below `.git/slicer-push/`, and every lock file it can
leave behind is recognisably its own (a hard link of its private index, or a ref lock holding
exactly what the journal writes), so recovery removes those and no other.

    .git/slicer-agent.flock     flock: one agent at a time reads or changes the repository
    .git/slicer-applied.json   the last completed push: its id, and the HEAD, branch and overlay
                               it left (the host records that as the agreed state)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import time
from contextlib import contextmanager

from ..wire.files import write_atomic
from ..wire.framing import crash_point
from ..wire.overlay import Entry, decoded, file_mode
from ..wire.paths import check_relpath, has_control
from . import kept as kept_mod
from .errors import AgentError

WORK = "slicer-push"
JOURNAL = "journal.json"
APPLIED = "slicer-applied.json"
LOCK = "slicer-agent.flock"
INDEX_LOCK_WAIT = 10.0        # seconds to wait for the VM's own git to release .git/index.lock


def _git_dir(repo) -> str:
    return os.path.join(repo.root, ".git")


def _work(repo) -> str:
    return os.path.join(_git_dir(repo), WORK)


@contextmanager
def hold(repo):
    """One agent at a time reads or changes this repository (flock: the kernel releases it when
    the agent dies, so a killed agent never leaves it held)."""
    fd = os.open(os.path.join(_git_dir(repo), LOCK), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover(repo):
    """Under hold(): finish a push that was interrupted, or drop a dead push's received files.
    Returns the state the finished push left (see finish), or None when there was none."""
    work = _work(repo)
    journal = _read_json(os.path.join(work, JOURNAL))
    if journal is None:
        if os.path.lexists(work):
            shutil.rmtree(work, ignore_errors=True)
        return None
    journal["overlay"] = decoded(journal["overlay"])        # entries read as .mode/.oid
    _clear_own_locks(repo, journal)
    if journal.get("phase") == "apply" and journal.get("before"):
        try:
            _keep_vm_changes(repo, journal)
        except (AgentError, OSError) as exc:    # (a full disk): nothing is overwritten until it passes
            raise _stuck(repo, exc) from None
    return finish(repo, journal)


def interrupted(repo) -> bool:
    """Whether a push's journal is waiting in this repository (a cheap check before the lock)."""
    return os.path.exists(os.path.join(_work(repo), JOURNAL))


def applied(repo, push_id) -> dict:
    """The record of the last completed push if it is `push_id`, else None."""
    record = _read_json(os.path.join(_git_dir(repo), APPLIED))
    if isinstance(record, dict) and push_id and record.get("id") == push_id:
        return record
    return None


@contextmanager
def scan_index(repo):
    """Environment for a `git status` that may refresh stat data: it works on a snapshot of the
    index (_snapshot), installed back (through index.lock, as git does) only if git rewrote the
    snapshot and nobody changed the index meanwhile. A stale .git/index.lock that is a link of
    the rewritten snapshot is ours (the VM died between the two steps) and is removed first."""
    git_dir = _git_dir(repo)
    real, private = os.path.join(git_dir, "index"), os.path.join(git_dir, "slicer-scan-index")
    lock = os.path.join(git_dir, "index.lock")
    if _same_file(lock, private):
        os.unlink(lock)
    for name in (private, private + ".lock"):
        if os.path.lexists(name):
            os.unlink(name)
    try:
        before = os.stat(real)
        _snapshot(real, private)
    except FileNotFoundError:
        yield {}
        return
    copied = os.stat(private)
    try:
        yield {"GIT_INDEX_FILE": private}
        after = os.stat(private)
        if (after.st_ino, after.st_mtime_ns, after.st_size) != (copied.st_ino, copied.st_mtime_ns, copied.st_size):
            try:
                os.link(private, lock)
            except FileExistsError:
                return                                # the VM's own git is at work: keep its index
            crash_point("agent:scan-index-locked")
            now = os.stat(real)
            if (now.st_ino, now.st_mtime_ns, now.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size):
                os.rename(lock, real)
                repo.index_installed = os.stat(real)
            else:
                os.unlink(lock)
    finally:
        for name in (private, private + ".lock"):
            if os.path.lexists(name):
                os.unlink(name)


# -- before the first write -------------------------------------------------------------------
def staging(repo) -> str:
    """A fresh `.git/slicer-push/files/` for the host's files (call after recover())."""
    work = _work(repo)
    shutil.rmtree(work, ignore_errors=True)
    path = os.path.join(work, "files")
    os.makedirs(path)
    return path


def prepare(repo, *, push_id, branch, commit, old_head, old_overlay, new_overlay, members, reuse, extra,
            shallow, since=lambda: None, recheck=None) -> dict:
    """Check everything, secure every source of the new state below .git/slicer-push/, and write
    the journal. Nothing in the worktree, index or refs has changed yet; any error here leaves
    the VM exactly as it was. `old_head`: the HEAD the VM's `old_overlay` was scanned against, or
    None to have the state after the push scanned in full (see touched_paths). `since()`: the
    warm agent's name for that old state (agent/memo.py), handed to the scan after the push;
    asked after `recheck`, which may scan the VM again and renew it.
    `recheck(paths)`: called before anything is secured; it raises when the paths the push
    may write (touched_paths, or None: all of them) are no longer as `old_overlay` says."""
    work = _work(repo)
    files, index = new_overlay["files"], new_overlay["index"]
    for part in (index, files):           # the host's paths: any name git tracks (control characters too)
        for path in part:
            check_relpath(path, control_ok=True)
    for path in extra:
        check_relpath(path, control_ok=True)
    kept = sorted(p for p in reuse if isinstance(p, str) and check_relpath(p, control_ok=True)
                  and old_overlay["files"].get(p) is not None and old_overlay["files"].get(p) == files.get(p))
    sources = {}
    for path, member in members.items():
        if member.kind == "file":
            os.chmod(member.staged, member.mode)
            sources[path] = {"file": os.path.relpath(member.staged, work)}
        elif member.kind == "symlink":
            sources[path] = {"target": member.target}
    for path, entry in files.items():
        if entry is not None and path not in sources and path not in kept:
            raise AgentError("missing", "the host did not send %s" % path)
    for path in extra:
        if path not in sources:
            raise AgentError("missing", "the host did not send %s" % path)
    # Kept files that checking out the commit could replace are linked aside (a link, not a
    # move: the worktree stays as it was until the journal exists). The others are never touched.
    at_risk = _touched_by_checkout(repo, commit, kept)
    keep_dir = os.path.join(work, "keep")
    os.makedirs(keep_dir, exist_ok=True)
    in_place = []
    for i, path in enumerate(kept):
        full = os.path.join(repo.root, path)
        if path not in at_risk:
            in_place.append(path)
        elif os.path.islink(full):
            sources[path] = {"target": os.readlink(full)}
        else:
            link = os.path.join(keep_dir, "%08d" % i)
            _link_or_copy(full, link)
            sources[path] = {"file": os.path.relpath(link, work)}
    old_index = os.path.join(_git_dir(repo), "index")
    if os.path.exists(old_index):
        _snapshot(old_index, os.path.join(work, "index.old"))
        _keep_shared(_git_dir(repo), work)
    changed = _commit_changes(repo, old_head, commit) if old_head else None
    touched = touched_paths(old_head, changed, old_overlay, new_overlay, extra)
    clean_from = old_head if old_head and old_overlay == {"index": {}, "files": {}} else None
    if recheck is not None:
        # `read-tree --reset -u` (a VM with changes of its own, a sparse one, or no list of what
        # the commit changes) rewrites every tracked file that differs from its index entry,
        # not only the touched ones: then every path is checked.
        narrow = touched is not None and (clean_from == commit or (clean_from and changed and not _sparse(repo)))
        recheck(touched if narrow else None)
    journal = {"version": 1, "id": push_id, "phase": "apply", "branch": branch, "commit": commit,
               "overlay": new_overlay, "sources": sources, "in_place": in_place, "extra": list(extra),
               "stale": sorted(p for p, e in old_overlay["files"].items() if e is not None and p not in files),
               "shallow": shallow, "touched": touched,
               # a clean VM moves from its HEAD by restoring the paths the commit changes (see _read_tree)
               "clean_from": clean_from, "changed": changed if clean_from and touched is not None else None,
               "since": since()}
    # What each path the apply writes is now: recovery tells the VM's later changes by it (kept.py).
    journal["before"] = kept_mod.marks(repo.root, [p for p in _written(journal) if p not in in_place])
    _sync(repo.root)                   # the sources whole on disk before a journal names them
    _write_json(os.path.join(work, JOURNAL), journal)
    return journal


# A push that changes one of these can change the status of paths it never touched: what git
# ignores (an ignored VM file becomes untracked), how it converts content (eol, filters), or
# which submodules there are.
_RULE_FILES = (".gitignore", ".gitattributes", ".gitmodules")
MAX_TOUCHED = 2000          # beyond this, one full `git status` costs less than a long pathspec


def _commit_changes(repo, old_head: str, commit: str):
    """The paths that differ between two commits (sorted), or None if git cannot tell."""
    if old_head == commit:
        return []
    # diff-tree reads the index though it never uses it: pointed at an index that is not there,
    # it skips reading the 6 MB of a 50k-file one (~13 ms)
    env = dict(repo.env, GIT_INDEX_FILE=os.path.join(_work(repo), "no-index"))
    proc = subprocess.run(["git", "diff-tree", "-r", "-z", "--no-renames", "--name-only", old_head, commit],
                          cwd=repo.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if proc.returncode != 0:
        return None
    return sorted(os.fsdecode(p) for p in proc.stdout.split(b"\0") if p)


def touched_paths(old_head, changed, old_overlay, new_overlay, extra):
    """The paths whose status a push can change, or None when the state after it must be
    scanned in full.

    Every other path was clean before the push (the VM's scan under the same lock did not list
    it), and the push leaves its index entry, stat data and file as they were: the commit has
    the same entry as the old HEAD, `read-tree --reset` keeps a matching entry with its stat data
    (and rewrites the file only if it changed: it did not, or the scan would have listed it),
    and neither overlay names it. Its status can then change only if what decides status
    changed: an ignore or attribute file, .gitmodules, the VM's info/exclude (the caller passes
    old_head=None then), or .slicerignore (the VM's excludes file). So the scan after the push
    covers these paths only, and git itself still answers for each of them, stat-dirty entries,
    filters, exec bits, symlinks and submodules included."""
    if not old_head or changed is None:
        return None
    paths = set(old_overlay["index"]) | set(old_overlay["files"]) | set(new_overlay["index"]) \
        | set(new_overlay["files"]) | set(extra) | set(changed)
    if not paths or len(paths) > MAX_TOUCHED:
        return None
    if any(p == ".slicerignore" or p.rsplit("/", 1)[-1] in _RULE_FILES for p in paths):
        return None
    return sorted(paths)


def _touched_by_checkout(repo, commit: str, paths) -> set:
    """The paths that `read-tree --reset -u commit` from the current index may replace: those
    the commit or the index has, or that sit below a file either has."""
    if not paths:
        return set()
    candidates = set()
    for path in paths:
        parts = path.split("/")
        candidates.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    names = sorted(n for n in candidates if not has_control(n))   # batch-check reads lines
    query = "".join("%s:%s\n" % (commit, n) for n in names) + "".join(":%s\n" % n for n in names)
    out = repo.git(["cat-file", "--batch-check=%(objecttype)"],
                   input=os.fsencode(query)).decode("utf-8", "replace").split("\n") if names else []
    kinds = {}
    for name, line in zip(names + names, out):
        if not line.endswith("missing"):
            kinds.setdefault(name, set()).add(line.strip())
    risky = {p for p in paths if has_control(p)}             # not asked: linked aside, to be safe
    for path in paths:
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if path in kinds or any(kinds.get(a, {"tree"}) != {"tree"} for a in ancestors):
            risky.add(path)
    return risky


# -- the steps ----------------------------------------------------------------------------------
def finish(repo, journal: dict) -> dict:
    """Run the journal's steps (again) to the end; return the VM's state after them.

    Recovery only rolls forward, so a step that keeps failing (a full disk) stops every request
    until what it needs is there: the error says why in one line (code "push-stuck"), and the
    host adds the way in (`git slicer shell`; exec still runs, see server.op_exec)."""
    try:
        return _finish(repo, journal)
    except AgentError as exc:
        if exc.code == "index-locked":          # the VM's own git at work: it passes by itself
            raise
        raise _stuck(repo, exc) from None
    except OSError as exc:
        raise _stuck(repo, exc) from None


def _stuck(repo, exc) -> AgentError:
    if isinstance(exc, OSError):
        cause = exc.strerror or str(exc)
        if exc.filename:
            cause += " (%s)" % exc.filename
    else:
        cause = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return AgentError("push-stuck", "a push into %s could not be finished: %s; it is kept and finished "
                      "by the next request once the VM has what it needs (disk space, write permission)"
                      % (repo.root, cause[:400]))


def _finish(repo, journal: dict) -> dict:
    work = _work(repo)
    placed = {}
    if journal.get("phase") == "apply":
        placed = _apply(repo, journal)
        journal["left"] = kept_mod.marks(repo.root, _written(journal))
        _sync(repo.root)               # the new state on disk before the journal says it is there
        journal["phase"] = "applied"
        _write_json(os.path.join(work, JOURNAL), journal)
    crash_point("agent:push-applied")
    for name in os.listdir(work):                # the sources: everything but the journal
        if name != JOURNAL:
            full = os.path.join(work, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
    # Only the paths the push touched are scanned: the journal proved every other one clean.
    state = repo.state(paths=journal.get("touched"), vouched=_still_placed(repo, journal, placed),
                       since=journal.get("since"))
    left, changed = _left_by_push(repo, journal, state["overlay"])
    state = {**state, "overlay": left, **({"changed_meanwhile": changed} if changed else {})}
    record = {"id": journal["id"], "head": state["head"], "branch": state["branch"], "overlay": state["overlay"]}
    _write_json(os.path.join(_git_dir(repo), APPLIED), record)
    crash_point("agent:push-recorded")
    os.unlink(os.path.join(work, JOURNAL))
    os.rmdir(work)
    return state


def _written(j: dict) -> list:
    """The paths the push may have written: the touched paths, or (a checkout rewritten in
    full) those the overlays and the removed untracked files name."""
    if j.get("touched") is not None:
        return j["touched"]
    return sorted(set(j["overlay"]["index"]) | set(j["overlay"]["files"]) | set(j["stale"]) | set(j["extra"]))


_ABSENT = "absent"


def _keep_vm_changes(repo, j: dict) -> None:
    """Recovery, before the steps run again: save what the VM changed, since the journal was
    written, in the paths they write (kept.py), so finishing the push overwrites no VM work."""
    work = _work(repo)
    before, old_index = dict(j["before"]), os.path.join(work, "index.old")
    if not j.get("clean_from") and os.path.exists(old_index):
        # `read-tree --reset -u` rewrites every tracked file that differs from the old index or
        # the commit, touched or not: those were as the old index says (or the push wrote them).
        for path in _reset_may_write(repo, j["commit"], old_index):
            before.setdefault(path, None)
    else:
        old_index = None

    def is_push_source(path):
        source, full = j["sources"].get(path) or {}, os.path.join(repo.root, path)
        if "file" in source:
            return _same_file(full, os.path.join(work, source["file"]))
        return "target" in source and os.path.islink(full) and os.readlink(full) == source["target"]

    changed = kept_mod.changed_since(repo, before, is_push_source, lambda paths: _new_ids(repo, j, paths, old_index))
    if not changed:
        return
    entry = kept_mod.save(repo, j["id"], changed, os.path.join(work, "kept-index"))
    _sync(repo.root)                   # the kept bytes on disk before the steps overwrite them
    if entry:
        j.setdefault("kept", []).append(entry)
    j["before"].update(kept_mod.marks(repo.root, changed))     # saved: a later recovery compares from here
    _write_json(os.path.join(work, JOURNAL), j)


def _reset_may_write(repo, commit: str, old_index: str) -> list:
    """The tracked paths `read-tree --reset -u commit` from `old_index` may write: those whose
    file differs from that index, or whose entry differs from the commit's."""
    env = {"GIT_INDEX_FILE": old_index}
    out = repo.git(["diff-files", "--name-only", "-z"], env=env, check=False) + b"\0" + \
        repo.git(["diff-index", "--cached", "--name-only", "-z", "--no-renames", commit], env=env, check=False)
    return sorted({os.fsdecode(p) for p in out.split(b"\0") if p})


def _new_ids(repo, j: dict, paths, old_index=None) -> dict:
    """{path: the blob ids the steps may leave there}: the overlay's file, its index entry
    (checked out), the commit's (checked out before the overlay replaces it); with `old_index`,
    also that index's entry (what the path held before the push, as far as git tracked it)."""
    new, ids = j["overlay"], {}
    for path in paths:
        ids[path] = {e.oid for e in (new["files"].get(path), new["index"].get(path)) if e is not None}
    names = [p for p in paths if not has_control(p)]              # batch-check reads lines
    asked = [(j["commit"] + ":%s", None)] + ([(":0:%s", {"GIT_INDEX_FILE": old_index})] if old_index else [])
    for spec, env in asked if names else ():
        out = repo.git(["cat-file", "--batch-check=%(objectname) %(objecttype)"],
                       input=os.fsencode("".join(spec % p + "\n" for p in names)), env=env, check=False)
        for path, line in zip(names, out.decode("ascii", "replace").split("\n")):
            parts = line.split()
            if len(parts) == 2 and parts[1] == "blob":
                ids[path].add(parts[0])
    return ids


def _left_by_push(repo, j: dict, overlay: dict):
    """(The overlay the push left, the paths the VM changed since.) The first is what the host
    takes as agreed: the scan after the push, except for a path the VM changed between the
    apply and that scan (while the push was applied, or before a killed push was finished by
    the next request). That path counts as the push left it (its entries in the push's overlay,
    or clean), so the VM's change shows as the VM's own, never as an agreed state a later push
    could overwrite. A path is changed when its stat data moved since the apply (journal
    "left"; a path git lists only because of a conversion, eol say, has not moved and stays as
    git says). Not seen: a same-size rewrite in place within the timestamp tick of the apply,
    which leaves the stat data as it was (and the scan takes a just-placed file's blob id from
    its stat data, _still_placed)."""
    new = j["overlay"]
    changed = [path for path, then in sorted((j.get("left") or {}).items())
               if then != "dir" and kept_mod.stat_mark(repo.root, path) != then]
    left = {part: dict(overlay[part]) for part in ("index", "files")}
    differs = []
    for path in changed:
        moved = False
        for part in ("index", "files"):
            want, got = new[part].get(path, _ABSENT), left[part].get(path, _ABSENT)
            if want != got:
                moved = True
                if want == _ABSENT:
                    del left[part][path]
                else:
                    left[part][path] = want
        if moved:
            differs.append(path)
    return (left if differs else overlay), differs


def _still_placed(repo, j: dict, placed: dict) -> dict:
    """{path: (stat data, Entry)} for the host's files this process has just placed (their bytes
    verified against the overlay's blob ids when staged) that nobody has written since: removing
    the staged link moved only their ctime. The scan after the push takes their blob ids instead
    of hashing the files once more."""
    vouched = {}
    for path, before in placed.items():
        try:
            st = os.lstat(os.path.join(repo.root, path))
        except OSError:
            continue
        same = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode) == \
            (before.st_ino, before.st_size, before.st_mtime_ns, before.st_mode)
        if same and stat.S_ISREG(st.st_mode):
            vouched[path] = (st, Entry(file_mode(st), j["overlay"]["files"][path].oid))
    return vouched


def _apply(repo, j: dict) -> dict:
    root, work = repo.root, _work(repo)
    commit, branch, new = j["commit"], j["branch"], j["overlay"]
    index = os.path.join(work, "index")
    env = {"GIT_INDEX_FILE": index}
    # 1. untracked files of the old state that the new one does not have (only files: a
    #    directory there now is the new state's)
    for path in j["stale"]:
        _remove_file(root, path)
    # 2. the commit's tracked files, from the old index (never from a half-applied one)
    for name in ("index", "index.lock"):
        if os.path.lexists(os.path.join(work, name)):
            os.unlink(os.path.join(work, name))
    if os.path.exists(os.path.join(work, "index.old")):
        _snapshot(os.path.join(work, "index.old"), index)
    _read_tree(repo, j, env)
    crash_point("agent:push-applying")
    # 3. the overlay: index entries, then worktree files (removals before placements, so a
    #    path can change between file, directory and symlink)
    lines = []
    for path, entry in sorted(new["index"].items()):
        lines.append("0 %s\t%s" % ("0" * len(commit), path) if entry is None else "%s %s\t%s" % (entry.mode, entry.oid, path))
    if lines:
        repo.git(["update-index", "-z", "--index-info"], input=b"".join(os.fsencode(x) + b"\0" for x in lines), env=env)
        checkout = [p for p, e in new["index"].items() if e is not None and p not in new["files"]]
        if checkout:
            repo.git(["checkout-index", "-f", "-z", "--stdin"],
                     input=b"".join(os.fsencode(p) + b"\0" for p in checkout), env=env)
        for path, entry in new["index"].items():
            if entry is None and path not in new["files"]:
                _remove_file(root, path)          # `git rm`: gone from both
    for path, entry in sorted(new["files"].items()):
        if entry is None:
            _remove_file(root, path)
    in_place = set(j["in_place"])
    placed = {}
    for path, entry in sorted(new["files"].items()):
        if entry is not None and path not in in_place:
            source = j["sources"][path]
            _put(root, work, path, source)
            if source.get("file", "").startswith("files/"):       # staged from the host's stream
                placed[path] = os.lstat(os.path.join(root, path))
            crash_point("agent:push-placing")
    for path in j["extra"]:
        _put(root, work, path, j["sources"][path])
    # 4. stat data (only the overlay's index entries lack it: `read-tree -u` keeps or writes the
    #    stat data of every other entry), history boundary, refs
    if lines:
        repo.git(["update-index", "-q", "--refresh"], env=env, check=False)
    if j.get("shallow"):
        write_atomic(os.path.join(_git_dir(repo), "shallow"), "".join(o + "\n" for o in j["shallow"]).encode(),
                     mode=0o644)
    repo.git(["update-ref", "-m", "slicer push", "refs/heads/" + branch, commit])
    if _head_ref(repo) != "refs/heads/" + branch:
        repo.git(["symbolic-ref", "HEAD", "refs/heads/" + branch])
    # 5. the index, installed as git installs one (unless nothing above rewrote it: it is the
    #    VM's own index file still, and renaming a file over another link of itself does nothing)
    if not _same_file(index, os.path.join(work, "index.old")):
        _keep_shared(work, _git_dir(repo))
        _split_if_large(repo, index)
        repo.index_installed = _install_index(_git_dir(repo), index)
    return placed


SPLIT_ENTRIES = 10000       # an index file that holds this many entries itself is split


def _split_if_large(repo, index: str) -> None:
    """Write a large private index as a split index (git's `update-index --split-index`): its
    entries go to a shared file once, and every later write of the index (each push's `git
    restore`, a commit in the VM) writes only the entries that changed since, ~30 ms less at 50k
    files. git writes the shared file into .git (never beside an index file elsewhere), where the
    installed index finds it, and the flush after the steps writes both out. A private index git
    wrote whole (the first push's checkout) or whose own part grew past SPLIT_ENTRIES is split
    here; git itself starts a new shared file when a checkout reorders the entries."""
    if _own_entries(index) < SPLIT_ENTRIES:
        return
    if repo.git(["config", "--type=bool", "--get", "core.splitIndex"], check=False).strip() == b"false":
        return                                  # the VM's own choice: git would write it whole again
    try:
        repo.git(["update-index", "--split-index"], env={"GIT_INDEX_FILE": index})
    except AgentError:
        return                                  # the index stays as it was: whole
    crash_point("agent:push-split")


def _keep_shared(source: str, target: str) -> None:
    """Link each split index shared file of `source` into `target` where it is missing. git
    deletes a shared file no index it writes names once it is two weeks old, but index.old (and
    the private index made from it) may name one while a journal waits: prepare links them into
    .git/slicer-push/, where git also looks for an index's shared file, and step 5 links back any
    that went from .git before the index naming it is installed."""
    for name in os.listdir(source):
        if name.startswith("sharedindex.") and not os.path.lexists(os.path.join(target, name)):
            try:
                os.link(os.path.join(source, name), os.path.join(target, name))
            except OSError:
                pass            # (no links here: the shared files stay git's alone)


def _own_entries(index: str) -> int:
    """How many entries the index file holds itself (its header's count: a split index counts
    only those it keeps beside its shared file), or 0 if it cannot be read."""
    try:
        with open(index, "rb") as fh:
            header = fh.read(12)
    except OSError:
        return 0
    return int.from_bytes(header[8:12], "big") if len(header) == 12 and header[:4] == b"DIRC" else 0


def _head_ref(repo):
    """The ref .git/HEAD names, or None (detached, unreadable, or not a plain file)."""
    try:
        with open(os.path.join(_git_dir(repo), "HEAD"), "rb") as fh:
            text = fh.read(4096)
    except OSError:
        return None
    if not text.startswith(b"ref: ") or not text.endswith(b"\n") or text.count(b"\n") != 1:
        return None
    return os.fsdecode(text[len(b"ref: "):-1])


def _read_tree(repo, j: dict, env: dict) -> None:
    """Step 2. A VM that was clean at `clean_from` (its index that commit's tree, no file changed,
    nothing untracked) is there already if that is the commit. Else `git restore` of the paths
    the commit changes (`changed`) moves it there, touching those entries and files only, in one
    index read and write (~35 ms at 50k files; a two-way `read-tree -m -u` walks both trees
    whole, ~90 ms, and `--reset` also stats every file). Where restore refuses (an old git, a
    file turning into a directory's place) or the VM has a sparse checkout, the two-way merge
    runs; it refuses instead of overwriting anything that differs from index.old (a file an
    earlier, killed run of these steps wrote, an ignored file in the way) and writes nothing then:
    `--reset` from index.old runs instead, as it always did. Each ends where `--reset` would."""
    if j.get("clean_from") == j["commit"]:
        return              # the index holds the commit's tree and every file is as it says
    changed = j.get("changed")
    if j.get("clean_from") and changed and not _sparse(repo):
        try:
            # (no post-checkout hook: read-tree runs none either)
            repo.git(["-c", "core.hooksPath=/dev/null", "restore", "--source=" + j["commit"], "--staged",
                      "--worktree", "--pathspec-from-file=-", "--pathspec-file-nul"],
                     input=b"".join(os.fsencode(p) + b"\0" for p in changed), env=env)
            return
        except AgentError:
            _restart_index(repo)
    if j.get("clean_from"):
        try:
            repo.git(["read-tree", "-m", "-u", j["clean_from"], j["commit"]], env=env)
            return
        except AgentError:
            _restart_index(repo)
    repo.git(["read-tree", "--reset", "-u", j["commit"]], env=env)


def _sparse(repo) -> bool:
    return os.path.exists(os.path.join(_git_dir(repo), "info", "sparse-checkout"))


def _restart_index(repo) -> None:
    """The private index as index.old again, after a step that refused."""
    work = _work(repo)
    index = os.path.join(work, "index")
    if os.path.lexists(index):
        os.unlink(index)
    if os.path.exists(os.path.join(work, "index.old")):
        _snapshot(os.path.join(work, "index.old"), index)


def _install_index(git_dir: str, private: str):
    """Install the private index as git does; return its stat data (agent/memo.py knows it)."""
    lock = os.path.join(git_dir, "index.lock")
    deadline = time.monotonic() + INDEX_LOCK_WAIT
    while True:
        try:
            os.link(private, lock)
            break
        except FileExistsError:
            if _same_file(lock, private):        # ours, from an attempt that was killed
                break
            if time.monotonic() >= deadline:
                raise AgentError("index-locked", "another git process in the VM holds %s; the push "
                                 "will be finished by the next request" % lock) from None
            time.sleep(0.05)
    os.rename(lock, os.path.join(git_dir, "index"))
    return os.stat(os.path.join(git_dir, "index"))


def _clear_own_locks(repo, j: dict) -> None:
    """Ref locks a killed `update-ref`/`symbolic-ref` of this journal left: they hold exactly
    what it writes (anyone else's lock is left alone, and the step waits or fails)."""
    git_dir = _git_dir(repo)
    own = {os.path.join(git_dir, "HEAD.lock"): b"ref: refs/heads/%s\n" % os.fsencode(j["branch"]),
           os.path.join(git_dir, "refs", "heads", j["branch"] + ".lock"): j["commit"].encode() + b"\n"}
    for path, content in own.items():
        try:
            with open(path, "rb") as fh:
                if fh.read() == content:
                    os.unlink(path)
        except OSError:
            pass


# -- filesystem helpers (never follow a symlink in a parent directory) ------------------------------
def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _parents_are_dirs(root: str, path: str) -> bool:
    current = root
    for part in path.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def _remove_file(root: str, path: str) -> None:
    """Remove the file or symlink at `path` (an empty directory too), then parents that became
    empty, as git does. A non-empty directory is left: it is not the entry being removed."""
    if not _parents_are_dirs(root, path):
        return
    full = os.path.join(root, path)
    try:
        if stat.S_ISDIR(os.lstat(full).st_mode):
            os.rmdir(full)
        else:
            os.unlink(full)
    except OSError:
        return
    parts = path.split("/")[:-1]
    while parts:
        try:
            os.rmdir(os.path.join(root, *parts))
        except OSError:
            break
        parts.pop()


def _put(root: str, work: str, path: str, source: dict) -> None:
    """Make `path` the source's file or symlink, replacing whatever is there (and turning any
    parent that is not a real directory into one)."""
    current = root
    for part in path.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(current)
            os.mkdir(current)
    full = os.path.join(root, path)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)
    if "target" in source:
        os.symlink(source["target"], full)
    else:
        _link_or_copy(os.path.join(work, source["file"]), full)


def _snapshot(index: str, target: str) -> None:
    """`target` becomes the index file as it is now: a second link (git never writes an index
    file in place, it renames a new one over it), so no copy and git's racy check still sees
    when the index was written; a copy where links fail."""
    try:
        os.link(index, target)
    except OSError:
        shutil.copyfile(index, target)


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (no copy, and the source stays for a repeated step); a copy across devices."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


_SYNCFS = []


def _sync(path: str) -> None:
    """Flush the filesystem that holds `path` to disk, and fail if it cannot be written.

    syncfs(2) is one call for everything a push wrote there (the received files, git's own
    checkouts, directory entries, the index), which costs far less than an fsync per file (each
    waits for its own journal commit) and needs no list of what git wrote. Without it (not
    Linux, or no ctypes), sync(2), which syncs every filesystem."""
    if not _SYNCFS:
        try:
            import ctypes
            _SYNCFS.append((ctypes, ctypes.CDLL(None, use_errno=True).syncfs))
        except (ImportError, OSError, AttributeError):
            _SYNCFS.append(None)
    if _SYNCFS[0] is None:
        os.sync()
        return
    ctypes, syncfs = _SYNCFS[0]
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
    finally:
        os.close(fd)


def _read_json(path: str):
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode(), sync_dir=True)
