import click

from .common import emit, json_option, path_argument, short, vm_argument, worktree_at


@click.command("pull", short_help="Bring the VM's commits and files home.", context_settings={"help_option_names": ["-h", "--help"]})
@vm_argument(linked=True)
@path_argument
@click.option("-f", "--force", is_flag=True,
              help="Take the VM's branch and files even where the host differs (host state saved first).")
@click.option("--no-files", is_flag=True, help="Bring commits only, not the VM's uncommitted files.")
@click.option("--no-merge", is_flag=True, help="Import the VM's branches under refs/slicer/VM/ only.")
@click.option("--accept-ignore-changes", is_flag=True,
              help="Take the VM's changes to .slicerignore/.gitignore even where push would then send "
                   "host files it keeps back now.")
@click.option("--accept-hook-changes", is_flag=True,
              help="Take the VM's changes to the hooks git runs, when core.hooksPath is in the worktree.")
@json_option
def command(vm, path, force, no_files, no_merge, accept_ignore_changes, accept_hook_changes, as_json):
    """Bring VM's commits (fast-forward only) and uncommitted files into the worktree at PATH
    (VM defaults to the worktree's linked VM)."""
    from ..pull import PullOptions, pull
    from ..report import summarize
    from ..wire.paths import display
    result = pull(worktree_at(path), PullOptions(vm=vm, force=force, no_files=no_files, no_merge=no_merge,
                                               accept_ignore_changes=accept_ignore_changes,
                                               accept_hook_changes=accept_hook_changes))
    lines = []
    if result.reset:
        lines.append("reset %s %s..%s to VM %s's branch (the branches had diverged)" % (
            result.branch, short(result.from_), short(result.to), result.vm))
    elif result.fast_forward:
        lines.append("fast-forwarded %s %s..%s from VM %s" % (result.branch, short(result.from_),
                                                              short(result.to), result.vm))
    else:
        lines.append("%s stays at %s" % (result.branch, short(result.to)))
    for verb, key in (("updated", "written"), ("deleted", "deleted")):   # --json keeps every path
        lines.extend("  %s %s" % (verb, line) for line in summarize(result.files[key], 20, display))
    exposed = result.exposed_by_ignore_changes or []
    if exposed:
        lines.append("note: accepted ignore changes; push now also sends %s%s" % (
            ", ".join(display(p) for p in exposed[:10]), " and %d more" % (len(exposed) - 10) if len(exposed) > 10 else ""))
    if result.note:
        lines.append("note: %s" % result.note)
    if result.backup:
        lines.append("host state saved under %s" % result.backup["ref"])
        lines.append("restore with: %s" % result.backup["restore"])
    for sub in _flat(result.submodules):
        lines.append("submodule %s: %s (%d file(s) written)" % (
            display(sub["path"]), "fast-forwarded to " + short(sub["to"]) if sub["fast_forward"]
            else "stays at " + short(sub["to"]), len(sub["files"]["written"]) + len(sub["files"]["deleted"])))
    emit(as_json, result.to_json(), "\n".join(lines))


def _flat(subs, prefix=""):
    """Nested submodule results, depth first, with their full paths."""
    for sub in subs:
        yield {**sub, "path": prefix + sub["path"]}
        yield from _flat(sub.get("submodules", []), prefix + sub["path"] + "/")
