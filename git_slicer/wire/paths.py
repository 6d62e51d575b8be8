"""Validation of repository-relative paths that cross the wire.

Stdlib only (imported by the guest agent). A path is a '/'-separated string relative to the
worktree root, as git prints it. Anything else is refused, never "normalised".

Git can track any name without NUL or '/' in its components: tabs, newlines, escapes, bytes
that are not UTF-8 (carried as surrogate escapes, `os.fsdecode`). Names with control characters
travel from the host to the VM; from the VM they are accepted only where the host already has
that very path (`control_ok`): a VM cannot bring new such names home. They are escaped
(`display`) wherever they are printed.
"""

from __future__ import annotations

import re
import unicodedata

MAX_PATH_BYTES = 4096
MAX_DEPTH = 64

# Characters HFS+ and NTFS ignore when comparing names; git refuses ".g\u200cit" on those
# systems but not on Linux, so we refuse it everywhere.
_IGNORABLE = re.compile("[\u200b-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUL = re.compile(r"\x00")


class UnsafePath(ValueError):
    pass


def is_dotgit(component: str) -> bool:
    """True for every spelling of `.git` that some filesystem treats as `.git`."""
    name = _IGNORABLE.sub("", component).lower().rstrip(". ")
    return name in (".git", "git~1")


def display(path: str) -> str:
    """A path safe to print: control and other non-printable characters escaped."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else
                   ("\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c)) for c in path)


def has_control(path: str) -> bool:
    return bool(_CONTROL.search(path))


def check_relpath(path: str, *, max_bytes: int = MAX_PATH_BYTES, max_depth: int = MAX_DEPTH,
                  control_ok=False) -> str:
    """Return `path` if it is a safe worktree-relative path, else raise UnsafePath.

    `control_ok`: True, or a container of the paths that may hold control characters (other
    than NUL, never allowed)."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty path")
    shown = display(path)
    if _NUL.search(path) or (_CONTROL.search(path) and not (control_ok is True or (control_ok and path in control_ok))):
        raise UnsafePath("path with control characters: %s" % shown)
    if len(path.encode("utf-8", "surrogateescape")) > max_bytes:
        raise UnsafePath("path longer than %d bytes: %s..." % (max_bytes, shown[:80]))
    if path.startswith("/"):
        raise UnsafePath("absolute path: %s" % shown)
    parts = path.split("/")
    if len(parts) > max_depth:
        raise UnsafePath("path deeper than %d levels: %s" % (max_depth, shown[:80]))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath("path with an empty, '.' or '..' component: %s" % shown)
        if is_dotgit(part):
            raise UnsafePath("path inside a .git directory: %s" % shown)
    return path


def collision_key(path: str) -> str:
    """Key under which two names collide on case-insensitive or normalising filesystems."""
    return unicodedata.normalize("NFC", _IGNORABLE.sub("", path)).casefold()
