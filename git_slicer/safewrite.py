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
import json
import os
import stat
from dataclasses import dataclass

from .errors import SlicerError, UnsafeInput, WouldLoseWork
from .wire.framing import crash_point
from .wire.overlay import MODE_EXEC, MODE_LINK, blob_oid
from .wire.paths import UnsafePath, check_relpath, display

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Change:
    path: str
    expect: object          # [mode, oid] the host file must have now, or None for "absent"
    new: object             # [mode, oid] to write, or None to delete
    source: str = ""        # staged file with the new contents (regular files)
    target: str = ""        # symlink target (symlinks)


class SafeWriter:
    def __init__(self, root: str, algo: str = "sha1"):
        self.root = root
        self.algo = algo

    # -- lookups through dir fds --------------------------------------------------
    def _open_parent(self, path: str, create: bool, created: list):
        """fd of the directory holding `path`, walking without following symlinks."""
        fd = os.open(self.root, _DIR_FLAGS)
        parts = path.split("/")[:-1]
        walked = []
        try:
            for part in parts:
                walked.append(part)
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    created.append("/".join(walked))
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise WouldLoseWork("cannot write %s: %s is a symlink or a file on the host"
                                            % (display(path), display("/".join(walked)))) from None
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def current(self, path: str):
        """[mode, oid] of the host file at `path` now, None if absent. Symlinks are not followed."""
        fd = self._open_parent(path, False, [])
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
                return [MODE_LINK, blob_oid(os.fsencode(target), self.algo)]
            if stat.S_ISDIR(st.st_mode):
                return ["040000", ""]
            if not stat.S_ISREG(st.st_mode):
                return ["special", ""]
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
            with os.fdopen(file_fd, "rb") as fh:
                data = fh.read()
            return [MODE_EXEC if st.st_mode & 0o100 else "100644", blob_oid(data, self.algo)]
        finally:
            os.close(fd)

    # -- applying ------------------------------------------------------------------
    def apply(self, changes, journal: str = None, before_commit=None, extra=None) -> None:
        """Apply all changes or none.

        With `journal` (a file path), the plan is recorded before anything visible happens, so a
        process killed part-way can be rolled back by `rollback()`; the caller then ends the
        operation with `finish(journal)`. `before_commit()` runs after every check and staging
        succeeded and before the first rename (the pull moves its branch there).
        """
        for change in changes:
            try:
                check_relpath(change.path)
            except UnsafePath as exc:
                raise UnsafeInput("refusing to write %s" % exc) from None
        leaves = {c.path for c in changes if c.new is not None}
        for change in changes:
            parts = change.path.split("/")
            for depth in range(1, len(parts)):
                if "/".join(parts[:depth]) in leaves:
                    raise UnsafeInput("refusing to write %s below the file or symlink %s"
                                      % (display(change.path), display("/".join(parts[:depth]))))
        plan = [(c, ".slicer-new-%s" % os.urandom(6).hex() if c.new is not None else None,
                 ".slicer-old-%s" % os.urandom(6).hex() if c.expect is not None else None)
                for c in changes]
        if journal:
            _write_journal(journal, {"root": self.root, "algo": self.algo, "committed": False,
                                     "extra": extra or {},
                                     "entries": [{"path": c.path, "tmp": t, "backup": b, "new": c.new}
                                                 for c, t, b in plan]})
        staged = []      # (change, parent fd, tmp name or None, backup name or None)
        created = []
        try:
            for change, tmp, backup in plan:           # phase 1: verify and stage
                if self.current(change.path) != change.expect:
                    raise WouldLoseWork("%s changed on the host during the pull; nothing was written"
                                        % display(change.path))
                fd = self._open_parent(change.path, change.new is not None, created)
                if fd is None:
                    continue
                staged.append((change, fd, tmp, backup))
                if tmp:
                    self._stage(fd, change, tmp)
            crash_point("pull:staged")
            if before_commit is not None:
                before_commit()
            self._commit(staged, keep_backups=bool(journal))
        except BaseException:
            for change, fd, tmp, backup in staged:
                if tmp:
                    _unlink(fd, tmp)
            for directory in reversed(created):
                try:
                    os.rmdir(os.path.join(self.root, directory))
                except OSError:
                    pass
            if journal:
                _remove_file(journal)
            raise
        finally:
            for _, fd, _, _ in staged:
                os.close(fd)

    def _stage(self, fd: int, change: Change, name: str) -> str:
        if change.new[0] == MODE_LINK:
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
            os.fchmod(out, 0o755 if change.new[0] == MODE_EXEC else 0o644)
        finally:
            os.close(out)
        return name

    def _commit(self, staged, keep_backups: bool = False) -> None:
        done = []        # (fd, final name, backup name or None, tmp or None)
        try:
            for change, fd, tmp, backup in staged:
                name = change.path.rsplit("/", 1)[-1]
                if backup:
                    os.rename(name, backup, src_dir_fd=fd, dst_dir_fd=fd)
                done.append([fd, name, backup, None])
                if tmp:
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                    done[-1][3] = tmp
                crash_point("pull:writing")
        except BaseException:
            for fd, name, backup, tmp in reversed(done):
                if tmp:
                    _unlink(fd, name)
                if backup:
                    os.rename(backup, name, src_dir_fd=fd, dst_dir_fd=fd)
            raise
        if not keep_backups:
            for fd, name, backup, tmp in done:
                if backup:
                    _unlink(fd, backup)

    # -- crash recovery ----------------------------------------------------------------
    def _names(self, entry):
        try:
            fd = self._open_parent(entry["path"], False, [])
        except (SlicerError, OSError):
            return None, None
        return fd, entry["path"].rsplit("/", 1)[-1]

    @staticmethod
    def finish(journal: str) -> None:
        """The operation is complete: mark the journal committed, drop backups, remove it."""
        data = read_journal(journal)
        if data is None:
            return
        data["committed"] = True
        _write_journal(journal, data)
        SafeWriter(data["root"], data["algo"]).cleanup(data)
        _remove_file(journal)

    def cleanup(self, data: dict) -> None:
        for entry in data["entries"]:
            fd, _ = self._names(entry)
            if fd is None:
                continue
            for name in (entry["tmp"], entry["backup"]):
                if name:
                    _unlink(fd, name)
            os.close(fd)

    def rollback(self, data: dict) -> None:
        """Undo a journaled apply that was killed part-way: every file back to its old state."""
        for entry in reversed(data["entries"]):
            fd, name = self._names(entry)
            if fd is None:
                continue
            try:
                backup, tmp = entry["backup"], entry["tmp"]
                if backup and _exists(fd, backup):
                    os.rename(backup, name, src_dir_fd=fd, dst_dir_fd=fd)
                elif not backup and tmp and not _exists(fd, tmp) and entry["new"] is not None \
                        and self.current(entry["path"]) == entry["new"]:
                    _unlink(fd, name)         # a new file that was moved in
                if tmp:
                    _unlink(fd, tmp)
            finally:
                os.close(fd)
            parent = entry["path"].rsplit("/", 1)[0] if "/" in entry["path"] else ""
            while parent:                      # directories made for new files, if now empty
                try:
                    os.rmdir(os.path.join(self.root, parent))
                except OSError:
                    break
                parent = parent.rsplit("/", 1)[0] if "/" in parent else ""


def read_journal(journal: str):
    try:
        with open(journal, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _write_journal(journal: str, data: dict) -> None:
    from .links import write_atomic
    write_atomic(journal, json.dumps(data).encode())


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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

