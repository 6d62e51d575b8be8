"""Status: how the host worktree and a linked VM each moved since the last agreed state.

Each side's changes are measured path by path against the agreed state (commit + overlay), the
same three-state view pull takes: a file the host pushed and the VM left alone is nobody's
change, whichever side committed since.
"""

from __future__ import annotations

from .agreed import pending_id, settle
from .config import Settings
from .ignore import SlicerIgnore
from .objects import TreeReader
from .quarantine import check_state
from .scan import KnownPaths, host_overlay
from .target import linked, open_session
from .wire import overlay as overlay_mod


def status(worktree, vm_name: str = None, settings: Settings = None) -> dict:
    settings = settings or Settings(worktree.root)
    name, link, provider, vm = linked(worktree, settings, vm_name)
    ignore = SlicerIgnore(worktree.root)
    head = worktree.rev("HEAD")
    ours = host_overlay(worktree, ignore)
    with open_session(provider, vm, link.vm_id) as session:
        theirs = check_state(session.state(link.guest_path, base=link.agreed_commit,
                                           applied=pending_id(link)),
                             control_ok=KnownPaths(worktree, link.agreed_overlay))
    settle(None, link, theirs, ignore.keep)     # an interrupted push the VM completed (not saved here)
    vm_view = overlay_mod.filtered(theirs["overlay"], ignore.keep)
    base = link.agreed_commit
    agreed = _Side(worktree, base, link.agreed_overlay, {})
    host_commits = overlay_mod.tree_changes(worktree.git, base, head) if head else {}
    host = {"head": head, "branch": worktree.branch(),
            "ahead": worktree.count(["%s..%s" % (base, head)]) if head else 0,
            "behind": worktree.count(["%s..%s" % (head, base)]) if head else 0,
            "dirty": _paths(ours),
            "changed_since_sync": agreed.changed(_Side(worktree, base, ours, host_commits), ignore.keep)}
    vm_head = theirs.get("head")
    if vm_head == base:
        vm_changed = agreed.changed(_Side(worktree, base, vm_view, {}), ignore.keep)
    elif "since_base" in theirs:
        vm_changed = agreed.changed(_Side(worktree, base, vm_view, theirs["since_base"]), ignore.keep)
    else:               # the VM does not know the agreed commit: every dirty path is in question
        vm_changed = _paths(vm_view)
    guest = {"head": vm_head, "branch": theirs.get("branch"), "exists": theirs["exists"],
             "ahead": theirs.get("ahead"), "behind": theirs.get("behind"), "dirty": _paths(vm_view),
             "changed_since_sync": vm_changed}
    in_sync = head == vm_head and ours == vm_view
    return {"vm": name, "worktree": worktree.root, "branch": link.branch, "agreed_commit": base,
            "guest_path": link.guest_path, "host": host, "vm_side": guest, "in_sync": in_sync,
            "pushed_at": link.pushed_at, "pulled_at": link.pulled_at}


class _Side:
    """One side's state as the agreed commit, the changes its commits made since, and its overlay."""

    def __init__(self, worktree, base: str, overlay: dict, commits: dict):
        self.wt, self.base, self.overlay, self.commits = worktree, base, overlay, commits
        self._tree = None

    def _committed(self, path: str):
        if path in self.commits:
            return self.commits[path]
        if self._tree is None:
            self._tree = TreeReader(self.wt) if self.base else False     # git, not pygit2: SHA-256 too
        return self._tree.entry(self.base, path) if self._tree else None

    def entries(self, path: str):
        index = self.overlay["index"][path] if path in self.overlay["index"] else self._committed(path)
        return index, self.overlay["files"][path] if path in self.overlay["files"] else index

    def changed(self, other: "_Side", keep) -> list:
        paths = set(other.commits) | set(self.overlay["index"]) | set(self.overlay["files"]) \
            | set(other.overlay["index"]) | set(other.overlay["files"])
        return sorted(p for p in paths if keep(p) and self.entries(p) != other.entries(p))


def _paths(overlay: dict) -> list:
    return sorted(set(overlay["index"]) | set(overlay["files"]))
