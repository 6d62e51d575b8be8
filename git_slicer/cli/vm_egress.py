"""`vm allow`, `vm deny`, `vm log`: a VM's egress allowlist and its connection log."""

import click

from .common import emit, json_option, vm_argument

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _vm(name, provider):
    """(provider, VM): --provider, else the current worktree's link to the VM, else the config."""
    from ..config import Settings
    from ..errors import NotARepository, UsageError
    from ..links import LinkStore, check_vm_name
    from ..target import find_vm, provider_for
    from .common import worktree_at
    check_vm_name(name)
    link = None
    if not provider:
        try:
            link = LinkStore.of(worktree_at(".")).get(name)
        except (NotARepository, UsageError):
            link = None
    owner = provider_for(Settings(), name, link, override=provider)
    return owner, find_vm(owner, name)


def _change(name, hosts, provider, as_json, widen):
    from ..egress.vms import change
    owner, vm = _vm(name, provider)
    result = change(owner, vm, hosts, widen)
    lines = ["VM %s may reach: %s" % (result["vm"], ", ".join(result["egress"]) or "nothing (no network)")]
    lines += ["(%s was not on the list)" % text for text in result["not_listed"]]
    emit(as_json, result, "\n".join(lines))


@click.command("allow", short_help="Let a VM reach more hosts through its egress proxy.", context_settings=CONTEXT)
@vm_argument(required=True)
@click.argument("hosts", nargs=-1, required=True, metavar="HOST[:PORT]...")
@click.option("--provider", help="Provider (default: the VM's).")
@json_option
def allow_command(vm, hosts, provider, as_json):
    """Add HOST[:PORT] rules to VM's egress allowlist (HOST alone: ports 80 and 443; *.DOMAIN: its subdomains)."""
    _change(vm, hosts, provider, as_json, widen=True)


@click.command("deny", short_help="Take hosts off a VM's egress allowlist.", context_settings=CONTEXT)
@vm_argument(required=True)
@click.argument("hosts", nargs=-1, required=True, metavar="HOST[:PORT]...")
@click.option("--provider", help="Provider (default: the VM's).")
@json_option
def deny_command(vm, hosts, provider, as_json):
    """Remove rules from VM's egress allowlist (an empty list: no network at all)."""
    _change(vm, hosts, provider, as_json, widen=False)


@click.command("log", short_help="Show a VM's egress connections.", context_settings=CONTEXT)
@vm_argument(required=True)
@click.option("-n", "limit", type=int, default=0, help="Only the last N connections.")
@click.option("--provider", help="Provider (default: the VM's).")
@json_option
def log_command(vm, limit, provider, as_json):
    """Every connection VM made through its egress proxy: allowed, refused or failed, host, bytes."""
    from ..egress.log import describe
    from ..egress.vms import entries
    owner, machine = _vm(vm, provider)
    found = entries(owner, machine, limit)
    emit(as_json, found, "\n".join(describe(e) for e in found) or "no connections from VM %s" % machine.name)


commands = [allow_command, deny_command, log_command]
