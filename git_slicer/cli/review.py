"""Review verbs: look at a VM's work before pulling it, open a shell there, forget a link."""

import click

from .common import emit, json_option, path_argument, short, vm_argument, worktree_at

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.command("diff", short_help="Show the VM's work as a diff, without pulling.", context_settings=CONTEXT)
@vm_argument()
@path_argument
@click.option("--stat", is_flag=True, help="Show a diffstat instead of the patch.")
@json_option
def diff_command(vm, path, stat, as_json):
    """Show VM's commits and uncommitted changes as one diff, without pulling: exactly what a
    pull would change in the worktree at PATH."""
    from .. import review
    result = review.diff(worktree_at(path), vm, stat=stat, as_json=as_json)
    if as_json:
        emit(True, result)
    else:
        from ..report import terminal_text
        click.echo(terminal_text(result["text"]), nl=False)


@click.command("log", context_settings=CONTEXT)
@vm_argument()
@path_argument
@json_option
def log_command(vm, path, as_json):
    """List VM's commits that the host branch does not have yet."""
    from .. import review
    from ..wire.paths import display
    result = review.log(worktree_at(path), vm)
    lines = ["%s %s" % (short(c["commit"])[:9], display(c["subject"])) for c in result["commits"]]
    emit(as_json, result, "\n".join(lines) if lines else "no new commits in VM %s" % result["vm"])


@click.command("shell", context_settings=CONTEXT)
@vm_argument()
@path_argument
def shell_command(vm, path):
    """Open an interactive shell in VM, in the synced repository."""
    from ..config import Settings
    from ..target import resolve
    worktree = worktree_at(path)
    target = resolve(Settings(worktree.root), vm, worktree=worktree)
    target.check_reached()
    raise SystemExit(target.provider.shell(target.vm, target.link.guest_path if target.link else ""))


@click.command("unlink", short_help="Forget a worktree's link to a VM.", context_settings=CONTEXT)
@vm_argument(required=True)
@click.argument("path", required=False, default=".")
@click.option("-f", "--force", is_flag=True, help="Forget the link even if the VM holds work that was not pulled.")
@json_option
def unlink_command(vm, path, force, as_json):
    """Forget the link between the worktree at PATH and VM (the VM itself is kept). Refuses while
    the VM holds work that was not pulled (or that cannot be checked), unless --force: the link
    is what stops `vm rm` deleting that work."""
    from .. import review
    from ..errors import UsageError
    from ..links import check_vm_name
    check_vm_name(vm)
    if not review.unlink(worktree_at(path), vm, force=force):
        raise UsageError("this worktree is not linked to VM %s" % vm)
    emit(as_json, {"vm": vm, "unlinked": True}, "unlinked VM %s" % vm)


commands = [diff_command, log_command, shell_command, unlink_command]
