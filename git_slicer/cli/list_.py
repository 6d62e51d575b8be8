import os

import click

from .common import emit, json_option, short, worktree_at


@click.command("list", short_help="List worktrees and their linked VMs.", context_settings={"help_option_names": ["-h", "--help"]})
@json_option
def command(as_json):
    """List the repository's worktrees and their linked VMs; `*` marks the current worktree."""
    from ..links import LinkStore
    from ..repo import Worktree
    here = worktree_at(".")
    rows = []
    for path, branch in here.worktrees():
        links = []
        if os.path.isdir(path):
            links = LinkStore.of(Worktree(path)).all()
        current = os.path.realpath(path) == os.path.realpath(here.root)
        for link in links or [None]:
            rows.append({"worktree": path, "branch": branch, "current": current,
                         "vm": link.vm if link else None,
                         "provider": link.provider if link else None,
                         "guest_path": link.guest_path if link else None,
                         "agreed_commit": link.agreed_commit if link else None,
                         "pushed_at": link.pushed_at if link else None,
                         "pulled_at": link.pulled_at if link else None})
    lines = ["%s %-40s %-20s %-12s %s" % ("*" if r["current"] else " ", r["worktree"], r["branch"] or "(detached)",
                                          r["vm"] or "-", short(r["agreed_commit"]) if r["vm"] else "")
             for r in rows]
    emit(as_json, rows, "\n".join(lines))
