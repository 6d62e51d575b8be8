"""`.slicerignore`: gitignore-syntax patterns for paths that never leave the host.

A pull can bring a `.slicerignore` (or a `.gitignore`) from the VM, so these files are VM-shaped
input: they are read only as regular files within MAX_IGNORE_BYTES, never through a symlink, a
FIFO or a device (`.slicerignore -> /dev/zero` would otherwise eat the host's memory, a FIFO
would hang every push), and a bad pattern is one error naming the file and line.
"""

from __future__ import annotations

import os
import stat

from .errors import SlicerError
from .wire.paths import display

IGNORE_FILE = ".slicerignore"
MAX_IGNORE_BYTES = 1024 * 1024


class BadIgnoreFile(SlicerError):
    """An ignore file that cannot be used as it is (not a regular file, too big, bad pattern)."""


def read_regular(path: str, shown: str, limit: int = MAX_IGNORE_BYTES):
    """The bytes of `path` if it is a regular file of at most `limit` bytes; None if it does not
    exist. Opened with O_NOFOLLOW | O_NONBLOCK so that neither a symlink nor a FIFO is followed
    or waited on; the type is checked on the open descriptor (no race with a swap)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise BadIgnoreFile("%s is a symlink; it is read only as a regular file" % shown,
                                hint="replace it with a regular file (or remove it)") from None
        raise BadIgnoreFile("cannot read %s: %s" % (shown, exc.strerror)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) \
                else "a device or socket"
            raise BadIgnoreFile("%s is %s; it is read only as a regular file" % (shown, kind),
                                hint="replace it with a regular file (or remove it)")
        if info.st_size > limit:
            raise BadIgnoreFile("%s is larger than %d bytes" % (shown, limit))
        chunks, size = [], 0
        while size <= limit:
            block = os.read(fd, limit + 1 - size)
            if not block:
                break
            chunks.append(block)
            size += len(block)
        if size > limit:
            raise BadIgnoreFile("%s is larger than %d bytes" % (shown, limit))
        return b"".join(chunks)
    finally:
        os.close(fd)


def compile_patterns(data: bytes, shown: str):
    """A GitIgnoreSpec of `data`; a bad pattern is one error naming `shown` and its line."""
    import pathspec                  # ~20 ms: only for worktrees that have ignore patterns
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except Exception:                # pathspec raises several types for a bad pattern: find it
        pass
    for number, line in enumerate(lines, 1):
        try:
            pathspec.GitIgnoreSpec.from_lines([line])
        except Exception as exc:
            raise BadIgnoreFile("%s line %d: invalid pattern %s (%s)"
                                % (shown, number, display(repr(line)[:200]), type(exc).__name__)) from None
    raise BadIgnoreFile("%s: invalid patterns" % shown)


class SlicerIgnore:
    def __init__(self, root: str = None, data: bytes = None, shown: str = IGNORE_FILE):
        """The worktree's `.slicerignore` (or, with `data`, those contents)."""
        self.spec = None
        if data is None and root is not None:
            data = read_regular(os.path.join(root, IGNORE_FILE), shown)
        if data is not None:
            self.spec = compile_patterns(data, shown)

    def ignored(self, path: str) -> bool:
        """True if `path` (worktree-relative, '/'-separated) or any parent dir is ignored."""
        if self.spec is None:
            return False
        if self.spec.match_file(path):
            return True
        parts = path.rstrip("/").split("/")
        return any(self.spec.match_file("/".join(parts[:i]) + "/") for i in range(1, len(parts)))

    def keep(self, path: str) -> bool:
        return not self.ignored(path)


MAX_EXCLUDES_BYTES = 1 << 20


def host_excludes(worktree) -> list:
    """The patterns of the host's ignore sources beyond `.gitignore` files, lowest precedence
    first: core.excludesFile (default `$XDG_CONFIG_HOME/git/ignore`), then `info/exclude`. Push
    sends the patterns themselves (never a host path) and the VM keeps them as its
    `.git/info/exclude`, so git ignores there exactly what it ignores here."""
    configured = worktree.config_path("core.excludesFile")
    if not configured:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        configured = os.path.join(xdg, "git", "ignore")
    lines = []
    for path in (os.path.join(worktree.root, configured), worktree.git_path("info/exclude")):
        lines += _read_patterns(path)
    return lines


def host_attributes(worktree) -> list:
    """The lines of the host's `info/attributes` (the attributes no `.gitattributes` carries): the
    VM keeps them as its own, so git converts and compares files there as it does here."""
    return _read_patterns(worktree.git_path("info/attributes"))


def _read_patterns(path: str) -> list:
    """A pattern file's lines; nothing for a missing file or anything but a regular file (a FIFO
    or device is never read), at most MAX_EXCLUDES_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_EXCLUDES_BYTES)
    finally:
        os.close(fd)
    return [line for line in data.decode("utf-8", "surrogateescape").splitlines()
            if line.strip() and not line.startswith("#")]
