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
@click.option("-f", "--force", is_flag=True,
              help="Remove even if a linked VM has unpulled work (that VM is kept, with its work).")
@click.option("--keep-vms", is_flag=True, help="Keep the VMs this worktree launched.")
@json_option
def remove(path, force, keep_vms, as_json):
    """Remove the linked worktree at PATH and the VMs it launched (those without unpulled work);
    names every linked VM and what became of it. Refuses while a linked VM has unpulled work."""
    from .. import worktrees
    from ..target import resolve_path_arg
    result = worktrees.remove(resolve_path_arg(path), force, keep_vms)
    lines = ["removed worktree %s" % result["worktree"]]
    lines += ["  %s VM %s (%s)" % ("removed" if v["removed"] else "kept", v["vm"],
                                  v["reason"][len("kept: "):] if v["reason"].startswith("kept: ") else v["reason"])
              for v in result["vms"]]
    emit(as_json, result, "\n".join(lines))
