import click

from .common import (emit, hostgroup_option, json_option, parse_tags, path_argument, short, size, tag_option,
                     vm_argument, worktree_at)


@click.command("push", short_help="Copy the worktree into a VM, or send what changed.", context_settings={"help_option_names": ["-h", "--help"]})
@vm_argument()
@path_argument
@click.option("--launch", is_flag=True, help="Start a fresh VM first (VM, if given, names it).")
@click.option("-f", "--force", is_flag=True, help="Push even if the VM has work that was not pulled.")
@click.option("--depth", type=int, help="Send only the last N generations of history (first push).")
@click.option("--include-ignored/--no-include-ignored", default=None,
              help="Also send gitignored files (default: slicer.includeIgnored).")
@click.option("--provider", help="Provider for --launch (default: slicer.provider).")
@click.option("--all", "all_linked", is_flag=True, help="Push to every VM linked to the worktree, concurrently.")
@click.option("--count", type=int, help="With --launch: launch N VMs and push to all of them.")
@click.option("--allow", "allow", multiple=True, metavar="HOST[:PORT]",
              help="With --launch: a host the new VM may reach through its egress proxy (repeatable).")
@tag_option
@hostgroup_option
@json_option
def command(vm, path, launch, force, depth, include_ignored, provider, all_linked, count, allow, tags, hostgroup,
            as_json):
    """Give VM a self-contained copy of the worktree at PATH: its branch, history, and every
    staged, unstaged and untracked change (minus .slicerignore)."""
    from ..errors import UsageError
    from ..push import PushOptions, push
    if allow and not launch:
        raise UsageError("--allow sets a new VM's allowlist: use it with --launch, or `git slicer vm allow VM HOST`")
    worktree = worktree_at(path)
    options = PushOptions(vm=vm, launch=launch, force=force, depth=depth,
                          include_ignored=include_ignored, provider=provider, tags=parse_tags(tags),
                          hostgroup=hostgroup, allow=tuple(allow))
    if all_linked or count is not None:
        from ..fanout import push_many          # threads for many VMs; a single push needs none
        outcome = push_many(worktree, options, all_linked=all_linked, count=count)
        lines = [describe(r) if r["ok"] else "VM %s: error: %s" % (r["vm"] or "(new)", r["error"])
                 for r in outcome["results"]]
        emit(as_json, outcome, "\n".join(lines), ok=not outcome["failed"])
        if outcome["failed"]:
            if as_json:         # the document has them all; stderr has the one-line errors
                for r in outcome["results"]:
                    if not r["ok"]:
                        click.echo("error: VM %s: %s" % (r["vm"] or "(not launched)", r["error"]), err=True)
            raise SystemExit(1)
        return
    result = push(worktree, options).to_json()
    emit(as_json, result, describe(result))


def describe(result) -> str:
    if result["up_to_date"]:
        text = "VM %s is up to date with %s (%s)" % (result["vm"], result["branch"], short(result["commit"]))
    else:
        sent = result["sent"]
        parts = []
        if sent["pack_bytes"]:
            parts.append("%s of history" % size(sent["pack_bytes"]))
        if sent["files"]:
            parts.append("%d file(s) (%s)" % (sent["files"], size(sent["file_bytes"])))
        text = "%s %s into VM %s at %s: commit %s; %s" % (
            "launched and pushed" if result["launched"] else "pushed", result["branch"], result["vm"],
            result["guest_path"], short(result["commit"]),
            "sent " + " and ".join(parts) if parts else "the VM had everything it needed")
    return text
