"""Which VM a command means: one answer (`resolve`) for every command.

A command names a VM (or means the worktree's only link), may override its provider, and works
on the VM's copy of the repository at a guest path. `resolve` answers all four: the VM's name,
the worktree's link to it (if any), the provider that owns it (--provider, the link's,
slicer.<vm>.provider, "address" for a VM known only by slicer.<vm>.address, slicer.provider),
the VM itself (checked against the id the link remembers: a link whose VM has another id is
stale), and the guest path (an explicit one, the link's, or the configured default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .agreed import pushed
from .config import Settings, check_guest_path
from .egress.vms import launch as launch_with_allowlist
from .errors import UsageError, VMNotFound
from .links import Link, LinkStore, check_vm_name, not_linked
from .providers import VM
from .providers.registry import get_provider
from .session import AgentSession, check_identity, open_session, stale


@dataclass
class Target:
    name: str
    link: Link            # None when the worktree has no link to this VM (or there is no worktree)
    provider: object      # a providers.Provider
    vm: VM                # None when resolved with find=False
    guest_path: str
    settings: Settings

    def find(self) -> VM:
        """The VM itself (looked up once, on first use), checked against the link's VM id."""
        if self.vm is None:
            self.vm = find_vm(self.provider, self.name, self.link)
        return self.vm

    def session(self, deadline: int = None) -> AgentSession:
        """A session with the VM's agent, every limit applied, the VM's identity checked against
        the link's."""
        return open_session(self.provider, self.find(), self.settings,
                            self.link.vm_id if self.link else None, deadline)

    def check_reached(self) -> None:
        """exec and shell reach the VM without its agent. The provider's record was checked
        (find); a VM it keeps no id for (one reached by address) is asked, as push asks it,
        whether it is the VM the link means (it takes no id here: only a push records one)."""
        vm = self.find()
        if self.link is not None and not vm.id:
            with open_session(self.provider, vm, self.settings, self.link.vm_id, adopt=False):
                pass

    def exec_dir(self, cwd: str = "") -> str:
        """Where `exec`/`shell` run: the linked repository (when its path is known absolutely),
        or `cwd` inside it."""
        base = self.link.guest_path if self.link and self.link.guest_path.startswith("/") else ""
        return os.path.join(base, cwd) if cwd and base else (cwd or base)


def resolve(settings: Settings, vm_name: str = None, *, worktree=None, provider: str = None,
            require_link: bool = False, guest_path: str = None, find: bool = True) -> Target:
    """The VM a command means. `vm_name` may be None when `worktree` has exactly one link.
    `require_link`: the worktree must have pushed to the VM (a first push still in doubt
    counts). `find`: look the VM up now (an unknown VM is an error here)."""
    name = vm_named(worktree, vm_name)
    link = LinkStore.of(worktree).get(name) if worktree is not None else None
    if require_link and not pushed(link):
        raise not_linked(worktree, name)
    owner = provider_for(settings, name, link, provider)
    path = guest_path or (link.guest_path if link else None) or \
        (default_guest_path(settings, worktree, name) if worktree is not None else "")
    return Target(name=name, link=link, provider=owner, vm=find_vm(owner, name, link) if find else None,
                  guest_path=path, settings=settings)


def vm_named(worktree, vm_name: str = None) -> str:
    """The VM a command means by name: the one given (checked), else the worktree's only link."""
    if vm_name:
        return check_vm_name(vm_name)
    if worktree is None:
        raise UsageError("name a VM")
    links = LinkStore.of(worktree).all()
    if not links:
        raise UsageError("this worktree is not linked to a VM",
                         hint="name one (`git slicer push VM`) or start one with `git slicer push --launch`")
    if len(links) > 1:
        raise UsageError("this worktree is linked to several VMs (%s); name one"
                         % ", ".join(link.vm for link in links),
                         hint="give its name after the command (`git slicer COMMAND VM`); a push can also go "
                              "to every one of them with `git slicer push --all`")
    return links[0].vm


def provider_for(settings: Settings, vm: str = None, link: Link = None, override: str = None):
    """The provider that owns `vm`: --provider, the link's, slicer.<vm>.provider, then "address"
    for a VM registered only by slicer.<vm>.address, then slicer.provider."""
    name = override or (link.provider if link else None) or (settings.vm(vm, "provider") if vm else None)
    if not name and vm and settings.vm(vm, "address"):
        name = "address"
    return get_provider(name or settings.get("slicer.provider"), settings)


def launch_vm(provider, name: str = None, tags=None, hostgroup: str = None, allow=(), avoid=()):
    """Launch through `provider`; --hostgroup only means something to Slicer, --allow (an egress
    allowlist) to providers that enforce one."""
    options = {"avoid": avoid}
    if hostgroup:
        if provider.name != "slicer":
            raise UsageError("--hostgroup is a Slicer option; provider %s has no host groups" % provider.name)
        options["hostgroup"] = hostgroup
    return launch_with_allowlist(provider, name, tags=tags, allow=allow, **options)


def default_guest_path(settings: Settings, worktree, vm: str) -> str:
    if settings.vm(vm, "guestPath"):
        return check_guest_path(settings.vm(vm, "guestPath"), "slicer.%s.guestPath" % vm)
    if settings.get("slicer.guestPath"):
        return check_guest_path(settings.get("slicer.guestPath"))
    return "~/" + worktree.name


def find_vm(provider, name: str, link: Link = None) -> VM:
    """The VM called `name`; with the `link` that names it, also the VM that link means."""
    try:
        vm = provider.get(name)
    except VMNotFound:
        if link is not None and link.agreed_commit:
            raise stale(name, "VM %s no longer exists (provider %s)" % (name, provider.name), gone=True) from None
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
