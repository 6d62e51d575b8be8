"""`git slicer hooks`: real hooks fired by real `git commit`, `merge`, `rebase` and `--amend`,
pushing in the background into real local VMs."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from conftest import Repo, run, slicer
from git_slicer import autopush
from git_slicer import hooks as core
from git_slicer.repo import Worktree

HOOKS = ("post-commit", "post-merge", "post-rewrite")


# -- helpers -------------------------------------------------------------------------------
def slicer_dir(repo: Repo) -> str:
    return repo.git("rev-parse", "--path-format=absolute", "--git-path", "slicer").strip()


def hooks_dir(repo: Repo) -> str:
    return repo.git("rev-parse", "--path-format=absolute", "--git-path", "hooks").strip()


def settle(repo: Repo, timeout: float = 60.0) -> None:
    """Wait for the background push the hooks started (its lock released, nothing pending)."""
    assert autopush.wait_idle(slicer_dir(repo), timeout), "background push still running after %ss" % timeout


def stop_runner(repo: Repo) -> None:
    """End the background runner waiting for the next commit (as the suite does after each test)."""
    autopush.stop(slicer_dir(repo))
    deadline = time.monotonic() + 30
    while autopush.runner(slicer_dir(repo)):
        assert time.monotonic() < deadline, "the runner did not leave"
        time.sleep(0.02)


def assert_vm_matches(repo: Repo, vm: str) -> None:
    settle(repo)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()


def log_lines(repo: Repo, word: str = "") -> list:
    try:
        with open(os.path.join(slicer_dir(repo), "autopush.log")) as fh:
            return [line for line in fh if word in line]
    except FileNotFoundError:
        return []


def last_push(repo: Repo, vm: str) -> dict:
    status = repo.slicer_json("hooks", "status")
    return {v["vm"]: v["last"] for v in status["vms"]}[vm]


def snapshot(path: str):
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    with open(path, "rb") as fh:
        return (stat.S_IMODE(st.st_mode), fh.read())


def write_hook(directory: str, name: str, text: str, mode: int = 0o755) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


# -- the main path -------------------------------------------------------------------------
def test_commit_shows_up_in_the_vm_with_no_other_command(launched):
    repo, vm = launched
    out = repo.slicer("hooks", "install").stdout.decode()
    assert "post-commit" in out and "post-rewrite" in out and "post-merge" in out
    repo.write("src/new.py", "NEW = 1\n")
    repo.git("add", "src/new.py")
    repo.git("commit", "-q", "-m", "new file")
    repo.write("README.md", "# project, edited after the commit\n")   # uncommitted work travels too
    repo.git("commit", "-q", "--allow-empty", "-m", "empty")
    assert_vm_matches(repo, vm)
    last = last_push(repo, vm)
    assert last["result"] == "ok" and last["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert last["hook"] == "post-commit"
    assert log_lines(repo, "VM %s: ok" % vm)
    text = repo.slicer("hooks", "status").stdout.decode()
    assert "installed (standalone)" in text and "VM %s: last automatic push" % vm in text and ": ok" in text


def test_merge_rebase_and_amend_reach_the_vm(launched):
    repo, vm = launched
    repo.slicer("hooks", "install")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("feature.txt", "feature\n")
    repo.commit("feature work")                              # the VM follows main: skipped
    settle(repo)
    assert last_push(repo, vm)["result"] == "skipped"
    repo.git("checkout", "-q", "main")
    repo.write("main.txt", "main\n")
    repo.commit("main work")
    repo.git("merge", "-q", "--no-ff", "--no-edit", "feature")     # post-merge
    assert_vm_matches(repo, vm)
    assert last_push(repo, vm)["hook"] in ("post-merge", "post-commit")

    repo.git("checkout", "-q", "-b", "side", "HEAD~1")
    repo.write("side.txt", "side\n")
    repo.commit("side work")
    repo.git("checkout", "-q", "main")
    before = repo.git("rev-parse", "HEAD")
    repo.git("rebase", "-q", "side")                         # post-rewrite (rebase)
    assert repo.git("rev-parse", "HEAD") != before
    assert_vm_matches(repo, vm)
    assert last_push(repo, vm)["result"] == "ok"

    repo.git("commit", "-q", "--amend", "-m", "amended")     # post-commit + post-rewrite (amend)
    assert_vm_matches(repo, vm)
    repo.git("checkout", "-q", "-b", "ff")
    repo.write("ff.txt", "ff\n")
    repo.commit("ff work")                                   # another branch: skipped
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--ff-only", "ff")               # fast-forward: post-merge
    assert_vm_matches(repo, vm)


def test_a_cherry_pick_stopped_by_a_conflict_is_waited_out_not_failed(launched):
    """A background push that finds a cherry-pick stopped half-way is skipped (the VM would get
    the half-done files); the commit that ends it pushes."""
    repo, vm = launched
    repo.slicer("hooks", "install")
    repo.git("checkout", "-q", "-b", "other")
    repo.write("clash.txt", "the other side\n")
    picked = repo.commit("the other side")
    repo.git("checkout", "-q", "main")
    repo.write("clash.txt", "this side\n")
    repo.commit("this side")
    settle(repo)
    repo.git("cherry-pick", picked, check=False)                  # stops: a conflict
    assert os.path.exists(repo.git("rev-parse", "--path-format=absolute", "--git-path",
                                   "CHERRY_PICK_HEAD").strip())
    # A trigger in that state: the hook itself, run as git runs it (a commit cannot be made
    # with the conflict in place; a burst's earlier commit ends up here the same way).
    run([os.path.join(hooks_dir(repo), "post-commit")], cwd=repo.path)
    settle(repo)
    last = last_push(repo, vm)
    assert last["result"] == "skipped" and "a cherry-pick is in progress" in last["message"], last
    assert not log_lines(repo, "failed")
    repo.write("clash.txt", "both sides\n")
    repo.git("add", "clash.txt")
    repo.git("-c", "core.editor=true", "cherry-pick", "--continue")      # post-commit: pushed
    assert_vm_matches(repo, vm)
    assert repo.vm_sh(vm, "cat clash.txt") == "both sides\n"
    assert last_push(repo, vm)["result"] == "ok"


def test_linked_worktree_installs_from_a_subdirectory(repo, tmp_path):
    linked = Repo(tmp_path / "linked")
    repo.git("worktree", "add", "-q", "-b", "wt", str(linked.path))
    vm = linked.slicer_json("push", "--launch")["vm"]
    result = json.loads(slicer(linked.path / "src", "hooks", "install", "--json").stdout)
    assert result["hooks_dir"] == str(repo.path / ".git" / "hooks")      # the common dir
    linked.write("src/wt.py", "WT = 1\n")
    linked.commit("in the linked worktree")
    assert_vm_matches(linked, vm)
    assert slicer_dir(linked).startswith(str(repo.path / ".git" / "worktrees"))
    repo.commit("in the main worktree, which has no link")
    assert not os.path.exists(os.path.join(slicer_dir(repo), "autopush.pending"))
    assert log_lines(repo) == []
    assert linked.vm_git(vm, "log", "-1", "--format=%s").strip() == "in the linked worktree"


# -- living with other hooks ---------------------------------------------------------------
def test_foreign_shell_hook_keeps_running_and_uninstall_restores_it(launched, tmp_path):
    repo, vm = launched
    marker = tmp_path / "marker"
    directory = hooks_dir(repo)
    commit_hook = write_hook(directory, "post-commit",
                             "#!/bin/sh\nset -eu\necho \"post-commit $*\" >> '%s'\n" % marker)
    rewrite_hook = write_hook(directory, "post-rewrite",
                              "#!/usr/bin/env bash\nset -euo pipefail\nwhile read -r old new rest; do\n"
                              "  echo \"rewrite $1 ${old:0:7}\" >> '%s'\ndone\n" % marker, mode=0o750)
    originals = {p: snapshot(p) for p in (commit_hook, rewrite_hook)}
    result = repo.slicer_json("hooks", "install")
    assert {h["hook"]: h["action"] for h in result["hooks"]} == {
        "post-commit": "splice", "post-merge": "create", "post-rewrite": "splice"}
    assert repo.slicer_json("hooks", "install")["hooks"][0]["action"] == "keep"   # idempotent

    repo.write("a.txt", "a\n")
    repo.commit("with both hooks")
    repo.git("commit", "-q", "--amend", "-m", "amended with both hooks")
    assert_vm_matches(repo, vm)
    lines = marker.read_text().splitlines()
    assert lines[:2] == ["post-commit ", "post-commit "] and lines[2].startswith("rewrite amend ")

    out = repo.slicer_json("hooks", "uninstall")
    assert {h["hook"]: h["action"] for h in out["hooks"]} == {
        "post-commit": "unspliced", "post-merge": "removed", "post-rewrite": "unspliced"}
    assert {p: snapshot(p) for p in originals} == originals                  # byte-for-byte
    assert not os.path.exists(os.path.join(directory, "post-merge"))
    pushed = repo.vm_git(vm, "rev-parse", "HEAD")
    before = len(log_lines(repo))
    repo.commit("after uninstall")
    assert marker.read_text().splitlines()[-1] == "post-commit "
    time.sleep(0.3)
    assert not os.path.exists(os.path.join(slicer_dir(repo), "autopush.pending"))
    assert len(log_lines(repo)) == before and repo.vm_git(vm, "rev-parse", "HEAD") == pushed


def test_hooks_that_cannot_be_spliced_are_chained(repo, tmp_path):
    marker = tmp_path / "marker"
    directory = hooks_dir(repo)
    py_hook = write_hook(directory, "post-rewrite",
                         "#!%s\nimport sys\nwith open(%r, 'a') as fh:\n"
                         "    fh.write('py %%s %%d\\n' %% (sys.argv[1], len(sys.stdin.read().splitlines())))\n"
                         % (sys.executable, str(marker)))
    write_hook(str(tmp_path), "shared-hook", "#!/bin/sh\necho \"shared $0\" >> '%s'\n" % marker)
    link = os.path.join(directory, "post-commit")
    os.symlink(str(tmp_path / "shared-hook"), link)
    disabled = write_hook(directory, "post-merge", "#!/bin/sh\necho disabled >> '%s'\n" % marker, mode=0o644)
    originals = {p: snapshot(p) for p in (py_hook, link, disabled)}

    result = repo.slicer_json("hooks", "install")
    assert {h["hook"]: h["mode"] for h in result["hooks"]} == dict.fromkeys(HOOKS, "chained")
    repo.commit("chained")
    repo.git("commit", "-q", "--amend", "--allow-empty", "-m", "chained amend")
    repo.git("merge", "-q", "--ff-only", "HEAD")
    lines = marker.read_text().splitlines()
    assert lines[0].startswith("shared ") and lines[-1] == "py amend 1" and "disabled" not in lines

    repo.slicer("hooks", "uninstall")
    assert {p: snapshot(p) for p in originals} == originals
    assert sorted(n for n in os.listdir(directory) if not n.endswith(".sample")) == sorted(HOOKS)


def test_pre_commit_style_hook_that_ends_in_exec(repo, tmp_path):
    """pre-commit's template ends with `exec python -m pre_commit`: our block goes first."""
    marker = tmp_path / "marker"
    text = ("#!/usr/bin/env bash\n# File generated by pre-commit: https://pre-commit.com\n"
            "# ID: 138fd403232d2ddd5efb44317e38bf03\n\n# start templated\nINSTALL_PYTHON=%s\n"
            "ARGS=(hook-impl --config=.pre-commit-config.yaml --hook-type=post-commit)\n# end templated\n\n"
            "HERE=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\nARGS+=(--hook-dir \"$HERE\" -- \"$@\")\n\n"
            "if [ -x \"$INSTALL_PYTHON\" ]; then\n"
            "    exec \"$INSTALL_PYTHON\" -c 'import sys; open(\"%s\", \"a\").write(\"pre-commit %%s\\n\" %% sys.argv[1])' \"${ARGS[@]}\"\n"
            "elif command -v pre-commit > /dev/null; then\n    exec pre-commit \"${ARGS[@]}\"\nelse\n"
            "    echo '`pre-commit` not found.' 1>&2\n    exit 1\nfi\n") % (sys.executable, str(marker))
    path = write_hook(hooks_dir(repo), "post-commit", text)
    original = snapshot(path)
    repo.slicer("hooks", "install")
    with open(path) as fh:
        installed = fh.read()
    assert installed.index("## START GIT-SLICER HOOK") < installed.index("exec \"$INSTALL_PYTHON\"")
    repo.commit("with pre-commit")
    assert marker.read_text() == "pre-commit hook-impl\n"
    repo.slicer("hooks", "uninstall")
    assert snapshot(path) == original


def test_husky_style_hooks_path_inside_the_repo(launched, tmp_path):
    repo, vm = launched
    marker = tmp_path / "marker"
    repo.write(".husky/_/h", "#!/usr/bin/env sh\nn=$(basename \"$0\")\ns=$(dirname \"$(dirname \"$0\")\")/$n\n"
               "[ ! -f \"$s\" ] && exit 0\nsh -e \"$s\" \"$@\"\n", mode=0o755)
    for hook in HOOKS:
        repo.write(".husky/_/" + hook, "#!/usr/bin/env sh\n. \"$(dirname \"$0\")/h\"\n", mode=0o755)
    repo.write(".husky/_/.gitignore", "*\n")
    repo.write(".husky/post-commit", "echo husky >> '%s'\n" % marker)
    repo.commit("husky")
    repo.git("config", "core.hooksPath", ".husky/_")
    repo.slicer("push")
    originals = {h: snapshot(str(repo.path / ".husky/_" / h)) for h in HOOKS}

    proc = repo.slicer("hooks", "install", "--json")
    assert b"points into the worktree" in proc.stderr           # hooks a VM can change (hook_guard.py)
    assert json.loads(proc.stdout)["hooks_dir"] == str(repo.path / ".husky" / "_")
    assert {h["mode"] for h in json.loads(proc.stdout)["hooks"]} == {"spliced"}
    repo.write("b.txt", "b\n")
    repo.commit("after install")
    assert marker.read_text() == "husky\n"
    assert_vm_matches(repo, vm)
    repo.slicer("hooks", "uninstall")
    assert {h: snapshot(str(repo.path / ".husky/_" / h)) for h in HOOKS} == originals


def test_hooks_path_outside_the_repository_gets_a_warning(repo, tmp_path):
    shared = tmp_path / "shared-hooks"
    repo.git("config", "core.hooksPath", str(shared))
    proc = repo.slicer("hooks", "install")
    assert b"warning: core.hooksPath points outside this repository" in proc.stderr
    assert sorted(os.listdir(shared)) == sorted(HOOKS)
    assert b"warning: core.hooksPath" in repo.slicer("hooks", "status").stderr
    repo.slicer("hooks", "uninstall")
    assert os.listdir(shared) == []


def test_older_templates_upgrade_without_force(repo):
    directory = hooks_dir(repo)
    old_block = ("## START GIT-SLICER HOOK v0 ## an older git-slicer\n"
                 "/old/python -m git_slicer.autopush post-commit .git || :\n## END GIT-SLICER HOOK ##\n")
    foreign = "#!/bin/sh\necho foreign\n"
    path = write_hook(directory, "post-commit", foreign.replace("\n", "\n" + old_block, 1))
    write_hook(directory, "post-merge", "#!/bin/sh\n# git-slicer post-merge hook (old)\n" + old_block)
    assert {h["hook"]: h["current"] for h in repo.slicer_json("hooks", "status")["hooks"]} == {
        "post-commit": False, "post-merge": False, "post-rewrite": False}
    assert b"outdated" in repo.slicer("hooks", "status").stdout
    result = repo.slicer_json("hooks", "install")
    assert [h["action"] for h in result["hooks"]] == ["upgrade", "upgrade", "create"]
    assert all(h["current"] and h["installed"] for h in repo.slicer_json("hooks", "status")["hooks"])
    assert "v%d" % core.TEMPLATE_VERSION in open(path).read()
    repo.slicer("hooks", "uninstall")
    assert open(path).read() == foreign
    assert not os.path.exists(os.path.join(directory, "post-merge"))


def test_refuses_to_clobber_and_force_replaces(repo, tmp_path):
    directory = hooks_dir(repo)
    binary = write_hook(directory, "post-commit", "#!/usr/bin/env python3\nprint('two')\n")
    backup = write_hook(directory, "post-commit.pre-slicer", "#!/usr/bin/env python3\nprint('one')\n")
    before = {p: snapshot(p) for p in (binary, backup)}
    proc = repo.slicer("hooks", "install", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 2 and "Traceback" not in err
    assert err.startswith("error: cannot install the post-commit hook: post-commit.pre-slicer already exists")
    assert {p: snapshot(p) for p in before} == before
    assert not os.path.exists(os.path.join(directory, "post-merge"))        # nothing half-done
    repo.slicer("hooks", "install", "--force")
    assert all(h["installed"] for h in repo.slicer_json("hooks", "status")["hooks"])


def test_manual_prints_the_block_and_writes_nothing(repo):
    directory = hooks_dir(repo)
    listing = sorted(os.listdir(directory))
    out = repo.slicer("hooks", "install", "--manual").stdout.decode()
    assert out.count("## START GIT-SLICER HOOK") == 3 and sys.executable in out
    assert sorted(os.listdir(directory)) == listing


def test_files_in_the_worktree_cannot_pose_as_git_slicer(launched, tmp_path):
    """The hook runs with the worktree as cwd; a git_slicer/ there (say, pulled from a VM) must not run."""
    repo, vm = launched
    repo.slicer("hooks", "install")
    marker = tmp_path / "planted-ran"
    repo.write("git_slicer/__init__.py", "open(%r, 'w').write('ran')\n" % str(marker))
    repo.write("git_slicer/autopush.py", "open(%r, 'w').write('ran')\n" % str(marker))
    repo.commit("a planted package")
    settle(repo)
    assert not marker.exists()
    # (the test helpers run `python -m git_slicer` in the worktree, so read the result directly)
    last = autopush.read_state(slicer_dir(repo))["vms"][vm]
    assert last["result"] == "ok" and last["commit"] == repo.git("rev-parse", "HEAD").strip()


# -- the background push -------------------------------------------------------------------
def test_burst_of_commits_coalesces(launched):
    repo, vm = launched
    repo.slicer("hooks", "install")
    for i in range(50):
        repo.write("burst.txt", "%d\n" % i)
        repo.git("add", "burst.txt")
        repo.git("commit", "-q", "-m", "burst %d" % i)
    assert_vm_matches(repo, vm)
    assert repo.vm_git(vm, "log", "-1", "--format=%s").strip() == "burst 49"
    pushes = log_lines(repo, ": ok: ")
    assert 1 <= len(pushes) <= 15, pushes
    assert last_push(repo, vm)["commit"] == repo.git("rev-parse", "HEAD").strip()


def test_vm_work_is_never_overwritten(launched):
    repo, vm = launched
    repo.slicer("hooks", "install")
    repo.vm_sh(vm, "echo agent > agent.txt && git add agent.txt && git commit -q -m 'agent work'")
    vm_head = repo.vm_git(vm, "rev-parse", "HEAD")
    repo.write("host.txt", "host\n")
    repo.commit("host work")
    settle(repo)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == vm_head
    last = last_push(repo, vm)
    assert last["result"] == "refused" and "not pulled" in last["message"]
    assert log_lines(repo, "VM %s: refused: " % vm)
    assert "refused" in repo.slicer("hooks", "status").stdout.decode()


def test_auto_push_off(launched):
    repo, vm = launched
    repo.slicer("hooks", "install")
    pushed = repo.vm_git(vm, "rev-parse", "HEAD")
    pending = os.path.join(slicer_dir(repo), "autopush.pending")
    repo.git("config", "slicer.autoPush", "false")
    repo.commit("not pushed")
    settle(repo)
    assert log_lines(repo, "skipped, slicer.autoPush is false")
    assert "off" in repo.slicer("hooks", "status").stdout.decode()
    repo.git("config", "--unset", "slicer.autoPush")
    env = {**os.environ, "GIT_SLICER_AUTOPUSH": "0"}
    run(["git", "commit", "-q", "--allow-empty", "-m", "not pushed either"], cwd=repo.path, env=env)
    assert not os.path.exists(pending)                       # the hook stopped in the shell
    assert len(log_lines(repo)) == 1 and repo.vm_git(vm, "rev-parse", "HEAD") == pushed


def test_hook_without_its_interpreter(launched, tmp_path):
    repo, vm = launched
    core.install(Worktree(str(repo.path)), python=str(tmp_path / "gone" / "python3"))
    status = repo.slicer_json("hooks", "status")["hooks"]
    assert all(h["current"] and h["python_missing"] for h in status)    # current for its interpreter
    repo.commit("git-slicer from PATH")                      # falls back to git-slicer on PATH
    assert_vm_matches(repo, vm)
    stop_runner(repo)                                        # else the commit only wakes it
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = run(["git", "commit", "-q", "--allow-empty", "-m", "no git-slicer at all"], cwd=repo.path, env=env)
    err = proc.stderr.decode().splitlines()
    assert len(err) == 1 and err[0].startswith("git-slicer: cannot run the post-commit hook")
    assert "git slicer hooks uninstall" in err[0]


def test_status_json_without_links(repo):
    status = repo.slicer_json("hooks", "status")
    assert status["vms"] == [] and status["auto_push"] is True and status["runner"]["state"] == "idle"
    assert [h["state"] for h in status["hooks"]] == ["absent"] * 3


@pytest.mark.parametrize("hook", HOOKS)
def test_templates_are_posix_sh(hook):
    """The rendered hook parses under sh -n (and dash when present)."""
    text = core.render_hook(hook)
    for shell in ("/bin/sh", "/bin/dash", "/bin/bash"):
        if os.path.exists(shell):
            run([shell, "-n"], input=text)
