import click

from ..push import PushOptions, push
from .common import emit, json_option, short, worktree_at


@click.command("push", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("vm", required=False)
@click.argument("path", required=False, default=".")
@click.option("--launch", is_flag=True, help="Start a fresh VM first (VM, if given, names it).")
@click.option("-f", "--force", is_flag=True, help="Push even if the VM has work that was not pulled.")
@click.option("--depth", type=int, help="Send only the last N generations of history (first push).")
@click.option("--include-ignored/--no-include-ignored", default=None,
              help="Also send gitignored files (default: slicer.includeIgnored).")
@click.option("--provider", help="Provider for --launch (default: slicer.provider).")
@json_option
def command(vm, path, launch, force, depth, include_ignored, provider, as_json):
    """Give VM a self-contained copy of the worktree at PATH: its branch, history, and every
    staged, unstaged and untracked change (minus .slicerignore)."""
    worktree = worktree_at(path)
    result = push(worktree, PushOptions(vm=vm, launch=launch, force=force, depth=depth,
                                        include_ignored=include_ignored, provider=provider))
    if result["up_to_date"]:
        text = "VM %s is up to date with %s (%s)" % (result["vm"], result["branch"], short(result["commit"]))
    else:
        sent = result["sent"]
        text = "%s %s into VM %s at %s: %s %s, %d file(s), %d bytes" % (
            "launched and pushed" if result["launched"] else "pushed", result["branch"], result["vm"],
            result["guest_path"], "commit", short(result["commit"]), sent["files"],
            sent["pack_bytes"] + sent["file_bytes"])
    emit(as_json, result, text)
