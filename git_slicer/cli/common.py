"""Helpers shared by the commands: options, output, repository discovery."""

from __future__ import annotations

import json

import click


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")


def worktree_at(path: str):
    from ..repo import Worktree
    from ..target import resolve_path_arg
    return Worktree(resolve_path_arg(path or "."))


def emit(as_json: bool, data, text: str = None, ok: bool = True) -> None:
    """--json: one JSON document on stdout; an object says `"ok"` as a failure's does (cli main),
    so a script reads one key either way. Otherwise the text, unless -q was given."""
    from .. import report
    if as_json:
        if isinstance(data, dict):
            data = {**data, "ok": ok}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text and not report.quiet:
        click.echo(report.terminal_text(text))     # VM-supplied strings never reach the terminal raw


def size(n: int) -> str:
    """A byte count for people: 640 bytes, 12.5 KiB, 3.1 MiB."""
    if n < 1024:
        return "%d bytes" % n
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return "%.1f %s" % (n, unit)


def short(oid) -> str:
    return (oid or "-")[:12]


def complete_vm(ctx, param, incomplete):
    """VM names for shell completion: this worktree's links, then the provider's VMs."""
    names = []
    try:
        from ..config import Settings
        from ..links import LinkStore
        from ..target import provider_for
        names = [link.vm for link in LinkStore.of(worktree_at(".")).all()]
        names += [vm.name for vm in provider_for(Settings()).list() if vm.name not in names]
    except Exception:  # completion must never fail loudly
        pass
    return [n for n in names if n.startswith(incomplete)]


def complete_linked_vm(ctx, param, incomplete):
    """For commands that need a link (pull): this worktree's linked VMs only, or every VM when
    the worktree has none (the command will then say what is missing)."""
    names = []
    try:
        from ..links import LinkStore
        names = [link.vm for link in LinkStore.of(worktree_at(".")).all()]
    except Exception:  # completion must never fail loudly
        pass
    names = [n for n in names if n.startswith(incomplete)]
    return names or complete_vm(ctx, param, incomplete)


def _vm_may_be_the_path(ctx, param, value):
    """`git slicer status ../other-worktree`: a lone argument no VM name can be (a '/', '.' or
    '..') is the worktree's path."""
    vm = ctx.params.get("vm")
    if value == "." and isinstance(vm, str) and ("/" in vm or vm in (".", "..", "~")):
        ctx.params["vm"] = None
        return vm
    return value


# [PATH] after an optional [VM]: the worktree to act on (default: the current directory).
path_argument = click.argument("path", required=False, default=".", callback=_vm_may_be_the_path)


def vm_argument(required: bool = False, linked: bool = False):
    return click.argument("vm", required=required, shell_complete=complete_linked_vm if linked else complete_vm)


def parse_tags(values) -> dict:
    """--tag KEY=VALUE (repeatable) as a dict; a malformed one is a usage error."""
    tags = {}
    for value in values or ():
        key, sep, text = value.partition("=")
        if not sep or not key or any(c.isspace() for c in key):
            raise click.UsageError("bad --tag %r (expected KEY=VALUE)" % value)
        tags[key] = text
    return tags


tag_option = click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE",
                          help="With a launch: tag the new VM (repeatable; Slicer's own tags).")
hostgroup_option = click.option("--hostgroup", help="With a launch: the Slicer host group (default: slicer.hostgroup).")
