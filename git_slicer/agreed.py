"""The agreed state of a link is what the VM confirmed, never what the host meant to send.

A push first records itself in the link as `pending` (a random id, the commit and branch it
sends), then sends. The agent journals and applies it, and keeps the id, HEAD, branch and overlay
of the last push it completed (agent/transaction.py). When the reply arrives, the VM's reported
state becomes the agreed one. When it never arrives (the host command, the agent or the VM was
killed), the next push, pull or status asks the VM about the pending id: if the VM completed
that push, its record becomes the agreed state; if not, nothing of it is in the VM (the agent
finishes or never starts an apply), and the agreed state stays as it was.

A first push is recorded the same way: its link is saved, pending and with no agreed state yet,
before the VM sees anything, so a first push killed after the VM applied it is settled like any
other (never mistaken for a repository this worktree did not push).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .wire import overlay as overlay_mod


def pending_id(link):
    return link.pending.get("id") if isinstance(link.pending, dict) else None


def pushed(link) -> bool:
    """Whether a link has an agreed state, or a push that may have made one."""
    return link is not None and bool(link.agreed_commit or pending_id(link))


@dataclass
class Attempt:
    """How far one push got: its id once recorded in the link, and whether the VM may have it
    (the request and all its streams went out: from then on the agent may apply it)."""
    push_id: str = None
    delivered: bool = False


def begin(store, link, commit: str, branch: str, attempt: Attempt = None) -> str:
    """Record a push about to be sent (saved before the VM sees anything, a first push too);
    return its id."""
    push_id = os.urandom(12).hex()
    link.pending = {"id": push_id, "commit": commit, "branch": branch}
    store.save(link)
    if attempt is not None:
        attempt.push_id = push_id
    return push_id


def abandon(store, link, attempt: Attempt, created: bool) -> None:
    """A push failed before the VM could have it: forget it, and the link too if this push
    `created` it (nothing of the push is in the VM). A push the VM may have stays pending."""
    if attempt.push_id is None or attempt.delivered or pending_id(link) != attempt.push_id:
        return
    link.pending = None
    if created:
        store.remove(link.vm)
    else:
        store.save(link)


def confirm(link, vm_state: dict, keep) -> None:
    """The VM reported its state after applying a push: that is the agreed state now."""
    link.agreed_commit = vm_state.get("head") or link.agreed_commit
    link.agreed_overlay = overlay_mod.filtered(vm_state["overlay"], keep)
    link.pending = None


def settle(store, link, vm_state: dict, keep) -> bool:
    """Resolve a push this link lost track of, from the VM's answer to state(applied=id);
    save the link when `store` is given. True if the link changed."""
    push_id = pending_id(link)
    if push_id is None:
        return False
    record = vm_state.get("applied")
    if isinstance(record, dict) and record.get("id") == push_id:
        confirm(link, record, keep)
    else:
        link.pending = None
    if store is not None:
        store.save(link)
    return True


def measured_from(link, vm_tip: str, head: str, is_ancestor, changed_paths):
    """(base commit, base overlay, linked, forward): the state the VM's work is measured from;
    the VM's state on the linked branch when its worktree is not read (it is on another branch,
    or pull --no-files); whether the VM tip descends from the agreed commit.

    The agreed state, with what the VM committed since taking over its overlay's entries for
    those paths. When the host already has those commits (`head` descends from the VM tip:
    merged or fast-forwarded by hand), the VM tip is the base: what they changed is the host's
    now. A VM tip that does not descend from the agreed commit (the VM went back, or elsewhere)
    is measured from the agreed state. `is_ancestor(a, b)`: a is b or an ancestor of it;
    `changed_paths(a, b)`: the paths two commits' trees differ in."""
    commit, overlay = link.agreed_commit, link.agreed_overlay
    forward = vm_tip == commit or is_ancestor(commit, vm_tip)
    if vm_tip == commit or not forward:
        return commit, overlay, overlay, forward
    committed = set(changed_paths(commit, vm_tip))
    after = {part: {p: e for p, e in entries.items() if p not in committed} for part, entries in overlay.items()}
    if is_ancestor(vm_tip, head):
        return vm_tip, after, after, forward
    return commit, overlay, after, forward
