import os
import sys

import click

from .common import vm_argument, worktree_at


class _DashDashCommand(click.Command):
    """Keeps what follows the first `--` for the command to run: click would drop the `--` and
    could not tell `exec -- CMD` (the linked VM) from `exec VM CMD`."""

    def parse_args(self, ctx, args):
        if "--" in args:
            at = args.index("--")
            ctx.meta["exec_argv"] = list(args[at + 1:])
            args = args[:at]
        return super().parse_args(ctx, args)


@click.command("exec", cls=_DashDashCommand, short_help="Run a command in the VM's repository.",
               context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@vm_argument()
@click.option("--cwd", "cwd", help="Directory in the VM, relative to the synced repository "
                                   "(to the VM's home for a VM this worktree is not linked to).")
@click.option("-C", "path", default=".", help="Host worktree whose link gives the repository path.")
@click.option("--env", "env_names", multiple=True, metavar="NAME",
              help="Hand the host's variable NAME to this command (repeatable); nothing else enters the VM.")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def command(ctx, vm, cwd, path, env_names, argv):
    """Run CMD in the VM (default: the worktree's linked VM), in the synced repository; stdout,
    stderr and the exit code pass through (127: no such command).

    Usage: git slicer exec [VM] [--cwd DIR] [--env NAME]... -- CMD [ARGS...]
    """
    from ..config import Settings
    from ..errors import NotARepository, UsageError
    from ..target import resolve
    stray = [a for a in argv if a.startswith("-")] if "exec_argv" in ctx.meta else argv[:1]
    if stray and stray[0].startswith("-"):
        # An option this command does not know (`--json` from habit) is not the command to run.
        raise UsageError("exec has no option %s; the command to run goes after `--`" % stray[0],
                         hint="git slicer exec [VM] [--cwd DIR] [--env NAME]... -- CMD [ARGS...]")
    argv = list(argv) + ctx.meta.get("exec_argv", [])
    if not argv:
        raise UsageError("no command given", hint="git slicer exec [VM] -- CMD [ARGS...]")
    passed = handed_env(env_names)
    try:
        worktree = worktree_at(path)
    except NotARepository:
        if not vm:
            raise
        worktree = None
    target = resolve(Settings(), vm, worktree=worktree)
    if target.link is None and not cwd:
        raise UsageError("VM %s holds no repository of this worktree; give --cwd DIR (relative to the "
                         "VM's home) to run there anyway" % target.name,
                         hint="git slicer exec %s --cwd . -- CMD" % target.name)
    if passed and not target.provider.passes_env:
        raise UsageError("provider %s cannot hand variables to one command (--env)" % target.provider.name)
    target.check_reached()
    extra = {"env": passed} if passed else {}
    code = target.provider.exec(target.vm, argv, target.exec_dir(cwd), interactive=sys.stdin.isatty(), **extra)
    raise SystemExit(code)


def handed_env(names) -> dict:
    """The host variables `--env NAME` hands to the command: each must be set, by name only (a
    value on the command line would show in `ps`)."""
    from ..errors import UsageError
    out = {}
    for name in names:
        if not name or "=" in name or not (name[0].isalpha() or name[0] == "_") \
                or not all(c.isalnum() or c == "_" for c in name):
            raise UsageError("--env takes a variable NAME (got %r); its value comes from the host's environment" % name)
        if name not in os.environ:
            raise UsageError("--env %s: the host has no variable %s" % (name, name))
        out[name] = os.environ[name]
    return out
