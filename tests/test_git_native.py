"""Feeling native to git: man pages, completion, review verbs, fan-out, worktrees, the remote
helper, aliases. Through the real console scripts and real git."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import Repo, git, run, slicer_in_pty

ROOT = Path(__file__).resolve().parent.parent
GIT_COMPLETION = "/usr/share/bash-completion/completions/git"


def test_man_pages_are_current():
    from git_slicer.cli.manpages import render_all
    pages = render_all()
    on_disk = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    assert on_disk == pages, "man pages are stale: run python3 scripts/gen-man.py"
    assert "git-slicer-push.1" in pages and "git-slicer-vm-launch.1" in pages


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
def test_git_help_shows_man_page_from_a_venv_install(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)])
    env = dict(os.environ, PATH="%s:%s" % (venv / "bin", os.environ["PATH"]), MANPAGER="cat", PAGER="cat",
               MANWIDTH="80")
    env.pop("MANPATH", None)
    out = run(["git", "help", "slicer"], cwd=tmp_path, env=env).stdout.decode()
    assert "git-slicer" in out and "SYNOPSIS" in out
    out = run(["git", "slicer", "push", "--help"], cwd=tmp_path, env=env).stdout.decode()
    assert "Usage: git slicer push" in out
    assert run(["git", "slicer", "push", "-h"], cwd=tmp_path, env=env).stdout.decode().startswith("Usage:")


@pytest.mark.skipif(not os.path.exists(GIT_COMPLETION), reason="git's bash completion not installed")
def test_bash_completion_through_git(launched):
    repo, vm = launched
    script = ('source %s; eval "$(git slicer completion bash)"\n'
              'complete_line() { COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<< "$1";'
              ' [[ "$1" == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]}-1));'
              ' __git_wrap__git_main; echo "${COMPREPLY[*]}"; }\n'
              'complete_line "git slicer pu"; complete_line "git slicer push --la"; complete_line "git slicer pull "\n'
              % GIT_COMPLETION)
    out = run(["bash", "-c", script], cwd=repo.path).stdout.decode().splitlines()
    assert out[0].split() == ["pull", "push"]
    assert out[1].split() == ["--launch"]
    assert vm in out[2].split()
    for shell in ("zsh", "fish"):
        assert "git-slicer" in repo.slicer("completion", shell).stdout.decode()


def test_review_verbs_show_vm_work_without_pulling(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo agent > agent.py && git add agent.py && git commit -qm 'agent: add agent.py' && "
                   "echo wip >> README.md")
    before = repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer", ".git/objects"))
    log = repo.slicer_json("log", vm)
    assert [c["subject"] for c in log["commits"]] == ["agent: add agent.py"]
    stat = repo.slicer("diff", vm, "--stat").stdout.decode()
    assert "agent.py" in stat and "README.md" in stat
    patch = repo.slicer("diff", vm).stdout.decode()
    assert "+wip" in patch and "+agent" in patch
    files = {f["path"]: f for f in repo.slicer_json("diff", vm)["files"]}
    assert files["README.md"]["added"] == 1
    assert repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer", ".git/objects")) == before


def test_diff_shows_only_the_vm_side_not_host_pushed_changes(launched):
    repo, vm = launched
    repo.write("host-dirty.txt", "mine\n")
    repo.slicer("push")
    repo.vm_sh(vm, "echo vm > vm.txt")
    stat = repo.slicer("diff", vm, "--stat").stdout.decode()
    assert "vm.txt" in stat and "host-dirty" not in stat


def test_diff_is_what_the_pull_then_changes(launched):
    """The host's own work since the last sync (an uncommitted edit, a commit) is no part of
    what a pull changes, so the diff leaves it out; it shows exactly the pull's effect."""
    repo, vm = launched
    repo.vm_sh(vm, "echo 'print(1)' > src/app.py && rm src/lib.py && echo new > vm.txt")
    repo.write("README.md", "# the host's commit\n")
    repo.commit("host")
    repo.write("bin/run", "#!/bin/sh\necho the host's edit\n")
    stat = repo.slicer_json("diff", vm)
    assert sorted(f["path"] for f in stat["files"]) == ["src/app.py", "src/lib.py", "vm.txt"], stat
    patch = repo.slicer("diff", vm).stdout
    repo.git("add", "-A")
    before = repo.git("write-tree").strip()
    repo.git("reset", "-q")
    repo.slicer("pull", vm)
    repo.git("add", "-A")
    after = repo.git("write-tree").strip()
    assert repo.git("diff", before, after) == patch.decode()


def test_unlink_forgets_the_link(launched):
    repo, vm = launched
    assert repo.slicer_json("unlink", vm)["unlinked"] is True
    assert repo.slicer_json("list")[0]["vm"] is None
    assert repo.slicer("unlink", vm, check=False).returncode == 2


def test_shell_runs_in_a_real_pty(launched):
    repo, vm = launched
    output, code = slicer_in_pty(repo.path, "shell", vm,
                                 typed=b"echo marker-$((6*7)); test -t 0 && echo tty-yes; pwd; exit 3\n")
    assert b"marker-42" in output and b"tty-yes" in output and b"/project" in output
    assert code == 3


def test_worktree_add_with_a_vm_that_is_not_there_creates_nothing(repo, tmp_path):
    target = tmp_path / "fix"
    proc = repo.slicer("worktree", "add", str(target), "-b", "fix", "--vm", "nosuch", "--json", check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["kind"] == "VMNotFound"
    assert not target.exists() and repo.git("branch", "--list", "fix") == ""
    assert repo.slicer_json("worktree", "add", str(target), "-b", "fix", "--launch")["pushed"]["vm"]


def test_worktree_add_launch_and_remove(repo, tmp_path):
    target = tmp_path / "fix"
    result = repo.slicer_json("worktree", "add", str(target), "-b", "fix", "--launch")
    vm = result["pushed"]["vm"]
    wt = Repo(target)
    assert wt.git("rev-parse", "--abbrev-ref", "HEAD").strip() == "fix"
    assert wt.vm_status(vm) == wt.status() == ""
    assert wt.vm_git(vm, "symbolic-ref", "--short", "HEAD").strip() == "fix"
    wt.vm_sh(vm, "echo unpulled > u.txt")
    proc = repo.slicer("worktree", "remove", str(target), check=False)
    assert proc.returncode == 1 and b"not pulled" in proc.stderr
    assert target.exists()
    wt.slicer("pull", vm)
    repo.slicer("worktree", "remove", str(target), "--force")
    assert not target.exists()


def test_push_launch_count_and_all(repo):
    outcome = repo.slicer_json("push", "--launch", "--count", "3")
    vms = [r["vm"] for r in outcome["results"]]
    assert len(set(vms)) == 3 and outcome["failed"] == [] and outcome["ok"] is True
    head = repo.git("rev-parse", "HEAD")
    for vm in vms:
        assert repo.vm_git(vm, "rev-parse", "HEAD") == head
    repo.write("more.txt", "m\n")
    repo.commit("more")
    outcome = repo.slicer_json("push", "--all")
    assert sorted(r["vm"] for r in outcome["results"]) == sorted(vms)
    for vm in vms:
        assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    # One VM with unpulled work fails alone; the others still get the push; exit 1.
    repo.vm_sh(vms[0], "echo x > x.txt")
    repo.write("again.txt", "a\n")
    proc = repo.slicer("push", "--all", check=False)
    assert proc.returncode == 1
    assert vms[0].encode() in proc.stdout and b"error" in proc.stdout
    proc = repo.slicer("push", "--all", "--json", check=False)
    outcome = json.loads(proc.stdout)
    assert proc.returncode == 1 and outcome["ok"] is False and outcome["failed"] == [vms[0]]
    failed = [r for r in outcome["results"] if not r["ok"]]
    assert failed[0]["kind"] == "WouldLoseWork" and "pull" in failed[0]["hint"]
    assert proc.stderr.decode().splitlines() == ["error: VM %s: %s" % (vms[0], failed[0]["error"])]
    for vm in vms[1:]:
        assert "again.txt" in repo.vm_status(vm)


def test_git_fetch_through_remote_helper(launched):
    repo, vm = launched
    repo.vm_sh(vm, "git checkout -qb side && echo s > s.txt && git add s.txt && git commit -qm side && "
                   "git checkout -q main && echo m > m.txt && git add m.txt && git commit -qm main-vm")
    head_before = repo.git("rev-parse", "HEAD")
    repo.git("fetch", "-q", "slicer::%s" % vm)
    assert repo.git("rev-parse", "FETCH_HEAD") == repo.vm_git(vm, "rev-parse", "main")
    repo.git("remote", "add", "box", "slicer://%s" % vm)
    repo.git("fetch", "-q", "box")
    assert repo.git("rev-parse", "box/side") == repo.vm_git(vm, "rev-parse", "side")
    assert repo.git("rev-parse", "HEAD") == head_before                      # read-only: nothing moved
    assert repo.git("fsck", "--no-dangling", check=False) is not None


def test_bang_alias_with_git_prefix_and_plain_alias(repo, tmp_path):
    repo.git("config", "alias.vmst", "!git slicer status --json")
    repo.git("config", "alias.vmput", "!git slicer push --launch --json")
    out = git(repo.path / "src", "vmput")
    assert '"branch": "main"' in out
    assert '"in_sync": true' in git(repo.path / "src", "vmst")
    other = tmp_path / "lw"
    repo.git("worktree", "add", "-q", "-b", "lw", str(other))
    (other / "deep").mkdir()
    assert '"branch": "lw"' in git(other / "deep", "vmput")


def test_skill_md_documents_the_workflow():
    text = (ROOT / "SKILL.md").read_text()
    for needle in ("push --launch", "git slicer log", "git slicer diff", "git slicer pull", "--json",
                   "refs/slicer/backup/"):
        assert needle in text
