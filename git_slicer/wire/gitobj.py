"""Git's object ids and tree-entry modes as both sides spell them (stdlib only: the agent ships
with this).

Modes are git's octal strings, as `git ls-tree`/`status --porcelain=v2` print them and as overlay
entries carry them; `mode_bits` gives the number a tree object stores (pygit2's `filemode`). An
`Entry` is one [mode, oid] pair: an overlay's entry, a path in a tree, a file's bytes as found.
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


class Entry(list):
    """One entry, [mode, oid], read as `.mode` and `.oid`: an overlay's (wire/overlay.py), a
    path in a commit, a file as found. A list, so its JSON is the [mode, oid] it always was and
    it equals the list the other side decodes: "the VM's overlay equals the host's" stays one
    comparison."""

    __slots__ = ()

    def __init__(self, *value):
        """Entry(mode, oid), or Entry([mode, oid]) as copies make it (dataclasses.asdict)."""
        super().__init__(value[0] if len(value) == 1 else value)
        if len(self) != 2:
            raise ValueError("an entry is [mode, oid], not %r" % (list(self),))

    @property
    def mode(self) -> str:
        return self[0]

    @property
    def oid(self) -> str:
        return self[1]

    def __repr__(self) -> str:
        return "Entry(%r, %r)" % (self[0], self[1])

    @classmethod
    def of(cls, value):
        """An Entry from its decoded JSON form ([mode, oid]), None from None; ValueError for
        anything else (callers that take input from the other side check its shape first)."""
        if value is None or isinstance(value, Entry):
            return value
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError("not an entry [mode, oid]: %r" % (value,))
        return cls(value[0], value[1])


def entries_of(part: dict) -> dict:
    """{path: [mode, oid] or None} decoded from JSON, each entry an Entry (ValueError if one is not)."""
    return {path: Entry.of(value) for path, value in part.items()}
