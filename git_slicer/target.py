"""Finding the VM a command means, and opening a session with its agent."""

from __future__ import annotations

import os
import time

from . import report
from .config import Settings
from .errors import AgentFailed, SlicerError, StaleLink, UsageError, VMNotFound
from .links import Link, LinkStore, check_vm_name
from .providers import get_provider, new_vm_id
from .session import AgentSession


def provider_for(settings: Settings, vm: str = None, link: Link = None, override: str = None):
    """The provider that owns `vm`: --provider, the link's, slicer.<vm>.provider, then "address"
    for a VM registered only by slicer.<vm>.address, then slicer.provider."""
    name = override or (link.provider if link else None) or (settings.vm(vm, "provider") if vm else None)
    if not name and vm and settings.vm(vm, "address"):
        name = "address"
    return get_provider(name or settings.get("slicer.provider"), settings)


def linked_vm(store: LinkStore, vm: str = None) -> str:
    """The VM a command means when the user named none: the worktree's only link."""
    if vm:
        return check_vm_name(vm)
    links = store.all()
    if not links:
        raise UsageError("this worktree is not linked to a VM",
                         hint="name one (`git slicer push VM`) or start one with `git slicer push --launch`")
    if len(links) > 1:
        raise UsageError("this worktree is linked to several VMs (%s); name one"
                         % ", ".join(link.vm for link in links))
    return links[0].vm


def default_guest_path(settings: Settings, worktree, vm: str) -> str:
    configured = settings.vm(vm, "guestPath") or settings.get("slicer.guestPath")
    return configured or "~/" + worktree.name


def stale(name: str, why: str) -> StaleLink:
    return StaleLink("this worktree's link to VM %s is stale: %s; nothing was sent" % (name, why),
                     hint="`git slicer unlink %s` forgets it (work not pulled from the old VM is gone with "
                          "it), then `git slicer push %s` starts over" % (name, name))


def check_identity(vm, link_id: str) -> None:
    """The provider's record of `vm` must carry the id the link remembers (when both have one)."""
    if link_id and vm.id and vm.id != link_id:
        raise stale(vm.name, "the VM now called %s (%s) is not the one it was linked to" % (vm.name, vm.provider))


def open_session(provider, vm, link_id: str = "") -> AgentSession:
    """One long-lived connection for the operation; a failed handshake becomes one line that
    says why (refused, no agent, wrong version, auth failed, timeout, no python3/git).

    `link_id` is the VM id the caller's link remembers ("" for a new link): the record and the
    agent (which keeps the id in the VM) must both answer with it. `session.vm_id` is the id the
    VM confirmed, for the link to keep."""
    check_identity(vm, link_id)
    started = time.monotonic()
    channel = provider.connect(vm)
    session = AgentSession(channel, vm.name)
    # The VM may take an id it lacks only when the provider's record vouches for it, or when no
    # link expects one yet: a replaced VM must not adopt the old VM's identity.
    offer = vm.id or ("" if link_id else new_vm_id())
    try:
        info = session.hello(vm_id=offer)
    except SlicerError as exc:
        diagnose = getattr(channel, "diagnose", None)
        reason = diagnose() if diagnose else None
        channel.close()
        if reason:
            raise AgentFailed("VM %s: %s" % (vm.name, reason), hint=exc.hint) from None
        raise
    expected = link_id or vm.id
    answered = info.get("vm_id") if "vm_id" in info else expected     # an agent too old to keep ids
    if expected and answered != expected:
        session.close(polite=False)
        raise stale(vm.name, "the VM answering as %s is not the one it was linked to (it reports %s)"
                    % (vm.name, "no identity" if not answered else "another identity"))
    session.vm_id = answered if isinstance(answered, str) else ""
    done = getattr(channel, "handshake_done", None)
    if done:
        done()
    report.info("VM %s (%s, %s): agent %s, %s, python %s, answered in %.0f ms" % (
        vm.name, provider.name, vm.address or "-", info.get("version"), info.get("git"), info.get("python"),
        (time.monotonic() - started) * 1000))
    return session


def find_vm(provider, name: str, link: Link = None):
    """The VM called `name`; with the `link` that names it, also the VM that link means."""
    try:
        vm = provider.get(name)
    except VMNotFound:
        if link is not None and link.agreed_commit:
            raise stale(name, "VM %s no longer exists (provider %s)" % (name, provider.name)) from None
        raise VMNotFound("VM %s does not exist (provider %s)" % (name, provider.name),
                         hint="see `git slicer vm list`, or push with --launch") from None
    if link is not None:
        check_identity(vm, link.vm_id)
    return vm


def resolve_path_arg(path: str) -> str:
    """PATH arguments are relative to where the user typed them (`!` aliases set GIT_PREFIX)."""
    prefix = os.environ.get("GIT_PREFIX")
    if prefix and not os.path.isabs(path):
        return os.path.join(prefix, path)
    return path


def linked(worktree, settings: Settings, vm_name: str = None):
    """(name, link, provider, vm) for a VM this worktree has pushed to; a clear error otherwise."""
    store = LinkStore.of(worktree)
    name = linked_vm(store, vm_name)
    link = store.get(name)
    if link is None or not link.agreed_commit:
        raise UsageError("this worktree is not linked to VM %s" % name, hint="git slicer push %s" % name)
    provider = provider_for(settings, name, link)
    return name, link, provider, find_vm(provider, name, link)
