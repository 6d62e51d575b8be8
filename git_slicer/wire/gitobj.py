"""Git's object ids and tree-entry modes as both sides spell them (stdlib only: the agent ships
with this).

Modes are git's octal strings, as `git ls-tree`/`status --porcelain=v2` print them and as overlay
entries carry them; `mode_bits` gives the number a tree object stores (pygit2's `filemode`).
"""

from __future__ import annotations

MODE_FILE = "100644"
MODE_EXEC = "100755"
MODE_LINK = "120000"
MODE_GITLINK = "160000"         # a submodule's commit
MODE_TREE = "040000"
ENTRY_MODES = frozenset({MODE_FILE, MODE_EXEC, MODE_LINK, MODE_GITLINK})   # what an overlay entry may hold

OID_LENGTHS = (40, 64)          # SHA-1 and SHA-256, in lowercase hex
_HEX = frozenset("0123456789abcdef")


def mode_bits(mode: str) -> int:
    """The mode as a number (MODE_TREE -> 0o040000)."""
    return int(mode, 8)


def is_oid(value) -> bool:
    """Is `value` a full object id in git's own spelling (never abbreviated, never uppercase)?"""
    return isinstance(value, str) and len(value) in OID_LENGTHS and _HEX.issuperset(value)
