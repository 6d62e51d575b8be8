import click

from .. import report
from .common import emit, json_option, short, worktree_at

def _core():
    from .. import hooks          # imported on use: `git slicer` start-up stays small
    return hooks


_CTX = {"help_option_names": ["-h", "--help"]}
_ACTIONS = {"create": "installed", "overwrite": "replaced (--force)", "upgrade": "upgraded", "keep": "up to date",
            "splice": "added to the existing hook", "chain": "installed; the existing hook moved to %s.pre-slicer and still runs",
            "removed": "removed", "restored": "removed; the earlier hook is back", "unspliced": "removed its block from the hook",
            "damaged": "left alone: its git-slicer block is damaged, edit it by hand", "none": "not installed"}


@click.group("hooks", short_help="Push every new commit to linked VMs automatically.", context_settings=_CTX)
def command():
    """Hooks that push every new commit to the worktree's linked VMs, in the background."""


@command.command("install", context_settings=_CTX)
@click.argument("path", required=False, default=".")
@click.option("-f", "--force", is_flag=True, help="Replace hooks git-slicer cannot keep alongside its own.")
@click.option("--manual", is_flag=True, help="Print what to add to each hook instead of writing anything.")
@json_option
def install(path, force, manual, as_json):
    """Install post-commit, post-merge and post-rewrite hooks (existing hooks keep running)."""
    worktree = worktree_at(path)
    if manual:
        result = _core().manual(worktree)
        lines = ["Add these lines to each hook in %s, right after its #! line" % result["hooks_dir"],
                 "(or make the hook a POSIX sh script containing them):"]
        for item in result["hooks"]:
            lines += ["", "# %s" % item["path"], item["block"].rstrip("\n")]
        emit(as_json, result, "\n".join(lines))
        return
    result = _core().install(worktree, force=force)
    for warning in result["warnings"]:
        report.warn(warning)
    lines = ["hooks in %s:" % result["hooks_dir"]]
    for item in result["hooks"]:
        what = _ACTIONS[item["action"]]
        lines.append("  %-13s %s" % (item["hook"], what % item["hook"] if "%s" in what else what))
    emit(as_json, result, "\n".join(lines))


@command.command("uninstall", context_settings=_CTX)
@click.argument("path", required=False, default=".")
@json_option
def uninstall(path, as_json):
    """Remove git-slicer's hooks, restoring whatever was there before byte-for-byte."""
    result = _core().uninstall(worktree_at(path))
    lines = ["hooks in %s:" % result["hooks_dir"]]
    lines += ["  %-13s %s" % (item["hook"], _ACTIONS[item["action"]]) for item in result["hooks"]]
    emit(as_json, result, "\n".join(lines))


@command.command("status", context_settings=_CTX)
@click.argument("path", required=False, default=".")
@json_option
def status(path, as_json):
    """Show the installed hooks and the last automatic push to each linked VM."""
    result = _core().status(worktree_at(path))
    for warning in result["warnings"]:
        report.warn(warning)
    lines = ["hooks in %s:" % result["hooks_dir"]]
    for item in result["hooks"]:
        if item["installed"]:
            state = "installed (%s)%s" % (item["mode"], "" if item["current"] else ", outdated: run `git slicer hooks install`")
            if item["python_missing"]:
                state += ", its interpreter %s is gone (falls back to git-slicer on PATH)" % item["python"]
        else:
            state = {"absent": "not installed", "foreign": "not installed (another hook is there)",
                     "damaged": "damaged git-slicer block"}[item["state"]]
        lines.append("  %-13s %s" % (item["hook"], state))
    auto = result["auto_push"]
    lines.append("automatic push: %s" % ("on" if auto is True else "off (slicer.autoPush=false)" if auto is False else auto))
    runner = result["runner"]
    lines.append("background push: %s" % (runner["state"] + (" (pid %d)" % runner["pid"] if runner["pid"] else "")
                                          + (", runner pid %d waits for the next commit" % runner["waiting"]
                                             if runner.get("waiting") else "")))
    if not result["vms"]:
        lines.append("no linked VMs in this worktree")
    for vm in result["vms"]:
        last = vm["last"]
        if not last:
            lines.append("VM %s: no automatic push yet" % vm["vm"])
        else:
            lines.append("VM %s: last automatic push %s (%s): %s - %s" % (
                vm["vm"], last["at"], last["hook"], last["result"], last.get("message", "")))
            if last.get("commit"):
                lines[-1] += " [%s]" % short(last["commit"])
    lines.append("log: %s" % result["log"])
    emit(as_json, result, "\n".join(lines))


@command.command("run", hidden=True, context_settings=_CTX)
@click.argument("hook")
@click.argument("git_dir", required=False, default=".git")
def run(hook, git_dir):
    """What the hooks run when the interpreter they were installed with is gone."""
    from .. import autopush
    autopush.main([hook, git_dir])
