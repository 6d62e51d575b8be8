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

from .errors import UnsafeInput, WouldLoseWork
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
    def apply(self, changes) -> None:
        """Apply all changes or none."""
        for change in changes:
            try:
                check_relpath(change.path)
            except UnsafePath as exc:
                raise UnsafeInput("refusing to write %s" % exc) from None
        staged = []      # (change, parent fd, tmp name or None)
        created = []
        try:
            for change in changes:           # phase 1: verify and stage
                if self.current(change.path) != change.expect:
                    raise WouldLoseWork("%s changed on the host during the pull; nothing was written"
                                        % display(change.path))
                fd = self._open_parent(change.path, change.new is not None, created)
                tmp = None
                if change.new is not None:
                    tmp = self._stage(fd, change)
                staged.append((change, fd, tmp))
            self._commit(staged)
        except BaseException:
            for change, fd, tmp in staged:
                if tmp:
                    _unlink(fd, tmp)
            for directory in reversed(created):
                try:
                    os.rmdir(os.path.join(self.root, directory))
                except OSError:
                    pass
            raise
        finally:
            for _, fd, _ in staged:
                if fd is not None:
                    os.close(fd)

    def _stage(self, fd: int, change: Change) -> str:
        name = ".slicer-new-%s" % os.urandom(6).hex()
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

    def _commit(self, staged) -> None:
        done = []        # (fd, final name, backup name or None)
        try:
            for change, fd, tmp in staged:
                name = change.path.rsplit("/", 1)[-1]
                backup = None
                if change.expect is not None:
                    backup = ".slicer-old-%s" % os.urandom(6).hex()
                    os.rename(name, backup, src_dir_fd=fd, dst_dir_fd=fd)
                done.append([fd, name, backup, None])
                if tmp:
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                    done[-1][3] = tmp
        except BaseException:
            for fd, name, backup, tmp in reversed(done):
                if tmp:
                    _unlink(fd, name)
                if backup:
                    os.rename(backup, name, src_dir_fd=fd, dst_dir_fd=fd)
            raise
        for fd, name, backup, tmp in done:
            if backup:
                _unlink(fd, backup)


def _unlink(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass

