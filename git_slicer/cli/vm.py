import click

from .common import emit, hostgroup_option, json_option, parse_tags, tag_option


def _core():
    """The core pieces the VM commands use, imported on use: `git slicer` start-up stays small."""
    from ..config import Settings
    from ..target import find_vm, provider_for, resolve
    return Settings, find_vm, provider_for, resolve


@click.group("vm", context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Launch, list and remove VMs."""


@command.command("launch")
@click.argument("name", required=False)
@click.option("--provider", help="Provider (default: slicer.provider).")
@click.option("--allow", "allow", multiple=True, metavar="HOST[:PORT]",
              help="A host the VM may reach through its egress proxy (repeatable; default: no network).")
@tag_option
@hostgroup_option
@json_option
def launch(name, provider, allow, tags, hostgroup, as_json):
    """Start a new VM (named NAME, or vm-N)."""
    from ..target import launch_vm
    Settings, _, provider_for, _ = _core()
    vm = launch_vm(provider_for(Settings(), override=provider), name, parse_tags(tags), hostgroup, allow=allow)
    emit(as_json, vm.as_json(), "launched VM %s (%s)" % (vm.name, vm.provider))


@command.command("list")
@click.option("--provider", help="Provider (default: slicer.provider).")
@json_option
def list_(provider, as_json):
    """List VMs."""
    Settings, _, provider_for, _ = _core()
    vms = provider_for(Settings(), override=provider).list()
    lines = [("%-20s %-8s %-8s %s %s" % (v.name, v.provider, v.state, v.created_at,
                                          v.details.get("accel", "").upper())).rstrip() for v in vms]
    emit(as_json, [v.as_json() for v in vms], "\n".join(lines) if lines else "no VMs")


@command.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--provider", help="Provider (default: slicer.provider).")
@click.option("-f", "--force", is_flag=True,
              help="Remove even if a link to the VM has unpulled work or its state cannot be read.")
@json_option
def rm(names, provider, force, as_json):
    """Stop and delete VMs and their disks, and retire the links to them. Refuses while any
    link to a VM (in any worktree of this repository or the one that launched it) has work
    that was not pulled, or when that cannot be checked, unless --force."""
    from .. import vmremove
    Settings, find_vm, _, _ = _core()
    settings = Settings()
    here = _here()
    plan = []
    for name in dict.fromkeys(names):   # each once; every VM checked before any is removed
        owner = _owner(settings, name, provider)
        vm = find_vm(owner, name)
        links = vmremove.links_to(vm, [here] if here else [])
        records = vmremove.kept(vm)
        if not force:
            vmremove.check_removable(vm, links, records)
        plan.append((owner, vm, links, records))
    removed, retired = [], []
    for owner, vm, links, records in plan:
        retired += [{"vm": vm.name, "worktree": root} for root in vmremove.remove(owner, vm, links, records)]
        removed.append(vm.name)
    lines = ["removed VM %s" % n for n in removed]
    lines += ["  retired the link from %s" % r["worktree"] for r in retired]
    emit(as_json, {"removed": removed, "retired_links": retired}, "\n".join(lines))


def _here():
    """The worktree the command runs in, if any."""
    from ..errors import NotARepository
    from .common import worktree_at
    try:
        return worktree_at(".")
    except NotARepository:
        return None


def _owner(settings, name, provider):
    """The VM's provider (target.resolve): --provider, else the current worktree's link to it,
    else the config. The VM is looked up by name alone: removing or stopping it must work even
    when a link to that name has gone stale."""
    resolve = _core()[3]
    return resolve(settings, name, worktree=None if provider else _here(), provider=provider, find=False).provider


def _lifecycle(provider, name, verb):
    Settings, find_vm, _, _ = _core()
    owner = _owner(Settings(), name, provider)
    find_vm(owner, name)
    return owner.stop(name) if verb == "stop" else owner.start(name)


@command.command("stop")
@click.argument("name")
@click.option("--provider", help="Provider (default: the VM's).")
@json_option
def stop(name, provider, as_json):
    """Stop a VM, keeping its disk (qemu), or end a local VM's warm agent."""
    vm = _lifecycle(provider, name, "stop")
    emit(as_json, vm.as_json(), "stopped VM %s" % vm.name)


@command.command("start")
@click.argument("name")
@click.option("--provider", help="Provider (default: the VM's).")
@json_option
def start(name, provider, as_json):
    """Start a stopped VM again, with its disk (qemu; local VMs start on demand)."""
    vm = _lifecycle(provider, name, "start")
    emit(as_json, vm.as_json(), "started VM %s (%s)" % (vm.name, vm.details.get("accel", "").upper() or vm.provider))


@command.group("image")
def image():
    """The qemu provider's guest image."""


@image.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the cached image is current.")
@json_option
def image_build(force, as_json):
    """Build (or find) the qemu guest image: Debian kernel + debootstrap root fs with python3 and git."""
    from ..providers.qemu_image import build_image, find_image
    settings = _core()[0]()
    found = None if force else find_image(settings)
    img = found or build_image(settings, force=force)
    info = {"image": img.id, "path": img.dir, "kernel": img.kernel_version,
            "rootfs_bytes": img.info.get("rootfs_bytes"), "built": found is None}
    emit(as_json, info, "%s image %s (kernel %s) in %s" % ("built" if found is None else "current",
                                                          img.id, img.kernel_version, img.dir))


def _register_egress():
    from . import vm_egress
    for sub in vm_egress.commands:
        command.add_command(sub)


_register_egress()
