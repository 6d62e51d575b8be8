"""Status: how the host worktree and a linked VM each moved since the last agreed state."""

from __future__ import annotations

from .config import Settings
from .ignore import SlicerIgnore
from .scan import host_overlay
from .target import linked, open_session
from .wire import overlay as overlay_mod


def status(worktree, vm_name: str = None, settings: Settings = None) -> dict:
    settings = settings or Settings(worktree.root)
    name, link, provider, vm = linked(worktree, settings, vm_name)
    ignore = SlicerIgnore(worktree.root)
    head = worktree.rev("HEAD")
    ours = host_overlay(worktree, ignore)
    with open_session(provider, vm) as session:
        theirs = session.state(link.guest_path, base=link.agreed_commit)
    vm_view = overlay_mod.filtered(theirs["overlay"], ignore.keep)
    base = link.agreed_commit
    host = {"head": head, "branch": worktree.branch(),
            "ahead": worktree.count(["%s..%s" % (base, head)]) if head else 0,
            "behind": worktree.count(["%s..%s" % (head, base)]) if head else 0,
            "dirty": _paths(ours),
            "changed_since_sync": overlay_mod.changed_paths(link.agreed_overlay, ours) if head == base else _paths(ours)}
    guest = {"head": theirs.get("head"), "branch": theirs.get("branch"), "exists": theirs["exists"],
             "ahead": theirs.get("ahead"), "behind": theirs.get("behind"), "dirty": _paths(vm_view),
             "changed_since_sync": overlay_mod.changed_paths(link.agreed_overlay, vm_view)
             if theirs.get("head") == base else _paths(vm_view)}
    in_sync = head == theirs.get("head") and ours == vm_view
    return {"vm": name, "worktree": worktree.root, "branch": link.branch, "agreed_commit": base,
            "guest_path": link.guest_path, "host": host, "vm_side": guest, "in_sync": in_sync,
            "pushed_at": link.pushed_at, "pulled_at": link.pulled_at}


def _paths(overlay: dict) -> list:
    return sorted(set(overlay["index"]) | set(overlay["files"]))
