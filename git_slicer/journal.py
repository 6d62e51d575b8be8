"""Crash recovery for everything a host operation writes into the worktree: files, a branch ref
and index entries, all or nothing.

An operation that writes (today: pull) opens a `Journal`, says in a `HostWrite` which ref it
moves and which index entries it replaces, and hands the journal to `SafeWriter.apply`, which
records its file plan through `Journal.record` before anything visible happens. `finish()` ends
the operation; `roll_back()` undoes it after a failure. A process killed part-way leaves the
journal behind, and the next push or pull calls `recover_interrupted` before anything else.

The record, `<git-path slicer>/pull-journal.json`, is JSON written atomically:

    root       the worktree it belongs to
    algo       the object format ("sha1" or "sha256"), for hashing files during a rollback
    committed  false until every write succeeded; then only leftovers are cleaned up
    extra      the HostWrite: {"ref", "old", "new"} (the branch moved old -> new; "" = none),
               "index" ({path: [mode, oid] or null}: the entries to put back) and
               "skip" (paths whose skip-worktree bit the index entries keep)
    entries    SafeWriter's file plan, one per path: "path", "tmp" (staged name), "backup"
               (the old file's name), "new" ([mode, oid] written, or null), "stage" (where it was
               staged when its parent was a file being replaced), "dir" (it replaced a
               directory), "mkdirs" (directories made for it), "moved" (renamed into place)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field

from . import report
from .quarantine import remove_stale
from .repo import run_git
from .safewrite import SafeWriter
from .wire.files import write_atomic
from .wire.gitobj import Entry, entries_of

STAGING_PREFIX = "slicer-pull-"       # <git-dir>/slicer-pull-<pid>-*: contents staged by a pull


@dataclass
class HostWrite:
    """What an operation changes besides files: a branch (compare-and-swap old -> new) and
    index entries (`index` holds the entries to restore on rollback)."""
    ref: str = ""
    old: str = ""
    new: str = ""
    index: dict = field(default_factory=dict)
    skip: list = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> "HostWrite":
        return cls(ref=data.get("ref", ""), old=data.get("old", ""), new=data.get("new", ""),
                   index=entries_of(data.get("index") or {}), skip=list(data.get("skip") or ()))


def journal_path(worktree) -> str:
    return os.path.join(worktree.git_path("slicer"), "pull-journal.json")


class Journal:
    """The journal of one writing operation in `worktree`."""

    def __init__(self, worktree, host: HostWrite):
        self.worktree = worktree
        self.path = journal_path(worktree)
        self.host = host
        self.entries = []

    def record(self, entries: list) -> None:
        """Save the file plan (SafeWriter calls this before each step that needs undoing)."""
        self.entries = entries
        self._save(committed=False)

    def discard(self) -> None:
        """SafeWriter undid its own work: nothing to recover."""
        _remove(self.path)

    def _save(self, committed: bool) -> None:
        write_atomic(self.path, json.dumps({"root": self.worktree.root, "algo": self.worktree.algo,
                                            "committed": committed, "extra": asdict(self.host),
                                            "entries": self.entries}).encode())

    def finish(self) -> None:
        """Everything was written: mark the journal committed, drop backups, remove it."""
        if not os.path.exists(self.path):
            return
        self._save(committed=True)
        SafeWriter(self.worktree.root, self.worktree.algo).cleanup(self.entries)
        _remove(self.path)

    def roll_back(self, ref_moved: bool) -> None:
        """Undo a failed operation in this process: files from the journal, then the ref."""
        data = read(self.path)
        if data is not None:
            SafeWriter(self.worktree.root, self.worktree.algo).rollback(data["entries"])
            _remove(self.path)
        if ref_moved:
            self.worktree.git(["update-ref", "-m", "slicer pull: roll back", self.host.ref, self.host.old,
                               self.host.new], check=False)


def read(path: str):
    """A journal record (see the module docstring), or None when there is none; its entries are Entries."""
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    for entry in data.get("entries") or ():
        entry["new"] = Entry.of(entry.get("new"))
    return data


def recover_interrupted(worktree) -> None:
    """Roll back an operation that was killed while writing, and drop the staging and
    quarantine directories of killed processes. Every push and pull calls this first."""
    remove_stale(worktree.git_dir, STAGING_PREFIX)
    remove_stale(os.path.join(worktree.common_dir, "objects"), "incoming-slicer-")
    path = journal_path(worktree)
    data = read(path)
    if data is None:
        return
    writer = SafeWriter(worktree.root, data.get("algo", worktree.algo))
    if data.get("committed"):
        writer.cleanup(data["entries"])
    else:
        writer.rollback(data["entries"])
        host = HostWrite.from_json(data.get("extra", {}))
        if host.new and host.old and host.new != host.old:
            worktree.git(["update-ref", "-m", "slicer: roll back an interrupted pull", host.ref,
                          host.old, host.new], check=False)
        if host.index:
            set_index(worktree, host.index, host.old or "0" * 40, host.skip)
        report.warn("rolled back an interrupted pull; the worktree is as it was before it")
    os.unlink(path)


def set_index(worktree, entries: dict, some_oid: str, skip_worktree=()) -> None:
    """Set index entries ({path: [mode, oid] or None}); `skip_worktree` paths (outside the sparse
    cone) keep their skip-worktree bit, which a replaced entry would lose."""
    zero = "0" * len(some_oid)
    lines = b"".join(os.fsencode("%s %s\t%s" % ((e.mode, e.oid, p) if e else ("0", zero, p))) + b"\0"
                     for p, e in sorted(entries.items()))
    # Writing the index re-checks "racily clean" entries by reading the files through the clean
    # filters that .gitattributes (maybe the VM's) names: point git at an empty worktree instead,
    # so no driver runs; such entries are only marked for a refresh.
    with tempfile.TemporaryDirectory(prefix="slicer-empty-") as empty:
        run_git(["update-index", "-z", "--index-info"], cwd=empty, input=lines,
                env={**worktree.env, "GIT_WORK_TREE": empty})
        if skip_worktree:
            run_git(["update-index", "-z", "--skip-worktree", "--stdin"], cwd=empty, check=False,
                    input=b"".join(os.fsencode(p) + b"\0" for p in skip_worktree),
                    env={**worktree.env, "GIT_WORK_TREE": empty})


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
