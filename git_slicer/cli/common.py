"""Helpers shared by the commands: options, output, repository discovery."""

from __future__ import annotations

import json

import click

from ..repo import Worktree
from ..target import resolve_path_arg

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document for scripts.")


def worktree_at(path: str) -> Worktree:
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
