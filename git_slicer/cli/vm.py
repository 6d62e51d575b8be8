import click

from ..config import Settings
from ..target import find_vm, provider_for
from .common import emit, json_option


@click.group("vm", context_settings={"help_option_names": ["-h", "--help"]})
def command():
    """Launch, list and remove VMs."""


@command.command("launch")
@click.argument("name", required=False)
@click.option("--provider", help="Provider (default: slicer.provider).")
@json_option
def launch(name, provider, as_json):
    """Start a new VM (named NAME, or vm-N)."""
    vm = provider_for(Settings(), override=provider).launch(name)
    emit(as_json, vm.as_json(), "launched VM %s (%s)" % (vm.name, vm.provider))


@command.command("list")
@click.option("--provider", help="Provider (default: slicer.provider).")
@json_option
def list_(provider, as_json):
    """List VMs."""
    vms = provider_for(Settings(), override=provider).list()
    lines = ["%-20s %-8s %-8s %s" % (v.name, v.provider, v.state, v.created_at) for v in vms]
    emit(as_json, [v.as_json() for v in vms], "\n".join(lines) if lines else "no VMs")


@command.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--provider", help="Provider (default: slicer.provider).")
@json_option
def rm(names, provider, as_json):
    """Stop and delete VMs and their disks."""
    settings = Settings()
    removed = []
    for name in names:
        owner = provider_for(settings, name, override=provider)
        find_vm(owner, name)
        owner.remove(name)
        removed.append(name)
    emit(as_json, {"removed": removed}, "\n".join("removed VM %s" % n for n in removed))
