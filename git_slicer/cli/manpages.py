"""Man pages rendered from the click commands, so `git slicer --help` (which git turns into
`man git-slicer`) says what `-h` says. `scripts/gen-man.py` writes them to man/; a test fails
when they are stale."""

from __future__ import annotations

import inspect

import click

from .. import __version__


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _page(name: str, summary: str, command: click.Command, ctx: click.Context) -> str:
    out = [".TH %s 1 \"\" \"git-slicer %s\" \"Git Manual\"" % (name.upper(), __version__),
           ".SH NAME", "%s \\- %s" % (_roff(name), _roff(summary)), ".SH SYNOPSIS",
           ".B %s" % _roff(" ".join([ctx.command_path] + command.collect_usage_pieces(ctx))),
           ".SH DESCRIPTION"]
    text = inspect.cleandoc(click.unstyle(command.help or ""))
    out.append("\n.PP\n".join(_roff(" ".join(par.split())) for par in text.split("\n\n")))
    options = [p for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]
    if options:
        out.append(".SH OPTIONS")
        for param in options:
            record = param.get_help_record(ctx)
            if record:
                out += [".TP", ".B %s" % _roff(record[0]), _roff(record[1])]
    if isinstance(command, click.Group):
        out.append(".SH COMMANDS")
        for sub_name, sub in sorted(command.commands.items()):
            out += [".TP", ".B %s" % _roff(sub_name), _roff(sub.get_short_help_str(limit=200))]
    out += [".SH SEE ALSO", "\\fBgit\\-slicer\\fR(1), https://github.com/ (project README)", ""]
    return "\n".join(out)


def render_all() -> dict:
    """{file name: roff text} for git-slicer.1 and one page per command and subcommand."""
    from . import cli
    pages = {}
    root = click.Context(cli, info_name="git slicer")
    pages["git-slicer.1"] = _page("git-slicer", "isolated VM copies of git worktrees for coding agents", cli, root)
    for name, command in sorted(cli.commands.items()):
        ctx = click.Context(command, info_name=name, parent=root)
        pages["git-slicer-%s.1" % name] = _page("git-slicer-%s" % name, command.get_short_help_str(limit=80),
                                               command, ctx)
        if isinstance(command, click.Group):
            for sub_name, sub in sorted(command.commands.items()):
                sub_ctx = click.Context(sub, info_name=sub_name, parent=ctx)
                pages["git-slicer-%s-%s.1" % (name, sub_name)] = _page(
                    "git-slicer-%s-%s" % (name, sub_name), sub.get_short_help_str(limit=80), sub, sub_ctx)
    return pages
