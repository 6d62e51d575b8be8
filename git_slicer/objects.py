"""Reading git objects through one long-lived `git cat-file --batch` process.

pygit2 (libgit2) cannot open SHA-256 repositories; git can. One process serves every read of
an operation, so a pull still starts no process per file or per tree.
"""

from __future__ import annotations

import subprocess

from .errors import SlicerError, UnsafeInput
from .wire.gitobj import MODE_TREE, Entry, mode_bits

_TREE = mode_bits(MODE_TREE)


class ObjectReader:
    def __init__(self, worktree, env: dict = None):
        self.worktree = worktree
        self.env = {**worktree.env, **(env or {})}
        self._proc = None

    def read(self, oid: str):
        """(type, bytes) of an object ("blob", "tree", "commit", "tag"), or None if it is missing."""
        if self._proc is None:
            self._proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=self.worktree.root, env=self.env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
        try:
            self._proc.stdin.write(oid.encode("ascii") + b"\n")
            self._proc.stdin.flush()
            header = self._proc.stdout.readline().split()
            if len(header) == 2 and header[1] == b"missing":
                return None
            if len(header) != 3:
                raise SlicerError("git cat-file: unexpected answer for %s" % oid[:12])
            size = int(header[2])
            data = self._proc.stdout.read(size + 1)[:size]
        except (OSError, ValueError, UnicodeEncodeError):
            raise SlicerError("git cat-file failed reading %s" % oid[:12]) from None
        if len(data) != size:
            raise SlicerError("git cat-file: short read of %s" % oid[:12])
        return header[1].decode("ascii"), data

    def __contains__(self, oid: str) -> bool:
        return self.read(oid) is not None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc.wait()
            self._proc = None

    def __del__(self):              # a reader nobody closed (status) ends with it
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TreeReader(ObjectReader):
    """Entries of paths in commits, each tree read and parsed once."""

    def __init__(self, worktree, env: dict = None):
        super().__init__(worktree, env)
        self._trees = {}
        self._oid_len = 32 if worktree.algo == "sha256" else 20

    def _tree(self, oid: str, strict: bool = False) -> dict:
        """{name: (mode, oid)} of a tree, or of a commit's tree ({} if there is none; with
        `strict`, an error)."""
        if oid not in self._trees:
            found = self.read(oid)
            if found is not None and found[0] == "commit":
                found = self.read(found[1].split(b"\n", 1)[0][5:].decode())
            if found is None or found[0] != "tree":
                if strict:
                    raise SlicerError("cannot read the tree of %s" % oid[:12])
                return {}
            self._trees[oid] = {name: (mode, child) for mode, name, child in parse_tree(found[1], self._oid_len)}
        return self._trees[oid]

    def changed_paths(self, a: str, b: str) -> list:
        """The paths of files, symlinks and gitlinks that differ between commits (or trees) `a`
        and `b`: what `git diff-tree -r --no-renames --name-only a b` lists, read through this
        process (only the subtrees that differ are read)."""
        out = []
        self._diff(a, b, "", out)
        return out

    def _diff(self, a, b, prefix: str, out: list) -> None:
        ta = self._tree(a, strict=True) if a else {}
        tb = self._tree(b, strict=True) if b else {}
        for name in sorted(set(ta) | set(tb)):
            ea, eb = ta.get(name), tb.get(name)
            if ea == eb:
                continue
            a_tree = ea is not None and ea[0] == _TREE
            b_tree = eb is not None and eb[0] == _TREE
            if a_tree or b_tree:
                self._diff(ea[1] if a_tree else None, eb[1] if b_tree else None, prefix + name + "/", out)
            if (ea is not None and not a_tree) or (eb is not None and not b_tree):
                out.append(prefix + name)

    def entry(self, commit: str, path: str):
        """The Entry (mode, oid) of the file, symlink or gitlink at `path` in `commit`; None if there is none."""
        item, tree = None, commit
        for part in path.split("/"):
            item = self._tree(tree).get(part) if tree else None
            if item is None:
                return None
            tree = item[1] if item[0] == _TREE else None
        return None if item[0] == _TREE else Entry("%06o" % item[0], item[1])


def parse_tree(data: bytes, oid_len: int = 20):
    """Yield (mode, name, hex oid) from a raw tree object."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        nul = data.find(b"\0", space)
        if space < 0 or nul < 0 or nul + 1 + oid_len > len(data):
            raise UnsafeInput("malformed tree object from the VM")
        try:
            mode = int(data[pos:space], 8)
        except ValueError:
            raise UnsafeInput("malformed tree entry mode from the VM") from None
        name = data[space + 1:nul].decode("utf-8", "surrogateescape")
        oid = data[nul + 1:nul + 1 + oid_len].hex()
        if "/" in name or not name:
            raise UnsafeInput("tree entry from the VM has an empty name or contains '/'")
        yield mode, name, oid
        pos = nul + 1 + oid_len
