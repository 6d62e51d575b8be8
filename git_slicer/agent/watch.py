"""inotify watches over one VM worktree: which paths changed since the last look (Linux only;
stdlib and ctypes, like the rest of the agent).

A watch is added to every directory before that directory is listed, so a file or directory
created at any moment is either seen by the listing or reported by an event. The kernel queues
events as the writes happen, so `drain()` returns every change completed before it was called.
When it cannot say for sure (the queue overflowed, a directory was moved and its watches now
carry stale paths, a nested repository appeared) it says `lost`, and the caller scans in full.

`.git` itself is watched one level deep (and `.git/info`): its own entries are reported by name
(`git`), so the caller can tell the index or config changing from refs and objects moving.
Never watched, so never reported: writes through a writable mmap and through a hard link from
outside the worktree (git's fsmonitor has the same blind spots); callers bound their trust.
"""

from __future__ import annotations

import errno
import os
import re
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
_MASK = (IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
         | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW)
_EVENT = struct.Struct("iIII")
MAX_DIRECTORIES = 100_000
# File systems whose changes all pass through this kernel (no network or host-shared ones: a
# change made on the other side of virtiofs, 9p or NFS raises no event here).
LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "overlay", "zfs", "bcachefs",
                     "jfs", "reiserfs"}


class Unsupported(Exception):
    """No watches for this worktree (no inotify, a remote file system, too many directories,
    a nested repository)."""


class Changes:
    def __init__(self):
        self.paths = set()      # worktree paths (files or whole directories) that changed
        self.git = set()        # names in .git (or "info/NAME") that changed
        self.lost = False       # events were lost: nothing can be said

    def __repr__(self) -> str:
        return "Changes(paths=%r, git=%r, lost=%r)" % (sorted(self.paths), sorted(self.git), self.lost)


def _libc():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return libc, ctypes
    except (ImportError, OSError, AttributeError):
        raise Unsupported("no inotify here") from None


def filesystem_of(path: str):
    """The type of the file system holding `path`, from /proc/self/mountinfo (None if unknown)."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    target = os.fsencode(path)
    best, kind = b"", None
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields = left.split(b" ")
        if not sep or len(fields) < 5 or not right:
            continue
        # the kernel writes space, tab, newline and backslash as \ooo (octal), bytes as they are
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
        inside = target == point or target.startswith(point.rstrip(b"/") + b"/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split(b" ")[0].decode("ascii", "replace")
    return kind


class Watches:
    """Watches over every directory of the worktree at `root` (a real path)."""

    def __init__(self, root: str):
        self.root = root
        kind = filesystem_of(os.path.realpath(root))     # mountinfo names real paths
        if kind not in LOCAL_FILESYSTEMS:
            raise Unsupported("file system %s" % kind)
        self._libc, ctypes = _libc()
        self._ctypes = ctypes
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise Unsupported("inotify_init1: %s" % os.strerror(ctypes.get_errno()))
        self.fd = fd
        self.dirs = {}               # watch descriptor -> directory ("" the root, "/.git" .git itself)
        # The user's watches are shared with everything else they run (an editor, a build
        # watcher) and with the agent's other repositories: one repository takes a quarter at most.
        self.budget = min(MAX_DIRECTORIES, _max_user_watches() // 4)
        try:
            self.device = os.lstat(root).st_dev
            self.identity = identity(root)
            if not self._watch("", "") or not self._watch(".git", "/.git"):
                raise Unsupported("no worktree at %s" % root)
            self._walk("")
            if os.path.isdir(os.path.join(root, ".git", "info")):
                self._watch(".git/info", "/.git/info")
            if os.path.lexists(os.path.join(root, ".git", "modules")):
                raise Unsupported("submodules")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _watch(self, rel: str, key: str) -> bool:
        if len(self.dirs) >= self.budget:
            raise Unsupported("more than %d directories" % self.budget)
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(os.path.join(self.root, rel)), _MASK)
        if wd < 0:
            error = self._ctypes.get_errno()
            if error in (errno.ENOENT, errno.ENOTDIR):
                return False        # gone or no longer a directory: its parent's watch says so
            raise Unsupported("inotify_add_watch %s: %s" % (rel, os.strerror(error)))
        self.dirs[wd] = key
        return True

    def _watch_tree(self, top: str) -> None:
        """Watch `top` and every directory below it, each before it is listed."""
        if self._watch(top, top):
            self._walk(top)

    def _walk(self, top: str) -> None:
        pending = [top]
        while pending:
            rel = pending.pop()
            try:
                entries = list(os.scandir(os.path.join(self.root, rel)))
            except (FileNotFoundError, NotADirectoryError):
                continue                # removed since it was watched: its parent says so
            for entry in entries:
                if entry.name == ".git":
                    if rel:
                        raise Unsupported("a nested repository at %s" % rel)
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    device = entry.stat(follow_symlinks=False).st_dev if is_dir else self.device
                except FileNotFoundError:
                    continue
                if device != self.device:
                    raise Unsupported("another file system at %s" % entry.path)
                child = entry.name if not rel else rel + "/" + entry.name
                if is_dir and self._watch(child, child):
                    pending.append(child)

    def drain(self) -> Changes:
        """Every change since the last drain (the queue read to its end, without waiting)."""
        changes = Changes()
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            self._record(changes, wd, mask, os.fsdecode(name))
        return changes

    def _record(self, changes: Changes, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            changes.lost = True
            return
        rel = self.dirs.get(wd)
        if mask & IN_IGNORED:           # the watch is gone (its directory was removed)
            self.dirs.pop(wd, None)
            if rel in ("", "/.git"):
                changes.lost = True
            return
        if rel is None:
            changes.lost = True
            return
        if rel.startswith("/.git"):
            if name:
                changes.git.add(name if rel == "/.git" else "info/" + name)
            if rel == "/.git" and mask & IN_ISDIR and name in ("info", "modules"):
                changes.lost = True     # watched again (or refused) by the next full scan
            return
        if mask & (IN_MOVE_SELF | IN_DELETE_SELF | IN_UNMOUNT):
            if not rel or mask & IN_UNMOUNT:
                changes.lost = True     # the worktree itself moved or went, or a file system did
            return                      # (its parent reports a directory moved or removed)
        if not name:
            return                      # the directory's own stat data (touch, chmod): its parent says so
        path = name if not rel else rel + "/" + name
        if name == ".git":
            changes.lost = True         # a repository appears or goes: scan in full, watch again
            return
        if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            # Watched now, before it is listed. A directory moved within the worktree keeps its
            # watches, and inotify_add_watch hands them back: they are mapped to the new path
            # before any later event is read. (One moved out keeps them too: its events only
            # add paths to rescan.)
            try:
                self._watch_tree(path)
            except (Unsupported, OSError):
                changes.lost = True
                return
        changes.paths.add(path)


def identity(root: str):
    """Which worktree and .git `root` names now (device and inode of both): a worktree swapped
    for another at the same path raises no event in the old one's watches."""
    try:
        return tuple((st.st_dev, st.st_ino) for st in (os.stat(root), os.stat(os.path.join(root, ".git"))))
    except OSError:
        return None


def _max_user_watches() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 8192
