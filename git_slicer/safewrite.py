"""Writing files that came from a VM into the host worktree, safely and all-or-nothing.

Every path component is opened relative to the worktree root with O_NOFOLLOW and O_DIRECTORY
(`dir_fd` walking), so a symlink anywhere on the way, planted by the VM or already on the host,
is never followed. Paths inside any `.git` or outside the worktree are refused before anything
is opened. Each change states what the host file must be right now (its blob id, or absent); a
host file that differs (edited since the check, or an ignored file in the way) stops everything.

Phase 1 verifies every expectation and stages new contents next to their targets; phase 2
renames them into place, keeping the old files until all renames succeeded, and rolls back on
failure. Modes are only 0644/0755; setuid/setgid/sticky and group/other write never land.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .errors import SlicerError, UnsafeInput, WouldLoseWork
from .wire.framing import crash_point
from .wire.gitobj import MODE_EXEC, MODE_FILE, MODE_LINK, MODE_TREE, Entry
from .wire.overlay import blob_oid
from .wire.paths import UnsafePath, check_relpath, display

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


DIRECTORY = Entry(MODE_TREE, "")       # what current() reports for a directory


@dataclass
class Change:
    path: str
    expect: object          # what the host path must be right now: the Entry of its bytes, DIRECTORY
                            # (it becomes a file: everything below it must be deleted by the same
                            # apply), or None for "absent"
    new: object             # the Entry to write, or None to delete
    source: str = ""        # staged file with the new contents (regular files)
    target: str = ""        # symlink target (symlinks)
    written: object = None  # the Entry of the bytes `source` holds when they are not `new`'s blob
                            # (a blob converted to the host's checkout form: eol, ident, encoding)


class SafeWriter:
    def __init__(self, root: str, algo: str = "sha1", max_depth: int = None):
        self.root = root
        self.algo = algo
        self.max_depth = max_depth          # slicer.limit.pathDepth (None: the default)

    # -- lookups through dir fds --------------------------------------------------
    def _open_parent(self, path: str, create: bool, created: list, removed=frozenset()):
        """fd of the directory holding `path`, walking without following symlinks.

        With `removed` (paths this apply deletes), a file or symlink on the way that is in it ends
        the walk early: (fd of the deepest directory reached, the components still to create once
        it is gone). Without a stop the second item is empty."""
        fd = os.open(self.root, _DIR_FLAGS)
        parts = path.split("/")[:-1]
        walked = []
        try:
            for i, part in enumerate(parts):
                walked.append(part)
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None, []
                    os.mkdir(part, 0o755, dir_fd=fd)
                    created.append("/".join(walked))
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        if "/".join(walked) in removed:          # a file the same apply replaces by a directory
                            return fd, parts[i:]
                        raise WouldLoseWork("cannot write %s: %s is a symlink or a file on the host"
                                            % (display(path), display("/".join(walked)))) from None
                    raise
                os.close(fd)
                fd = nxt
            return fd, []
        except BaseException:
            os.close(fd)
            raise

    def current(self, path: str):
        """The Entry of the host file at `path` now, DIRECTORY for a directory, None if absent
        (also below a file or symlink). Symlinks are never followed."""
        try:
            fd, _ = self._open_parent(path, False, [])
        except WouldLoseWork:
            return None
        if fd is None:
            return None
        name = path.rsplit("/", 1)[-1]
        try:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=fd)
                return Entry(MODE_LINK, blob_oid(os.fsencode(target), self.algo))
            if stat.S_ISDIR(st.st_mode):
                return Entry(DIRECTORY)
            if not stat.S_ISREG(st.st_mode):
                return Entry("special", "")
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(file_fd, "rb") as fh:
                data = fh.read()
            return Entry(MODE_EXEC if st.st_mode & 0o100 else MODE_FILE, blob_oid(data, self.algo))
        finally:
            os.close(fd)

    def _files_below(self, path: str) -> list:
        """Every non-directory below the directory `path` (relative paths), without following links."""
        found = []
        fd, _ = self._open_parent(path + "/x", False, [])
        if fd is None:
            return found
        try:
            for entry in os.scandir(fd):
                rel = path + "/" + entry.name
                if entry.is_dir(follow_symlinks=False):
                    found.extend(self._files_below(rel))
                else:
                    found.append(rel)
        finally:
            os.close(fd)
        return found

    # -- applying ------------------------------------------------------------------
    def apply(self, changes, journal=None, before_commit=None) -> None:
        """Apply all changes or none.

        With `journal` (a journal.Journal), the plan is recorded through `journal.record(entries)`
        before anything visible happens, so a process killed part-way can be rolled back by
        `rollback()`; the caller then ends the operation with `journal.finish()`. `before_commit()` runs after every check and staging
        succeeded and before the first rename (the pull moves its branch there).

        A file may become a directory and a directory a file in one apply (as in `git checkout`):
        deletions are applied first, a replaced directory must hold nothing but files this
        apply deletes, and files below a replaced file are staged higher up until it is gone.
        """
        for change in changes:
            try:
                check_relpath(change.path, control_ok=True,     # names were vetted on arrival (check_state)
                              **({"max_depth": self.max_depth} if self.max_depth else {}))
            except UnsafePath as exc:
                raise UnsafeInput("refusing to write %s" % exc,
                                  hint="a path deeper than slicer.limit.pathDepth is taken with that limit raised"
                                  if "deeper than" in str(exc) else "") from None
        changes = [c for c in changes if not (c.new is None and c.expect == DIRECTORY)]
        leaves = {c.path for c in changes if c.new is not None}
        for change in changes:
            if change.new is None:       # deleting what a new file replaces: the directory it was
                continue
            parts = change.path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in leaves:
                    raise UnsafeInput("refusing to write %s below the file or symlink %s"
                                      % (display(change.path), display("/".join(parts[:depth]))))
        # Deletions first: a file must be gone before a directory takes its name, and a
        # directory must be emptied before a file takes its name.
        changes = sorted(changes, key=lambda c: (c.new is not None, c.path))
        removed = {c.path for c in changes if c.new is None and c.expect is not None}
        plan = [(c, ".slicer-new-%s" % os.urandom(6).hex() if c.new is not None else None,
                 ".slicer-old-%s" % os.urandom(6).hex() if c.expect is not None else None)
                for c in changes]
        entries = [{"path": c.path, "tmp": t, "backup": b, "new": c.written or c.new, "stage": None,
                    "dir": c.expect == DIRECTORY, "mkdirs": []} for c, t, b in plan]
        record = (lambda: journal.record(entries)) if journal is not None else None
        if record:
            record()
        staged = []      # [change, entry, parent fd (None until created), staging fd]
        created = []
        try:
            for (change, tmp, backup), entry in zip(plan, entries):     # phase 1: verify and stage
                if self.current(change.path) != change.expect:
                    raise WouldLoseWork("%s changed on the host during the pull; nothing was written"
                                        % display(change.path))
                if change.expect == DIRECTORY:
                    kept = [p for p in self._files_below(change.path) if p not in removed]
                    if kept:
                        raise WouldLoseWork("cannot replace the directory %s: the host has %s in it"
                                            % (display(change.path), display(kept[0])))
                fd, pending = self._open_parent(change.path, change.new is not None, created, removed)
                if fd is None:
                    continue
                if pending:       # below a file this apply deletes: stage higher up, move in later
                    parents = change.path.split("/")[:-1]
                    entry["stage"] = "/".join(parents[:len(parents) - len(pending)])
                    if record:
                        record()
                    staged.append([change, entry, None, fd])
                else:
                    staged.append([change, entry, fd, fd])
                if tmp:
                    self._stage(fd, change, tmp)
            crash_point("pull:staged")
            if before_commit is not None:
                before_commit()
            self._commit(staged, record)
        except BaseException:
            for change, entry, fd, stage_fd in staged:
                if entry["tmp"]:
                    _unlink(stage_fd, entry["tmp"])
            for directory in reversed(created):
                try:
                    os.rmdir(os.path.join(self.root, directory))
                except OSError:
                    pass
            if journal is not None:
                journal.discard()
            raise
        finally:
            for _, _, fd, stage_fd in staged:
                os.close(stage_fd)
                if fd is not None and fd != stage_fd:
                    os.close(fd)

    def _stage(self, fd: int, change: Change, name: str) -> str:
        if change.new.mode == MODE_LINK:
            os.symlink(change.target, name, dir_fd=fd)
            return name
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        try:
            with open(change.source, "rb") as src:
                while True:
                    block = src.read(1024 * 1024)
                    if not block:
                        break
                    os.write(out, block)
            os.fchmod(out, 0o755 if change.new.mode == MODE_EXEC else 0o644)
        finally:
            os.close(out)
        return name

    def _commit(self, staged, record=None) -> None:
        done = []
        try:
            for item in staged:
                change, entry, fd, stage_fd = item
                name = change.path.rsplit("/", 1)[-1]
                if fd is None:          # its parent was a file deleted above: make the directories now
                    fd = item[2] = self._make_parent(change.path, entry, record)
                if entry["backup"]:
                    os.rename(name, entry["backup"], src_dir_fd=fd, dst_dir_fd=fd)
                done.append(item)
                if entry["tmp"]:
                    os.rename(entry["tmp"], name, src_dir_fd=stage_fd, dst_dir_fd=fd)
                    entry["moved"] = True
                crash_point("pull:writing")
        except BaseException:
            for change, entry, fd, stage_fd in reversed(done):
                name = change.path.rsplit("/", 1)[-1]
                if entry.get("moved"):
                    _unlink(fd, name)
                if entry["backup"]:
                    os.rename(entry["backup"], name, src_dir_fd=fd, dst_dir_fd=fd)
                for directory in reversed(entry["mkdirs"]):
                    try:
                        os.rmdir(os.path.join(self.root, directory))
                    except OSError:
                        pass
            raise
        if record is None:
            self.cleanup([item[1] for item in staged])

    def _make_parent(self, path: str, entry: dict, record=None) -> int:
        """Create the directories of `path` that a deleted file stood in the way of (journaled
        before each is made, so a rollback removes them)."""
        parts = path.split("/")[:-1]
        fd = os.open(self.root, _DIR_FLAGS)
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                entry["mkdirs"].append("/".join(parts[:i + 1]))
                if record:
                    record()
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            fd = nxt
        return fd

    # -- crash recovery ----------------------------------------------------------------
    def _names(self, entry):
        try:
            fd, _ = self._open_parent(entry["path"], False, [])
        except (SlicerError, OSError):
            return None, None
        return fd, entry["path"].rsplit("/", 1)[-1]

    def _stage_fd(self, entry):
        if entry.get("stage") is None:
            return self._names(entry)[0]
        try:
            fd, _ = self._open_parent(entry["stage"] + "/x" if entry["stage"] else "x", False, [])
        except (SlicerError, OSError):
            return None
        return fd

    def cleanup(self, entries: list) -> None:
        """Drop the backups (and leftover staged files) of a completed apply (its journal
        entries), and the directories its deletions left empty (as git does)."""
        emptied = set()
        for entry in entries:
            fd, name = self._names(entry)
            if entry.get("dir") and fd is not None and entry["backup"]:
                _remove_tree(fd, entry["backup"])
            elif fd is not None and entry["backup"]:
                _unlink(fd, entry["backup"])
            if fd is not None:
                os.close(fd)
            stage_fd = self._stage_fd(entry)
            if stage_fd is not None:
                if entry["tmp"]:
                    _unlink(stage_fd, entry["tmp"])
                os.close(stage_fd)
            if entry["new"] is None and "/" in entry["path"]:
                emptied.add(entry["path"].rsplit("/", 1)[0])
        for parent in sorted(emptied, key=lambda p: -p.count("/")):
            while parent:
                fd, name = self._names({"path": parent})
                if fd is None:
                    break
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError:
                    break
                finally:
                    os.close(fd)
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""

    def rollback(self, entries: list) -> None:
        """Undo a journaled apply (its journal entries) that was killed part-way: every file
        back to its old state."""
        for entry in reversed(entries):
            fd, name = self._names(entry)
            stage_fd = self._stage_fd(entry)
            try:
                backup, tmp = entry["backup"], entry["tmp"]
                staged_still = bool(tmp) and stage_fd is not None and _exists(stage_fd, tmp)
                if fd is not None and not staged_still and tmp and entry["new"] is not None \
                        and self.current(entry["path"]) == entry["new"]:
                    _unlink(fd, name)         # the new file that was moved in
                if fd is not None and backup and _exists(fd, backup):
                    if entry.get("dir") and _exists(fd, name):
                        _unlink(fd, name)
                    os.rename(backup, name, src_dir_fd=fd, dst_dir_fd=fd)
                if staged_still:
                    _unlink(stage_fd, tmp)
            finally:
                if fd is not None:
                    os.close(fd)
                if stage_fd is not None and stage_fd != fd:
                    os.close(stage_fd)
            for directory in reversed(entry.get("mkdirs") or []):
                try:
                    os.rmdir(os.path.join(self.root, directory))
                except OSError:
                    pass
            parent = entry["path"].rsplit("/", 1)[0] if "/" in entry["path"] else ""
            while parent:                      # directories made for new files, if now empty
                try:
                    os.rmdir(os.path.join(self.root, parent))
                except OSError:
                    break
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _unlink(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass



def _remove_tree(fd: int, name: str) -> None:
    """Remove the directory `name` in `fd` and everything in it, never following a symlink."""
    try:
        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        return
    try:
        for entry in os.scandir(sub):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(sub, entry.name)
            else:
                _unlink(sub, entry.name)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=fd)
