"""Status: how the host worktree and a linked VM each moved since the last agreed state.

Each side's changes are measured path by path against the agreed state (commit + overlay), the
same three-state view pull takes: a file the host pushed and the VM left alone is nobody's
change, whichever side committed since.
"""

from __future__ import annotations

import subprocess

from . import locks
from .agreed import pending_id, settle
from .config import Settings
from .errors import NotLinked
from .ignore import SlicerIgnore
from .links import LinkStore, not_linked
from .objects import TreeReader
from .scan import InBackground, KnownPaths, host_overlay
from .target import resolve
from .wire import overlay as overlay_mod


def status(worktree, vm_name: str = None, settings: Settings = None, fresh: bool = False) -> dict:
    """Where the worktree and the VM stand. `fresh`: the VM scans in full, not from a warm
    agent's memory (before anything that cannot be undone, such as removing the VM)."""
    settings = settings or Settings(worktree.root)
    target = resolve(settings, vm_name, worktree=worktree, require_link=True)
    if pending_id(target.link) is None:
        return _status(worktree, target, None, fresh)
    # A push the link lost track of (killed before its reply). Settled and saved as push and pull
    # settle it: under the link's lock, so the VM's answer is final (no push of that id can
    # still be on its way). With the lock taken by a running push or pull, only this report
    # settles it. Status writes nothing but the link (never the worktree, index or refs).
    with locks.attempt(worktree, target.name) as held:
        store = None
        if held:
            store = LinkStore.of(worktree)
            target.link = store.get(target.name)     # as saved now: a push may just have finished
            if target.link is None:
                raise not_linked(worktree, target.name)
        return _status(worktree, target, store, fresh)


def _status(worktree, target, store, fresh: bool) -> dict:
    name, link = target.name, target.link
    ignore = SlicerIgnore(worktree.root)
    where = {}          # HEAD and its branch, from the scan's own `git status`
    asked = link.agreed_commit
    with InBackground(host_overlay, worktree, ignore, False, where) as scanning:
        with target.session() as session:
            theirs = session.state(link.guest_path, base=asked, applied=pending_id(link),
                                   known=KnownPaths(worktree, link.agreed_overlay), fresh=fresh)
        ours = scanning.result()
    settle(store, link, theirs, ignore.keep)     # an interrupted push the VM completed
    if link.agreed_commit != asked:              # the VM measured itself against the old base
        for key in ("ahead", "behind", "since_base"):
            theirs.pop(key, None)
    if not link.agreed_commit:
        raise NotLinked("VM %s has no state agreed with this worktree yet: its first push did not complete"
                        % name, hint="git slicer push %s" % name)
    head = where.get("head")
    ahead, behind = _ahead_behind(worktree, base=link.agreed_commit, head=head)
    vm_view = overlay_mod.filtered(theirs["overlay"], ignore.keep) if theirs["exists"] else overlay_mod.empty()
    base = link.agreed_commit
    agreed = _Side(worktree, base, link.agreed_overlay, {})
    host_commits = overlay_mod.tree_changes(worktree.git, base, head) if head else {}
    host_side = _Side(worktree, base, ours, host_commits)
    host_changed = agreed.changed(host_side, ignore.keep)
    host = {"head": head, "branch": where.get("branch"), "ahead": ahead, "behind": behind,
            "dirty": _paths(ours), "changed_since_sync": host_changed,
            "content_as_synced": agreed.same_content(host_side, host_changed)}
    vm_head = theirs.get("head")
    vm_side = None
    if vm_head == base:
        vm_side = _Side(worktree, base, vm_view, {})
    elif "since_base" in theirs:
        vm_side = _Side(worktree, base, vm_view, theirs["since_base"])
    if vm_side is not None:
        vm_changed = agreed.changed(vm_side, ignore.keep)
        vm_same = agreed.same_content(vm_side, vm_changed)
    else:               # the VM does not know the agreed commit: every dirty path is in question
        vm_changed, vm_same = _paths(vm_view), []
    guest = {"head": vm_head, "branch": theirs.get("branch"), "exists": theirs["exists"],
             "ahead": theirs.get("ahead"), "behind": theirs.get("behind"), "dirty": _paths(vm_view),
             "changed_since_sync": vm_changed, "content_as_synced": vm_same,
             "unpulled_branches": _unpulled_branches(worktree, theirs.get("branches") or {}, link.branch),
             "stash": bool(theirs.get("stash")),    # `git stash` in the VM: work no pull brings home
             # the VM's changes an interrupted push's recovery kept in refs (agent/kept.py): no pull brings them
             "kept": [{"ref": k["ref"], "paths": k["paths"]} for k in theirs.get("kept") or ()]}
    in_sync = head == vm_head and ours == vm_view
    return {"vm": name, "worktree": worktree.root, "branch": link.branch, "agreed_commit": base,
            "guest_path": link.guest_path, "host": host, "vm_side": guest, "in_sync": in_sync,
            "pushed_at": link.pushed_at, "pulled_at": link.pulled_at}


def _unpulled_branches(worktree, branches: dict, linked: str) -> list:
    """The VM's other branches with commits no host ref reaches (a pull imports them under
    refs/slicer/VM/): work that status counts nowhere else. (Objects `log` or `diff` fetched
    without a ref do not count: nothing keeps them.)"""
    unpulled = []
    for name, oid in sorted(branches.items()):
        if name == linked:
            continue
        proc = subprocess.run(["git", "rev-list", "--max-count=1", oid, "--not", "--all"], cwd=worktree.root,
                              env=worktree.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if proc.returncode != 0 or proc.stdout.strip():      # unknown here, or beyond every ref
            unpulled.append(name)
    return unpulled


def _ahead_behind(worktree, base: str, head: str):
    """(commits on head not in base, commits in base not on head): one rev-list, none when equal."""
    if not head or head == base:
        return 0, 0
    out = worktree.git(["rev-list", "--left-right", "--count", "%s...%s" % (head, base)], check=False).split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else (0, 0)


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

    def same_content(self, other: "_Side", paths) -> list:
        """Those of `paths` whose file is as here, where only what is staged or committed moved
        (the other side committed the file as it was): a pull writes no bytes for them."""
        return [p for p in paths if self.entries(p)[1] == other.entries(p)[1]]


def _paths(overlay: dict) -> list:
    return sorted(set(overlay["index"]) | set(overlay["files"]))
