import click

from .common import emit, json_option, short, vm_argument, worktree_at


@click.command("pull", short_help="Bring the VM's commits and files home.", context_settings={"help_option_names": ["-h", "--help"]})
@vm_argument(linked=True)
@click.argument("path", required=False, default=".")
@click.option("-f", "--force", is_flag=True,
              help="Take the VM's branch and files even where the host differs (host state saved first).")
@click.option("--no-files", is_flag=True, help="Bring commits only, not the VM's uncommitted files.")
@click.option("--no-merge", is_flag=True, help="Import the VM's branches under refs/slicer/VM/ only.")
@json_option
def command(vm, path, force, no_files, no_merge, as_json):
    """Bring VM's commits (fast-forward only) and uncommitted files into the worktree at PATH
    (VM defaults to the worktree's linked VM)."""
    from ..pull import PullOptions, pull
    from ..wire.paths import display
    result = pull(worktree_at(path), PullOptions(vm=vm, force=force, no_files=no_files, no_merge=no_merge))
    lines = []
    if result.get("reset"):
        lines.append("reset %s %s..%s to VM %s's branch (the branches had diverged)" % (
            result["branch"], short(result["from"]), short(result["to"]), result["vm"]))
    elif result["fast_forward"]:
        lines.append("fast-forwarded %s %s..%s from VM %s" % (result["branch"], short(result["from"]),
                                                              short(result["to"]), result["vm"]))
    else:
        lines.append("%s stays at %s" % (result["branch"], short(result["to"])))
    files = result["files"]
    for path_ in files["written"]:
        lines.append("  updated %s" % display(path_))
    for path_ in files["deleted"]:
        lines.append("  deleted %s" % display(path_))
    if result.get("note"):
        lines.append("note: %s" % result["note"])
    if result.get("backup"):
        lines.append("host state saved under %s" % result["backup"]["ref"])
        lines.append("restore with: %s" % result["backup"]["restore"])
    emit(as_json, result, "\n".join(lines))
