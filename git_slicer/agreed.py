"""The agreed state of a link is what the VM confirmed, never what the host meant to send.

A push first records itself in the link as `pending` (a random id, the commit and branch it
sends), then sends. The agent journals and applies it, and keeps the id, HEAD, branch and overlay
of the last push it completed (agent/transaction.py). When the reply arrives, the VM's reported
state becomes the agreed one. When it never arrives (the host command, the agent or the VM was
killed), the next push, pull or status asks the VM about the pending id: if the VM completed
that push, its record becomes the agreed state; if not, nothing of it is in the VM (the agent
finishes or never starts an apply), and the agreed state stays as it was.
"""

from __future__ import annotations

import os

from .wire import overlay as overlay_mod


def pending_id(link):
    return link.pending.get("id") if isinstance(link.pending, dict) else None


def begin(store, link, commit: str, branch: str) -> str:
    """Record a push about to be sent (saved before the VM sees anything); return its id.
    A first push saves no link until it succeeds (a failed `push --launch` removes its VM)."""
    push_id = os.urandom(12).hex()
    link.pending = {"id": push_id, "commit": commit, "branch": branch}
    if link.agreed_commit:
        store.save(link)
    return push_id


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
