"""Finding the VM a command means, and opening a session with its agent."""

from __future__ import annotations

import os
import time

from . import report
from .config import Settings
from .errors import AgentFailed, SlicerError, UsageError, VMNotFound
from .links import Link, LinkStore, check_vm_name
from .providers import get_provider
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


def open_session(provider, vm) -> AgentSession:
    """One long-lived connection for the operation; a failed handshake becomes one line that
    says why (refused, no agent, wrong version, auth failed, timeout, no python3/git)."""
    started = time.monotonic()
    channel = provider.connect(vm)
    session = AgentSession(channel, vm.name)
    try:
        info = session.hello()
    except SlicerError as exc:
        diagnose = getattr(channel, "diagnose", None)
        reason = diagnose() if diagnose else None
        channel.close()
        if reason:
            raise AgentFailed("VM %s: %s" % (vm.name, reason), hint=exc.hint) from None
        raise
    done = getattr(channel, "handshake_done", None)
    if done:
        done()
    report.info("VM %s (%s, %s): agent %s, %s, python %s, answered in %.0f ms" % (
        vm.name, provider.name, vm.address or "-", info.get("version"), info.get("git"), info.get("python"),
        (time.monotonic() - started) * 1000))
    return session


def find_vm(provider, name: str):
    try:
        return provider.get(name)
    except VMNotFound:
        raise VMNotFound("VM %s does not exist (provider %s)" % (name, provider.name),
                         hint="see `git slicer vm list`, or push with --launch") from None


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
    return name, link, provider, find_vm(provider, name)
