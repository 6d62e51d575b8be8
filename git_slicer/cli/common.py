"""Helpers shared by the commands: options, output, repository discovery."""

from __future__ import annotations

import json

import click


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")


def worktree_at(path: str):
    from ..repo import Worktree
    from ..target import resolve_path_arg
    return Worktree(resolve_path_arg(path or "."))


def emit(as_json: bool, data, text: str = None) -> None:
    """--json: one JSON document on stdout. Otherwise the text, unless -q was given."""
    from .. import report
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text and not report.quiet:
        click.echo(text)


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


def vm_argument(required: bool = False, linked: bool = False):
    return click.argument("vm", required=required, shell_complete=complete_linked_vm if linked else complete_vm)
