import click

from .common import emit, json_option, path_argument, short, vm_argument, worktree_at


@click.command("status", short_help="Show what changed on each side since the last sync.", context_settings={"help_option_names": ["-h", "--help"]})
@vm_argument()
@path_argument
@json_option
def command(vm, path, as_json):
    """Show commits ahead/behind and dirty files on the host and in VM since the last sync."""
    from ..status import status
    from ..report import summarize
    from ..wire.paths import display
    result = status(worktree_at(path), vm)
    host, guest = result["host"], result["vm_side"]
    lines = ["VM %s, branch %s, last sync at %s%s" % (result["vm"], result["branch"], short(result["agreed_commit"]),
                                                      " (in sync)" if result["in_sync"] else "")]
    for label, side in (("host", host), ("vm", guest)):
        if label == "vm" and not side["exists"]:
            lines.append("vm   no repository at %s: `git slicer push %s` creates it again"
                         % (display(result["guest_path"]), result["vm"]))
            continue
        lines.append("%-4s %s  %s new commit(s), %d changed file(s) since sync" % (
            label, short(side["head"]), side["ahead"] if side["ahead"] is not None else "?",
            len(side["changed_since_sync"])))
        same = set(side.get("content_as_synced") or ())
        lines.extend("       %s" % line for line in summarize(
            side["changed_since_sync"], 20, lambda p: display(p) + (" (committed or staged, content as synced)"
                                                                    if p in same else "")))
    if guest.get("unpulled_branches"):
        lines.append("note: the VM has commits on other branches: %s (pull imports them under refs/slicer/%s/)"
                     % (", ".join(map(display, guest["unpulled_branches"][:10])), result["vm"]))
    if guest.get("stash"):
        lines.append("note: the VM has a stash, which no pull brings home (`git slicer exec %s -- git stash list`)"
                     % result["vm"])
    for label, side, way in (("the worktree", host, "git switch %s" % result["branch"]),
                             ("the VM", guest, "git slicer exec %s -- git switch %s" % (result["vm"], result["branch"]))):
        if side.get("exists", True) and side.get("branch") != result["branch"]:
            on = "branch %s" % display(str(side["branch"])) if side.get("branch") else "a detached HEAD"
            lines.append("note: %s is on %s, not %s: pull brings work home on %s only (%s)"
                         % (label, on, result["branch"], result["branch"], way))
    emit(as_json, result, "\n".join(lines))
