"""Finding the VM a command means, and opening a session with its agent."""

from __future__ import annotations

import os

from .config import Settings
from .errors import SlicerError, UsageError, VMNotFound
from .links import Link, LinkStore, check_vm_name
from .providers import get_provider
from .session import AgentSession


def provider_for(settings: Settings, vm: str = None, link: Link = None, override: str = None):
    name = override or (link.provider if link else None) or (settings.vm(vm, "provider") if vm else None) \
        or settings.get("slicer.provider")
    return get_provider(name, settings)


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
    session = AgentSession(provider.connect(vm), vm.name)
    try:
        session.hello()
    except SlicerError:
        session.channel.close()
        raise
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
