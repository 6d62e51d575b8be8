import click

from .common import emit, json_option, short, worktree_at

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group("worktree", context_settings=CONTEXT)
def command():
    """Create or remove a linked worktree together with its VM."""


@command.command("add", context_settings=CONTEXT)
@click.argument("path")
@click.argument("commitish", required=False)
@click.option("-b", "branch", help="Create BRANCH for the new worktree (as `git worktree add -b`).")
@click.option("--vm", help="Link and push the new worktree to this existing VM.")
@click.option("--launch", is_flag=True, help="Launch a fresh VM for the new worktree and push to it.")
@click.option("--provider", help="Provider for --launch.")
@json_option
def add(path, commitish, branch, vm, launch, provider, as_json):
    """Create a linked worktree at PATH (as `git worktree add`), then link and push it."""
    from .. import worktrees
    result = worktrees.add(worktree_at("."), path, commitish, branch, vm, launch, provider)
    pushed = result["pushed"]
    text = "created worktree %s on %s" % (result["worktree"], result["branch"])
    if pushed:
        text += ", pushed to VM %s (%s)" % (pushed["vm"], short(pushed["commit"]))
    emit(as_json, result, text)


@command.command("remove", context_settings=CONTEXT)
@click.argument("path")
@click.option("-f", "--force", is_flag=True, help="Remove even if a linked VM has unpulled work.")
@json_option
def remove(path, force, as_json):
    """Remove the linked worktree at PATH; refuses while a linked VM has unpulled work."""
    from .. import worktrees
    result = worktrees.remove(path, force)
    emit(as_json, result, "removed worktree %s" % result["worktree"])
